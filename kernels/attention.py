"""Launcher of the paged attention kernel: each segment token over its request's cached prefix
and, under the request's structural mask, its own segment (an AR decode step is the segment
`masks.decode()`: one causal token).

Shapes (``T`` packed segment tokens, ``B`` requests, ``Hq``/``Hkv`` query/KV heads, ``D`` head dim,
``S`` pool slots):

* ``q [T, Hq, D]``, ``k``/``v [T, Hkv, D]``: the last dim contiguous, other strides free; fp16,
  bf16 or fp32, all one dtype.
* ``k_cache``/``v_cache [S, Hkv, D]`` (SGLang's ``MHATokenToKVPool`` buffers of one layer).
* ``pages``: :class:`PageTable`; ``pages.lengths`` are the cached tokens each request attends to.
* ``segments``: :class:`SegmentBatch`: packing and per-request mask integers.
* ``q_scale``: optional float ``[T]``, multiplies each query token's logits
  (Llama-4 attention scaling); ``sm_scale`` defaults to ``1 / sqrt(D)``.

It returns ``out`` (allocated like ``q`` when not given). The math is the online softmax of
``triton/attention.py``; split-K partials are merged by ``triton/combine.py``.
"""

from __future__ import annotations

import functools
import math

import torch
import triton
from triton.runtime.jit import JITFunction

from ._checks import FLOAT_DTYPES, check_device, check_pages, check_segments, check_tensor
from .paging import PageTable
from .segments import SegmentBatch
from .triton.attention import paged_attention_fwd
from .triton.combine import combine_splits

INTERPRETED = not isinstance(paged_attention_fwd, JITFunction)
MIN_SPLIT_TOKENS = 256  # default split-K: at least this many prefix tokens per split
MAX_SCRATCH_BYTES = 1 << 28


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
    """Each segment token attends to its request's whole cached prefix and, under the request's
    structural mask, to its own segment. Returns ``out [T, Hq, D]``.

    ``num_splits``: split-K over the prefix (None: chosen from occupancy, >= 256 tokens a split;
    an int: every prefix in that many equal chunks)."""
    dev = q.device
    T, Hq, D = check_tensor("q", q, shape=(None, None, None), dtypes=FLOAT_DTYPES).shape
    check_device(dev, INTERPRETED)
    segments = check_segments(segments, T, dev)
    B, max_len = segments.batch_size, segments.max_len
    Hkv = _check_kv(q, k, v, k_cache, v_cache)
    pages = check_pages(pages, B, dev)
    if q_scale is not None:
        check_tensor("q_scale", q_scale, shape=(T,), dtypes=FLOAT_DTYPES, device=dev)
    if out is None:
        out = torch.empty_like(q)
    check_tensor("out", out, shape=(T, Hq, D), dtypes=(q.dtype,), device=dev)
    if sm_scale is None:
        sm_scale = 1.0 / math.sqrt(D)
    group = Hq // Hkv
    cfg = _config(q.dtype, D, group, max_len, k_cache.device)
    tiles = triton.cdiv(max_len, cfg["BLOCK_M"] // group)
    splits = num_splits
    min_chunk = MIN_SPLIT_TOKENS if splits is None else cfg["BLOCK_N"]
    if splits is None:
        splits = _default_splits(B * Hkv * tiles, T * Hq * D * 4, dev)
    if not isinstance(splits, int) or splits < 1:
        raise ValueError(f"num_splits must be a positive int, got {splits!r}")
    if T == 0:
        return out
    if splits > 1:
        o_part = torch.empty(T, Hq, splits, D, dtype=torch.float32, device=dev)
        lse = torch.empty(T, Hq, splits, dtype=torch.float32, device=dev)
    else:
        o_part, lse = out.unsqueeze(2), out.new_empty(1, 1, dtype=torch.float32)
    ks = (k.stride(0), k.stride(1), v.stride(0), v.stride(1))
    paged_attention_fwd[(B, Hkv, tiles * splits)](
        q, k, v, k_cache, v_cache, o_part, lse,
        q_scale if q_scale is not None else q,
        segments.qo_indptr, segments.kind, segments.block, segments.num_causal,
        segments.variants, segments.guessed,
        pages.table, pages.row_start, pages.lengths,
        sm_scale * math.log2(math.e), splits, min_chunk,
        q.stride(0), q.stride(1), *ks,
        k_cache.stride(0), k_cache.stride(1), v_cache.stride(0), v_cache.stride(1),
        o_part.stride(0), o_part.stride(1), o_part.stride(2), lse.stride(0), lse.stride(1),
        GROUP=group, HEAD_DIM=D, PAGE=pages.page_size, HAS_Q_SCALE=q_scale is not None,
        SPLIT=splits > 1, **cfg,
    )  # fmt: skip
    if splits > 1:
        combine_splits[(T, Hq)](
            o_part, lse, out, splits,
            o_part.stride(0), o_part.stride(1), o_part.stride(2), lse.stride(0), lse.stride(1),
            out.stride(0), out.stride(1),
            HEAD_DIM=D, BLOCK_D=cfg["BLOCK_D"], BLOCK_S=triton.next_power_of_2(splits),
        )  # fmt: skip
    return out


def _check_kv(q, k, v, k_cache, v_cache) -> int:
    """The segment's and the cache's K/V against ``q [T, Hq, D]`` -> ``Hkv``."""
    dev, (T, Hq, D) = q.device, q.shape
    Hkv = check_tensor("k", k, shape=(T, None, D), dtypes=(q.dtype,), device=dev).shape[1]
    check_tensor("v", v, shape=(T, Hkv, D), dtypes=(q.dtype,), device=dev)
    cache = check_tensor("k_cache", k_cache, shape=(None, None, D), dtypes=(q.dtype,), device=dev)
    if cache.shape[1] != Hkv:
        raise ValueError(f"k: {Hkv} KV heads, k_cache has {cache.shape[1]}")
    check_tensor(
        "v_cache", v_cache, shape=(k_cache.shape[0], Hkv, D), dtypes=(q.dtype,), device=dev
    )
    if Hkv == 0 or Hq % Hkv:
        raise ValueError(f"q heads ({Hq}) must be a multiple of KV heads ({Hkv})")
    return Hkv


def _config(dtype: torch.dtype, D: int, group: int, max_len: int, device: torch.device) -> dict:
    """Tile sizes: rows = tokens x grouped heads (>= 16 for tl.dot), 64-128 rows on a GPU."""
    big = dtype != torch.float32 and D <= 128
    rows = triton.next_power_of_2(max(group * max_len, 16))
    block_m = max(min(rows, 128 if big else 64), triton.next_power_of_2(group), 16)
    block_n = 64 if big else 32
    cfg = dict(BLOCK_D=max(triton.next_power_of_2(D), 16), BLOCK_M=block_m, BLOCK_N=block_n)
    cfg["IEEE"] = dtype == torch.float32
    if not INTERPRETED:
        cfg.update(num_warps=8 if block_m * cfg["BLOCK_D"] >= 128 * 128 else 4, num_stages=2)
    return cfg


def _default_splits(programs: int, bytes_per_split: int, device: torch.device) -> int:
    """Enough splits for ~2 waves of programs on the GPU; 1 on the CPU interpreter."""
    if device.type != "cuda":
        return 1
    target = 2 * _num_sms(device.index if device.index is not None else 0)
    splits = min(triton.cdiv(target, max(programs, 1)), 32)
    return max(1, min(splits, MAX_SCRATCH_BYTES // max(bytes_per_split, 1)))


@functools.cache
def _num_sms(index: int) -> int:
    return torch.cuda.get_device_properties(index).multi_processor_count
