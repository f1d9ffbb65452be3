"""The shipped default model: trained, loadable, and self-speculation pays on held-out code."""

import pytest

from sglang_trimode import TriModeEngine, default_model_path
from sglang_trimode.models import EMBEDDED, load_tokenizer
from sglang_trimode.training.corpus import heldout_prompts

MODES = ("ar", "diffusion", "self_spec_linear", "self_spec_quadratic")


@pytest.fixture(scope="module")
def model():
    path = default_model_path()
    assert path == EMBEDDED, "the trained default model must ship inside the package"
    engine = TriModeEngine.from_pretrained(path)
    tok = load_tokenizer(path)
    # the setup of the model card's figures: 8 held-out prompts, 64 new tokens
    prompts = [tok.encode(t) for t in heldout_prompts(8)]
    return engine, tok, prompts


@pytest.fixture(scope="module")
def ar(model):
    engine, _, prompts = model
    return engine.generate(prompts, mode="ar", max_new_tokens=64)


def tpf(outs):
    return sum(len(o.token_ids) - 1 for o in outs) / sum(o.stats.forwards for o in outs)


@pytest.mark.parametrize("block_size", [8, 16])
def test_quadratic_self_spec_beats_one_token_per_forward_and_equals_ar(model, ar, block_size):
    engine, _, prompts = model
    outs = engine.generate(
        prompts, mode="self_spec_quadratic", max_new_tokens=64, block_size=block_size
    )
    assert [o.token_ids for o in outs] == [o.token_ids for o in ar]
    assert tpf(outs) > 1.4  # random weights stay near 1.0


def test_linear_self_spec_equals_ar(model, ar):
    engine, _, prompts = model
    outs = engine.generate(prompts, mode="self_spec_linear", max_new_tokens=64, block_size=8)
    assert [o.token_ids for o in outs] == [o.token_ids for o in ar]


def test_tokenizer_round_trips_and_special_ids_match_config(model):
    engine, tok, prompts = model
    cfg = engine.config
    assert tok.mask_token_id == cfg.mask_token_id and tok.eos_token_id in cfg.eos_token_ids
    assert len(tok) == cfg.vocab_size
    text = "def add(a, b):\n    return a + b\n"
    assert tok.decode(tok.encode(text)) == text
    assert all(cfg.mask_token_id not in p for p in prompts)


def test_chat_template_shipped_and_kept_by_export(tmp_path):
    """The shipped tokenizer's chat template is export's `CHAT_TEMPLATE` (the messages' contents,
    one per line), and `training.export` adds it to a trained checkpoint's tokenizer config that
    has none (a re-export keeps `/v1/chat/completions` working) but keeps one that has its own."""
    import json

    import torch
    from transformers import AutoTokenizer

    from sglang_trimode.reference.tiny import make_tiny_checkpoint
    from sglang_trimode.training.export import CHAT_TEMPLATE, export

    path = default_model_path()
    shipped = json.loads((path / "tokenizer_config.json").read_text())
    assert shipped["chat_template"] == CHAT_TEMPLATE
    tok = AutoTokenizer.from_pretrained(str(path))
    msgs = [{"role": "system", "content": "# a"}, {"role": "user", "content": "def f():"}]
    assert tok.apply_chat_template(msgs, tokenize=False, add_generation_prompt=True) == (
        "# a\ndef f():"
    )
    for own in (None, "{{ messages[0]['content'] }}"):
        src = make_tiny_checkpoint(tmp_path / f"src{own is None}", seed=0)
        cfg = {"tokenizer_class": "TokenizersBackend"} | ({"chat_template": own} if own else {})
        (src / "tokenizer_config.json").write_text(json.dumps(cfg))
        dst = export(src, tmp_path / f"dst{own is None}", torch.bfloat16)
        got = json.loads((dst / "tokenizer_config.json").read_text())
        assert got == cfg | {"chat_template": own or CHAT_TEMPLATE}


@pytest.mark.parametrize("temperature", [0.0, 0.8])
def test_the_worker_reads_of_quadratic_rows_equal_the_full_rows(model, temperature):
    """`row_summary=True` is the SGLang worker's path: a quadratic step's logits are computed for
    its causal rows only and its one mask group is read through the head when the policy reads
    it (`rows.DeferredGroups`). Drafts come from that group, so on this trained model (drafts
    accepted: AL well above 1) reading a wrong group would change the accept lengths even
    though greedy tokens stay AR's; the stats must equal the full rows' exactly (greedy), and a
    sampled run must equal itself through the same rows (same seeds)."""
    engine, _, prompts = model
    kw = dict(mode="self_spec_quadratic", max_new_tokens=32, block_size=8)
    if temperature:
        kw |= dict(temperature=temperature, top_p=0.95, seed=3)
    full = engine.generate(prompts[:4], **kw)
    worker = engine.generate(prompts[:4], row_summary=True, **kw)
    assert sum(sum(o.stats.accept_lengths) for o in full) > 1.2 * sum(
        len(o.stats.accept_lengths) for o in full
    )
    if not temperature:
        assert [o.token_ids for o in worker] == [o.token_ids for o in full]
        assert [o.stats for o in worker] == [o.stats for o in full]
    else:  # inverse-CDF draws differ from the full rows' sampler; batch of 1 == batch of 4
        one = engine.generate(prompts[1:2], row_summary=True, **(kw | dict(seed=4)))
        assert one[0].token_ids == worker[1].token_ids
        assert one[0].stats == worker[1].stats
