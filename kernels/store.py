"""Commit and crop: write kept tokens' K/V into the pool; forget rejected ones.

The attention kernels read a forward's segment K/V from the packed tensors, so a forward never has
to write the pool: after acceptance, :func:`store_kv` writes exactly the kept tokens (all of a
prefill or commit pass, the accepted prefix of a verify, none of a draft or a mask group), and
:func:`crop_kv` shortens requests whose cache already holds tokens that are no longer wanted.
"""

from __future__ import annotations

import torch
import triton

from ._checks import FLOAT_DTYPES, check_device, check_tensor
from .attention import INTERPRETED
from .paging import INDEX_DTYPES, PageTable
from .triton.store import store_kv_rows


def store_kv(
    k: torch.Tensor,
    v: torch.Tensor,
    k_cache: torch.Tensor,
    v_cache: torch.Tensor,
    slots: torch.Tensor,
) -> None:
    """``k_cache[slots[i]] = k[i]`` (same for V) for every ``slots[i] >= 0``; negative skips.

    ``k``/``v [N, Hkv, D]`` (cast to the cache dtype), caches ``[S, Hkv, D]``, ``slots [N]``
    int32/int64 (distinct where >= 0). Last dims contiguous."""
    dev = k.device
    check_device(dev, INTERPRETED)
    N, Hkv, D = check_tensor("k", k, shape=(None, None, None), dtypes=FLOAT_DTYPES).shape
    check_tensor("v", v, shape=(N, Hkv, D), dtypes=FLOAT_DTYPES, device=dev)
    check_tensor("k_cache", k_cache, shape=(None, Hkv, D), dtypes=FLOAT_DTYPES, device=dev)
    check_tensor("v_cache", v_cache, shape=k_cache.shape, dtypes=(k_cache.dtype,), device=dev)
    check_tensor("slots", slots, shape=(N,), dtypes=INDEX_DTYPES, device=dev)
    if N == 0:
        return
    store_kv_rows[(N,)](
        k, v, k_cache, v_cache, slots,
        k.stride(0), k.stride(1), v.stride(0), v.stride(1),
        k_cache.stride(0), k_cache.stride(1), v_cache.stride(0), v_cache.stride(1),
        KV_HEADS=Hkv, HEAD_DIM=D,
        BLOCK_H=triton.next_power_of_2(Hkv), BLOCK_D=triton.next_power_of_2(D),
    )  # fmt: skip


def commit_slots(
    qo_indptr: torch.Tensor, keep: torch.Tensor, out_cache_loc: torch.Tensor
) -> torch.Tensor:
    """Slots for :func:`store_kv`: row ``t`` of request ``b`` keeps ``out_cache_loc[t]`` when it is
    among the first ``keep[b]`` rows of its segment, else -1. ``qo_indptr [B + 1]``, ``keep [B]``,
    ``out_cache_loc [T]``; no host sync."""
    T = out_cache_loc.shape[0]
    rows = torch.arange(T, device=out_cache_loc.device)
    req = torch.searchsorted(qo_indptr[1:].to(torch.int64), rows, right=True)
    local = rows - qo_indptr.to(torch.int64)[req]
    kept = local < keep.to(torch.int64)[req]
    return torch.where(kept, out_cache_loc.to(torch.int64), torch.full_like(rows, -1))


def crop_kv(
    pages: PageTable,
    new_lengths: torch.Tensor,
    *,
    page_size: int | None = None,
    k_cache: torch.Tensor | None = None,
    v_cache: torch.Tensor | None = None,
) -> tuple[torch.Tensor, PageTable]:
    """Shorten request ``b`` from ``pages.lengths[b]`` to ``new_lengths[b]`` cached tokens.

    Returns ``(free_slots, cropped)``: the int64 slots of every dropped token whose pool page
    (``page_size`` tokens, default ``pages.page_size``) holds no kept token -- hand them to the
    allocator (a paged allocator frees their pages) -- and the table with the new lengths. Slots
    in a partly kept page stay allocated and are overwritten by later stores. With
    ``k_cache``/``v_cache`` every dropped token's K/V is also zeroed (hygiene: reads are bounded by
    the lengths, so correctness never depends on it). Host sync; not for CUDA graphs."""
    page = pages.page_size if page_size is None else page_size
    old = pages.lengths.tolist()
    new = new_lengths.tolist()
    if len(new) != len(old):
        raise ValueError(f"new_lengths: {len(new)} requests, the page table has {len(old)}")
    free, dropped = [], []
    for b, (n_old, n_new) in enumerate(zip(old, new)):
        if not 0 <= n_new <= n_old:
            raise ValueError(f"new_lengths[{b}] = {n_new} outside [0, {n_old}]")
        first_free = min(-(-n_new // page) * page, n_old)
        dropped.append(pages.slots(b, n_new, n_old))
        free.append(pages.slots(b, first_free, n_old))
    if k_cache is not None or v_cache is not None:
        gone = torch.cat(dropped).to(pages.table.device)
        for cache in (k_cache, v_cache):
            if cache is not None:
                cache[gone] = 0
    cropped = pages.with_lengths(new_lengths.to(pages.lengths.device))
    return torch.cat(free), cropped
