"""Impl `sdpa`: a packed TRIMODE forward's attention as ONE batched SDPA call per layer.

The CPU's fast path (the torch reference, `kernels/reference.py`, loops over requests in every
layer and rebuilds each dense mask there; this module is checked against it). Everything that
does not depend on the layer is built once per forward (`DenseLayout`, cached on
`packed.Packed`): the padded batch `[B, Tmax]` of the packed tokens, the prefixes' pool slots
`[B, Pmax]` and the bool mask `[B, 1, Tmax, Pmax + Tmax]` (prefix columns visible up to each
request's length, then the request's own `masks.segment_mask`). Per layer: two gathers, one
`scaled_dot_product_attention(..., enable_gqa=True)`, one gather back to the packed order.
Padding rows (a request's slots past its segment) see key column 0 only, so no row is all -inf;
their outputs are dropped.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from functools import lru_cache

import torch
from torch.nn.functional import scaled_dot_product_attention

from sglang_trimode import masks
from sglang_trimode.kernels import PageTable, SegmentBatch


@lru_cache(maxsize=1024)
def _segment_mask(desc: masks.MaskDescriptor) -> torch.Tensor:
    """`masks.segment_mask` of a descriptor (a few shapes recur every step: cached)."""
    return masks.segment_mask(desc)


@dataclass(frozen=True)
class DenseLayout:
    """One forward's padded layout: `q_index [B, Tmax]` (packed row of each padded slot),
    `rows [T]` (padded slot of each packed row, in packed order), `prefix_slots [B, Pmax]`
    (pool slots, 0 past a request's prefix), `mask [B, 1, Tmax, Pmax + Tmax]` (bool)."""

    q_index: torch.Tensor
    rows: torch.Tensor
    prefix_slots: torch.Tensor
    mask: torch.Tensor

    @classmethod
    def build(
        cls, descs: list[masks.MaskDescriptor], pages: PageTable, device: torch.device | str
    ) -> DenseLayout:
        """`descs` of the B running requests (packed in this order) over `pages` (their
        committed prefixes)."""
        lens = torch.tensor([d.length for d in descs], dtype=torch.int64)
        b, t_max = len(descs), int(lens.max())
        prefix = pages.lengths.to("cpu", torch.int64)
        p_max = int(prefix.max()) if b else 0
        j = torch.arange(t_max)
        valid = j[None, :] < lens[:, None]  # [B, Tmax]
        starts = torch.cumsum(lens, 0) - lens
        q_index = torch.where(valid, starts[:, None] + j[None, :], 0)
        rows = (torch.arange(b)[:, None] * t_max + j[None, :])[valid]
        mask = torch.zeros(b, t_max, p_max + t_max, dtype=torch.bool)
        mask[:, :, :p_max] = torch.arange(p_max)[None, None, :] < prefix[:, None, None]
        same: dict[masks.MaskDescriptor, list[int]] = {}  # one write per distinct segment
        for i, d in enumerate(descs):
            same.setdefault(d, []).append(i)
        for d, idx in same.items():
            n = d.length
            mask[idx, :n, p_max : p_max + n] = _segment_mask(d)
        mask[~valid] = False
        mask[..., 0] |= ~valid  # padding rows: one visible key, dropped afterwards
        t = torch.arange(p_max, device=pages.table.device)
        ps = pages.page_size
        cols = pages.row_start.to(torch.int64)[:, None] + t[None, :] // ps
        in_prefix = t[None, :] < pages.lengths.to(torch.int64)[:, None]
        entry = pages.flat()[torch.where(in_prefix, cols, 0)].to(torch.int64)
        slots = torch.where(in_prefix, entry * ps + t[None, :] % ps, 0)
        return cls(
            q_index.to(device),
            rows.to(device),
            slots.to(device),
            mask[:, None].to(device),
        )


def _rows(x: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
    """`x[index]` for `x [N, ...]` and an int64 `index [B, M]`: `index_select` (several times
    cheaper than advanced indexing on a CPU, where this runs for every layer)."""
    return x.index_select(0, index.reshape(-1)).view(*index.shape, *x.shape[1:])


def attend(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    k_cache: torch.Tensor,
    v_cache: torch.Tensor,
    layout: DenseLayout,
    sm_scale: float,
) -> torch.Tensor:
    """`q [T, Hq, D]`, `k`/`v [T, Hkv, D]`, `k_cache`/`v_cache [S, Hkv, D]` (q's dtype) ->
    `[T, Hq, D]`, the same as the reference `extend_attention` over `layout`'s forward."""
    b, t_max = layout.q_index.shape
    qb = _rows(q, layout.q_index).transpose(1, 2)  # [B, Hq, Tmax, D]
    kb = torch.cat([_rows(k_cache, layout.prefix_slots), _rows(k, layout.q_index)], 1)
    vb = torch.cat([_rows(v_cache, layout.prefix_slots), _rows(v, layout.q_index)], 1)
    kb, vb = kb.transpose(1, 2), vb.transpose(1, 2)  # [B, Hkv, Pmax + Tmax, D]
    out = scaled_dot_product_attention(
        qb, kb, vb, attn_mask=layout.mask, scale=sm_scale, enable_gqa=kb.shape[1] != qb.shape[1]
    )  # [B, Hq, Tmax, D]
    return out.transpose(1, 2).reshape(b * t_max, q.shape[1], -1)[layout.rows]


def extend_attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    k_cache: torch.Tensor,
    v_cache: torch.Tensor,
    pages: PageTable,
    segments: SegmentBatch,
    *,
    sm_scale: float | None = None,
    q_scale: torch.Tensor | None = None,
    num_splits: int | None = None,
    out: torch.Tensor | None = None,
) -> torch.Tensor:
    """`kernels.extend_attention`'s signature over a layout built for this one call (tests and
    one-off calls; a server forward builds the layout once: `packed.Packed.dense`)."""
    sm_scale = 1.0 / math.sqrt(q.shape[-1]) if sm_scale is None else sm_scale
    if q_scale is not None:  # scale q's rows instead of the logits: the same product
        q = q * q_scale.to(q.dtype)[:, None, None]
    layout = DenseLayout.build(segments.descriptors(), pages, q.device)
    res = attend(q, k, v, k_cache, v_cache, layout, sm_scale).to(q.dtype)
    if out is None:
        return res
    out.copy_(res)
    return out
