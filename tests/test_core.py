"""`core`, the block loop's step both engines drive: `run_forward` (forward counts, what each
policy consumed, what the step keeps, the scheduler hook, requests that sit out), the planning of
a forward's segments, fill-in, and `run_cycles` (one server step)."""

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


class _Planner:
    """A mode scheduler that gives each admitted request ``policies[i]`` and holds back those
    without one; records what it was asked and told."""

    def __init__(self, policies: dict[int, modes.ARPolicy]) -> None:
        self.policies = policies
        self.asked: list[list[int]] = []
        self.observed: list[int] = []
        self.steps = 0

    def plan(self, states, active):
        self.asked.append(list(active))
        return {i: self.policies[i] for i in active if i in self.policies}

    def observe(self, i, seg, r, accepted_before):
        self.observed.append(i)

    def end_step(self):
        self.steps += 1


def _every_row(token: int):
    """A forward whose every row's argmax is ``token``: drafts all ``token``, verifies accept
    them."""

    def forward(segs, prefix):
        return [None if s is None else _peaked([token] * s.desc.length) for s in segs]

    return forward


def test_plan_segments_takes_the_planners_policy_and_holds_back_the_rest():
    cfg = _cfg()
    ar, linear = modes.get_policy("ar", cfg), modes.get_policy("self_spec_linear", cfg)
    planner = _Planner({0: linear})  # admits request 0 (planned index 0), holds back index 1
    reqs = [
        core.Running(_state(5), ar, planned=0),
        core.Running(_state(6), ar, planned=1),
        core.Running(_state(7), ar),  # a fixed mode: never asked about
        core.Running(_state(8), ar),
    ]
    segs = core.plan_segments(reqs, [True, True, True, False], planner)
    assert planner.asked == [[0, 1]]
    assert reqs[0].policy is linear and reqs[1].policy is ar
    assert [None if s is None else s.desc for s in segs] == [
        masks.diffusion_draft(BLOCK),
        None,
        masks.decode(),
        None,
    ]


@pytest.mark.parametrize("fill_in", [0, BLOCK])
def test_run_cycles_runs_every_cycle_once_and_fills_in_one_forward_cycles(fill_in):
    """A step of an AR and a linear request: the linear cycle takes two forwards (draft, verify);
    the AR request runs in the second too only with fill-in."""
    cfg = _cfg()
    ar, linear = modes.get_policy("ar", cfg), modes.get_policy("self_spec_linear", cfg)
    reqs = [core.Running(_state(5), ar), core.Running(_state(6), linear)]
    new, prefix = core.run_cycles(reqs, [3, 3], _every_row(7), fill_in_width=fill_in)
    ar_tokens = 2 if fill_in else 1
    assert new == [[7] * ar_tokens, [7] * BLOCK]  # the linear verify: 3 drafts + the bonus
    assert prefix == [3 + ar_tokens, 3 + BLOCK]  # AR keeps its seed; the verify seed + drafts
    assert [e.state.stats.forwards for e in reqs] == [ar_tokens, 2]


def test_run_cycles_plans_auto_requests_before_every_forward():
    cfg = _cfg()
    ar, linear = modes.get_policy("ar", cfg), modes.get_policy("self_spec_linear", cfg)
    planner = _Planner({4: linear})
    reqs = [core.Running(_state(5), ar, planned=4), core.Running(_state(6), ar)]
    new, _ = core.run_cycles(reqs, [3, 3], _every_row(7), planner, fill_in_width=BLOCK)
    assert planner.asked == [[4], [4]]  # mid-cycle after the draft: asked again, kept linear
    assert planner.steps == 2 and planner.observed == [4, 4]  # the planned request's forwards
    # the AR request (fixed mode) filled in the verify forward; the planned one never fills in
    assert new == [[7] * BLOCK, [7, 7]]


def test_fills_in_only_fixed_one_forward_cycles_that_fit():
    cfg = _cfg()
    ar, linear = modes.get_policy("ar", cfg), modes.get_policy("self_spec_linear", cfg)
    assert core.fills_in(core.Running(_state(5), ar), emitted=3, width=4)
    assert not core.fills_in(core.Running(_state(5), ar), emitted=4, width=4)  # would pass it
    assert not core.fills_in(core.Running(_state(5), ar), emitted=1, width=0)  # off
    assert not core.fills_in(core.Running(_state(5), linear), emitted=1, width=4)  # 2 forwards
    assert not core.fills_in(core.Running(_state(5), ar, planned=0), emitted=1, width=4)
