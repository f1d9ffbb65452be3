"""Mask scheduler: budgets, no starvation, and the auto policy's choices."""

import random

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from sglang_trimode.scheduler.cost import CostModel
from sglang_trimode.scheduler.policy import AR, AutoPolicy, Choice, RequestView
from sglang_trimode.scheduler.step import Budget, Scheduler

COST = CostModel.roofline(8e9, 2, 3.35e12, 4e14, 139264)


@settings(max_examples=40, deadline=None)
@given(
    st.lists(st.floats(0.0, 0.99), min_size=1, max_size=40),
    st.integers(1, 64),
)
def test_budget_holds_and_every_admitted_request_gets_a_choice(alphas, budget):
    reqs = [
        RequestView(i, 512, accepted=int(a * 50), rejections=int((1 - a) * 50) + 1)
        for i, a in enumerate(alphas)
    ]
    running = reqs[:budget]  # the step admits at most one request per token of the budget
    choices = AutoPolicy(COST, max_tokens_per_forward=budget).choose(running)
    assert len(choices) == len(running) == min(len(reqs), budget)
    assert sum(c.tokens for c in choices) <= budget
    assert all(c.tokens >= 1 and c.expected_tokens(r.alpha) >= 1 for c, r in zip(choices, running))


def test_auto_is_never_worse_than_a_fixed_lossless_choice():
    for n in (1, 4, 32, 256):
        reqs = [RequestView(i, 1024, accepted=8 * (i % 5), rejections=5) for i in range(n)]
        auto = AutoPolicy(COST)
        score = auto.objective(reqs, auto.choose(reqs))
        for c in auto.candidates:
            assert score >= auto.objective(reqs, [c] * len(reqs)) * (1 - 1e-9)


def test_auto_drafts_long_when_alone_and_falls_back_to_ar_under_load():
    auto = AutoPolicy(COST, max_tokens_per_forward=8192)
    good = RequestView(0, 1024, accepted=90, rejections=10)
    (alone,) = auto.choose([good])
    assert alone.mode != "ar" and alone.block >= 8
    crowd = [RequestView(i, 1024, accepted=1, rejections=20) for i in range(256)]
    assert set(auto.choose(crowd)) == {AR}


def test_cost_model_fit_and_round_trip(tmp_path):
    true = CostModel(0.01, 0.002, 1e-6)
    samples = [(t, c, true.time(t, c)) for t in (1, 8, 64, 256) for c in (0, 1000, 5000)]
    fit = CostModel.fit(samples)
    assert abs(fit.fixed_s - 0.01) < 1e-9 and abs(fit.per_token_s - 0.002) < 1e-9
    fit.save(tmp_path / "cost.json")
    assert CostModel.load(tmp_path / "cost.json") == fit
    assert Choice("self_spec_quadratic", 8).tokens == 72
    assert Choice("self_spec_linear", 8).expected_tokens(1.0) == 4.0


# ---- the step planner, driven by a simulated executor ---------------------------------------

CHOICES = [AR] + [Choice("self_spec_quadratic", b) for b in (2, 3, 5)]
CHOICES += [Choice("self_spec_linear", b) for b in (2, 4, 8)]


class RandomPolicy:
    """Any choice at all, at random (the planner must keep budgets whatever the policy says)."""

    def __init__(self, rng):
        self.rng = rng

    def choose(self, reqs, budget=None, base=None):
        return [self.rng.choice(CHOICES) for _ in reqs]


class Sim:
    """Plain-data requests, prefilled: tokens to generate; a linear step is a draft forward then
    a verify forward; a verify accepts a random prefix of the drafts."""

    def __init__(self, prompts, new_tokens, rng):
        self.views = [RequestView(i, p) for i, p in enumerate(prompts)]
        self.left = list(new_tokens)
        self.rng = rng

    def progress(self, v):
        return (-self.left[v.rid], v.locked is not None)

    def apply(self, e):
        v = self.views[e.rid]
        if e.choice.mode == "self_spec_linear" and v.locked is None:
            v.locked = e.choice  # the draft forward: the verify must follow
            return
        v.locked = None
        emitted = 1 if e.choice == AR else self.rng.randint(1, e.choice.block)
        self.left[e.rid] -= emitted
        v.context += emitted


@settings(max_examples=30, deadline=None)
@given(
    prompts=st.lists(st.integers(1, 40), min_size=1, max_size=12),
    max_new=st.integers(1, 12),
    max_running=st.integers(1, 8),
    max_tokens=st.integers(8, 48),
    use_auto=st.booleans(),
    seed=st.integers(0, 2**16),
)
def test_plan_budgets_progress_packing_and_no_starvation(
    prompts, max_new, max_running, max_tokens, use_auto, seed
):
    rng = random.Random(seed)
    sim = Sim(prompts, [max_new] * len(prompts), rng)
    policy = AutoPolicy(COST) if use_auto else RandomPolicy(rng)
    budget = Budget(max_running, max_tokens)
    sched = Scheduler(policy, budget)
    last_run = {}
    for step in range(2000):
        live = [v for v in sim.views if sim.left[v.rid] > 0]
        if not live:
            break
        plan = sched.plan(live)
        rids = [e.rid for e in plan.entries]
        assert plan.entries and len(set(rids)) == len(rids)
        # budgets: running slots, tokens per forward
        assert sum(v.running for v in live) <= max_running
        assert all(sim.views[i].running for i in rids)
        assert plan.tokens <= max_tokens
        # queued requests get slots in arrival order
        assert all(q > r for q in plan.queued for r in rids)
        # every scheduled request advances
        for e in plan.entries:
            v = sim.views[e.rid]
            before = sim.progress(v)
            sim.apply(e)
            assert sim.progress(v) > before, (e, before)
            if e.choice.mode == "self_spec_quadratic":
                assert e.tokens == e.choice.block * (e.choice.block + 1)
        # a running request waits at most (running requests - 1) steps in a row
        for v in live:
            if v.running:
                if v.rid in rids or v.rid not in last_run:
                    last_run[v.rid] = step
                assert step - last_run[v.rid] < max_running, (v.rid, step, last_run[v.rid])
    assert all(left <= 0 for left in sim.left), "some request never finished"


def test_auto_drafts_shorter_for_a_request_whose_drafts_keep_failing():
    auto = AutoPolicy(CostModel(0.01, 1e-5))
    good = RequestView(0, 512)
    bad = RequestView(1, 512)
    for _ in range(20):
        good.observe(7, 7)
        bad.observe(7, 0)
    g, b = auto.choose([good, bad])
    assert g.block > b.block or (b == AR and g != AR)


def test_plan_rejects_a_fixed_mode_over_the_token_budget():
    v = RequestView(0, 0, fixed=Choice("diffusion", 32))
    with pytest.raises(ValueError, match="max_tokens_per_forward=16"):
        Scheduler(AutoPolicy(COST), Budget(4, 16)).plan([v])


def test_calibrate_writes_the_cost_file_that_scheduler_sim_reads(tmp_path):
    import json
    import sys
    from pathlib import Path

    from sglang_trimode.reference.tiny import make_tiny_checkpoint

    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    from bench.calibrate import main as calibrate_main
    from bench.scheduler_sim import main as sim_main

    model = make_tiny_checkpoint(tmp_path / "m", seed=0)
    cal = calibrate_main(
        ["--out", str(tmp_path / "cal"), "--model", str(model), "--batches", "1,2"]
        + ["--tokens", "1,8", "--contexts", "8,32", "--repeats", "1"]
        + ["--acceptance-prompts", "2", "--acceptance-block", "4"]
    )
    assert len(cal["rows"]) == 8 and all(r["seconds"] > 0 for r in cal["rows"])
    cost = CostModel.load(tmp_path / "cal" / "cost.json")
    assert cost.source.startswith("measured: m on cpu") and cost.time(8, 64) > 0
    assert 0.0 <= cal["acceptance"]["alpha"] <= 1.0
    res = sim_main(
        ["--out", str(tmp_path / "sim"), "--cost", str(tmp_path / "cal" / "cost.json")]
        + ["--acceptance", str(tmp_path / "cal" / "acceptance.json")]
        + ["--max-concurrency", "4", "--steps", "20", "--max-tokens", "512"]
    )
    saved = json.loads((tmp_path / "sim" / "scheduler_sim.json").read_text())
    assert saved["cost_model"]["source"] == cost.source
    rows = saved["rows"]
    assert {r["concurrency"] for r in rows} == {1, 2, 4}
    assert {"ar", "auto"} <= {r["mode"] for r in rows}
    assert all(isinstance(r["tokens_per_s"], float) and r["tokens_per_s"] > 0 for r in rows)
    assert set(res["verdict"]) >= {"goal_within_5pct", "goal_better_somewhere"}


def test_budget_without_limits_admits_every_request_and_refuses_a_zero_limit():
    views = [RequestView(i, 10, fixed=Choice("self_spec_linear", 8)) for i in range(40)]
    plan = Scheduler(AutoPolicy(COST), Budget()).plan(views)
    assert [e.rid for e in plan.entries] == list(range(40)) and not plan.waiting
    assert plan.tokens == 40 * 8 and not plan.queued
    with pytest.raises(ValueError, match="Budget.max_tokens_per_forward must be >= 1 or None"):
        Budget(max_tokens_per_forward=0)
