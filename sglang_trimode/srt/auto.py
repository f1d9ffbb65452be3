"""Mode `auto` in the TRIMODE worker: the scheduler's auto policy through its `ModeDriver`.

`AutoModes` holds one `scheduler.driver.ModeDriver` for the server's `auto` requests (added when
they join a decode batch, removed when they finish or leave). Before every sub-forward of a
decode step the worker asks it for each `auto` request's mode policy: the scheduler's
`AutoPolicy` picks mode and draft length from the requests in the forward (the load), their
acceptance history and the cost model; a request changes mode only at a switch point of its
current one (a linear draft is followed by its verify; diffusion is never chosen). Candidates
are the served lossless modes whose block fits a step's tokens per request (`verify_width`).

Cost model: `--trimode-cost-file` (a `bench/calibrate.py` calibration file), else the worker's
own timed forwards (`scheduler.calibrate.OnlineCalibration`; AR until they span three shapes).

`--trimode-auto-token-budget N`: the auto requests together take at most N query tokens per
forward (the scheduler's `Budget.max_tokens_per_forward`, as the reference engine's
`max_tokens_per_forward`); under it the policy drafts less as more requests share a forward, and
a request that does not fit rides along for that forward.

When an `auto` request finishes or leaves, one INFO line logs its modes, run-length encoded:
`TRIMODE auto rid=R switches=S: ar x3 > self_spec_quadratic/3 x2 > ...`.
"""

from __future__ import annotations

import collections
import logging
from collections.abc import Mapping, Sequence

from sglang_trimode.modes import ARPolicy, ModeConfig, RequestState, Segment
from sglang_trimode.scheduler.calibrate import OnlineCalibration
from sglang_trimode.scheduler.cost import CostModel
from sglang_trimode.scheduler.driver import ModeDriver
from sglang_trimode.scheduler.policy import (
    AR,
    LOSSLESS_MODES,
    AutoPolicy,
    Choice,
    RequestView,
    default_candidates,
    fit_budget,
)
from sglang_trimode.scheduler.step import Budget
from sglang_trimode.srt.flags import TriModeSettings

logger = logging.getLogger(__name__)


class _MeasuredAuto:
    """`AutoPolicy` on the current cost model (AR for all while there is none yet)."""

    def __init__(self, owner: AutoModes) -> None:
        self.owner = owner

    def choose(
        self,
        reqs: Sequence[RequestView],
        budget: int | None = None,
        base: tuple[float, int, int] = (0.0, 0, 0),
    ) -> list[Choice]:
        cost = self.owner.cost()
        if cost is None:
            return fit_budget([AR] * len(reqs), budget)
        policy = AutoPolicy(cost, candidates=self.owner.candidates)
        return policy.choose(reqs, budget=budget, base=base)


class AutoModes:
    def __init__(self, settings: TriModeSettings, mode_cfg: ModeConfig, width: int) -> None:
        self.fixed_cost = CostModel.load(settings.cost_file) if settings.cost_file else None
        self.calibration = None if self.fixed_cost else OnlineCalibration()
        served = [m for m in settings.serve_modes if m in LOSSLESS_MODES]
        # a choice of block b emits (and keeps the KV of) at most b tokens per step
        self.candidates = [c for c in default_candidates(None, served) if c.block <= width]
        # SGLang's scheduler admits requests and prefills them; blocks fit the width
        budget = Budget(max_tokens_per_forward=settings.auto_token_budget or None)
        self.driver = ModeDriver([], mode_cfg, _MeasuredAuto(self), budget, keep_trace=False)
        self._runs: dict[int, list[list]] = {}  # index -> [[label, forwards], ...]
        #: since start, all requests: forwards per choice label (`ar`, `self_spec_linear/4`, ...)
        #: and mid-request switches (the worker's `internal_state`)
        self.forwards: collections.Counter[str] = collections.Counter()
        self.switches = 0
        logger.info(
            "TRIMODE auto: candidates %s; cost model %s; token budget per forward %s",
            ",".join(_label(c) for c in self.candidates),
            settings.cost_file or "measured online from the worker's forwards",
            settings.auto_token_budget or "none",
        )

    def cost(self) -> CostModel | None:
        return self.fixed_cost or self.calibration.model()

    def timed(self, tokens: int, context: int, seconds: float) -> None:
        """One timed forward of the worker (``tokens`` computed, ``context`` cached)."""
        if self.calibration is not None:
            self.calibration.add(tokens, context, seconds)

    def add(self) -> int:
        i = self.driver.add("auto")
        self._runs[i] = []
        return i

    def remove(self, i: int, rid: object) -> None:
        """Forget request ``i``; log its modes (once)."""
        runs = self._runs.pop(i, None)
        self.driver.remove(i)
        if runs:
            text = " > ".join(f"{label} x{n}" for label, n in runs)
            logger.info("TRIMODE auto rid=%s switches=%d: %s", rid, len(runs) - 1, text)

    def plan(
        self, states: Mapping[int, RequestState], active: Sequence[int]
    ) -> dict[int, ARPolicy]:
        """The policy of each admitted ``auto`` request for the next forward (by index)."""
        rows = self.driver.plan(states, active)
        for i in rows:
            label, runs = _label(self.driver.choice[i]), self._runs[i]
            self.forwards[label] += 1
            if runs and runs[-1][0] == label:
                runs[-1][1] += 1
            else:
                self.switches += bool(runs)
                runs.append([label, 1])
        return rows

    def observe(self, i: int, seg: Segment, r: RequestState, accepted_before: int) -> None:
        self.driver.observe(i, seg, r, accepted_before)

    def end_step(self) -> None:
        self.driver.end_step()

    def internal_state(self) -> dict:
        """Forwards per choice and switches since start, and where the cost model comes from."""
        return {
            "forwards": dict(self.forwards),
            "switches": self.switches,
            "cost_model": "file" if self.fixed_cost else "online",
        }


def _label(c: Choice) -> str:
    return "ar" if c == AR else f"{c.mode}/{c.block}"
