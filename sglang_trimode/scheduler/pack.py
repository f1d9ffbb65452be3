"""Pack every running request's segment into ONE forward.

Each request contributes ``desc.length`` query tokens and a mask descriptor (a few ints); the
packed layout is what the kernels' ``SegmentBatch`` reads. ``packed_mask`` evaluates the packed
mask from those ints alone over the concatenated ``[prefix_0 | seg_0 | prefix_1 | seg_1 ...]``
keys, the way the kernel does; it must equal the block-diagonal union of each request's own
``masks.dense_mask`` (tested).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch

from sglang_trimode.masks import MaskDescriptor, MaskKind


@dataclass(frozen=True)
class PackedStep:
    qo_indptr: list[int]  # [n + 1] query offsets
    kv_indptr: list[int]  # [n + 1] key offsets over prefix + segment of each request
    kind: list[int]
    block: list[int]
    num_causal: list[int]
    prefix: list[int]
    variants: list[int] | None = None  # quadratic mask groups per acceptance length (None: 1)
    guessed: list[int] | None = None  # acceptance lengths (shortest first) with them (None: all)

    @property
    def num_tokens(self) -> int:
        return self.qo_indptr[-1]


def pack(descs: Sequence[MaskDescriptor], prefix_lens: Sequence[int]) -> PackedStep:
    if len(descs) != len(prefix_lens):
        raise ValueError(
            f"descs and prefix_lens differ in length: {len(descs)} vs {len(prefix_lens)}"
        )
    qo, kv = [0], [0]
    for d, p in zip(descs, prefix_lens):
        qo.append(qo[-1] + d.length)
        kv.append(kv[-1] + p + d.length)
    return PackedStep(
        qo,
        kv,
        [int(d.kind) for d in descs],
        [d.block for d in descs],
        [d.num_causal for d in descs],
        list(prefix_lens),
        [d.variants for d in descs],
        [d.guessed for d in descs],
    )


def packed_mask(step: PackedStep) -> torch.Tensor:
    """Bool ``[total_q, total_kv]`` from the packed ints (query may attend key)."""
    out = torch.zeros(step.num_tokens, step.kv_indptr[-1], dtype=torch.bool)
    for r in range(len(step.kind)):
        q0, q1, k0, p = step.qo_indptr[r], step.qo_indptr[r + 1], step.kv_indptr[r], step.prefix[r]
        n, blk, k1 = q1 - q0, step.block[r], step.num_causal[r]
        nv = 1 if step.variants is None else step.variants[r]
        ng = k1 if step.guessed is None else step.guessed[r]
        qi, ki = torch.arange(n)[:, None], torch.arange(n)[None, :]
        if step.kind[r] == MaskKind.BLOCK:
            seg = ki // blk <= qi // blk
        else:
            qg = torch.where(qi < k1, -1, (qi - k1) // blk)
            kg = torch.where(ki < k1, -1, (ki - k1) // blk)
            qc, kc = qg < 0, kg < 0
            seg = (
                (qc & kc & (ki <= qi))
                | (~qc & kc & (ki <= torch.maximum(qg // nv, qg - ng * (nv - 1))))
                | (~qc & (qg == kg))
            )
        out[q0:q1, k0 : k0 + p] = True
        out[q0:q1, k0 + p : k0 + p + n] = seg
    return out
