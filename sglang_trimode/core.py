"""The block loop's step, written once for the reference engine and the SGLang worker.

A step plans each request's segment for the next forward (its mode's policy; for a request whose
mode the mode scheduler picks, ``auto``, the scheduler's policy of this forward, or none when the
scheduler holds it back), runs the forward through the driver's injected ``forward(segs, prefix)
-> rows`` and hands each request's rows to its policy: count the forward, ``consume``, check what
the step keeps (``kept_prefix``), report the acceptance to the mode scheduler (``observe``). The
driver commits what was kept (``cache.commit`` in the engine, the request's committed prefix and
KV slots in the worker) and brings the forward: transformers' over a dense KV cache in the engine,
SGLang's over the paged pool in the worker.

- :func:`one_forward`: one forward of every running request (the reference engine's step);
- :func:`run_cycles`: forwards until every request has completed one cycle of its mode (one
  SGLang decode step of the worker), with fill-in: a request whose cycles take one forward runs
  more of them in the forwards the others' longer cycles still take;
- :func:`read_rows`: the device-side read of a forward's packed logits that the worker (and the
  engine with ``row_summary=True``) hands the policies: logit adjustments, grammar masks, then
  one batched summary per request (``rows.request_rows``).

No sglang import here.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Protocol

import torch

from sglang_trimode.modes import ARPolicy, RequestState, Segment, kept_prefix
from sglang_trimode.rows import Rows, request_rows
from sglang_trimode.rows.adjust import Head, adjust_logits
from sglang_trimode.rows.grammar import grammar_logits

#: ``forward(segs, prefix) -> rows``: ``rows[i]`` what request ``i``'s policy reads (None for a
#: request whose ``segs[i]`` is None); ``prefix[i]``: request ``i``'s committed tokens.
Forward = Callable[[Sequence[Segment | None], Sequence[int]], Sequence[Rows | None]]
#: ``observe(i, seg, state, accepted_before)``: after request ``i`` consumed its rows
#: (``accepted_before``: its ``stats.accept_lengths`` length before); the mode scheduler's hook.
Observe = Callable[[int, Segment, RequestState, int], None]


class ModePlanner(Protocol):
    """The mode scheduler as the step sees it (``scheduler.driver.ModeDriver``, or the worker's
    ``srt.auto.AutoModes`` around one); requests are its indices (``Running.planned``)."""

    def plan(
        self, states: Mapping[int, RequestState], active: Sequence[int]
    ) -> Mapping[int, ARPolicy]:
        """The policy of each ``active`` request it admits to the next forward."""
        ...

    def observe(self, i: int, seg: Segment, r: RequestState, accepted_before: int) -> None: ...

    def end_step(self) -> None:
        """After each forward."""
        ...


@dataclass
class Running:
    """One request in the block loop: its state, its current mode's policy and, when the mode
    scheduler picks its policy (``auto`` in the worker; every request in the reference engine,
    whose budget admits fixed modes too), its index there."""

    state: RequestState
    policy: ARPolicy
    planned: int | None = None


def run_forward(
    states: Sequence[RequestState],
    policies: Sequence[ARPolicy],
    segs: Sequence[Segment | None],
    prefix: Sequence[int],
    forward: Forward,
    observe: Observe | None = None,
) -> list[int]:
    """One forward of ``segs`` and every running request's step -> the leading tokens of each
    segment whose KV the step keeps (0 for a request that sat out)."""
    rows = forward(segs, prefix)
    kept = [0] * len(segs)
    for i, seg in enumerate(segs):
        if seg is None:
            continue
        r = states[i]
        r.stats.forwards += 1
        accepted_before = len(r.stats.accept_lengths)
        kept[i] = kept_prefix(seg, policies[i].consume(r, seg, rows[i]))
        if observe is not None:
            observe(i, seg, r, accepted_before)
    return kept


def read_rows(
    logits: torch.Tensor,
    head: Head | None,
    states: Sequence[RequestState],
    segs: Sequence[Segment | None],
    prefix: Sequence[int],
    mask_id: int,
) -> list[Rows | None]:
    """A forward's packed logits ``[T, V]`` (each segment's eager rows when ``head`` reads the
    rest; ``rows.eager_row_index``) -> what each request's policy reads: ``state.adjust``
    (``rows.adjust``) and ``state.grammar`` (``rows.grammar``) applied, then
    ``rows.request_rows`` (``GreedyRows`` / ``SampledRows`` / ``DeferredGroups`` per request)."""
    logits, head = adjust_logits(logits, head, states, segs, prefix)
    logits, head = grammar_logits(logits, head, states, segs, prefix, mask_id)
    return request_rows(logits, states, segs, head)


def plan_segments(
    reqs: Sequence[Running], runs: Sequence[bool], planner: ModePlanner | None = None
) -> list[Segment | None]:
    """The next forward's segment of each request (None: it sits the forward out): those with
    ``runs[i]``, a planned request under the policy the planner gives it (updating
    ``reqs[i].policy``; none when the planner holds it back)."""
    runs = list(runs)
    active = [e.planned for e, run in zip(reqs, runs) if run and e.planned is not None]
    if active:
        states = {e.planned: e.state for e in reqs if e.planned is not None}
        rows = planner.plan(states, active)
        for i, e in enumerate(reqs):
            if e.planned is not None and runs[i]:
                runs[i] = e.planned in rows
                e.policy = rows.get(e.planned, e.policy)
    return [e.policy.segment(e.state) if run else None for e, run in zip(reqs, runs)]


def one_forward(
    reqs: Sequence[Running],
    runs: Sequence[bool],
    prefix: Sequence[int],
    forward: Forward,
    planner: ModePlanner | None = None,
) -> tuple[list[Segment | None], list[int]]:
    """Plan, run and consume one forward of the requests with ``runs[i]`` -> each request's
    segment (None: it sat out) and the leading tokens of it whose KV the step keeps."""
    segs = plan_segments(reqs, runs, planner)

    def observe(i: int, seg: Segment, r: RequestState, accepted_before: int) -> None:
        if reqs[i].planned is not None:
            planner.observe(reqs[i].planned, seg, r, accepted_before)

    states = [e.state for e in reqs]
    policies = [e.policy for e in reqs]
    kept = run_forward(states, policies, segs, prefix, forward, observe)
    if planner is not None:
        planner.end_step()
    return segs, kept


def fills_in(e: Running, emitted: int, width: int) -> bool:
    """Whether a request whose cycle of this step is complete, having emitted ``emitted`` tokens
    in it, runs one more cycle in the step's next forward (fill-in; ``width`` 0: off): only a
    request of a fixed mode whose cycles take one forward (AR, quadratic), so the step does not
    get longer, and only while the cycle's tokens fit: at most ``width`` emitted per step (in the
    server, the KV it keeps, at most what it emits, then stays in the slots SGLang reserves past
    the committed prefix each step)."""
    if width <= 0 or e.planned is not None or e.state.done:
        return False
    most = e.policy.one_forward_tokens()
    return 0 < most and emitted + most <= width


def run_cycles(
    reqs: Sequence[Running],
    prefix: Sequence[int],
    forward: Forward,
    planner: ModePlanner | None = None,
    fill_in_width: int = 0,
) -> tuple[list[list[int]], list[int]]:
    """One step of a server: forwards until every request has completed a cycle of its mode
    (emitted a token and reached a switch point, or finished); a request whose cycle is complete
    sits out the rest (or fills in, :func:`fills_in`). -> each request's tokens emitted in the
    step and its committed prefix after it (``prefix`` plus the tokens kept)."""
    prefix = list(prefix)
    emitted_from = [len(e.state.out) for e in reqs]
    done = [False] * len(reqs)
    while not all(done):
        runs = [
            not d or fills_in(e, len(e.state.out) - emitted_from[i], fill_in_width)
            for i, (e, d) in enumerate(zip(reqs, done, strict=True))
        ]
        segs, kept = one_forward(reqs, runs, prefix, forward, planner)
        for i, (e, seg) in enumerate(zip(reqs, segs, strict=True)):
            if seg is None:
                continue
            r = e.state
            prefix[i] += kept[i]
            if r.done or (len(r.out) > emitted_from[i] and e.policy.switchable(r)):
                done[i] = True
    return [e.state.out[emitted_from[i] :] for i, e in enumerate(reqs)], prefix
