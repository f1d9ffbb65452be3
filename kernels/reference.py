"""Pure-torch reference with the launcher's signature (the kernel's oracle).

Each request is computed on its own, in fp32, with the dense mask of the foundation's mask module
(:func:`sglang_trimode.masks.dense_mask`): ``softmax(scale * q K^T + log(mask)) V`` over
``[cached prefix | segment]``. Performance knobs (``num_splits``) are accepted and ignored.
"""

from __future__ import annotations

import math

import torch

from sglang_trimode import masks

from .paging import PageTable
from .segments import SegmentBatch


def _attend(q, keys, values, mask, scale):
    """``q [n, Hq, D]``, ``keys``/``values [L, Hkv, D]``, ``mask [n, L]``, ``scale [n]`` (fp32)."""
    group = q.shape[1] // keys.shape[1]
    kf = keys.float().repeat_interleave(group, dim=1)
    vf = values.float().repeat_interleave(group, dim=1)
    logits = torch.einsum("qhd,khd->hqk", q.float(), kf) * scale[None, :, None]
    logits = logits.masked_fill(~mask[None], float("-inf"))
    return torch.einsum("hqk,khd->qhd", torch.softmax(logits, dim=-1), vf)


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
    """Reference of :func:`sglang_trimode.kernels.extend_attention`."""
    sm_scale = 1.0 / math.sqrt(q.shape[-1]) if sm_scale is None else sm_scale
    out = torch.empty_like(q) if out is None else out
    indptr = segments.qo_indptr.tolist()
    for b, desc in enumerate(segments.descriptors()):
        s, e = indptr[b], indptr[b + 1]
        slots = pages.slots(b)
        keys = torch.cat([k_cache[slots], k[s:e]])
        values = torch.cat([v_cache[slots], v[s:e]])
        mask = masks.dense_mask(desc, slots.numel()).to(q.device)
        scale = torch.full((e - s,), sm_scale, device=q.device)
        if q_scale is not None:
            scale = scale * q_scale[s:e].float()
        out[s:e] = _attend(q[s:e], keys, values, mask, scale).to(out.dtype)
    return out
