"""A bucket's layout in preallocated buffers: what a CUDA graph of the bucket reads (no SGLang).

A captured graph replays the kernels it recorded on the tensors it recorded them with, so every
input of a forward must live at fixed addresses: `StaticLayout(bucket)` allocates, once, the
bucket's token ids, positions and KV slots `[N]`, its segments' mask integers and `qo_indptr`
`[R (+ 1)]` and its page table's row starts and lengths `[R]` (the table itself is SGLang's
`req_to_token`, already fixed). `load(layout)` copies a forward padded to that bucket
(`layout.build(..., bucket=...)`) into them and returns the same layout over the buffers, with
the launch's `SegmentBatch.max_len` fixed to the bucket's tokens (the kernel's grid then does not
depend on the forward; tiles past a segment's end exit at once). Attention over the loaded
layout equals attention over the forward's own (tests/kernels/test_packed.py). The capture and
replay around it need a GPU (docs/gpu.md).
"""

from __future__ import annotations

from dataclasses import fields, replace

import torch

from sglang_trimode.kernels import PageTable, SegmentBatch
from sglang_trimode.layout import Bucket, ForwardLayout

#: `SegmentBatch`'s tensors (every field but the host int `max_len`)
_SEGMENT_TENSORS = tuple(f.name for f in fields(SegmentBatch) if f.name != "max_len")


class StaticLayout:
    """The buffers of one `bucket` on `device` (index dtypes as `layout.build` makes them)."""

    def __init__(self, bucket: Bucket, device: torch.device | str) -> None:
        n, r = bucket.tokens, bucket.requests
        self.bucket = bucket

        def ints(size: int, dtype: torch.dtype = torch.int32) -> torch.Tensor:
            return torch.zeros(size, dtype=dtype, device=device)

        self.tokens, self.positions, self.out_cache_loc = (ints(n, torch.int64) for _ in range(3))
        self.segments = SegmentBatch(ints(r + 1), *(ints(r) for _ in range(3)), n, ints(r), ints(r))
        self.row_start, self.lengths = ints(r, torch.int64), ints(r)

    def buffers(self) -> list[torch.Tensor]:
        """Every preallocated tensor (their addresses are what a graph records)."""
        seg = [getattr(self.segments, name) for name in _SEGMENT_TENSORS]
        return [self.tokens, self.positions, self.out_cache_loc, *seg, self.row_start, self.lengths]

    def load(self, layout: ForwardLayout) -> ForwardLayout:
        """Copy `layout` (padded to this bucket) into the buffers -> the layout over them."""
        if layout.bucket != self.bucket:
            raise ValueError(
                f"a forward padded to {layout.bucket} cannot replay the buffers of {self.bucket} "
                "(pad it with Buckets.fit and load it into that bucket's StaticLayout)"
            )
        for name in ("tokens", "positions", "out_cache_loc"):
            getattr(self, name).copy_(getattr(layout, name))
        for name in _SEGMENT_TENSORS:
            getattr(self.segments, name).copy_(getattr(layout.segments, name))
        self.row_start.copy_(layout.pages.row_start)
        self.lengths.copy_(layout.pages.lengths)
        pages = PageTable(layout.pages.table, self.row_start, self.lengths, layout.pages.page_size)
        return replace(
            layout,
            tokens=self.tokens,
            positions=self.positions,
            out_cache_loc=self.out_cache_loc,
            segments=self.segments,
            pages=pages,
        )
