"""Paged attention with a structural segment mask (an AR decode step is a one-token segment).

One program handles one request ``b``, one KV head, one tile of segment tokens (all ``GROUP``
query heads of that KV head packed into the ``BLOCK_M`` rows, so each K/V tile is loaded once per
group) and one split of the cached prefix. It streams key tiles through the online softmax
(Milakov & Gimelshein 2018; FlashAttention-2), in base 2 with fp32 state:

    m' = max(m, rowmax(s)),   l' = l * 2^(m - m') + sum 2^(s - m'),   acc' = acc * 2^(m - m') + P V

with ``s = q.k * sm_scale * q_scale[token] * log2(e)``. Key tiles: (a) prefix tokens of the split,
read through the page table; (b) the segment's own packed K/V, masked by
:func:`segment_visible` (only on split 0). With one split the program writes ``acc / l``; with
several it writes ``acc / l`` and ``lse = m + log2 l`` per split for ``combine_splits``.
"""

from __future__ import annotations

import triton
import triton.language as tl


@triton.jit
def _acceptance(g, nv, ng):
    """The acceptance length quadratic group ``g`` serves (``MaskDescriptor.acceptance_of``)."""
    return tl.maximum(g // nv, g - ng * (nv - 1))


@triton.jit
def segment_visible(qi, ki, kind, blk, k1, nv, ng):
    """``masks.segment_mask`` from ints: BLOCK (kind 0) ``ki // B <= qi // B``; QUADRATIC (kind 1)
    causal tokens ``< k1`` causal, group ``g`` sees causal tokens ``0..a(g)`` and itself, where
    ``a(g) = max(g // nv, g - ng (nv - 1))`` (``nv`` variants for each of the ``ng`` shortest
    acceptance lengths, one group for the others)."""
    block_vis = (ki // blk) <= (qi // blk)
    q_grp = tl.where(qi < k1, -1, (qi - k1) // blk)
    k_grp = tl.where(ki < k1, -1, (ki - k1) // blk)
    q_c = q_grp < 0
    k_c = k_grp < 0
    sees_drafts = ~q_c & k_c & (ki <= _acceptance(q_grp, nv, ng))
    quad_vis = (q_c & k_c & (ki <= qi)) | sees_drafts | (~q_c & (q_grp == k_grp))
    return tl.where(kind == 1, quad_vis, block_vis)


@triton.jit
def _softmax_tile(acc, m_i, l_i, q, k_t, v, row_scale, valid, IEEE: tl.constexpr):
    """One online-softmax step over a key tile (``k_t [D, N]``, ``v [N, D]``)."""
    if IEEE:
        s = tl.dot(q, k_t, input_precision="ieee")
    else:
        s = tl.dot(q, k_t)
    s = tl.where(valid, s * row_scale, float("-inf"))
    m_new = tl.maximum(m_i, tl.max(s, 1))
    alpha = tl.exp2(m_i - m_new)
    p = tl.exp2(s - m_new[:, None])
    l_i = l_i * alpha + tl.sum(p, 1)
    if IEEE:
        pv = tl.dot(p.to(v.dtype), v, input_precision="ieee")
    else:
        pv = tl.dot(p.to(v.dtype), v)
    return acc * alpha[:, None] + pv, m_new, l_i


@triton.jit
def _segment_keys(
    acc, m_i, l_i, q, row_scale, qi, K, V, q_start, kvh, k_lo, k_hi,  # noqa: N803
    kind, blk, k1, nv, ng, stride_kt, stride_kh, stride_vt, stride_vh,
    HEAD_DIM: tl.constexpr, BLOCK_D: tl.constexpr, BLOCK_N: tl.constexpr, IEEE: tl.constexpr,
):  # fmt: skip
    """Segment keys ``k_lo..k_hi`` (packed rows ``q_start + j``) under the structural mask."""
    d = tl.arange(0, BLOCK_D)
    d_ok = d < HEAD_DIM
    for start in range(k_lo, k_hi, BLOCK_N):
        kj = start + tl.arange(0, BLOCK_N)
        kj_ok = kj < k_hi
        k_t = tl.load(
            K + (q_start + kj)[None, :] * stride_kt + kvh * stride_kh + d[:, None],
            mask=kj_ok[None, :] & d_ok[:, None],
            other=0.0,
        )
        v = tl.load(
            V + (q_start + kj)[:, None] * stride_vt + kvh * stride_vh + d[None, :],
            mask=kj_ok[:, None] & d_ok[None, :],
            other=0.0,
        )
        vis = segment_visible(qi[:, None], kj[None, :], kind, blk, k1, nv, ng) & kj_ok[None, :]
        acc, m_i, l_i = _softmax_tile(acc, m_i, l_i, q, k_t, v, row_scale, vis, IEEE)
    return acc, m_i, l_i


@triton.jit
def paged_attention_fwd(
    Q, K, V, KC, VC, Out, LSE, QS,  # noqa: N803 (tensor pointers)
    qo_indptr, seg_kind, seg_block, seg_ncausal, seg_variants, seg_guessed,
    table, row_start, cache_len,
    sm_scale_log2, num_splits, min_chunk,
    stride_qt, stride_qh, stride_kt, stride_kh, stride_vt, stride_vh,
    stride_cs, stride_ch, stride_vcs, stride_vch,
    stride_ot, stride_oh, stride_os, stride_lt, stride_lh,
    GROUP: tl.constexpr, HEAD_DIM: tl.constexpr, BLOCK_D: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, PAGE: tl.constexpr,
    HAS_Q_SCALE: tl.constexpr, SPLIT: tl.constexpr,
    IEEE: tl.constexpr,
):  # fmt: skip
    b = tl.program_id(0)
    kvh = tl.program_id(1)
    tile = tl.program_id(2) // num_splits
    split = tl.program_id(2) % num_splits
    TOKENS: tl.constexpr = BLOCK_M // GROUP
    q_start = tl.load(qo_indptr + b)
    n = tl.load(qo_indptr + b + 1) - q_start
    tok0 = tile * TOKENS
    if tok0 < n:
        r = tl.arange(0, BLOCK_M)
        qi = tok0 + r // GROUP
        head = kvh * GROUP + r % GROUP
        row_ok = (r < TOKENS * GROUP) & (qi < n)
        d = tl.arange(0, BLOCK_D)
        d_ok = d < HEAD_DIM
        q_ptrs = Q + (q_start + qi)[:, None] * stride_qt + head[:, None] * stride_qh + d[None, :]
        q = tl.load(q_ptrs, mask=row_ok[:, None] & d_ok[None, :], other=0.0)
        if HAS_Q_SCALE:
            qs = tl.load(QS + q_start + qi, mask=row_ok, other=1.0).to(tl.float32)
            row_scale = (qs * sm_scale_log2)[:, None]
        else:
            row_scale = tl.zeros([BLOCK_M, 1], dtype=tl.float32) + sm_scale_log2
        m_i = tl.zeros([BLOCK_M], dtype=tl.float32) - 1.0e30
        l_i = tl.zeros([BLOCK_M], dtype=tl.float32)
        acc = tl.zeros([BLOCK_M, BLOCK_D], dtype=tl.float32)
        nn = tl.arange(0, BLOCK_N)

        # (a) this split's share of the cached prefix, through the page table
        plen = tl.load(cache_len + b)
        row0 = tl.load(row_start + b)
        chunk = tl.maximum(tl.cdiv(tl.cdiv(plen, num_splits), BLOCK_N) * BLOCK_N, min_chunk)
        lo = split * chunk
        hi = tl.minimum(lo + chunk, plen)
        for start in range(lo, hi, BLOCK_N):
            t = start + nn
            t_ok = t < hi
            entry = tl.load(table + row0 + t // PAGE, mask=t_ok, other=0).to(tl.int64)
            slot = entry * PAGE + t % PAGE
            k_t = tl.load(
                KC + slot[None, :] * stride_cs + kvh * stride_ch + d[:, None],
                mask=t_ok[None, :] & d_ok[:, None],
                other=0.0,
            )
            v = tl.load(
                VC + slot[:, None] * stride_vcs + kvh * stride_vch + d[None, :],
                mask=t_ok[:, None] & d_ok[None, :],
                other=0.0,
            )
            acc, m_i, l_i = _softmax_tile(acc, m_i, l_i, q, k_t, v, row_scale, t_ok[None, :], IEEE)

        # (b) the segment itself under its structural mask (split 0 only)
        if split == 0:
            kind = tl.load(seg_kind + b)
            blk = tl.load(seg_block + b)
            k1 = tl.where(kind == 1, tl.load(seg_ncausal + b), 0)
            nv = tl.where(kind == 1, tl.load(seg_variants + b), 1)
            ng = tl.where(kind == 1, tl.load(seg_guessed + b), 0)
            q_lo = tok0
            q_hi = tl.minimum(tok0 + TOKENS, n) - 1
            # key ranges [0, a_hi) and [b_lo, b_hi) cover every key a row of the tile sees
            last_g = tl.maximum(q_hi - k1, 0) // blk
            first_g = tl.maximum(q_lo - k1, 0) // blk
            quad_a = tl.where(
                q_hi < k1, q_hi + 1, tl.where(q_lo < k1, k1, _acceptance(last_g, nv, ng) + 1)
            )
            a_hi = tl.where(kind == 1, quad_a, tl.minimum(n, (q_hi // blk + 1) * blk))
            has_b = (kind == 1) & (q_hi >= k1)
            b_lo = tl.where(has_b, k1 + first_g * blk, 0)
            b_hi = tl.where(has_b, k1 + (last_g + 1) * blk, 0)
            acc, m_i, l_i = _segment_keys(
                acc, m_i, l_i, q, row_scale, qi, K, V, q_start, kvh, 0, a_hi,
                kind, blk, k1, nv, ng, stride_kt, stride_kh, stride_vt, stride_vh,
                HEAD_DIM, BLOCK_D, BLOCK_N, IEEE,
            )  # fmt: skip
            acc, m_i, l_i = _segment_keys(
                acc, m_i, l_i, q, row_scale, qi, K, V, q_start, kvh, b_lo, b_hi,
                kind, blk, k1, nv, ng, stride_kt, stride_kh, stride_vt, stride_vh,
                HEAD_DIM, BLOCK_D, BLOCK_N, IEEE,
            )  # fmt: skip

        l_safe = tl.where(l_i > 0, l_i, 1.0)
        out = acc / l_safe[:, None]
        o_ptrs = Out + (q_start + qi)[:, None] * stride_ot + head[:, None] * stride_oh + d[None, :]
        if SPLIT:
            o_ptrs += split * stride_os
            lse = tl.where(l_i > 0, m_i + tl.log2(l_safe), float("-inf"))
            l_ptrs = LSE + (q_start + qi) * stride_lt + head * stride_lh + split
            tl.store(l_ptrs, lse, mask=row_ok)
        tl.store(o_ptrs, out.to(Out.dtype.element_ty), mask=row_ok[:, None] & d_ok[None, :])
