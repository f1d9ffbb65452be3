"""The TRIMODE worker's `auto` side without sglang: online cost fit, candidates, cost source."""

from dataclasses import replace

import pytest

from sglang_trimode.modes import ModeConfig, RequestState
from sglang_trimode.sampling import SamplingParams
from sglang_trimode.scheduler.calibrate import OnlineCalibration
from sglang_trimode.scheduler.cost import CostModel
from sglang_trimode.scheduler.policy import AR, Choice, RequestView
from sglang_trimode.srt import flags
from sglang_trimode.srt.auto import AutoModes, _MeasuredAuto

CFG = ModeConfig(mask_token_id=0, block_size=4)


def test_online_calibration_fits_after_three_shapes():
    cal = OnlineCalibration(refit=2)
    for tokens in (4, 4, 8):
        cal.add(tokens, 100, 0.01 + 1e-3 * tokens + 1e-5 * 100)
    assert cal.model() is None  # two shapes only
    cal.add(20, 300, 0.01 + 1e-3 * 20 + 1e-5 * 300)
    cal.add(12, 50, 0.01 + 1e-3 * 12 + 1e-5 * 50)
    m = cal.model()
    assert m.source == "measured online"
    assert m.fixed_s == pytest.approx(0.01, rel=1e-6)
    assert m.per_token_s == pytest.approx(1e-3, rel=1e-6)


def test_auto_modes_candidates_and_cost_source(tmp_path):
    served = flags.resolve({"trimode_block_size": 4}, 32)
    # width = a step's tokens per request (2 B with fill-in): blocks up to it
    auto = AutoModes(served, CFG, width=flags.verify_width(served))
    assert flags.verify_width(served) == 8
    assert auto.candidates == [AR] + [Choice("self_spec_quadratic", b) for b in (2, 3, 4, 6, 8)] + [
        Choice("self_spec_linear", b) for b in (4, 8)
    ]
    assert auto.cost() is None  # no file: measured online, nothing timed yet
    views = [RequestView(i, 10, accepted=30) for i in range(3)]  # drafts accepted
    assert _MeasuredAuto(auto).choose(views) == [AR] * 3
    cost = tmp_path / "cost.json"
    CostModel(0.01, 1e-4, source="file").save(cost)
    linear_only = flags.resolve(
        {"trimode_serve_modes": ("ar", "self_spec_linear", "auto"), "trimode_cost_file": cost}, 4
    )
    auto = AutoModes(linear_only, CFG, width=4)
    assert auto.candidates == [AR, Choice("self_spec_linear", 4)]
    assert auto.cost().source == "file"
    assert _MeasuredAuto(auto).choose(views) == [Choice("self_spec_linear", 4)] * 3


def _auto(budget: int | None, n: int) -> tuple[AutoModes, dict]:
    """`AutoModes` with `n` fresh auto requests whose drafts were accepted (linear served, a
    fixed cost model that makes drafting pay) under `--trimode-auto-token-budget budget`, and
    their states by index."""
    cost = CostModel(0.01, 1e-4, source="file")
    settings = replace(
        flags.resolve({"trimode_serve_modes": ("ar", "self_spec_linear", "auto")}, 4),
        auto_token_budget=budget,
    )
    auto = AutoModes(settings, CFG, width=4)
    auto.fixed_cost = cost
    states = {}
    for _ in range(n):
        i = auto.add()
        auto.driver.views[i].accepted = 30
        states[i] = RequestState(
            prompt=[1] * 10, params=SamplingParams(), max_new_tokens=16,
            stop_token_ids=frozenset(), generator=None, out=[5], seed=5,
        )  # fmt: skip
    return auto, states


def _planned(budget: int | None, n: int) -> list[str]:
    """The policies planned for `_auto(budget, n)`'s requests: one name per request, "-" for a
    request held back (it rides along)."""
    auto, states = _auto(budget, n)
    rows = auto.plan(states, list(states))
    return [rows[i].name if i in rows else "-" for i in states]


def test_auto_counts_forwards_per_choice_and_switches():
    """The worker's `internal_state` of auto: forwards per choice label since start and the
    requests' mode switches (a request planned AR while three share the budget, linear alone)."""
    auto, states = _auto(6, 3)
    first = auto.plan(states, list(states))
    assert [first[i].name for i in states] == ["self_spec_linear", "ar", "ar"]
    alone = list(states)[1]
    second = auto.plan({alone: states[alone]}, [alone])
    assert second[alone].name == "self_spec_linear"
    assert auto.internal_state() == {
        "forwards": {"self_spec_linear/4": 2, "ar": 2},
        "switches": 1,
        "cost_model": "file",
    }


def test_auto_token_budget_caps_the_tokens_of_a_forward():
    linear = "self_spec_linear"  # a draft forward of 4 tokens
    assert _planned(None, 3) == [linear] * 3
    assert _planned(3, 3) == ["ar"] * 3  # 3 tokens for 3 requests: AR only
    assert _planned(6, 3) == [linear, "ar", "ar"]  # 4 + 1 + 1
    assert _planned(2, 3) == ["ar", "ar", "-"]  # the third waits for the next forward
