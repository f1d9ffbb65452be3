"""The vendor's drafter layout (`linear_spec_lora/`, a PEFT adapter) in the reference engine.

An adapter written by the `peft` library on the tiny model (o_proj, r 8, alpha 32, random
nonzero B) is loaded without peft; greedy self-speculation with it equals greedy AR under every
row scope, its drafts differ from adapter-less drafts, and applying it to verify rows on purpose
breaks the equality. With `drafter_rows="vendor"` the engine equals a PEFT-wrapped model run
with the adapter enabled for the draft forwards only (`vendor_adapter.peft_linear_spec`).
"""

from __future__ import annotations

import subprocess
import sys
from collections import defaultdict

import pytest
import torch
from _deps import require

require("peft", reason="peft writes the adapters (requirements/test.txt)")

from peft import PeftModel  # noqa: E402
from vendor_adapter import peft_linear_spec, peft_model, write_peft_adapter  # noqa: E402

from sglang_trimode import masks, modes  # noqa: E402
from sglang_trimode.adapter import rows as drafter_rows  # noqa: E402
from sglang_trimode.adapter.files import VENDOR_DIR  # noqa: E402
from sglang_trimode.adapter.lora import DrafterConfig, DrafterLoRA  # noqa: E402
from sglang_trimode.reference.engine import TriModeEngine  # noqa: E402
from sglang_trimode.reference.tiny import make_tiny_checkpoint  # noqa: E402

PROMPTS = [[5, 6, 7, 8], [9, 10], [11, 12, 13]]
BLOCK, MAX_NEW = 4, 16
KW = dict(max_new_tokens=MAX_NEW, block_size=BLOCK, stop_token_ids=[])
SPEC = ("self_spec_linear", "self_spec_quadratic")


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory):
    path = make_tiny_checkpoint(tmp_path_factory.mktemp("vendor") / "ckpt", seed=5)
    write_peft_adapter(path)
    return path


@pytest.fixture(scope="module")
def plain(ckpt):
    return TriModeEngine.from_pretrained(ckpt, drafter=False)


def _drafts(monkeypatch, engine, mode: str) -> dict[tuple, list]:
    """Each prompt's drafts of every step of a `mode` run (spied on the policies' consume)."""
    seen: dict[tuple, list] = defaultdict(list)
    for cls in (modes.LinearSpecPolicy, modes.QuadraticSpecPolicy):
        real = cls.consume

        def spy(self, r, seg, logits, _real=real):
            kept = _real(self, r, seg, logits)
            if r.drafts and seg.desc.committable < seg.desc.length:  # a forward that drafted
                seen[tuple(r.prompt)].append(list(r.drafts))
            return kept

        monkeypatch.setattr(cls, "consume", spy)
    engine.generate(PROMPTS, mode=mode, **KW)
    monkeypatch.undo()
    return dict(seen)


def test_peft_folder_loads_without_peft_and_equals_peft_layers(ckpt):
    """Our hooks with the adapter on every row = PEFT's LoRA layers enabled; no gate = PEFT's
    disabled adapter = the base model. Loading imports no peft (a fresh process)."""
    engine = TriModeEngine.from_pretrained(ckpt)
    assert engine.drafter.cfg == DrafterConfig(8, 32.0) and engine.drafter_rows == "self_spec"
    pm = peft_model(ckpt)
    ids = torch.tensor([PROMPTS[0] * 3])
    pos, mask = torch.arange(ids.shape[1])[None], engine.model.causal_mask(ids.shape[1])
    with torch.no_grad(), engine.drafter.rows(torch.ones(ids.shape, dtype=torch.bool)):
        ours = engine.model(ids, pos, mask)
    with torch.no_grad():
        theirs, base = pm(ids, pos, mask), engine.model(ids, pos, mask)
        with pm.disable_adapter():
            off = pm(ids, pos, mask)
    torch.testing.assert_close(ours, theirs, rtol=1e-5, atol=1e-5)
    assert (ours - base).abs().max() > 1e-2
    torch.testing.assert_close(off, base, rtol=0, atol=0)
    code = (
        "import sys; from sglang_trimode import TriModeEngine; "
        f"e = TriModeEngine.from_pretrained({str(ckpt)!r}); "
        "assert e.drafter is not None and 'peft' not in sys.modules, sorted(sys.modules)"
    )
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert res.returncode == 0, res.stderr[-2000:]


@pytest.mark.parametrize("scope", drafter_rows.SCOPES)
def test_greedy_self_spec_with_the_peft_adapter_equals_ar(ckpt, plain, scope, monkeypatch):
    engine = TriModeEngine.from_pretrained(ckpt, drafter_rows=scope)
    ar = [o.token_ids for o in plain.generate(PROMPTS, mode="ar", **KW)]
    for mode in SPEC:
        assert [o.token_ids for o in engine.generate(PROMPTS, mode=mode, **KW)] == ar, mode
        with_lora, without = _drafts(monkeypatch, engine, mode), _drafts(monkeypatch, plain, mode)
        assert set(with_lora) == set(without) == {tuple(p) for p in PROMPTS}
        applied = scope != "vendor" or mode == "self_spec_linear"
        for prompt in with_lora:  # applied: every prompt's drafts change
            assert (with_lora[prompt] != without[prompt]) == applied, (mode, prompt)


def test_applying_it_to_verify_rows_breaks_the_equality(ckpt, plain, monkeypatch):
    """The switch: the adapter on a self-speculation segment's every row (its verify rows
    too). Greedy self-speculation then no longer equals AR, so the equality test can fail."""
    engine = TriModeEngine.from_pretrained(ckpt, drafter_rows="vendor")
    ar = [o.token_ids for o in plain.generate(PROMPTS, mode="ar", **KW)]
    real = drafter_rows.drafting_span

    def every_row(seg, scope):
        return (0, seg.desc.length) if seg.mode in SPEC else real(seg, scope)

    monkeypatch.setattr(drafter_rows, "drafting_span", every_row)
    for mode in SPEC:
        assert [o.token_ids for o in engine.generate(PROMPTS, mode=mode, **KW)] != ar, mode


def test_vendor_switching_equals_a_peft_wrapped_model(ckpt, monkeypatch):
    """`drafter_rows="vendor"`: tokens and every step's drafts equal the PEFT oracle's (adapter
    enabled for the draft forward only), batched and one prompt at a time."""
    engine = TriModeEngine.from_pretrained(ckpt, drafter_rows="vendor")
    pm, mask_id = peft_model(ckpt), engine.config.mask_token_id
    outs = engine.generate(PROMPTS, mode="self_spec_linear", **KW)
    drafts = _drafts(monkeypatch, engine, "self_spec_linear")
    for p, o in zip(PROMPTS, outs, strict=True):
        want_tokens, want_drafts = peft_linear_spec(pm, p, MAX_NEW, BLOCK, mask_id)
        assert list(o.token_ids) == want_tokens
        assert drafts[tuple(p)] == want_drafts
        one = engine.generate([p], mode="self_spec_linear", **KW)[0]
        assert one.token_ids == o.token_ids and one.stats.accept_lengths == o.stats.accept_lengths
    with pm.disable_adapter():  # control: the oracle without the adapter drafts differently
        plain_drafts = peft_linear_spec(pm, PROMPTS[0], MAX_NEW, BLOCK, mask_id)[1]
    assert plain_drafts != drafts[tuple(PROMPTS[0])]


@pytest.mark.parametrize("scope", drafter_rows.SCOPES)
def test_diffusion_blocks_get_the_adapter_only_with_scope_all(ckpt, plain, scope):
    engine = TriModeEngine.from_pretrained(ckpt, drafter_rows=scope)
    got = [o.token_ids for o in engine.generate(PROMPTS, mode="diffusion", **KW)]
    base = [o.token_ids for o in plain.generate(PROMPTS, mode="diffusion", **KW)]
    assert (got != base) == (scope == "all")


def _segments() -> list[modes.Segment | None]:
    """Every kind of segment a forward packs, with the policy that makes it, and a rider."""
    return [
        modes.Segment([5], masks.decode(), "ar"),
        modes.Segment([5, 3, 3, 3], masks.diffusion_draft(4, 4), "diffusion"),
        None,
        modes.Segment([5, 6, 7, 8], masks.commit(4), "diffusion"),
        modes.Segment([5, 3, 3], masks.diffusion_draft(3), "self_spec_linear"),
        modes.Segment([5, 6, 7], masks.linear_verify(3), "self_spec_linear"),
        modes.Segment([5, 6] + [3] * 6, masks.quadratic(1, 3), "self_spec_quadratic"),
        modes.Segment([1, 2, 3], masks.prefill(3)),
    ]


@pytest.mark.parametrize("scope", drafter_rows.SCOPES)
def test_packed_gate_equals_the_padded_gate(scope):
    """The worker's packed gate (per-request bounds) = the engine's padded gate, row by row;
    never a committable row; vendor: the linear draft only."""
    from sglang_trimode.layout import ragged_offsets

    segs = _segments()
    real = [s for s in segs if s is not None]
    width = max(s.desc.length for s in real)
    padded = drafter_rows.padded_gate(real, scope, width)
    lens = torch.tensor([0 if s is None else s.desc.length for s in segs])
    owner, offset = ragged_offsets(lens)
    packed = drafter_rows.packed_gate(segs, scope, owner, offset)
    want = torch.cat([padded[j, : s.desc.length] for j, s in enumerate(real)])
    assert torch.equal(packed, want)
    for j, s in enumerate(real):
        assert not padded[j, : s.desc.committable].any()
    gated = {s.mode for j, s in enumerate(real) if padded[j].any()}
    assert (
        gated
        == {
            "self_spec": {"self_spec_linear", "self_spec_quadratic"},
            "vendor": {"self_spec_linear"},
            "all": {"diffusion", "self_spec_linear", "self_spec_quadratic"},
        }[scope]
    )
    with pytest.raises(ValueError, match="expected one of self_spec, vendor, all"):
        drafter_rows.check_scope("draft")


def test_our_saved_adapter_is_the_vendor_layout_peft_loads(tmp_path):
    """`DrafterLoRA.save` (training, export) writes `linear_spec_lora/` that PEFT loads as the
    vendor's, and both apply the same LoRA."""
    path = make_tiny_checkpoint(tmp_path / "ckpt", seed=6)
    engine = TriModeEngine.from_pretrained(path)
    lora = DrafterLoRA.for_model(engine.model, DrafterConfig(4, 16.0))
    with torch.no_grad():
        lora.lora_B.normal_(generator=torch.Generator().manual_seed(0))
    assert lora.save(path) == path / VENDOR_DIR
    pm = PeftModel.from_pretrained(engine.model, str(path), subfolder=VENDOR_DIR)
    ids = torch.tensor([[5, 6, 7, 8, 9]])
    pos, mask = torch.arange(5)[None], engine.model.causal_mask(5)
    with torch.no_grad():
        theirs = pm(ids, pos, mask)
        pm.unload()  # PEFT's layers out again: our hooks on the plain model
        mine = lora.attach(engine.model)
        with mine.rows(torch.ones(1, 5, dtype=torch.bool)):
            ours = engine.model(ids, pos, mask)
    torch.testing.assert_close(ours, theirs, rtol=1e-5, atol=1e-5)
