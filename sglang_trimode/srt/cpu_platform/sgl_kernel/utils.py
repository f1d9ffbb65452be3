"""`sgl_kernel.utils` names SGLang imports on CUDA (`layers/attention/triton_backend.py`)."""

from __future__ import annotations


def is_arch_support_pdl() -> bool:
    """Programmatic dependent launch is a CUDA kernel-launch feature of the real kernels; the
    plain-torch stand-ins launch nothing of their own, so: no."""
    return False
