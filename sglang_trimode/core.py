"""One forward of the block loop, written once for the reference engine and the SGLang worker.

Each driver plans the forward's segments (one per request, None for a request that sits this
forward out) and brings its own forward: the reference engine's is transformers' over a dense KV
cache, the worker's is SGLang's over the paged pool. :func:`run_forward` then does the part that
must be the same in both: count the forward, hand each request's rows to its mode policy
(``consume``), check what the step keeps (``kept_prefix``) and report the acceptance to the mode
scheduler (``observe``). The driver commits what was kept (``cache.commit`` in the engine, the
request's committed prefix in the worker).

:func:`read_rows` is the device-side read of a forward's packed logits that the worker (and the
engine with ``row_summary=True``) hands the policies: logit adjustments, grammar masks, then one
batched summary per request (``rows.request_rows``). No sglang import here.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

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
