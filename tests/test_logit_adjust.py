"""`logit_bias` and `min_new_tokens` (`rows.adjust`): the batched device pass equals its row-by-row
twin on every kind of segment, and in the reference engine greedy self-speculation (and `auto`)
under them equals greedy AR under them, through full logits (the twin) and through the worker's
row summaries (the batched pass); diffusion honours them; bad values are clear errors."""

from types import SimpleNamespace

import pytest
import torch

from sglang_trimode import TriModeEngine, masks
from sglang_trimode.reference.tiny import make_tiny_model
from sglang_trimode.rows.adjust import (
    LogitAdjust,
    adjust_logits,
    adjust_rows_slow,
    decided_offsets,
)
from sglang_trimode.rows.deferred import eager_row_index
from sglang_trimode.scheduler.cost import CostModel
from sglang_trimode.scheduler.policy import AutoPolicy

V, N = 128, 24  # the tiny model's vocabulary; new tokens per request
MODES = ["self_spec_linear", "self_spec_quadratic", "auto"]


def test_decided_offsets_of_every_segment_kind():
    assert decided_offsets(masks.decode()).tolist() == [1]
    assert decided_offsets(masks.linear_verify(3)).tolist() == [1, 2, 3]  # causal: the next
    assert decided_offsets(masks.diffusion_draft(4)).tolist() == [0, 1, 2, 3]  # its own
    # quadratic, 1 draft, groups of 2: causal rows, then the groups of acceptance 0 and 1
    assert decided_offsets(masks.quadratic(1, 2)).tolist() == [1, 2, 1, 2, 2, 3]


def _segs_and_states():
    descs = [
        masks.decode(),
        masks.diffusion_draft(4),
        None,  # rides along
        masks.commit(3),
        masks.linear_verify(4),
        masks.quadratic(2, 3, variants=2, guessed=1),
        masks.decode(),
    ]
    adjusts = [
        LogitAdjust.make({5: 2.0, "7": -1.5}, 3, {1, 2}),
        LogitAdjust.make(None, 9, {2}),
        LogitAdjust.make({3: 1.0}, 0, {2}),
        LogitAdjust.make({"07": 0.5, 7: 4.0}, 12, {2, 9}),  # "07" and 7: the last wins
        None,
        LogitAdjust.make({11: -3.0}, 6, {4, V + 5}),  # a stop id past the vocabulary
        LogitAdjust.make(None, 0, {2}),  # neither: None
    ]
    assert adjusts[6] is None and adjusts[3].bias == ((7, 4.0),)
    segs = [None if d is None else SimpleNamespace(desc=d) for d in descs]
    states = [SimpleNamespace(prompt=[0] * (3 + i), adjust=a) for i, a in enumerate(adjusts)]
    prefix = [3 + i + k for i, k in enumerate([0, 4, 1, 9, 2, 5, 0])]
    return segs, states, prefix


def _slow(logits, segs, states, prefix):
    out, at = [], 0
    for seg, st, p in zip(segs, states, prefix):
        if seg is None:
            continue
        n = seg.desc.length
        decided = (p - len(st.prompt)) + decided_offsets(seg.desc)
        out.append(adjust_rows_slow(logits[at : at + n], st.adjust, decided.tolist()))
        at += n
    return torch.cat(out)


def check_batched(full, want, segs, states, prefix) -> None:
    """`adjust_logits` on the full packed rows, and in the worker's quadratic layout (eager
    rows in the forward, the rest through the head, in any order), equals the twin's `want`."""
    got, head = adjust_logits(full, None, states, segs, prefix)
    assert head is None and torch.equal(got, want)
    eager = eager_row_index([None if s is None else s.desc for s in segs])
    got, head = adjust_logits(full[eager], lambda idx: full[idx], states, segs, prefix)
    assert torch.equal(got, want[eager])
    rest = torch.tensor([i for i in range(full.shape[0]) if i not in set(eager.tolist())])
    assert torch.equal(head(rest), want[rest])
    assert torch.equal(head(rest.flip(0)), want[rest.flip(0)])


def test_batched_adjust_equals_the_row_by_row_twin():
    segs, states, prefix = _segs_and_states()
    total = sum(s.desc.length for s in segs if s is not None)
    full = torch.randn(total, V, generator=torch.Generator().manual_seed(0))
    want = _slow(full, segs, states, prefix)
    assert not torch.equal(want, full) and torch.isinf(want).any()  # the case changes rows
    check_batched(full, want, segs, states, prefix)
    # nothing to adjust: the same objects back
    plain = [SimpleNamespace(prompt=s.prompt, adjust=None) for s in states]
    assert adjust_logits(full, None, plain, segs, prefix)[0] is full


@pytest.fixture(scope="module")
def engine():
    return TriModeEngine(
        make_tiny_model(seed=0), cost=CostModel(fixed_s=1e-2, per_token_s=1e-4, source="test")
    )


@pytest.fixture(scope="module")
def prompts():
    g = torch.Generator().manual_seed(1)
    return [torch.randint(4, V, (n,), generator=g).tolist() for n in (5, 9, 13)]


def _auto(engine, mode: str) -> dict:
    return {"auto_policy": AutoPolicy(engine.cost)} if mode == "auto" else {}


def _gen(engine, prompts, mode, **kw):
    kw = {"max_new_tokens": N, "block_size": 4, "stop_token_ids": []} | kw | _auto(engine, mode)
    return [o.token_ids for o in engine.generate(prompts, mode=mode, **kw)]


@pytest.mark.parametrize("summary", [False, True], ids=["full_rows", "row_summary"])
@pytest.mark.parametrize("mode", MODES)
def test_greedy_self_spec_under_logit_bias_equals_ar(engine, prompts, mode, summary):
    bias = {7: 2.5, 12: 1.5, 30: -2.0}
    ar = _gen(engine, prompts, "ar", logit_bias=bias)
    assert ar != _gen(engine, prompts, "ar")  # the bias changes AR's greedy output
    got = _gen(engine, prompts, mode, logit_bias=bias, row_summary=summary)
    assert got == ar
    if mode == "self_spec_quadratic":  # bonus-candidate groups read through the head too
        kw = {"bonus_candidates": 2, "bonus_lengths": 1, "row_summary": summary}
        assert _gen(engine, prompts, mode, logit_bias=bias, **kw) == ar


@pytest.mark.parametrize("summary", [False, True], ids=["full_rows", "row_summary"])
@pytest.mark.parametrize("mode", MODES)
def test_greedy_self_spec_under_min_new_tokens_equals_ar(engine, prompts, mode, summary):
    free = _gen(engine, prompts, "ar")
    stop = free[0][2]  # request 0 would stop at its third token
    ar = _gen(engine, prompts, "ar", stop_token_ids=[stop], min_new_tokens=10)
    assert len(_gen(engine, prompts, "ar", stop_token_ids=[stop])[0]) == 3
    assert all(len(t) >= 10 and stop not in t[:10] for t in ar)
    assert ar[0] != free[0]
    kw = {"stop_token_ids": [stop], "min_new_tokens": 10, "row_summary": summary}
    assert _gen(engine, prompts, mode, **kw) == ar

    # X everywhere until the stop token may come, then the stop token: every draft is accepted,
    # so verify steps straddle position 10; a verify row that did not count the drafts before it
    # as accepted would still mask the stop token there (mutation-checked)
    x = 9 if stop != 9 else 10
    both = kw | {"logit_bias": {x: 50.0, stop: 60.0}, "max_new_tokens": 16, "block_size": 6}
    ar = _gen(engine, prompts, "ar", **both)
    assert ar == [[x] * 10 + [stop]] * len(prompts)
    outs = engine.generate(prompts, mode=mode, **both, **_auto(engine, mode))
    assert [o.token_ids for o in outs] == ar
    assert all(max(o.stats.accept_lengths) > 1 for o in outs)


@pytest.mark.parametrize("summary", [False, True], ids=["full_rows", "row_summary"])
def test_diffusion_honours_logit_bias_and_min_new_tokens(engine, prompts, summary):
    strong = _gen(engine, prompts, "diffusion", logit_bias={9: 50.0}, row_summary=summary)
    assert all(t == [9] * N for t in strong)
    free = _gen(engine, prompts, "diffusion")
    stop = free[0][1]
    kw = {"stop_token_ids": [stop], "row_summary": summary}
    assert len(_gen(engine, prompts, "diffusion", **kw)[0]) == 2
    held = _gen(engine, prompts, "diffusion", min_new_tokens=11, **kw)
    assert all(len(t) >= 11 and stop not in t[:11] for t in held)


def test_sampled_requests_apply_them_on_every_path(engine, prompts):
    """Temperature > 0: the biased token dominates and the stop token stays out until the
    minimum, through the full-logits path and the batched one, in every mode."""
    for mode in ("ar", "diffusion", "self_spec_linear", "self_spec_quadratic"):
        for summary in (False, True):
            kw = {"temperature": 0.8, "row_summary": summary, "stop_token_ids": [9]}
            out = _gen(engine, prompts, mode, logit_bias={9: 50.0}, min_new_tokens=7, **kw)
            assert all(len(t) == 8 and 9 not in t[:7] and t[7] == 9 for t in out), (mode, out)


@pytest.mark.parametrize(
    ("kw", "msg"),
    [
        ({"logit_bias": {V: 1.0}}, r"logit_bias: key 128 is not a token id .*\(0..127\)"),
        ({"logit_bias": {"5": 1.0}}, r"logit_bias: key '5' is not a token id"),
        ({"logit_bias": {5: float("nan")}}, r"logit_bias\[5\] must be a finite number"),
        ({"logit_bias": [(5, 1.0)]}, r"logit_bias must be a dict token id -> bias"),
        ({"min_new_tokens": N + 1}, r"min_new_tokens must be an int in \[0, max_new_tokens=24\]"),
        ({"min_new_tokens": -1}, r"min_new_tokens must be an int in \[0, max_new_tokens=24\]"),
    ],
)
def test_bad_values_are_clear_errors(engine, prompts, kw, msg):
    with pytest.raises(ValueError, match=msg):
        _gen(engine, prompts, "ar", **kw)
