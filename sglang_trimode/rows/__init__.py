"""What the policies read from a forward's logits rows when the rows stay on the device.

The reference engine hands each request its own ``[n, V]`` logits rows (sampled on the CPU with
the request's generator). A server must not move ``V`` floats per row to the CPU, so the SGLang
worker (and the reference engine with ``row_summary=True``) hands each request one of:

- :class:`GreedyRows` (temperature 0): each row's argmax and its softmax probability;
- :class:`SampledRows` (temperature > 0): the rows processed on the device in one batch for all
  sampled requests (per-row temperature, top-k, top-p, min-p), one draw per row by inverse CDF from
  a uniform of the request's own generator (so a request's tokens depend on its seed, not on the
  batch it shares), the draw's processed and raw probabilities, and the processed probability of
  the segment's next token (the ``p_j(d_j)`` of the acceptance ratio); the device rows stay
  referenced for the rare reads that need a whole row (the residual draw after a rejection,
  logprobs).

:func:`request_rows` builds both from one packed ``[T, V]`` logits tensor. The functions of
:mod:`sglang_trimode.sampling` take these in place of logits tensors. No sglang import here.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch

from sglang_trimode.masks import MaskKind
from sglang_trimode.rows.deferred import DeferredGroups, eager_row_index, eager_rows
from sglang_trimode.rows.greedy import GreedyRows
from sglang_trimode.rows.sampled import SampledRows, inverse_cdf, processed_probs

__all__ = [
    "DeferredGroups",
    "GreedyRows",
    "Rows",
    "SampledRows",
    "eager_row_index",
    "eager_rows",
    "inverse_cdf",
    "processed_probs",
    "request_rows",
]


#: What the policies read for one request: a logits tensor, or one of the summaries.
Rows = torch.Tensor | GreedyRows | SampledRows | DeferredGroups


def _rows_of(logits: torch.Tensor, starts: list[int], picked: list[int]) -> torch.Tensor:
    """The rows of requests ``picked`` (ascending; request ``i`` owns rows ``starts[i]`` to
    ``starts[i + 1]``); ``logits`` itself, not a copy, when they are all its rows."""
    if sum(starts[i + 1] - starts[i] for i in picked) == logits.shape[0]:
        return logits
    rows = torch.cat([torch.arange(starts[i], starts[i + 1]) for i in picked])
    return logits[rows.to(logits.device)]


def request_rows(
    logits: torch.Tensor,
    states: Sequence,
    segs: Sequence,
    head: Callable[[torch.Tensor], torch.Tensor] | None = None,
) -> list[Rows | None]:
    """Packed device logits ``[T, V]`` (each running request's segment rows one after another)
    -> what each request's policy reads: ``GreedyRows`` for greedy requests, ``SampledRows`` for
    sampled ones (one batched pass each, uniforms from each request's generator), None for a
    request without a segment (``segs[i]`` None). ``states[i]`` is a ``modes.RequestState``.

    ``head``: the forward computed logits for each segment's ``deferred.eager_rows`` only (a
    quadratic step's causal rows) and ``head(idx)`` gives the logits of rows ``idx`` of the full
    packed layout; a quadratic request then reads ``DeferredGroups`` whose mask groups are
    computed when read. Same values as from the full logits."""
    lens = [0 if s is None else s.desc.length for s in segs]
    rows_of = lens if head is None else [0 if s is None else eager_rows(s.desc) for s in segs]
    if sum(rows_of) != logits.shape[0]:
        raise RuntimeError(f"TRIMODE: {logits.shape[0]} logits rows for {sum(rows_of)} tokens")
    greedy = [n > 0 and r.params.greedy for r, n in zip(states, lens, strict=True)]
    sampled = [n > 0 and not g for n, g in zip(lens, greedy)]
    starts = torch.tensor([0, *rows_of]).cumsum(0).tolist()
    out: list[Rows | None] = [None] * len(lens)
    if any(greedy):
        top_k = max((r.top_logprobs_num for r, g in zip(states, greedy) if g), default=0)
        chosen = sorted({i for r, g in zip(states, greedy) if g for i in r.chosen_ids})
        picked = [i for i, g in enumerate(greedy) if g]
        # the argmax's probability is read by diffusion confidences (a diffusion request's
        # draft forward: a bidirectional block while its `block` is open) and logprobs only
        prob = any(
            states[i].logprobs is not None
            or (not segs[i].desc.is_causal and getattr(states[i], "block", None) is not None)
            for i in picked
        )
        rows = _rows_of(logits, starts, picked)
        summary = GreedyRows.from_logits(rows, top_k, chosen, with_prob=prob)
        at = 0
        for i in picked:
            out[i] = summary[at : at + rows_of[i]]
            at += rows_of[i]
    nxt, uni = {}, {}
    for i in (i for i, s in enumerate(sampled) if s):
        nxt[i] = torch.tensor([*segs[i].tokens[1:], -1], dtype=torch.long)
        uni[i] = torch.rand(lens[i], generator=states[i].generator)
    # a quadratic step reads its causal rows and ONE of its mask groups (the one after the
    # accepted drafts): its rows are processed when read; every other kind of segment is read
    # whole, so those are processed in one batch
    lazy = [i for i in nxt if segs[i].desc.kind == MaskKind.QUADRATIC]
    for i in lazy:
        rows_i = logits[starts[i] : starts[i + 1]]
        out[i] = SampledRows.lazy(
            rows_i, states[i].params, nxt[i][: rows_of[i]], uni[i][: rows_of[i]]
        )
    eager = [i for i in nxt if i not in lazy]
    if eager:
        views = SampledRows.batch(
            _rows_of(logits, starts, eager), [states[i].params for i in eager],
            [lens[i] for i in eager], torch.cat([nxt[i] for i in eager]),
            torch.cat([uni[i] for i in eager]),
        )  # fmt: skip
        for i, v in zip(eager, views, strict=True):
            out[i] = v
    if head is not None:  # quadratic steps: mask groups from the head when read
        full = torch.tensor([0, *lens]).cumsum(0).tolist()  # starts in the full packed layout
        ready = _greedy_groups(head, segs, states, out, full)
        for i, seg in enumerate(segs):
            if seg is not None and seg.desc.kind == MaskKind.QUADRATIC:
                make = _group_maker(head, seg.desc, full[i], states[i], nxt.get(i), uni.get(i))
                out[i] = DeferredGroups(seg.desc, out[i], make, ready.get(i))
    return out


def _greedy_groups(head, segs, states, causal, full: list[int]) -> dict[int, dict[int, Rows]]:
    """The mask group each greedy quadratic request will read, for all of them through ONE head
    call: greedy acceptance reads only the causal rows' argmax (`sampling.accept_greedy`), so
    the accepted length `a`, the bonus `top[a]` and the group (the one whose first slot guessed
    the bonus, else the all-mask one; `QuadraticSpecPolicy.consume`) are known before the policy
    runs. A prediction only: a policy asking for another group gets it computed when read."""
    from sglang_trimode.sampling import accept_greedy  # sampling imports this package

    picks: list[tuple[int, int, int]] = []  # (request, group, top_k)
    for i, seg in enumerate(segs):
        if seg is None or seg.desc.kind != MaskKind.QUADRATIC or not states[i].params.greedy:
            continue
        desc = seg.desc
        drafts = torch.tensor(seg.tokens[1 : desc.num_causal], dtype=torch.long)
        a, bonus = accept_greedy(drafts, causal[i])
        guesses = states[i].cands[a][: desc.variants_of(a) - 1] if a < len(states[i].cands) else []
        variant = 1 + guesses.index(bonus) if bonus in guesses else 0
        picks.append((i, desc.group_index(a, variant), desc.variants if desc.variants > 1 else 0))
    ready: dict[int, dict[int, Rows]] = {}
    for top_k in sorted({k for _, _, k in picks}):
        batch = [(i, g) for i, g, k in picks if k == top_k]
        idx = [
            torch.arange(
                full[i] + segs[i].desc.group(g).start, full[i] + segs[i].desc.group(g).stop
            )
            for i, g in batch
        ]
        rows = GreedyRows.from_logits(head(torch.cat(idx)), top_k, with_prob=False)
        at = 0
        for (i, g), ix in zip(batch, idx, strict=True):
            ready[i] = {g: rows[at : at + ix.numel()]}
            at += ix.numel()
    return ready


def _group_maker(head, desc, start: int, state, nxt, uni) -> Callable[[int], Rows]:
    """Mask group ``g`` of the quadratic step at packed rows ``start ..``: its logits from the
    head, summarised as the request reads them (greedy: argmax; sampled: its rows' uniforms)."""

    def make(g: int) -> Rows:
        sl = desc.group(g)
        logits = head(torch.arange(start + sl.start, start + sl.stop))
        if state.params.greedy:  # with bonus candidates, each row's best V ids come along
            top_k = desc.variants if desc.variants > 1 else 0
            return GreedyRows.from_logits(logits, top_k, with_prob=False)  # drafts: argmax only
        return SampledRows.lazy(logits, state.params, nxt[sl], uni[sl])

    return make
