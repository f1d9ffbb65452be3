"""Reference engine ``mode="auto"``: the scheduler picks each request's mode and draft length each
step, inside the one block loop. Greedy output must equal greedy AR whatever it picks."""

import random

import pytest
from _load_schedule import LoadSchedule
from hypothesis import given, settings
from hypothesis import strategies as st

from sglang_trimode import TriModeEngine, default_model_path
from sglang_trimode.reference.tiny import make_tiny_model
from sglang_trimode.scheduler.cost import CostModel
from sglang_trimode.scheduler.policy import AR, AutoPolicy, Choice
from tests.test_engine_greedy import ragged_prompts

Q6, Q2 = Choice("self_spec_quadratic", 6), Choice("self_spec_quadratic", 2)
CHOICES = [AR, Choice("self_spec_quadratic", 4), Choice("self_spec_linear", 4), Q6, Q2]
CHOICES += [Choice("self_spec_linear", 8)]


class CyclePolicy:
    """Forces mode changes: request ``rid`` takes ``CHOICES[(step + rid) % 6]`` at each step."""

    def __init__(self):
        self.step = 0

    def choose(self, reqs, budget=None, base=None):
        self.step += 1
        return [CHOICES[(self.step + r.rid) % len(CHOICES)] for r in reqs]


class RandomPolicy:
    def __init__(self, seed):
        self.rng = random.Random(seed)

    def choose(self, reqs, budget=None, base=None):
        return [self.rng.choice(CHOICES) for _ in reqs]


def check_trace(trace, max_tokens=None, every_request_changes=True):
    """Every scheduled request advanced; the budget held; modes changed mid-request."""
    steps = {}
    for row in trace:
        assert row.progress_after > row.progress_before, row
        steps.setdefault(row.step, []).append(row)
    if max_tokens is not None:
        assert max(sum(r.tokens for r in rows) for rows in steps.values()) <= max_tokens
    per_request = {}
    for row in trace:
        per_request.setdefault(row.rid, []).append(row)
    for rows in per_request.values():  # a linear draft is always followed by its verify
        for a, b in zip(rows, rows[1:]):
            if a.choice.mode == "self_spec_linear" and a.progress_after[1]:
                assert b.choice == a.choice, (a, b)
    choices = [[r.choice for r in rows] for rows in per_request.values()]
    changes = [sum(a != b for a, b in zip(cs, cs[1:])) for cs in choices]
    if every_request_changes:
        assert min(changes) >= 1, f"a request never changed mode: {changes}"
    return choices, changes


@pytest.fixture(scope="module")
def tiny():
    engine = TriModeEngine(make_tiny_model(seed=0))
    prompts = ragged_prompts(5, engine.config.vocab_size, engine.config.mask_token_id)
    ar = engine.generate(prompts, mode="ar", max_new_tokens=40, stop_token_ids=[])
    return engine, prompts, [o.token_ids for o in ar]


def test_tiny_forced_mode_changes_equal_ar(tiny):
    engine, prompts, ar = tiny
    outs = engine.generate(
        prompts, mode="auto", auto_policy=CyclePolicy(), max_new_tokens=40, stop_token_ids=[]
    )
    assert [o.token_ids for o in outs] == ar
    assert all(o.mode == "auto" and o.finish_reason == "length" for o in outs)
    choices, changes = check_trace(engine.last_trace)
    assert min(changes) >= 5
    # quadratic -> a smaller quadratic block keeps its pre-drafts, truncated: the path is taken
    assert any((Q6, Q2) in zip(cs, cs[1:]) for cs in choices)


def test_tiny_forced_mode_changes_sampled_run_to_length(tiny):
    engine, prompts, _ = tiny
    outs = engine.generate(
        prompts,
        mode="auto",
        auto_policy=CyclePolicy(),
        max_new_tokens=24,
        stop_token_ids=[],
        temperature=0.9,
        top_k=20,
    )
    assert all(len(o.token_ids) == 24 for o in outs)
    check_trace(engine.last_trace)


def test_tiny_auto_under_a_load_schedule_equals_ar(tiny):
    engine, prompts, ar = tiny
    auto = AutoPolicy(CostModel(fixed_s=0.01, per_token_s=1e-4, source="test"))
    policy = LoadSchedule(auto, [64, 64, 64, 5, 5, 5, 5])
    outs = engine.generate(
        prompts, mode="auto", auto_policy=policy, max_new_tokens=40, stop_token_ids=[]
    )
    assert [o.token_ids for o in outs] == ar
    _, changes = check_trace(engine.last_trace)
    modes = {row.choice.mode for row in engine.last_trace}
    assert {"ar", "self_spec_quadratic"} <= modes, modes


def test_tiny_auto_with_a_measured_cost_model_and_mixed_fixed_modes(tiny):
    engine, prompts, ar = tiny
    fresh = TriModeEngine(engine.model)
    modes = ["auto", "ar", "auto", "self_spec_linear", "self_spec_quadratic"]
    outs = fresh.generate(prompts, mode=modes, max_new_tokens=40, stop_token_ids=[])
    assert [o.token_ids for o in outs] == ar
    assert fresh.cost.source == "measured at start-up" and fresh.cost.time(64, 1000) > 0
    fixed = {r.choice for r in fresh.last_trace if r.rid == 3}
    assert fixed == {Choice("self_spec_linear", engine.config.block_size)}


@settings(max_examples=6, deadline=None)
@given(budget=st.integers(8, 40), seed=st.integers(0, 1000), n=st.integers(2, 5))
def test_tiny_random_choices_under_a_token_budget_equal_ar(tiny, budget, seed, n):
    engine, prompts, ar = tiny
    outs = engine.generate(
        prompts[:n],
        mode="auto",
        auto_policy=RandomPolicy(seed),
        max_new_tokens=16,
        stop_token_ids=[],
        max_tokens_per_forward=budget,
    )
    assert [o.token_ids for o in outs] == [a[:16] for a in ar[:n]]
    # a random policy may keep one request's mode for a whole run (hypothesis found [8, 6, 0])
    check_trace(engine.last_trace, max_tokens=budget, every_request_changes=False)


def test_default_model_auto_with_mode_changes_equals_ar():
    engine = TriModeEngine.from_pretrained(default_model_path())
    from sglang_trimode.models import load_tokenizer
    from sglang_trimode.training.corpus import heldout_prompts

    tok = load_tokenizer(default_model_path())
    prompts = [tok.encode(t) for t in heldout_prompts(4)]
    prompts = [p[: 20 + 9 * i] for i, p in enumerate(prompts)]  # ragged
    ar = engine.generate(prompts, mode="ar", max_new_tokens=48, stop_token_ids=[])
    for policy, budget in ((CyclePolicy(), 40), (None, None)):
        outs = engine.generate(
            prompts,
            mode="auto",
            auto_policy=policy,
            max_new_tokens=48,
            stop_token_ids=[],
            max_tokens_per_forward=budget,
        )
        assert [o.token_ids for o in outs] == [o.token_ids for o in ar]
        if policy is not None:
            check_trace(engine.last_trace, max_tokens=budget)
    # the measured-cost auto policy drafts on the trained model (its drafts are accepted)
    assert any(r.choice != AR for r in engine.last_trace)
    assert sum(o.stats.forwards for o in outs) < sum(o.stats.forwards for o in ar)


def _collapse(modes):
    return [m for k, m in enumerate(modes) if k == 0 or modes[k - 1] != m]


def test_step_modes_record_the_mode_of_every_step(tiny):
    """`RequestStats.step_modes`: one entry per `accept_lengths` entry, the mode that ran that
    step. Fixed modes: that mode throughout. Forced changes under auto: the per-request sequence
    of modes is the trace's (what ran each forward), an AR step emits one token."""
    engine, prompts, ar = tiny
    for mode in ("ar", "diffusion", "self_spec_linear", "self_spec_quadratic"):
        outs = engine.generate(prompts, mode=mode, max_new_tokens=20, stop_token_ids=[])
        for o in outs:
            assert o.stats.step_modes == [mode] * len(o.stats.accept_lengths) != [], mode
    outs = engine.generate(
        prompts, mode="auto", auto_policy=CyclePolicy(), max_new_tokens=40, stop_token_ids=[]
    )
    assert [o.token_ids for o in outs] == ar
    for i, o in enumerate(outs):
        modes, lengths = o.stats.step_modes, o.stats.accept_lengths
        assert len(modes) == len(lengths)
        assert all(n == 1 for m, n in zip(modes, lengths, strict=True) if m == "ar")
        ran = [row.choice.mode for row in engine.last_trace if row.rid == i]
        assert _collapse(modes) == _collapse(ran)
        assert len(_collapse(modes)) >= 4, modes  # the forced changes show
