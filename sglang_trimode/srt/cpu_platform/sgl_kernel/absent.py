"""SGLang CUDA modules that need packages a bundle without `sglang-kernel` lacks.

SGLang 0.5.23's dense Llama MLP (`srt/layers/dual_gemm.py`, used by Ministral-3) imports
`sglang.kernels.ops.gemm.cutedsl_dual_gemm` on CUDA while the model is built; that module imports
`cutlass` (nvidia-cutlass-dsl, a Blackwell-only kernel) at its top. Without cutlass, this
registers a module of the same name that says the dual GEMM never applies, so the MLP takes its
plain path. Seen on the GPU machine, 2026-12-04: `ModuleNotFoundError: No module named
'cutlass'` at `DualGemm._select_mode`.
"""

from __future__ import annotations

import importlib.util
import sys
import types
from enum import IntEnum

DUAL_GEMM = "sglang.kernels.ops.gemm.cutedsl_dual_gemm"


class DualGemmQuantMode(IntEnum):  # same members as SGLang's
    STATIC_PER_TENSOR = 0
    STATIC_PER_TOKEN = 1
    DYNAMIC_PER_TENSOR = 2
    DYNAMIC_PER_TOKEN = 3
    UNQUANT = 4


def can_use_dual_gemm(*args, **kwargs) -> bool:
    """Never: no cutlass here."""
    return False


def install() -> bool:
    """Register the no-dual-GEMM module when cutlass is missing; True if it did."""
    if DUAL_GEMM in sys.modules or importlib.util.find_spec("cutlass") is not None:
        return False
    mod = types.ModuleType(DUAL_GEMM, "stand-in: no cutlass, the dual GEMM never applies")
    mod.MAX_DUAL_GEMM_DECODE_TOKENS = 16
    mod.DualGemmQuantMode = DualGemmQuantMode
    mod.can_use_dual_gemm = can_use_dual_gemm
    sys.modules[DUAL_GEMM] = mod
    return True
