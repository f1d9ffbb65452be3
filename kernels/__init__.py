"""Triton block-diffusion attention over a paged KV cache, shipped as ``sglang_trimode.kernels``.

Three tiers per kernel: ``triton/*.py`` (``@triton.jit``), the checking launchers
(``extend_attention``) and the pure-torch references of the same signatures
in ``reference.py``. The layouts (``PageTable``, ``SegmentBatch``) and the references import
without Triton; the launchers import it lazily on first use. Nothing here imports sglang.
"""

from __future__ import annotations

import importlib

from .paging import PageTable
from .segments import SegmentBatch

_LAZY = {
    "extend_attention": "attention",
}

__all__ = ["PageTable", "SegmentBatch", *_LAZY]


def __getattr__(name: str) -> object:
    if name in _LAZY:
        return getattr(importlib.import_module(f".{_LAZY[name]}", __name__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
