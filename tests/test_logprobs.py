"""Per-token log probabilities of the reference engine (`generate(..., logprobs=True)`).

Each token's logprob is under the distribution it was drawn from (`sampling.token_logprobs`):
AR rows for AR and self-speculation, draft rows for diffusion. Checked against one causal
scoring forward over prompt + output (AR, and self-speculation, whose output and target rows
are AR's), the degenerate cases (diffusion at block size 1 = AR; batch of N = N of 1), and
sampling at a temperature (`log_softmax(logits / T)`, what SGLang reports)."""

from __future__ import annotations

import pytest
import torch

from sglang_trimode import TriModeEngine, default_model_path

NEW = 24


@pytest.fixture(scope="module")
def engine():
    return TriModeEngine.from_pretrained(default_model_path(), device="cpu", dtype=torch.float32)


@pytest.fixture(scope="module")
def prompts(engine):
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(str(default_model_path()))
    texts = ["def read(path):\n    ", "import os\n\n\nclass Cache:\n", "    return self._"]
    return [tok(t)["input_ids"] for t in texts]


def causal_logp(engine, prompt, out, temperature=0.0):
    """log_softmax(logits / T) of one causal forward over prompt + out, at the generated
    positions: ``[len(out), V]`` (float64)."""
    seq = prompt + out
    n = len(seq)
    with torch.no_grad():
        logits = engine.model(
            torch.tensor([seq]), torch.arange(n)[None], engine.model.causal_mask(n)
        )[0].double()
    return torch.log_softmax(logits / (temperature or 1.0), -1)[len(prompt) - 1 : n - 1]


def scored(engine, prompt, out, temperature=0.0):
    """Logprobs of `out` after `prompt` from one causal forward: log_softmax(logits / T)."""
    logp = causal_logp(engine, prompt, out, temperature)
    return [logp[t, tok].item() for t, tok in enumerate(out)]


def close(a, b, tol=1e-4):
    torch.testing.assert_close(torch.tensor(a), torch.tensor(b), atol=tol, rtol=tol)


@pytest.mark.parametrize("mode", ["ar", "self_spec_linear", "self_spec_quadratic"])
@pytest.mark.parametrize("block", [4, 8])
def test_ar_and_self_spec_logprobs_are_the_ar_models_scores(engine, prompts, mode, block):
    outs = engine.generate(
        prompts, mode=mode, block_size=block, max_new_tokens=NEW, stop_token_ids=[], logprobs=True
    )
    ar = engine.generate(prompts, mode="ar", max_new_tokens=NEW, stop_token_ids=[])
    for p, o, a in zip(prompts, outs, ar, strict=True):
        assert o.token_ids == a.token_ids and len(o.logprobs) == len(o.token_ids)
        close(o.logprobs, scored(engine, p, o.token_ids))
        assert all(lp <= 0 for lp in o.logprobs)


def test_diffusion_block_1_equals_ar_with_logprobs(engine, prompts):
    kw = dict(max_new_tokens=NEW, stop_token_ids=[], logprobs=True)
    diff = engine.generate(prompts, mode="diffusion", block_size=1, **kw)
    ar = engine.generate(prompts, mode="ar", **kw)
    for d, a in zip(diff, ar, strict=True):
        assert d.token_ids == a.token_ids
        close(d.logprobs, a.logprobs, tol=1e-6)


@pytest.mark.parametrize("mode", ["ar", "diffusion", "self_spec_linear", "self_spec_quadratic"])
def test_batch_of_n_equals_n_of_1_with_logprobs(engine, prompts, mode):
    kw = dict(mode=mode, block_size=4, max_new_tokens=NEW, stop_token_ids=[], logprobs=True)
    batch = engine.generate(prompts, **kw)
    for i, p in enumerate(prompts):
        (one,) = engine.generate([p], seed=i, **kw)
        assert one.token_ids == batch[i].token_ids
        close(one.logprobs, batch[i].logprobs, tol=1e-5)


def test_diffusion_logprobs_are_the_draft_confidences(engine, prompts):
    """Diffusion tokens come from draft rows, so their logprobs are the draft's, not the AR
    model's scores of the same text (only the prefill's first token is AR's)."""
    (o,) = engine.generate(
        prompts[:1], mode="diffusion", block_size=8, max_new_tokens=NEW, stop_token_ids=[],
        logprobs=True,
    )  # fmt: skip
    assert len(o.logprobs) == len(o.token_ids) and all(lp <= 0 for lp in o.logprobs)
    # the first token comes from the prefill (AR), the rest from draft rows: not AR's scores
    ar_scores = scored(engine, prompts[0], o.token_ids)
    close(o.logprobs[:1], ar_scores[:1])
    assert max(abs(a - b) for a, b in zip(o.logprobs[1:], ar_scores[1:])) > 1e-3


def test_sampled_logprobs_use_the_temperature(engine, prompts):
    t = 0.8
    outs = engine.generate(
        prompts, mode="ar", max_new_tokens=NEW, temperature=t, seed=3, logprobs=True,
        stop_token_ids=[],
    )  # fmt: skip
    for p, o in zip(prompts, outs, strict=True):
        close(o.logprobs, scored(engine, p, o.token_ids, temperature=t))


@pytest.mark.parametrize("mode", ["ar", "self_spec_quadratic"])
def test_top_logprobs_are_the_ar_rows_best(engine, prompts, mode):
    k = 3
    outs = engine.generate(
        prompts, mode=mode, block_size=4, max_new_tokens=NEW, stop_token_ids=[], logprobs=True,
        top_logprobs=k,
    )  # fmt: skip
    for p, o in zip(prompts, outs, strict=True):
        ids = p + o.token_ids
        n = len(ids)
        with torch.no_grad():
            logits = engine.model(
                torch.tensor([ids]), torch.arange(n)[None], engine.model.causal_mask(n)
            )[0].double()
        best = torch.log_softmax(logits, -1)[len(p) - 1 : n - 1].topk(k, dim=-1)
        assert len(o.top_logprobs) == len(o.token_ids)
        assert [ids for _, ids in o.top_logprobs] == best.indices.tolist()
        close([v for v, _ in o.top_logprobs], best.values.tolist())
        assert all(ids[0] == t for (_, ids), t in zip(o.top_logprobs, o.token_ids))  # greedy


def test_top_logprobs_need_logprobs(engine, prompts):
    with pytest.raises(ValueError, match="needs logprobs=True"):
        engine.generate(prompts[:1], max_new_tokens=2, top_logprobs=2)


def test_without_logprobs_nothing_is_tracked(engine, prompts):
    (o,) = engine.generate(prompts[:1], mode="diffusion", block_size=4, max_new_tokens=8)
    assert o.logprobs is None


def scored_rows(engine, prompt, out, ids, temperature=0.0):
    """Each generated position's log probabilities at `ids` from one causal forward."""
    return causal_logp(engine, prompt, out, temperature)[:, ids].tolist()


@pytest.mark.parametrize("row_summary", [False, True], ids=["full_rows", "row_summary"])
@pytest.mark.parametrize("temperature", [0.0, 0.7])
@pytest.mark.parametrize("mode", ["ar", "self_spec_linear", "self_spec_quadratic"])
def test_token_ids_logprobs_are_the_ar_rows_values(engine, prompts, mode, temperature, row_summary):
    """`token_ids_logprob=ids`: per generated token, its AR row's logprobs at `ids` (duplicates
    and the last vocabulary id included), for full rows and for the worker's row summaries
    (`GreedyRows` over the ids' union, `SampledRows` reading the device rows)."""
    ids = [5, 0, engine.config.vocab_size - 1, 5]
    outs = engine.generate(
        prompts, mode=mode, block_size=4, max_new_tokens=NEW, stop_token_ids=[], logprobs=True,
        token_ids_logprob=ids, temperature=temperature, row_summary=row_summary,
    )  # fmt: skip
    for p, o in zip(prompts, outs, strict=True):
        assert len(o.token_ids_logprobs) == len(o.token_ids)
        close(o.token_ids_logprobs, scored_rows(engine, p, o.token_ids, ids, temperature))


def test_diffusion_token_ids_logprobs_come_from_the_draft_rows(engine, prompts):
    """Diffusion: the chosen ids' values come from the row the token was drawn from, so at the
    token's own id they equal its logprob; block size 1 (= AR) equals the AR rows."""
    (o,) = engine.generate(
        prompts[:1], mode="diffusion", block_size=4, max_new_tokens=NEW, stop_token_ids=[],
        logprobs=True, token_ids_logprob=list(range(engine.config.vocab_size)),
    )  # fmt: skip
    close([row[t] for row, t in zip(o.token_ids_logprobs, o.token_ids)], o.logprobs)
    ids = [3, 11]
    one = engine.generate(
        prompts, mode="diffusion", block_size=1, max_new_tokens=8, stop_token_ids=[],
        logprobs=True, token_ids_logprob=ids,
    )  # fmt: skip
    for p, o in zip(prompts, one, strict=True):
        close(o.token_ids_logprobs, scored_rows(engine, p, o.token_ids, ids))


def test_token_ids_logprob_is_checked(engine, prompts):
    with pytest.raises(ValueError, match="token_ids_logprob needs logprobs=True"):
        engine.generate(prompts[:1], max_new_tokens=2, token_ids_logprob=[1])
    with pytest.raises(ValueError, match=r"token_ids_logprob: ids \[-1, 99999\] are not"):
        engine.generate(prompts[:1], max_new_tokens=2, logprobs=True, token_ids_logprob=[-1, 99999])
