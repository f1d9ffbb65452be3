"""Reduce step of split-K (flash-decoding): merge per-split partial outputs.

Split ``s`` of a query row produced ``o_s = acc_s / l_s`` and ``lse_s = m_s + log2 l_s`` (base 2).
The exact softmax over the union of the splits' keys is

    o = sum_s w_s o_s / sum_s w_s,   w_s = 2^(lse_s - max_s lse_s)

(empty splits carry ``lse_s = -inf`` and weigh nothing).
"""

from __future__ import annotations

import triton
import triton.language as tl


@triton.jit
def combine_splits(
    OPart, LSE, Out,  # noqa: N803 (tensor pointers)
    num_splits,
    stride_pt, stride_ph, stride_ps, stride_lt, stride_lh, stride_ot, stride_oh,
    HEAD_DIM: tl.constexpr, BLOCK_D: tl.constexpr, BLOCK_S: tl.constexpr,
):  # fmt: skip
    """Grid ``(T, Hq)``: ``OPart [T, Hq, S, D]``, ``LSE [T, Hq, S]`` (fp32) -> ``Out``."""
    t = tl.program_id(0)
    h = tl.program_id(1)
    s = tl.arange(0, BLOCK_S)
    s_ok = s < num_splits
    d = tl.arange(0, BLOCK_D)
    d_ok = d < HEAD_DIM
    lse = tl.load(LSE + t * stride_lt + h * stride_lh + s, mask=s_ok, other=float("-inf"))
    m = tl.max(lse, 0)
    m = tl.where(m == float("-inf"), 0.0, m)
    w = tl.exp2(lse - m)
    parts = tl.load(
        OPart + t * stride_pt + h * stride_ph + s[:, None] * stride_ps + d[None, :],
        mask=s_ok[:, None] & d_ok[None, :],
        other=0.0,
    )
    total = tl.sum(w, 0)
    out = tl.sum(parts * w[:, None], 0) / tl.where(total > 0, total, 1.0)
    tl.store(Out + t * stride_ot + h * stride_oh + d, out.to(Out.dtype.element_ty), mask=d_ok)
