"""Mask scheduler: packing (hypothesis), budgets, no starvation, and the auto policy's choices."""

import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from sglang_trimode import masks
from sglang_trimode.scheduler.cost import CostModel
from sglang_trimode.scheduler.pack import pack, packed_mask
from sglang_trimode.scheduler.policy import AR, AutoPolicy, Choice, FixedPolicy, RequestView, admit

descriptor = st.one_of(
    st.builds(masks.prefill, st.integers(1, 9)),
    st.builds(
        lambda b, n: masks.diffusion_draft(b, min(b, n)), st.integers(1, 9), st.integers(1, 9)
    ),
    st.builds(masks.quadratic, st.integers(0, 4), st.integers(1, 4)),
)


@settings(max_examples=60, deadline=None)
@given(st.lists(st.tuples(descriptor, st.integers(0, 12)), min_size=1, max_size=6))
def test_packed_mask_is_the_union_of_each_requests_mask(items):
    descs, prefixes = [d for d, _ in items], [p for _, p in items]
    got = packed_mask(pack(descs, prefixes))
    expected = torch.block_diag(*[masks.dense_mask(d, p) for d, p in items])
    assert torch.equal(got, expected)


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
    running = admit(reqs, budget)
    choices = AutoPolicy(COST, max_tokens_per_forward=budget).choose(running)
    assert len(choices) == len(running) == min(len(reqs), budget)
    assert sum(c.tokens for c in choices) <= budget
    assert all(c.tokens >= 1 and c.expected_tokens(r.alpha) >= 1 for c, r in zip(choices, running))


def test_no_request_starves_when_the_budget_is_short():
    reqs = [RequestView(i, 100) for i in range(10)]
    seen = set()
    for _ in range(4):
        seen.update(r.rid for r in admit(reqs, 3))
    assert seen == set(range(10))


def test_auto_is_never_worse_than_a_fixed_lossless_choice():
    for n in (1, 4, 32, 256):
        reqs = [RequestView(i, 1024, accepted=8 * (i % 5), rejections=5) for i in range(n)]
        auto = AutoPolicy(COST)
        score = auto.objective(reqs, auto.choose(reqs))
        for c in auto.candidates:
            assert score >= auto.objective(reqs, FixedPolicy(c).choose(reqs)) * (1 - 1e-9)


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
