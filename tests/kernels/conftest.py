"""Kernel tests run compiled on a GPU, or under the Triton interpreter on a CPU.

``TRITON_INTERPRET`` is set by ``tests/conftest.py`` (loaded before any test module, so before
triton is first imported); here the kernel modules are checked to have been decorated in that mode.
"""

import os

from sglang_trimode.kernels import attention

INTERPRET = os.environ.get("TRITON_INTERPRET") == "1"

if attention.INTERPRETED != INTERPRET:
    raise RuntimeError(
        "sglang_trimode.kernels was imported before tests/conftest.py could set "
        f"TRITON_INTERPRET={int(INTERPRET)}; run the kernel tests in their own process"
    )
