"""`logit_bias`, `min_new_tokens` and the penalties on a forward's logits rows, before any read.

SGLang's AR sampler adds each request's ``logit_bias`` to its raw logits and, while the request
has produced fewer than ``min_new_tokens`` tokens, sets its stop tokens (EOS included, even with
``ignore_eos``) to ``-inf`` (``penaltylib.min_new_tokens``). Here every row of a segment gets the
same: the bias on every row (verify, draft and diffusion rows alike), the stop-token mask on the
rows that decide an output position before ``min_new_tokens``. The position a row decides comes
from its place in the segment, not from what was emitted, so a verify row at draft ``i`` sees the
output length as if drafts ``0..i-1`` were accepted and self-speculation stays lossless: a causal
row decides the position after its token, a bidirectional row (diffusion / linear draft, a
quadratic mask group) its own. Draft rows masked the same way only raise acceptance; the drafts
are still drawn from the rows the acceptance rule reads as ``q``. The penalties
(``frequency_penalty``, ``presence_penalty``, ``repetition_penalty``) come first, on the counts
of the output before the row's position (``rows.penalty``), then the bias, then the mask.

:func:`adjust_logits` does it for all requests of a forward at once on the device;
:func:`adjust_rows_slow` is its obviously-correct twin (one row, one token at a time), which the
reference engine's full-logits path uses. No sglang import here.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

import torch

from sglang_trimode.rows.deferred import eager_row_index
from sglang_trimode.rows.penalty import (
    PenaltyTable,
    decided_offsets,
    penalise_row_slow,
)

Head = Callable[[torch.Tensor], torch.Tensor]


@dataclass(frozen=True)
class LogitAdjust:
    """One request's ``bias`` (token id -> value added to its raw logits), ``min_new_tokens``
    with the ``stop_ids`` masked until then, and its penalties (``rows.penalty``: ``frequency``,
    ``presence``, ``repetition``; ``mask_id``, the mask token, is never counted on a row that
    decides its own position)."""

    bias: tuple[tuple[int, float], ...] = ()
    min_new_tokens: int = 0
    stop_ids: frozenset[int] = frozenset()
    frequency: float = 0.0
    presence: float = 0.0
    repetition: float = 1.0
    mask_id: int = -1

    @classmethod
    def make(
        cls,
        bias: Mapping | None,
        min_new_tokens: int,
        stop_ids,
        frequency: float = 0.0,
        presence: float = 0.0,
        repetition: float = 1.0,
        mask_id: int = -1,
    ) -> LogitAdjust | None:
        """The request's adjustment, or None when it changes nothing."""
        merged = {int(t): float(v) for t, v in (bias or {}).items()}  # "1" and "01": the last
        pairs = tuple(sorted(merged.items()))
        stops = frozenset(int(t) for t in stop_ids) if min_new_tokens > 0 else frozenset()
        pen = (float(frequency or 0.0), float(presence or 0.0), float(repetition or 1.0))
        if not pairs and not stops and pen == (0.0, 0.0, 1.0):
            return None
        return cls(pairs, int(min_new_tokens) if stops else 0, stops, *pen, int(mask_id))

    @property
    def penalised(self) -> bool:
        """Whether any penalty changes the logits."""
        return self.frequency != 0.0 or self.presence != 0.0 or self.repetition != 1.0


def first_index(state, prefix: int) -> int:
    """Output index of a segment's first token: it stands at position ``prefix`` (the request's
    committed tokens) after the prompt."""
    return prefix - len(state.prompt)


def adjust_rows_slow(
    logits: torch.Tensor,
    adjust: LogitAdjust | None,
    decided: Sequence[int],
    history: Sequence[Sequence[int]] | None = None,
) -> torch.Tensor:
    """The twin of :func:`adjust_logits` for one request's rows ``[n, V]`` deciding output
    positions ``decided``, ``history[j]`` the output tokens before row ``j``'s position
    (``penalty.row_histories_slow``; needed when ``adjust.penalised``): a copy, penalties,
    then the bias, then the stop-token mask, row by row (SGLang's order)."""
    out = logits.clone()
    if adjust is None:
        return out
    if adjust.penalised and history is None:
        raise ValueError("adjust_rows_slow: penalties need each row's history")
    for j, pos in enumerate(decided):
        if adjust.penalised:
            out[j] = penalise_row_slow(
                out[j].float(), history[j], adjust.frequency, adjust.presence, adjust.repetition
            ).to(out.dtype)
        for t, v in adjust.bias:
            out[j, t] += v
        if pos < adjust.min_new_tokens:
            for t in adjust.stop_ids:
                if 0 <= t < out.shape[-1]:
                    out[j, t] = -math.inf
    return out


class _Rows:
    """Per row of a forward's full packed layout: which adjusted request owns it (-1: none) and
    whether its stop tokens are masked; per adjusted request its bias and stop rows ``[A, V]``;
    the penalties' counts (``penalty.PenaltyTable``) when a request has penalties."""

    def __init__(self, adjusts, states, segs, first: Sequence[int], vocab: int, device) -> None:
        owner, masked, starts = [], [], []
        picked = [i for i, a in enumerate(adjusts) if a is not None and segs[i] is not None]
        slot = {i: k for k, i in enumerate(picked)}
        total = 0
        for i, seg in enumerate(segs):
            starts.append(total)
            if seg is None:
                continue
            n = seg.desc.length
            total += n
            owner.append(torch.full((n,), slot.get(i, -1), dtype=torch.long))
            if i in slot:
                masked.append(first[i] + decided_offsets(seg.desc) < adjusts[i].min_new_tokens)
            else:
                masked.append(torch.zeros(n, dtype=torch.bool))
        self.owner = torch.cat(owner) if owner else torch.zeros(0, dtype=torch.long)
        self.masked = torch.cat(masked) if masked else torch.zeros(0, dtype=torch.bool)
        bias = torch.zeros(len(picked), vocab)
        stops = torch.zeros(len(picked), vocab, dtype=torch.bool)
        for k, i in enumerate(picked):
            for t, v in adjusts[i].bias:
                bias[k, t] += v
            # a stop id past the vocabulary can never be sampled: nothing to mask
            stops[k, [t for t in adjusts[i].stop_ids if 0 <= t < vocab]] = True
        self.bias, self.stops = bias.to(device), stops.to(device)
        self.penalties = None
        if any(adjusts[i].penalised for i in picked):
            chosen = [(adjusts[i], states[i], segs[i], first[i], starts[i]) for i in picked]
            self.penalties = PenaltyTable(chosen, total, vocab, device)

    def apply(self, logits: torch.Tensor, idx: torch.Tensor) -> torch.Tensor:
        """``logits [m, V]`` of full-layout rows ``idx [m]`` (CPU) -> adjusted (a new tensor
        where any row changes)."""
        owner = self.owner[idx]
        rows = (owner >= 0).nonzero().squeeze(-1)
        if not rows.numel():
            return logits
        dev = logits.device
        k = owner[rows].to(dev)
        sub = logits[rows.to(dev)].float()
        if self.penalties is not None:
            sub = self.penalties.apply(sub, idx[rows], k)
        sub = sub + self.bias[k]
        hit = self.stops[k] & self.masked[idx[rows]].to(dev)[:, None]
        sub = sub.masked_fill(hit, -math.inf).to(logits.dtype)
        return logits.index_copy(0, rows.to(dev), sub)


def adjust_logits(
    logits: torch.Tensor,
    head: Head | None,
    states: Sequence,
    segs: Sequence,
    prefix: Sequence[int],
) -> tuple[torch.Tensor, Head | None]:
    """A forward's packed logits (``[T, V]``; with ``head``, each segment's eager rows only,
    ``rows.eager_row_index``) and ``head`` -> the same with every request's
    ``state.adjust`` applied (``head``'s rows on read). ``prefix[i]``: request ``i``'s committed
    tokens at this forward. Untouched (the same objects) when no running request adjusts."""
    adjusts = [getattr(s, "adjust", None) for s in states]
    if not any(a is not None and g is not None for a, g in zip(adjusts, segs, strict=True)):
        return logits, head
    first = [first_index(s, p) for s, p in zip(states, prefix, strict=True)]
    table = _Rows(adjusts, states, segs, first, int(logits.shape[-1]), logits.device)
    if head is None:
        idx = torch.arange(logits.shape[0])
    else:
        idx = eager_row_index([None if g is None else g.desc for g in segs])
    logits = table.apply(logits, idx)
    if head is not None:
        inner = head

        def head(rows: torch.Tensor) -> torch.Tensor:
            return table.apply(inner(rows), rows.cpu())

    return logits, head
