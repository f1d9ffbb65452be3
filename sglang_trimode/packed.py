"""One attention call for a TRIMODE forward of mixed segments (no SGLang import).

The TRIMODE worker lays a forward out packed: the segments of the requests that run (request
`i`: `MaskDescriptor` `descs[i]`, None when it only rides along and has no tokens) one after
another, `sum(d.length)` tokens in all, each over its committed prefix of `prefix_lens[i]`
tokens in a SGLang-style KV pool (`req_to_token` rows). Every layer of the model (linear layers,
MLP, logits) sees only these tokens; attention needs their masks:

1. `pack(...)` (once per forward): one `SegmentBatch` of the running requests' descriptors, one
   `PageTable` over their prefixes;
2. `attend(...)` (per layer): ONE `extend_attention` (the Triton kernel or its torch reference,
   same signature) over the whole forward, or impl `sdpa` (`dense_attention`: one batched SDPA
   call over a padded layout built once per forward; the CPU's fast path).

`srt/attention.py` is the SGLang adapter around it; `tests/kernels/test_packed.py` runs it
compiled on a GPU (bench/gpu_check.sh) and under the interpreter on a CPU.
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from functools import cached_property

import torch

from sglang_trimode import dense_attention, masks
from sglang_trimode.dense_attention import DenseLayout
from sglang_trimode.kernels import PageTable, SegmentBatch
from sglang_trimode.masks import MaskDescriptor, MaskKind

logger = logging.getLogger(__name__)

IMPLS = ("triton", "torch", "sdpa")

#: Impls that have logged their first use in this process (`attention_fn`).
_announced: set[str] = set()


@dataclass(frozen=True)
class Packed:
    """What every layer of one forward shares: the segments and the prefixes' page table."""

    num_tokens: int  # T: the forward's tokens (the running requests' segments, packed)
    segments: SegmentBatch | None  # None: no request has a segment (nothing to attend)
    pages: PageTable | None
    descs: tuple[MaskDescriptor, ...] = ()  # the running requests' descriptors (impl sdpa)

    def check_tokens(self, num_tokens: int) -> None:
        """Clear error unless a forward of `num_tokens` tokens is this plan's."""
        if num_tokens != self.num_tokens:
            raise ValueError(
                f"the forward holds {num_tokens} tokens but the packed plan {self.num_tokens}: "
                "its tokens must be the running requests' segments, packed in request order"
            )

    @cached_property
    def gathered_prefix(self) -> tuple[torch.Tensor, PageTable]:
        """`packed_prefix(pages)`, computed once per forward (at the first layer that needs it:
        a pool of another dtype than q)."""
        return packed_prefix(self.pages)

    @cached_property
    def dense(self) -> DenseLayout:
        """Impl `sdpa`'s padded layout over the pool, once per forward."""
        return DenseLayout.build(list(self.descs), self.pages, self.pages.table.device)

    @cached_property
    def dense_gathered(self) -> DenseLayout:
        """Impl `sdpa`'s padded layout over `gathered_prefix` (a pool of another dtype)."""
        return DenseLayout.build(list(self.descs), self.gathered_prefix[1], self.pages.table.device)


def pack(
    descs: Sequence[MaskDescriptor | None],
    prefix_lens: Sequence[int],
    req_to_token: torch.Tensor,
    req_pool_indices: torch.Tensor,
    device: torch.device | str,
) -> Packed:
    """`descs[i]` / `prefix_lens[i]` of request `i` (pool row `req_pool_indices[i]` of
    `req_to_token [max_reqs, max_ctx]`) -> the packed forward of the running requests."""
    if len(descs) != len(prefix_lens):
        raise ValueError(f"descs ({len(descs)}) and prefix_lens ({len(prefix_lens)}) differ")
    active = [i for i, d in enumerate(descs) if d is not None]
    num_tokens = sum(descs[i].length for i in active)
    if not active:
        return Packed(0, None, None)
    segments = SegmentBatch.from_descriptors([descs[i] for i in active], device=device)
    idx = torch.tensor(active, dtype=torch.int64, device=req_pool_indices.device)
    prefix = torch.tensor([prefix_lens[i] for i in active], dtype=torch.int32)
    pages = PageTable.from_req_to_token(
        req_to_token, req_pool_indices.index_select(0, idx).to(device), prefix.to(device)
    )
    return Packed(num_tokens, segments, pages, tuple(descs[i] for i in active))


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


def ragged_offsets(lengths: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Runs of `lengths [B]` (int64) packed one after another -> for each of their `T` elements
    its run `owner [T]` and its offset within that run `[T]`."""
    dev = lengths.device
    owner = torch.repeat_interleave(torch.arange(lengths.numel(), device=dev), lengths)
    start = torch.cumsum(lengths, 0) - lengths
    return owner, torch.arange(owner.numel(), device=dev) - start[owner]


@functools.lru_cache(maxsize=256)
def _offsets(desc: MaskDescriptor) -> torch.Tensor:
    """`masks.offsets` of a quadratic step's descriptor (a few recur every step: cached)."""
    return masks.offsets(desc)


def segment_positions(
    cols: torch.Tensor, descs: Sequence[MaskDescriptor | None], prefix: Sequence[int]
) -> torch.Tensor:
    """Every packed token's position (`masks.positions` of its request's segment), for the whole
    batch at once: `cols [T]` holds each token's `prefix[owner] + offset in its segment` (the
    segments of the requests whose `descs[i]` is not None, one after another), which is the
    position itself except in quadratic steps' mask groups (positions repeat per group)."""
    if all(d is None or d.kind == MaskKind.BLOCK for d in descs):
        return cols
    pos, start = cols.clone(), 0
    for i, d in enumerate(descs):
        if d is not None and d.kind != MaskKind.BLOCK:
            pos[start : start + d.length] = prefix[i] + _offsets(d).to(pos.device)
        start += 0 if d is None else d.length
    return pos


def packed_prefix(pages: PageTable) -> tuple[torch.Tensor, PageTable]:
    """The pool slots of every prefix token of `pages` (page size 1), in request order, and a
    page table over a buffer holding them contiguously (for a pool of another dtype than q: the
    kernels read one dtype, so the prefix is gathered and cast)."""
    lengths = pages.lengths.to(torch.int64)
    dev = lengths.device
    indptr = torch.zeros(lengths.numel() + 1, dtype=torch.int64, device=dev)
    indptr[1:] = torch.cumsum(lengths, 0)
    # token t of request b lives at table[row_start[b] + t] (page size 1: req_to_token)
    owner, t = ragged_offsets(lengths)
    slots = pages.flat()[pages.row_start[owner] + t].to(torch.int64)
    return slots, PageTable.from_indptr(indptr, torch.arange(owner.numel(), device=dev))


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
    """`q [T, Hq, D]`, `k`/`v [T, Hkv, D]` (the packed segments' own K/V), `k_cache`/`v_cache
    [S, Hkv, D]` (any float dtype) -> `out [T, Hq, D]` in q's dtype: each token attends to its
    request's prefix and, under its descriptor, to its segment."""
    packed.check_tokens(q.shape[0])
    if packed.segments is None:
        return q.new_zeros(q.shape)
    dtype, pages = q.dtype, packed.pages
    gathered = k_cache.dtype != dtype or v_cache.dtype != dtype
    if gathered:
        slots, pages = packed.gathered_prefix
        k_cache = k_cache.index_select(0, slots).to(dtype)
        v_cache = v_cache.index_select(0, slots).to(dtype)
    fn = attention_fn(impl)
    if impl == "sdpa":  # the layout (masks, slots) is built once per forward, not per layer
        layout = packed.dense_gathered if gathered else packed.dense
        return dense_attention.attend(
            q, k.to(dtype), v.to(dtype), k_cache, v_cache, layout, sm_scale
        )
    return fn(
        q, k.to(dtype), v.to(dtype), k_cache, v_cache, pages, packed.segments, sm_scale=sm_scale
    )
