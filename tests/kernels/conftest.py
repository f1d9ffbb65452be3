"""Kernel tests run compiled on a GPU, or under the Triton interpreter on a CPU.

``TRITON_INTERPRET`` is read when ``@triton.jit`` decorates a kernel, i.e. when the kernel modules
are first imported: it is set here, before any test module imports them, and checked after.
"""

import os

import torch

INTERPRET = os.environ.get("TRITON_INTERPRET") == "1" or not torch.cuda.is_available()
if INTERPRET:
    os.environ["TRITON_INTERPRET"] = "1"

from sglang_trimode.kernels import attention  # noqa: E402

if attention.INTERPRETED != INTERPRET:
    raise RuntimeError(
        "sglang_trimode.kernels was imported before tests/kernels/conftest.py could set "
        f"TRITON_INTERPRET={int(INTERPRET)}; run the kernel tests in their own process"
    )
