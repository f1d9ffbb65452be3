"""Store (commit) kernel: scatter the K/V of kept tokens into their pool slots.

Row ``i`` of the packed ``k``/``v`` (``[N, kv_heads, head_dim]``) goes to pool slot ``slots[i]``;
rows with a negative slot (rejected drafts, quadratic mask groups, diffusion drafts) are skipped.
"""

from __future__ import annotations

import triton
import triton.language as tl


@triton.jit
def store_kv_rows(
    K, V, KC, VC, slots,  # noqa: N803 (tensor pointers)
    stride_kt, stride_kh, stride_vt, stride_vh, stride_cs, stride_ch, stride_vcs, stride_vch,
    KV_HEADS: tl.constexpr, HEAD_DIM: tl.constexpr, BLOCK_H: tl.constexpr, BLOCK_D: tl.constexpr,
):  # fmt: skip
    """Grid ``(N,)``: one program copies one token's ``[kv_heads, head_dim]`` K and V."""
    i = tl.program_id(0)
    slot = tl.load(slots + i).to(tl.int64)
    if slot >= 0:
        h = tl.arange(0, BLOCK_H)
        d = tl.arange(0, BLOCK_D)
        ok = (h < KV_HEADS)[:, None] & (d < HEAD_DIM)[None, :]
        k = tl.load(K + i * stride_kt + h[:, None] * stride_kh + d[None, :], mask=ok)
        v = tl.load(V + i * stride_vt + h[:, None] * stride_vh + d[None, :], mask=ok)
        k_dst = KC + slot * stride_cs + h[:, None] * stride_ch + d[None, :]
        v_dst = VC + slot * stride_vcs + h[:, None] * stride_vch + d[None, :]
        tl.store(k_dst, k.to(KC.dtype.element_ty), mask=ok)
        tl.store(v_dst, v.to(VC.dtype.element_ty), mask=ok)
