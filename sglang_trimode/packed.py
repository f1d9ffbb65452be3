"""One packed attention call for a padded forward of mixed segments (no SGLang import).

The TRIMODE worker lays a forward out as `bs` rows of `width` tokens: request `i`'s segment
(`MaskDescriptor` `descs[i]`, None when it only rides along) padded to the widest, over its
committed prefix of `prefix_lens[i]` tokens in a SGLang-style KV pool (`req_to_token` rows). This
module turns that layout into the kernels' packed one and back:

1. `pack(...)` (once per forward): the real rows of the padded `[bs * width]` layout, one
   `SegmentBatch` of the active requests' descriptors, one `PageTable` over their prefixes;
2. `attend(...)` (per layer): gather the real rows of q/k/v, run ONE `extend_attention` (the
   Triton kernel or its torch reference, same signature), scatter back; padding rows are zeros.

`srt/attention.py` is the SGLang adapter around it; `tests/kernels/test_packed.py` runs it
compiled on a GPU (bench/gpu_check.sh) and under the interpreter on a CPU.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch

from sglang_trimode.kernels import PageTable, SegmentBatch
from sglang_trimode.masks import MaskDescriptor

logger = logging.getLogger(__name__)

IMPLS = ("triton", "torch")

#: Impls that have logged their first use in this process (`attention_fn`).
_announced: set[str] = set()


@dataclass(frozen=True)
class Packed:
    """What every layer of one forward shares: the packed rows and their layouts."""

    rows: torch.Tensor  # int64 [T]: indices of the real tokens in the padded [bs * width] layout
    segments: SegmentBatch | None  # None: no request has a segment (nothing to attend)
    pages: PageTable | None


def pack(
    descs: Sequence[MaskDescriptor | None],
    prefix_lens: Sequence[int],
    width: int,
    req_to_token: torch.Tensor,
    req_pool_indices: torch.Tensor,
    device: torch.device | str,
) -> Packed:
    """`descs[i]` / `prefix_lens[i]` of row `i` (pool row `req_pool_indices[i]` of `req_to_token
    [max_reqs, max_ctx]`), each row `width` tokens -> the packed layout of the active rows."""
    if len(descs) != len(prefix_lens):
        raise ValueError(f"descs ({len(descs)}) and prefix_lens ({len(prefix_lens)}) differ")
    if any(d is not None and d.length > width for d in descs):
        raise ValueError(f"a segment is longer than the forward's width {width}")
    active = [i for i, d in enumerate(descs) if d is not None]
    lens = torch.tensor([0 if d is None else d.length for d in descs], dtype=torch.int64)
    real = torch.arange(width, dtype=torch.int64)[None, :] < lens[:, None]  # [bs, width]
    rows = real.flatten().nonzero().squeeze(1).to(device)
    if not active:
        return Packed(rows, None, None)
    segments = SegmentBatch.from_descriptors([descs[i] for i in active], device=device)
    idx = torch.tensor(active, dtype=torch.int64, device=req_pool_indices.device)
    prefix = torch.tensor([prefix_lens[i] for i in active], dtype=torch.int32)
    pages = PageTable.from_req_to_token(
        req_to_token, req_pool_indices.index_select(0, idx).to(device), prefix.to(device)
    )
    return Packed(rows, segments, pages)


def attention_fn(impl: str) -> Callable[..., torch.Tensor]:
    """`extend_attention` of impl `triton` (kernels) or `torch` (reference); logs the first use
    of each impl in this process (a server log line tests look for)."""
    if impl == "triton":
        from sglang_trimode.kernels import extend_attention
    elif impl == "torch":
        from sglang_trimode.kernels.reference import extend_attention
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


def packed_prefix(pages: PageTable) -> tuple[torch.Tensor, PageTable]:
    """The pool slots of every prefix token of `pages` (page size 1), in request order, and a
    page table over a buffer holding them contiguously (for a pool of another dtype than q: the
    kernels read one dtype, so the prefix is gathered and cast)."""
    lengths = pages.lengths.to(torch.int64)
    dev = lengths.device
    indptr = torch.zeros(lengths.numel() + 1, dtype=torch.int64, device=dev)
    indptr[1:] = torch.cumsum(lengths, 0)
    total = int(indptr[-1])
    # token t of request b lives at table[row_start[b] + t] (page size 1: req_to_token)
    owner = torch.repeat_interleave(torch.arange(lengths.numel(), device=dev), lengths)
    t = torch.arange(total, device=dev) - indptr[:-1][owner]
    slots = pages.flat()[pages.row_start[owner] + t].to(torch.int64)
    return slots, PageTable.from_indptr(indptr, torch.arange(total, device=dev))


def attend(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    k_cache: torch.Tensor,
    v_cache: torch.Tensor,
    packed: Packed,
    sm_scale: float,
    impl: str,
) -> torch.Tensor:
    """`q [bs * width, Hq, D]`, `k`/`v [bs * width, Hkv, D]` (padded layout; the segment's own
    K/V), `k_cache`/`v_cache [S, Hkv, D]` (any float dtype) -> `out [bs * width, Hq, D]` in q's
    dtype: each real row attends to its prefix and, under its descriptor, to its segment."""
    out = q.new_zeros(q.shape)
    if packed.segments is None:
        return out
    dtype, rows = q.dtype, packed.rows
    q_r = q.index_select(0, rows)
    k_r = k.index_select(0, rows).to(dtype)
    v_r = v.index_select(0, rows).to(dtype)
    pages = packed.pages
    if k_cache.dtype != dtype or v_cache.dtype != dtype:
        slots, pages = packed_prefix(packed.pages)
        k_cache = k_cache.index_select(0, slots).to(dtype)
        v_cache = v_cache.index_select(0, slots).to(dtype)
    fn = attention_fn(impl)
    o = fn(q_r, k_r, v_r, k_cache, v_cache, pages, packed.segments, sm_scale=sm_scale)
    return out.index_copy_(0, rows, o)
