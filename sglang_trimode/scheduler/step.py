"""One scheduler step: which requests run, what each does, packed into ONE forward.

Plain Python over :class:`RequestView` (no sglang, no torch tensors).
Per step, under a :class:`Budget`:

1. Running slots: requests keep their slot until they finish; free slots go to queued requests in
   arrival order (``max_running``).
2. Admission: every running request needs at least one query token (a prefill chunk of 1, an AR
   decode) or, fixed or mid-cycle, its choice's tokens. Requests are admitted longest-waiting
   first (then by id) while the token budget holds; a skipped request's wait counter grows, so it
   is first within a few steps (no starvation). The longest-waiting request always fits alone.
3. Chunked prefill: admitted prefills share at most ``chunked_prefill_size`` tokens, oldest first,
   each at least one token.
4. Decode choices: fixed and locked requests keep theirs; the policy chooses for the others within
   the tokens left (:class:`~sglang_trimode.scheduler.policy.AutoPolicy` maximises expected
   tokens per second under the cost model).

The result lists one :class:`Entry` (a mask descriptor over a prefix) per admitted request.
"""

from __future__ import annotations

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
    max_running: int = 256
    max_tokens_per_forward: int = 8192
    chunked_prefill_size: int = 8192

    def __post_init__(self) -> None:
        for name in ("max_running", "max_tokens_per_forward", "chunked_prefill_size"):
            if getattr(self, name) < 1:
                raise ValueError(f"Budget.{name} must be >= 1, got {getattr(self, name)}")


@dataclass(frozen=True)
class Entry:
    """One request's part of the forward: a prefill chunk (``choice`` None) or a decode step."""

    rid: int
    choice: Choice | None
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
    pinned = r.locked or (None if r.prefill_left else r.fixed)
    return pinned.tokens if pinned is not None else 1


class Scheduler:
    def __init__(self, policy: Policy, budget: Budget | None = None) -> None:
        self.policy = policy
        self.budget = budget or Budget()

    def plan(self, reqs: Sequence[RequestView]) -> StepPlan:
        """Plan one forward over the unfinished requests ``reqs`` (views are updated in place:
        ``running`` and ``waited``). The caller applies the step and updates ``context``,
        ``prefill_left``, ``locked`` and the acceptance counts."""
        b = self.budget
        for r in reqs:
            if _need(r) > b.max_tokens_per_forward:
                raise ValueError(
                    f"request {r.rid} needs {_need(r)} tokens per forward, over "
                    f"max_tokens_per_forward={b.max_tokens_per_forward}"
                )
        slots = b.max_running - sum(r.running for r in reqs)
        for r in sorted((r for r in reqs if not r.running), key=lambda r: r.rid)[: max(0, slots)]:
            r.running = True
        running = [r for r in reqs if r.running]
        queued = sorted(r.rid for r in reqs if not r.running)

        admitted, waiting, used, prefills = [], [], 0, 0
        for r in sorted(running, key=lambda r: (-r.waited, r.rid)):
            need, is_prefill = _need(r), r.prefill_left > 0
            fits = used + need <= b.max_tokens_per_forward
            if fits and (not is_prefill or prefills < b.chunked_prefill_size):
                admitted.append(r)
                used += need
                prefills += is_prefill
                r.waited = 0
            else:
                waiting.append(r.rid)
                r.waited += 1

        entries: dict[int, Entry] = {}
        left = b.max_tokens_per_forward - used  # tokens beyond the reserved minimum
        pool = min(b.chunked_prefill_size, prefills + left)
        pre = [r for r in admitted if r.prefill_left > 0]
        for n, r in enumerate(pre):
            chunk = max(1, min(r.prefill_left, pool - (len(pre) - n - 1)))
            pool -= chunk
            left -= chunk - 1
            entries[r.rid] = Entry(r.rid, None, masks.prefill(chunk), r.context)

        pinned = [r for r in admitted if r.prefill_left == 0 and (r.locked or r.fixed)]
        free = [r for r in admitted if r.prefill_left == 0 and not (r.locked or r.fixed)]
        gain = 0.0
        for r in pinned:
            c = r.locked or r.fixed
            gain += c.expected_tokens(r.alpha)
            entries[r.rid] = Entry(r.rid, c, c.descriptor(verify=r.locked is not None), r.context)
        fixed_ctx = sum(r.context for r in admitted if r.rid in entries)
        base = (gain, b.max_tokens_per_forward - len(free) - left, fixed_ctx)
        choices = self.policy.choose(free, budget=len(free) + left, base=base)
        for r, c in zip(free, fit_budget(choices, len(free) + left)):
            entries[r.rid] = Entry(r.rid, c, c.descriptor(), r.context)
        order = sorted(entries)
        return StepPlan([entries[i] for i in order], sorted(waiting), queued)
