"""Rows computed when read: a quadratic step's mask groups without the LM head over all of them.

A quadratic step puts ``(k + 1)(L + 1)`` tokens into a forward but its policy reads the ``k + 1``
causal rows and ONE mask group of ``L`` rows (the group after the accepted drafts). When the
forward hands back hidden states and an LM head instead of every row's logits (the SGLang
worker: ``srt/model.py``'s ``RowLogitsOutput.head``), only the causal rows get logits in the
forward and a group's logits are computed when the policy reads it: ``2L - 1`` of ``L (L + 1)``
rows at most, instead of all (at block 32 and a 131k vocabulary, 64 rows instead of 1056 x 131k
fp32 logits). No sglang import here.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch

from sglang_trimode.masks import MaskDescriptor, MaskKind


def eager_rows(desc: MaskDescriptor) -> int:
    """Rows of a segment whose logits the forward computes: a quadratic step's causal rows, every
    other segment's all."""
    return desc.num_causal if desc.kind == MaskKind.QUADRATIC else desc.length


def eager_row_index(descs: Sequence[MaskDescriptor | None]) -> torch.Tensor:
    """Indices of the ``eager_rows`` of each segment in the packed layout of ``descs`` (one
    segment per request, one after another; None: no tokens) -> int64 ``[sum of eager rows]``."""
    out, start = [], 0
    for d in descs:
        if d is not None:
            out.append(torch.arange(start, start + eager_rows(d)))
            start += d.length
    return torch.cat(out) if out else torch.zeros(0, dtype=torch.long)


class DeferredGroups:
    """A quadratic step's rows: ``causal`` (the summary of its ``k + 1`` causal rows, as a policy
    reads them) and ``group(i)`` -> the summary of mask group ``i``'s rows (``i`` counts groups in
    segment order, ``desc.group(i)``; it serves acceptance length ``desc.acceptance_of(i)``),
    computed on its first read. Indexed like the step's full ``[desc.length, V]`` rows, for the
    reads a quadratic policy makes: a slice within the causal rows, or one whole group
    (``desc.group_slice(i, variant)``)."""

    def __init__(
        self,
        desc: MaskDescriptor,
        causal,
        group: Callable[[int], object],
        ready: dict[int, object] | None = None,
    ) -> None:
        """`ready`: groups already summarised (`rows.request_rows` computes the group a greedy
        step will read, for all requests in one head call)."""
        if desc.kind != MaskKind.QUADRATIC:
            raise ValueError(f"DeferredGroups are a quadratic step's rows, got {desc}")
        self.desc, self.causal, self._group = desc, causal, group
        self._groups = dict(ready or {})

    @property
    def shape(self) -> tuple[int, ...]:
        return (self.desc.length, *self.causal.shape[1:])

    def __getitem__(self, key):
        nc, size = self.desc.num_causal, self.desc.block
        if isinstance(key, slice):
            start, stop, step = key.indices(self.desc.length)
            if step == 1 and stop <= nc:
                return self.causal[key]
            first = start - nc
            if step == 1 and first >= 0 and first % size == 0 and stop - start == size:
                i = first // size
                if i not in self._groups:
                    self._groups[i] = self._group(i)
                return self._groups[i]
        raise IndexError(
            f"a quadratic step's deferred rows are read as its causal rows [:{nc}] or one whole "
            f"mask group of {size} rows; got {key!r}"
        )
