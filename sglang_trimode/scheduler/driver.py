"""The block loop's side of the scheduler: per step, which requests run and under which policy.

:class:`ModeDriver` keeps one :class:`RequestView` per request, asks a :class:`Scheduler` for the
step's plan and maps each entry's :class:`Choice` to a mode policy of :mod:`sglang_trimode.modes`
(one policy object per mode and block size). A request changes policy only at a switch point of
its current one (``switchable``); until then its choice is ``locked``. Requests with a fixed mode
keep it; ``"auto"`` ones are the policy's. After each forward :meth:`observe` feeds the acceptance
history back (drafts offered, drafts accepted).

The reference engine builds one driver per ``generate`` call (requests ``0..n-1``); a server whose
requests come and go :meth:`add` s and :meth:`remove` s them (``keep_trace=False`` there: the
trace would grow without end).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace

from sglang_trimode.modes import ARPolicy, ModeConfig, RequestState, Segment, get_policy
from sglang_trimode.scheduler.policy import AR, Choice, RequestView
from sglang_trimode.scheduler.step import Budget, Policy, Scheduler


@dataclass(frozen=True)
class TraceRow:
    """One request's part in one forward, as it ran."""

    step: int
    rid: int
    choice: Choice
    tokens: int  # the segment's query tokens
    progress_before: tuple[int, bool, int]
    progress_after: tuple[int, bool, int]


class ModeDriver:
    def __init__(
        self,
        modes: Sequence[str],
        mode_cfg: ModeConfig,
        policy: Policy | None = None,
        budget: Budget | None = None,
        keep_trace: bool = True,
    ) -> None:
        if policy is None and "auto" in modes:
            raise ValueError('mode "auto" needs a scheduling policy (e.g. AutoPolicy)')
        self.mode_cfg = mode_cfg
        self.scheduler = Scheduler(policy or _NoPolicy(), budget or Budget())
        self.views: dict[int, RequestView] = {}
        self.choice: dict[int, Choice | None] = {}
        self._policies: dict[Choice, ARPolicy] = {}
        self.trace: list[TraceRow] = []
        self.keep_trace = keep_trace
        self._step = 0
        self._next = 0
        self._before: dict[int, tuple[int, bool, int]] = {}
        for m in modes:
            self.add(m)

    def add(self, mode: str) -> int:
        """A new request (``mode``: a fixed mode or ``"auto"``) -> its index (its ``rid``)."""
        i, self._next = self._next, self._next + 1
        fixed = None if mode == "auto" else self._fixed(mode)
        self.views[i] = RequestView(i, 0, running=True, fixed=fixed)
        self.choice[i] = fixed
        return i

    def remove(self, i: int) -> None:
        """Forget request ``i`` (finished or gone)."""
        self.views.pop(i, None)
        self.choice.pop(i, None)
        self._before.pop(i, None)

    def _fixed(self, mode: str) -> Choice:
        return AR if mode == "ar" else Choice(mode, self.mode_cfg.block_size)

    def policy(self, choice: Choice) -> ARPolicy:
        if choice not in self._policies:
            cfg = replace(self.mode_cfg, block_size=choice.block)
            self._policies[choice] = get_policy(choice.mode, cfg)
        return self._policies[choice]

    def plan(
        self, reqs: Sequence[RequestState] | Mapping[int, RequestState], active: Sequence[int]
    ) -> dict[int, ARPolicy]:
        """The rows of the next forward: request index -> policy for each admitted request, in
        index order (``reqs[i]``: request ``i``'s state; ``core.ModePlanner``)."""
        for i in active:
            v, r, c = self.views[i], reqs[i], self.choice[i]
            v.context = len(r.prompt) + len(r.out) - 1  # committed KV: all but the seed
            v.locked = c if c is not None and not self.policy(c).switchable(r) else None
        plan = self.scheduler.plan([self.views[i] for i in active])
        rows = {}
        for e in plan.entries:
            old, r = self.choice[e.rid], reqs[e.rid]
            if old != e.choice:
                self.policy(e.choice).take_over(r, self.policy(old or AR))
                self.choice[e.rid] = e.choice
            self._before[e.rid] = r.progress
            rows[e.rid] = self.policy(e.choice)
        return rows

    def observe(self, i: int, seg: Segment, r: RequestState, accepted_before: int) -> None:
        """After request ``i``'s forward: record the trace and any verify's acceptance."""
        c = self.choice[i]
        if self.keep_trace:
            row = TraceRow(self._step, i, c, seg.desc.length, self._before[i], r.progress)
            self.trace.append(row)
        if len(r.stats.accept_lengths) > accepted_before and c.mode.startswith("self_spec"):
            drafts = seg.desc.num_causal - 1 if seg.desc.num_causal else seg.desc.length - 1
            if drafts:
                self.views[i].observe(drafts, r.stats.accept_lengths[-1] - 1)

    def end_step(self) -> None:
        self._step += 1


class _NoPolicy:
    def choose(self, reqs, budget=None, base=None):  # noqa: ANN001, ANN201
        if reqs:
            raise ValueError('only requests with mode "auto" need a policy')
        return []
