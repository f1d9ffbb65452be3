"""`LoadSchedule`: a load override for the scheduler tests (test-only, so it lives here)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from sglang_trimode.scheduler.policy import Choice, RequestView
from sglang_trimode.scheduler.step import Policy


@dataclass
class LoadSchedule:
    """``policy`` under a token budget that follows a load schedule (``budgets[step % n]``; 0:
    no cap), as when other requests come and go: a load override for tests and simulations."""

    policy: Policy
    budgets: Sequence[int]
    step: int = 0

    def choose(
        self,
        reqs: Sequence[RequestView],
        budget: int | None = None,
        base: tuple[float, int, int] = (0.0, 0, 0),
    ) -> list[Choice]:
        cap = self.budgets[self.step % len(self.budgets)]
        self.step += 1
        if cap:
            budget = cap if budget is None else min(cap, budget)
        return self.policy.choose(reqs, budget=budget, base=base)
