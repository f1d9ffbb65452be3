"""`frequency_penalty`, `presence_penalty` and `repetition_penalty` on a forward's logits rows.

SGLang's penalizers (``sglang.srt.sampling.penaltylib``) count the request's *output* tokens only
(never the prompt, also for ``repetition_penalty``) and change the raw logits before ``logit_bias``,
temperature and the top-k / top-p / min-p filters: first the additive part, ``-(frequency * count)
- presence * [count > 0]``, then the scaling part, ``logit * repetition`` where the logit is
negative and ``logit / repetition`` where not, on the tokens with ``count > 0``.

A row here gets the counts of the output tokens *before the position it decides*
(``rows.adjust.decided_offsets``): the request's committed output (:class:`OutputCounts`, kept
incrementally) plus the segment tokens the row attends to that stand before that position
(:func:`path_pairs`). A causal verify row at draft ``i`` thus counts the seed and drafts
``1..i`` as if accepted, exactly what AR would have counted there, so self-speculation stays
lossless. A bidirectional row (diffusion, a linear draft, a quadratic mask group) counts the
decided tokens before its own position and skips the mask tokens among them.

:func:`row_histories_slow` and :func:`penalise_row_slow` are the obviously-correct twins of the
batched path (lists of tokens, one row at a time). No sglang import here.
"""

from __future__ import annotations

import functools
from collections import Counter
from collections.abc import Sequence

import torch

from sglang_trimode import masks


def decided_offsets(desc: masks.MaskDescriptor) -> torch.Tensor:
    """For each row of a segment, the output position it decides, relative to the segment's first
    token: a causal row the one after its token, a bidirectional row its own -> int64 ``[n]``."""
    off = masks.offsets(desc)
    if desc.kind == masks.MaskKind.QUADRATIC:
        return off + (torch.arange(desc.length) < desc.num_causal).long()
    return off + 1 if desc.is_causal else off


@functools.lru_cache(maxsize=256)
def path_pairs(desc: masks.MaskDescriptor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``(rows, cols, bidirectional)``: every pair (row ``r``, segment token ``s``) where ``r``
    attends to ``s`` and ``s`` stands before the position ``r`` decides (int64 ``[P]`` each), and
    per pair whether ``r`` decides its own position (bool ``[P]``: its mask tokens are skipped).
    Cached per descriptor (a server sees few)."""
    dec, off = decided_offsets(desc), masks.offsets(desc)
    rows, cols = (masks.segment_mask(desc) & (off[None, :] < dec[:, None])).nonzero(as_tuple=True)
    return rows, cols, (dec == off)[rows]


def row_histories_slow(
    before: Sequence[int], tokens: Sequence[int], desc: masks.MaskDescriptor, mask_id: int
) -> list[list[int]]:
    """The twin of :func:`path_pairs`: per row of the segment ``tokens``, the output tokens before
    the position it decides: ``before`` (the committed output), then the segment tokens it sees
    before that position (not the mask tokens, for a row deciding its own position)."""
    seen = masks.segment_mask(desc).tolist()
    dec, off = decided_offsets(desc).tolist(), masks.offsets(desc).tolist()
    out = []
    for r in range(desc.length):
        own = dec[r] == off[r]
        path = [
            tokens[s]
            for s in range(desc.length)
            if seen[r][s] and off[s] < dec[r] and not (own and tokens[s] == mask_id)
        ]
        out.append(list(before) + path)
    return out


def penalise_row_slow(
    row: torch.Tensor, history: Sequence[int], frequency: float, presence: float, repetition: float
) -> torch.Tensor:
    """One row ``[V]`` (float32) under the penalties of the output tokens ``history``: token by
    token, in SGLang's order (additive, then scaling), in float32 like the batched path."""
    out = row.clone()
    f32 = functools.partial(torch.tensor, dtype=torch.float32)
    for t, c in Counter(history).items():
        x = out[t] + (-(f32(frequency) * c) - f32(presence))
        if repetition != 1.0:
            x = x * f32(repetition) if x < 0 else x / f32(repetition)
        out[t] = x
    return out


class OutputCounts:
    """One request's output tokens so far as counts ``[V]`` (float32, on the logits' device),
    advanced by the tokens added since the last call (never recounted from the start)."""

    def __init__(self, vocab: int, device) -> None:
        self.counts = torch.zeros(vocab, dtype=torch.float32, device=device)
        self.upto = 0

    def through(self, out: Sequence[int], upto: int) -> torch.Tensor:
        """Counts of ``out[:upto]``: adds ``out[self.upto : upto]``."""
        if upto < self.upto:  # never on the block loop (a committed prefix only grows)
            self.counts.zero_()
            self.upto = 0
        new = out[self.upto : upto]
        if new:
            idx = torch.tensor(list(new), dtype=torch.long, device=self.counts.device)
            self.counts.index_add_(0, idx, torch.ones(len(new), device=self.counts.device))
        self.upto = upto
        return self.counts


def penalise(
    logits: torch.Tensor,
    counts: torch.Tensor,
    frequency: torch.Tensor,
    presence: torch.Tensor,
    repetition: torch.Tensor,
) -> torch.Tensor:
    """Rows ``logits [m, V]`` (float32) under their ``counts [m, V]`` and per-row penalties
    ``[m]``: SGLang's additive part, then its scaling part."""
    seen = counts > 0
    out = logits + (-(frequency[:, None] * counts) - presence[:, None] * seen)
    scaled = torch.where(out < 0, out * repetition[:, None], out / repetition[:, None])
    return torch.where(seen & (repetition[:, None] != 1.0), scaled, out)


class PenaltyTable:
    """One forward's penalties: per adjusted request (in the order of ``chosen``: its adjust,
    state, segment, first output index, first full-layout row) its committed output's counts
    ``[A, V]`` and penalties ``[A]``, on the device; per row the segment tokens it adds
    (``path_pairs``), as (full-layout row, token) pairs on the host."""

    def __init__(self, chosen, total: int, vocab: int, device) -> None:
        counts, rows, toks = [], [], []
        for adjust, state, seg, first, start in chosen:
            if not adjust.penalised:
                counts.append(torch.zeros(vocab, device=device))
                continue
            kept = getattr(state, "counts", None)
            if kept is None:
                kept = OutputCounts(vocab, device)
                state.counts = kept
            counts.append(kept.through(state.out, first))
            r, s, own = path_pairs(seg.desc)
            tok = torch.as_tensor(seg.tokens, dtype=torch.long)[s]
            keep = ~(own & (tok == adjust.mask_id))
            rows.append(start + r[keep])
            toks.append(tok[keep])
        self.counts = torch.stack(counts)
        self.pair_row = torch.cat(rows)
        self.pair_tok = torch.cat(toks)
        self.total = total
        pen = [(a.frequency, a.presence, a.repetition) for a, *_ in chosen]
        self.frequency, self.presence, self.repetition = torch.tensor(pen, device=device).T

    def apply(self, sub: torch.Tensor, full_rows: torch.Tensor, k: torch.Tensor) -> torch.Tensor:
        """Rows ``sub [m, V]`` (float32; full-layout rows ``full_rows [m]`` on the host, owned by
        adjusted requests ``k [m]`` on the device) -> penalised."""
        dev = sub.device
        counts = self.counts[k]  # [m, V]: a copy
        at = torch.full((self.total,), -1, dtype=torch.long)
        at[full_rows] = torch.arange(len(full_rows))
        row = at[self.pair_row]
        hit = row >= 0
        if hit.any():
            ones = torch.ones(int(hit.sum()), device=dev)
            counts.index_put_((row[hit].to(dev), self.pair_tok[hit].to(dev)), ones, accumulate=True)
        return penalise(sub, counts, self.frequency[k], self.presence[k], self.repetition[k])
