"""`core.run_forward`, the one forward of the block loop both engines drive: forward counts,
what each policy consumed, what the step keeps, the scheduler hook, and requests that sit out."""

from __future__ import annotations

import pytest
import torch

from sglang_trimode import core, masks, modes
from sglang_trimode.sampling import SamplingParams, get_accept_rule

V = 13
MASK = V - 1
BLOCK = 4


def _state(seed: int) -> modes.RequestState:
    return modes.RequestState(
        prompt=[1, 2, 3],
        params=SamplingParams(),
        max_new_tokens=32,
        stop_token_ids=frozenset(),
        generator=torch.Generator().manual_seed(seed),
        seed=seed,
    )


def _peaked(ids: list[int]) -> torch.Tensor:
    """Logits rows whose argmax is ``ids`` (one row per id)."""
    rows = torch.zeros(len(ids), V)
    rows[torch.arange(len(ids)), torch.tensor(ids)] = 10.0
    return rows


def _cfg() -> modes.ModeConfig:
    return modes.ModeConfig(MASK, BLOCK, accept_rule=get_accept_rule("lossless"))


def test_run_forward_steps_running_requests_only():
    cfg = _cfg()
    ar, linear = modes.get_policy("ar", cfg), modes.get_policy("self_spec_linear", cfg)
    states = [_state(5), _state(6), _state(7)]
    policies = [ar, ar, linear]
    segs = [ar.segment(states[0]), None, linear.segment(states[2])]
    seen = []

    def forward(segs_in, prefix_in):
        seen.append(([s is None for s in segs_in], list(prefix_in)))
        return [_peaked([8]), None, _peaked([9, 10, 11, 4])]

    observed = []
    kept = core.run_forward(
        states, policies, segs, [3, 3, 3], forward, lambda *a: observed.append(a)
    )
    assert seen == [([False, True, False], [3, 3, 3])]
    # AR keeps its one causal token; a linear draft forward keeps nothing (bidirectional KV)
    assert kept == [1, 0, 0]
    assert [s.stats.forwards for s in states] == [1, 0, 1]
    assert states[0].out == [8] and states[1].out == [] and states[2].out == []
    assert states[2].drafts == [10, 11, 4]  # the draft rows' argmax after the seed's row
    assert [(i, seg is segs[i], r is states[i], before) for i, seg, r, before in observed] == [
        (0, True, True, 0),
        (2, True, True, 0),
    ]


def test_run_forward_verify_reports_acceptance_before_the_step():
    cfg = _cfg()
    linear = modes.get_policy("self_spec_linear", cfg)
    r = _state(5)
    core.run_forward([r], [linear], [linear.segment(r)], [3], lambda s, p: [_peaked([1, 7, 8, 9])])
    verify = linear.segment(r)
    assert verify.tokens == [5, 7, 8, 9] and verify.desc == masks.linear_verify(BLOCK)
    observed = []
    # the AR rows agree with drafts 7 and 8, not 9: two accepted, the bonus is the third row's
    kept = core.run_forward(
        [r], [linear], [verify], [3], lambda s, p: [_peaked([7, 8, 2, 0])],
        lambda *a: observed.append(a[3]),
    )  # fmt: skip
    assert r.out == [7, 8, 2]
    assert kept == [3]  # the seed and the two accepted drafts; the bonus is the next seed
    assert observed == [0] and r.stats.accept_lengths == [3]
    assert r.stats.forwards == 2


class _KeepsTooMuch(modes.ARPolicy):
    """A broken policy: claims to keep more tokens than its segment may commit."""

    def consume(self, r, seg, logits):
        super().consume(r, seg, logits)
        return seg.desc.length + 1


def test_run_forward_refuses_a_step_that_keeps_too_much():
    policy = _KeepsTooMuch(_cfg())
    r = _state(5)
    with pytest.raises(RuntimeError, match="only a prefix of at most 1"):
        core.run_forward([r], [policy], [policy.segment(r)], [3], lambda s, p: [_peaked([2])])
