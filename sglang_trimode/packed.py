"""One attention call per layer for a TRIMODE forward of mixed segments (no SGLang import).

The forward's layout (`layout.ForwardLayout`, built once per forward by the worker: the running
requests' segments packed one after another over their committed prefixes, plus any padding)
holds what every layer shares: the `SegmentBatch` of descriptors and the `PageTable` of
prefixes. `attend(...)` (per layer) runs ONE `extend_attention` (the Triton kernel or its torch
reference, same signature) over the whole forward, or impl `sdpa` (`dense_attention`: one
batched SDPA call over a padded layout built once per forward; the CPU's fast path).

`srt/attention.py` is the SGLang adapter around it; `tests/kernels/test_packed.py` runs it
compiled on a GPU (bench/gpu_check.sh) and under the interpreter on a CPU.
"""

from __future__ import annotations

import collections
import logging
from collections.abc import Callable

import torch

from sglang_trimode import dense_attention
from sglang_trimode.layout import ForwardLayout

logger = logging.getLogger(__name__)

IMPLS = ("triton", "torch", "sdpa")

#: Impls that have logged their first use in this process (`attention_fn`).
_announced: set[str] = set()
#: Attention calls (one per layer and forward) by impl in this process (`attend`).
attention_calls: collections.Counter[str] = collections.Counter()


def attention_fn(impl: str) -> Callable[..., torch.Tensor]:
    """`extend_attention` of impl `triton` (kernels), `torch` (reference) or `sdpa` (the
    reference's signature, batched: `dense_attention.extend_attention`); logs the first use of
    each impl in this process (a server log line tests look for)."""
    if impl == "triton":
        from sglang_trimode.kernels import extend_attention
    elif impl == "torch":
        from sglang_trimode.kernels.reference import extend_attention
    elif impl == "sdpa":
        from sglang_trimode.dense_attention import extend_attention
    else:
        raise ValueError(f"attention impl must be one of {', '.join(IMPLS)}, got {impl!r}")
    if impl not in _announced:
        _announced.add(impl)
        logger.info(
            "TRIMODE attention: impl=%s (%s.%s)",
            impl,
            extend_attention.__module__,
            extend_attention.__name__,
        )
    return extend_attention


def attend(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    k_cache: torch.Tensor,
    v_cache: torch.Tensor,
    layout: ForwardLayout,
    sm_scale: float,
    impl: str,
) -> torch.Tensor:
    """`q [T, Hq, D]`, `k`/`v [T, Hkv, D]` (the packed segments' own K/V), `k_cache`/`v_cache
    [S, Hkv, D]` (any float dtype) -> `out [T, Hq, D]` in q's dtype: each token attends to its
    request's prefix and, under its descriptor, to its segment."""
    layout.check_tokens(q.shape[0])
    if layout.segments is None:
        return q.new_zeros(q.shape)
    attention_calls[impl] += 1
    dtype, pages = q.dtype, layout.pages
    gathered = k_cache.dtype != dtype or v_cache.dtype != dtype
    if gathered:
        slots, pages = layout.gathered_prefix
        k_cache = k_cache.index_select(0, slots).to(dtype)
        v_cache = v_cache.index_select(0, slots).to(dtype)
    fn = attention_fn(impl)
    if impl == "sdpa":  # the layout (masks, slots) is built once per forward, not per layer
        dense = layout.dense_gathered if gathered else layout.dense
        return dense_attention.attend(
            q, k.to(dtype), v.to(dtype), k_cache, v_cache, dense, sm_scale
        )
    return fn(
        q, k.to(dtype), v.to(dtype), k_cache, v_cache, pages, layout.segments, sm_scale=sm_scale
    )
