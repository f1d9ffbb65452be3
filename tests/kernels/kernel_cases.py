"""Random paged batches for the kernel tests, and dtype-derived tolerances."""

from __future__ import annotations

import os
import random
from dataclasses import dataclass

import pytest
import torch
from sglang_trimode.kernels import PageTable, SegmentBatch

from sglang_trimode import masks
from sglang_trimode.masks import MaskDescriptor, MaskKind

INTERPRET = os.environ.get("TRITON_INTERPRET") == "1"  # set by tests/conftest.py on a CPU
DEVICE = "cpu" if INTERPRET else "cuda"


def dtype_params(*dtypes: torch.dtype) -> list:
    """bf16 only on a GPU: the Triton interpreter computes bf16 wrongly (Triton 3.7-3.9)."""
    skip = pytest.mark.skipif(INTERPRET, reason="Triton's interpreter computes bf16 wrongly")
    return [pytest.param(d, marks=skip) if d == torch.bfloat16 else d for d in dtypes]


def tolerance(dtype: torch.dtype) -> float:
    """fp32: 1e-4 (outputs are O(1)); 16-bit: 4 eps (P is rounded to the dtype before P V)."""
    return 1e-4 if dtype == torch.float32 else 4 * torch.finfo(dtype).eps


def assert_close(out: torch.Tensor, ref: torch.Tensor) -> None:
    tol = tolerance(out.dtype)
    torch.testing.assert_close(out.float(), ref.float(), atol=tol, rtol=tol)


def random_descs(rng: random.Random, count: int) -> list[MaskDescriptor]:
    """Mixed step kinds (all five when ``count >= 5``), shuffled: prefill/commit/verify (causal),
    decode, one-block diffusion drafts, several blocks, quadratic TiDAR steps (1-3 mask
    groups for each of the 0-3 shortest acceptance lengths; 0: all)."""
    pool = [
        lambda: masks.prefill(rng.randint(1, 20)),
        lambda: masks.decode(),
        lambda: masks.diffusion_draft(rng.choice([4, 8, 16]), rng.randint(1, 16)),
        lambda: MaskDescriptor(MaskKind.BLOCK, rng.randint(2, 24), rng.choice([2, 3, 4, 8])),
        lambda: masks.quadratic(
            rng.randint(0, 4), rng.randint(1, 4), rng.randint(1, 3), rng.randint(0, 3)
        ),
    ]
    descs = [pool[i % len(pool)]() for i in range(count)]
    rng.shuffle(descs)
    return descs


def paged_pool(
    rng: random.Random, lengths: list[int], page_size: int, layout: str, device: str
) -> tuple[PageTable, int]:
    """Scattered pages for requests of ``lengths`` cached tokens; returns the table and the slots
    in the pool. ``layout``: ``req_to_token`` (token slots, shuffled pool rows) or ``indptr``
    (page ids, FlashInfer's ``last_page_len``; token slots when ``page_size == 1``)."""
    pages_per = [-(-n // page_size) for n in lengths]
    num_pages = sum(pages_per) + 3
    perm = rng.sample(range(num_pages), num_pages)
    owned, at = [], 0
    for n in pages_per:
        owned.append(perm[at : at + n])
        at += n
    if layout == "req_to_token":
        max_ctx = max(max(lengths), 1) + 5
        rows = rng.sample(range(len(lengths) + 2), len(lengths))
        r2t = torch.full((len(lengths) + 2, max_ctx), -7, dtype=torch.int32)
        for b, n in enumerate(lengths):
            t = torch.arange(n)
            r2t[rows[b], :n] = torch.tensor(owned[b], dtype=torch.int32)[t // page_size] * page_size
            r2t[rows[b], :n] += (t % page_size).int()
        pages = PageTable.from_req_to_token(
            r2t.to(device), torch.tensor(rows, device=device), torch.tensor(lengths, device=device)
        )
    else:
        indptr = torch.tensor([0] + pages_per, dtype=torch.int32).cumsum(0).int()
        indices = torch.tensor([p for o in owned for p in o], dtype=torch.int64)
        last = torch.tensor(
            [n - (c - 1) * page_size if c else 0 for n, c in zip(lengths, pages_per)]
        )
        pages = PageTable.from_indptr(
            indptr.to(device), indices.to(device), page_size, last.to(device)
        )
    assert pages.lengths.tolist() == lengths
    return pages, num_pages * page_size


@dataclass
class ExtendCase:
    q: torch.Tensor
    k: torch.Tensor
    v: torch.Tensor
    k_cache: torch.Tensor
    v_cache: torch.Tensor
    pages: PageTable
    segments: SegmentBatch

    def args(self) -> tuple:
        return (self.q, self.k, self.v, self.k_cache, self.v_cache, self.pages, self.segments)


def extend_case(
    seed: int,
    descs: list[MaskDescriptor],
    prefix_lens: list[int],
    *,
    dtype: torch.dtype = torch.float32,
    heads: tuple[int, int] = (4, 2),
    head_dim: int = 64,
    page_size: int = 1,
    layout: str = "req_to_token",
    fused: bool = False,
) -> ExtendCase:
    """Random inputs; ``fused``: q/k/v are strided views of one ``[T, Hq + 2 Hkv, D]`` tensor."""
    rng = random.Random(seed)
    gen = torch.Generator().manual_seed(seed)
    hq, hkv = heads
    pages, slots = paged_pool(rng, prefix_lens, page_size, layout, DEVICE)
    segments = SegmentBatch.from_descriptors(descs, DEVICE)
    T = sum(d.length for d in descs)

    def randn(*shape: int) -> torch.Tensor:
        return torch.randn(*shape, generator=gen).to(DEVICE, dtype)

    if fused:
        qkv = randn(T, hq + 2 * hkv, head_dim)
        q, k, v = qkv.split([hq, hkv, hkv], dim=1)
    else:
        q, k, v = randn(T, hq, head_dim), randn(T, hkv, head_dim), randn(T, hkv, head_dim)
    caches = randn(slots, hkv, head_dim), randn(slots, hkv, head_dim)
    return ExtendCase(q, k, v, *caches, pages, segments)
