"""Input checks shared by the launchers: each failure is a ValueError naming the argument."""

from __future__ import annotations

from collections.abc import Sequence

import torch

from .paging import INDEX_DTYPES, PageTable
from .segments import SegmentBatch

FLOAT_DTYPES = (torch.float16, torch.bfloat16, torch.float32)


def check_tensor(
    name: str,
    t: object,
    *,
    shape: Sequence[int | None],
    dtypes: Sequence[torch.dtype] | None = None,
    device: torch.device | None = None,
    last_dim_contiguous: bool = True,
) -> torch.Tensor:
    """``t`` is a tensor of ``len(shape)`` dims matching ``shape`` (None: any size)."""
    if not isinstance(t, torch.Tensor):
        raise ValueError(f"{name}: expected a torch.Tensor, got {type(t).__name__}")
    if t.dim() != len(shape):
        raise ValueError(f"{name}: expected {len(shape)}-D, got shape {tuple(t.shape)}")
    for i, (got, want) in enumerate(zip(t.shape, shape)):
        if want is not None and got != want:
            raise ValueError(f"{name}: dim {i} must be {want}, got shape {tuple(t.shape)}")
    if dtypes is not None and t.dtype not in dtypes:
        allowed = ", ".join(str(d) for d in dtypes)
        raise ValueError(f"{name}: dtype must be one of ({allowed}), got {t.dtype}")
    if device is not None and t.device != device:
        raise ValueError(f"{name}: expected device {device}, got {t.device}")
    if last_dim_contiguous and t.numel() and t.stride(-1) != 1:
        raise ValueError(f"{name}: the last dim must be contiguous (stride 1), got {t.stride()}")
    return t


def check_pages(pages: object, batch: int, device: torch.device) -> PageTable:
    """Shapes, dtypes and devices of a page table for ``batch`` requests (no value checks)."""
    if not isinstance(pages, PageTable):
        raise ValueError(f"pages: expected a PageTable, got {type(pages).__name__}")
    if not isinstance(pages.page_size, int) or pages.page_size < 1:
        raise ValueError(f"pages.page_size must be a positive int, got {pages.page_size!r}")
    if pages.table.dim() == 2:
        check_tensor("pages.table", pages.table, shape=(None, None), dtypes=INDEX_DTYPES)
    else:
        check_tensor("pages.table", pages.table, shape=(None,), dtypes=INDEX_DTYPES)
    if pages.table.device != device:
        raise ValueError(f"pages.table: expected device {device}, got {pages.table.device}")
    check_tensor("pages.row_start", pages.row_start, shape=(batch,), dtypes=INDEX_DTYPES)
    check_tensor("pages.lengths", pages.lengths, shape=(batch,), dtypes=(torch.int32,))
    for name in ("row_start", "lengths"):
        t = getattr(pages, name)
        if t.device != device:
            raise ValueError(f"pages.{name}: expected device {device}, got {t.device}")
    return pages


def check_segments(segments: object, tokens: int, device: torch.device) -> SegmentBatch:
    """Shapes, dtypes and devices of the packed segment layout (no value checks)."""
    if not isinstance(segments, SegmentBatch):
        raise ValueError(f"segments: expected a SegmentBatch, got {type(segments).__name__}")
    batch = segments.kind.shape[0] if isinstance(segments.kind, torch.Tensor) else -1
    for name, size in (("qo_indptr", batch + 1), ("kind", batch), ("block", batch)):
        t = check_tensor(f"segments.{name}", getattr(segments, name), shape=(size,))
        if t.dtype != torch.int32 or t.device != device:
            raise ValueError(
                f"segments.{name}: expected int32 on {device}, got {t.dtype} on {t.device}"
            )
    for name in ("num_causal", "variants", "guessed"):
        t = check_tensor(f"segments.{name}", getattr(segments, name), shape=(batch,))
        if t.dtype != torch.int32 or t.device != device:
            raise ValueError(
                f"segments.{name}: expected int32 on {device}, got {t.dtype} on {t.device}"
            )
    if not 1 <= segments.max_len or segments.max_len > max(tokens, 1):
        raise ValueError(f"segments.max_len must be in [1, {tokens}], got {segments.max_len}")
    return segments


def check_device(device: torch.device, interpreted: bool) -> None:
    """Compiled kernels need a GPU; CPU tensors need ``TRITON_INTERPRET=1`` at import time."""
    if device.type == "cpu" and not interpreted:
        raise ValueError(
            "tensors are on the CPU but the Triton kernels were compiled for a GPU: set "
            "TRITON_INTERPRET=1 before importing sglang_trimode.kernels, or use "
            "sglang_trimode.kernels.reference"
        )
