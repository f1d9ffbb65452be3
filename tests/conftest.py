"""Whole-suite setup, loaded before any test module is imported.

Without CUDA the Triton kernels run under the interpreter. ``TRITON_INTERPRET`` must be set before
``triton`` is first imported: triton decorates its own ``triton.language`` helpers (``tl.zeros``
...) when it is imported, and helpers decorated in compiled mode fail inside an interpreted kernel
("Cannot call @triton.jit'd outside of the scope of a kernel"). Test modules collected before
``tests/kernels`` (e.g. ``tests/examples``) may import triton through sglang, so the variable is
set here rather than in ``tests/kernels/conftest.py`` alone.
"""

import os

import torch

if os.environ.get("TRITON_INTERPRET") != "1" and not torch.cuda.is_available():
    os.environ["TRITON_INTERPRET"] = "1"
