"""CPU test platform for SGLang: a plain-torch stand-in for the CUDA-only `sgl_kernel` package.

No CPU build of `sgl_kernel` exists on PyPI (the `sglang-kernel` wheel is CUDA-only), yet SGLang's
CPU engine (`SGLANG_USE_CPU_ENGINE=1 --device cpu`) imports a few names from it. The directory
holding this file is put on `PYTHONPATH` by the tests (never installed, never imported by the
plugin itself), so that `import sgl_kernel` finds `cpu_platform/sgl_kernel/`.
See `sgl_kernel/__init__.py` for exactly what is implemented.
"""

import os

#: Put this on PYTHONPATH to make `import sgl_kernel` resolve to the stand-in.
PYTHONPATH_ENTRY = os.path.dirname(os.path.abspath(__file__))
