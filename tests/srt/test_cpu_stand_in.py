"""The plain-torch `sgl_kernel` CPU stand-in (`sglang_trimode/srt/cpu_platform/sgl_kernel`) against
plain torch references. It is loaded from its file (no sglang needed, nothing installed)."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest
import torch

from sglang_trimode.srt.cpu_platform import PYTHONPATH_ENTRY


@pytest.fixture(scope="module")
def stand_in():
    path = Path(PYTHONPATH_ENTRY) / "sgl_kernel" / "__init__.py"
    spec = importlib.util.spec_from_file_location("_trimode_sgl_kernel_stand_in", path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def _buffers(n_rows: int, seed: int) -> list[torch.Tensor]:
    """Per-layer K/V-like buffers of different dtypes and row widths, as SGLang's pools hold."""
    g = torch.Generator().manual_seed(seed)
    return [
        torch.randn(n_rows, 2, 8, generator=g),  # fp32 [slots, heads, dim]
        torch.randn(n_rows, 3, 4, generator=g).to(torch.bfloat16),
        torch.randn(n_rows, 5, generator=g).to(torch.float16),
        torch.randint(0, 255, (n_rows, 7), generator=g, dtype=torch.uint8),  # odd row bytes
    ]


def _run(stand_in, bufs, tgt, src) -> None:
    ptrs = torch.tensor([b.data_ptr() for b in bufs], dtype=torch.uint64)
    strides = torch.tensor([b.stride(0) * b.element_size() for b in bufs], dtype=torch.int64)
    stand_in.copy_all_layer_kv_cache_cpu(
        ptrs, strides, torch.tensor(tgt, dtype=torch.int64), torch.tensor(src, dtype=torch.int64)
    )


@pytest.mark.parametrize(
    ("tgt", "src"),
    [
        ([5, 6, 7], [1, 2, 3]),  # disjoint
        ([2, 1], [1, 2]),  # swap: every source read before any target is written
        ([3, 4, 5], [2, 3, 4]),  # shifted chain, overlapping
        ([0], [0]),  # self copy
        ([], []),  # nothing
        ([9, 0, 4, 8], [0, 9, 9, 4]),  # a source copied twice, a target that is also a source
    ],
)
def test_copy_all_layer_kv_cache_cpu_equals_torch(stand_in, tgt, src):
    bufs = _buffers(10, seed=len(tgt))
    want = [b.clone() for b in bufs]
    for w in want:  # plain torch: index_select reads every source row first
        if tgt:
            w[torch.tensor(tgt)] = w[torch.tensor(src)].clone()
    _run(stand_in, bufs, tgt, src)
    for got, ref in zip(bufs, want, strict=True):
        assert torch.equal(got, ref)


def test_copy_all_layer_kv_cache_cpu_random_permutation(stand_in):
    g = torch.Generator().manual_seed(0)
    bufs = _buffers(64, seed=1)
    want = [b.clone() for b in bufs]
    tgt = torch.randperm(64, generator=g)[:40]
    src = torch.randint(0, 64, (40,), generator=g)
    for w in want:
        w[tgt] = w[src].clone()
    _run(stand_in, bufs, tgt.tolist(), src.tolist())
    for got, ref in zip(bufs, want, strict=True):
        assert torch.equal(got, ref)


def test_assign_req_to_token_pool_cpu_equals_torch(stand_in):
    req_to_token = torch.zeros(4, 16, dtype=torch.int32)
    want = req_to_token.clone()
    rows, starts, ends = [2, 0, 3], [0, 5, 3], [4, 7, 3]
    locs = torch.arange(100, 106, dtype=torch.int64)
    off = 0
    for r, s, e in zip(rows, starts, ends, strict=True):
        want[r, s:e] = locs[off : off + e - s].to(torch.int32)
        off += e - s
    stand_in.assign_req_to_token_pool_cpu(
        torch.tensor(rows), req_to_token, torch.tensor(starts), torch.tensor(ends), locs, 16
    )
    assert torch.equal(req_to_token, want)


def test_unimplemented_names_raise(stand_in):
    for name in stand_in.NOT_IMPLEMENTED:
        with pytest.raises(NotImplementedError, match=name):
            getattr(stand_in, name)()
    assert not hasattr(stand_in, "some_other_kernel")
