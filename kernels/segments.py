"""Packed segments of one extend launch and their structural masks, as per-request integers.

Request ``b``'s segment is rows ``qo_indptr[b] : qo_indptr[b + 1]`` of the packed ``q``/``k``/``v``;
its mask is :class:`sglang_trimode.masks.MaskDescriptor` ``(kind[b], n_b, block[b],
num_causal[b], variants[b], guessed[b])``, which the kernel evaluates per (query, key) pair
instead of reading a dense mask.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch

from sglang_trimode.masks import MaskDescriptor, MaskKind


@dataclass(frozen=True)
class SegmentBatch:
    """``qo_indptr`` int32 ``[B + 1]``; ``kind``, ``block``, ``num_causal`` int32 ``[B]``;
    ``max_len``: the longest segment (a host int, so that a launch needs no device sync);
    ``variants`` int32 ``[B]`` (quadratic mask groups per acceptance length; None: all 1);
    ``guessed`` int32 ``[B]`` (how many acceptance lengths, shortest first, get them; None: all,
    i.e. ``num_causal``)."""

    qo_indptr: torch.Tensor
    kind: torch.Tensor
    block: torch.Tensor
    num_causal: torch.Tensor
    max_len: int
    variants: torch.Tensor | None = None
    guessed: torch.Tensor | None = None

    def __post_init__(self) -> None:
        if self.variants is None:
            object.__setattr__(self, "variants", torch.ones_like(self.kind))
        if self.guessed is None and isinstance(self.num_causal, torch.Tensor):
            object.__setattr__(self, "guessed", self.num_causal.clone())

    @classmethod
    def from_descriptors(
        cls, descs: Sequence[MaskDescriptor], device: torch.device | str = "cpu"
    ) -> SegmentBatch:
        """Pack the per-request descriptors of one forward (mixed kinds allowed)."""
        if not descs:
            raise ValueError("descs: need at least one MaskDescriptor")
        lens = [d.length for d in descs]
        indptr = torch.zeros(len(descs) + 1, dtype=torch.int32)
        indptr[1:] = torch.cumsum(torch.tensor(lens), 0)

        def ints(values: list[int]) -> torch.Tensor:
            return torch.tensor(values, dtype=torch.int32, device=device)

        return cls(
            indptr.to(device),
            ints([int(d.kind) for d in descs]),
            ints([d.block for d in descs]),
            ints([d.num_causal for d in descs]),
            max(lens),
            ints([d.variants for d in descs]),
            ints([d.guessed for d in descs]),
        )

    @property
    def batch_size(self) -> int:
        return self.kind.shape[0]

    def descriptors(self) -> list[MaskDescriptor]:
        """The descriptors back (host sync; validates each one)."""
        indptr = self.qo_indptr.tolist()
        return [
            MaskDescriptor(MaskKind(k), indptr[b + 1] - indptr[b], blk, nc, nv, ng)
            for b, (k, blk, nc, nv, ng) in enumerate(
                zip(
                    self.kind.tolist(),
                    self.block.tolist(),
                    self.num_causal.tolist(),
                    self.variants.tolist(),
                    self.guessed.tolist(),
                )
            )
        ]

    def check(self) -> None:
        """Value checks (host sync): descriptors valid, ``max_len`` covers every segment."""
        descs = self.descriptors()
        longest = max(d.length for d in descs)
        if longest > self.max_len:
            raise ValueError(f"segments: max_len {self.max_len} < longest segment {longest}")
