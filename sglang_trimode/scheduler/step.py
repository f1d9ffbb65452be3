"""One scheduler step: which running requests share the next forward, and what each does.

Plain Python over :class:`RequestView` (no sglang, no torch tensors). The requests are prefilled
(the reference engine prefills before its block loop, SGLang's scheduler before the worker's
decode steps). Per step, under a :class:`Budget`:

1. Running slots: requests keep their slot until they finish; free slots go to queued requests in
   arrival order (``max_running``).
2. Admission: every running request needs at least one query token (an AR step) or, fixed or
   mid-cycle, its choice's tokens. Requests are admitted longest-waiting first (then by id) while
   the token budget holds; a skipped request's wait counter grows, so it is first within a few
   steps (no starvation). The longest-waiting request always fits alone.
3. Choices: fixed and locked requests keep theirs; the policy chooses for the others within the
   tokens left (:class:`~sglang_trimode.scheduler.policy.AutoPolicy` maximises expected tokens
   per second under the cost model).

The result lists one :class:`Entry` (a mask descriptor over a prefix) per admitted request.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol

from sglang_trimode import masks
from sglang_trimode.scheduler.policy import Choice, RequestView, fit_budget


class Policy(Protocol):
    def choose(
        self,
        reqs: Sequence[RequestView],
        budget: int | None = None,
        base: tuple[float, int, int] = (0.0, 0, 0),
    ) -> list[Choice]: ...


@dataclass(frozen=True)
class Budget:
    """Limits of one forward; None: no limit (a server whose own scheduler admits requests sets
    no ``max_running``)."""

    max_running: int | None = None
    max_tokens_per_forward: int | None = None

    def __post_init__(self) -> None:
        for name in ("max_running", "max_tokens_per_forward"):
            value = getattr(self, name)
            if value is not None and value < 1:
                raise ValueError(f"Budget.{name} must be >= 1 or None (no limit), got {value}")

    @property
    def running(self) -> float:
        return math.inf if self.max_running is None else self.max_running

    @property
    def tokens(self) -> float:
        return math.inf if self.max_tokens_per_forward is None else self.max_tokens_per_forward


@dataclass(frozen=True)
class Entry:
    """One request's part of the forward."""

    rid: int
    choice: Choice
    desc: masks.MaskDescriptor
    prefix: int

    @property
    def tokens(self) -> int:
        return self.desc.length


@dataclass(frozen=True)
class StepPlan:
    entries: list[Entry]
    waiting: list[int]  # running requests not admitted this step
    queued: list[int]  # requests without a running slot

    @property
    def tokens(self) -> int:
        return sum(e.tokens for e in self.entries)


def _need(r: RequestView) -> int:
    """Least query tokens the request can take part in a forward with."""
    pinned = r.locked or r.fixed
    return pinned.tokens if pinned is not None else 1


class Scheduler:
    def __init__(self, policy: Policy, budget: Budget | None = None) -> None:
        self.policy = policy
        self.budget = budget or Budget()

    def plan(self, reqs: Sequence[RequestView]) -> StepPlan:
        """Plan one forward over the unfinished requests ``reqs`` (views are updated in place:
        ``running`` and ``waited``). The caller applies the step and updates ``context``,
        ``locked`` and the acceptance counts."""
        b = self.budget
        for r in reqs:
            if _need(r) > b.tokens:
                raise ValueError(
                    f"request {r.rid} needs {_need(r)} tokens per forward, over "
                    f"max_tokens_per_forward={b.max_tokens_per_forward}"
                )
        slots = b.running - sum(r.running for r in reqs)
        for r in sorted((r for r in reqs if not r.running), key=lambda r: r.rid):
            if slots <= 0:
                break
            r.running, slots = True, slots - 1
        running = [r for r in reqs if r.running]
        queued = sorted(r.rid for r in reqs if not r.running)

        admitted, waiting, used = [], [], 0
        for r in sorted(running, key=lambda r: (-r.waited, r.rid)):
            need = _need(r)
            if used + need <= b.tokens:
                admitted.append(r)
                used += need
                r.waited = 0
            else:
                waiting.append(r.rid)
                r.waited += 1

        entries: dict[int, Entry] = {}
        left = b.tokens - used  # tokens beyond the reserved minimum
        pinned = [r for r in admitted if r.locked or r.fixed]
        free = [r for r in admitted if not (r.locked or r.fixed)]
        gain = 0.0
        for r in pinned:
            c = r.locked or r.fixed
            gain += c.expected_tokens(r.alpha)
            entries[r.rid] = Entry(r.rid, c, c.descriptor(verify=r.locked is not None), r.context)
        base = (gain, used - len(free), sum(r.context for r in pinned))
        budget = None if left == math.inf else len(free) + int(left)
        choices = self.policy.choose(free, budget=budget, base=base)
        for r, c in zip(free, fit_budget(choices, budget)):
            entries[r.rid] = Entry(r.rid, c, c.descriptor(), r.context)
        order = sorted(entries)
        return StepPlan([entries[i] for i in order], sorted(waiting), queued)
