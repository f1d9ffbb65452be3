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

#: modules whose every test runs a Triton kernel (on a CPU: interpreted, minutes in all)
TRITON_MODULES = {"test_kernels_extend", "test_kernels_bench"}


def pytest_collection_modifyitems(config, items):
    """On a CPU, tests that run Triton kernels get the `interpreter` marker (out of the fast
    subset): the modules above and any test of another module whose id names the triton impl."""
    if not INTERPRET:
        return
    here = os.path.dirname(__file__)
    for item in items:
        if os.path.dirname(str(item.path)) != here:
            continue
        if item.path.stem in TRITON_MODULES or "triton" in item.name:
            item.add_marker("interpreter")
