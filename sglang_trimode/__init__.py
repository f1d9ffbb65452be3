"""sglang-trimode: serve tri-mode (AR / block diffusion / self-speculation) language models.

Imports are lazy so that ``import sglang_trimode`` stays cheap (SGLang loads the plugin in every
process).
"""

from __future__ import annotations

import importlib
from typing import Any

__version__ = "0.1.0"

_EXPORTS = {
    "TriModeEngine": "sglang_trimode.reference.engine",
    "GenerationOutput": "sglang_trimode.reference.engine",
    "NemotronLabsDiffusionConfig": "sglang_trimode.config",
    "SamplingParams": "sglang_trimode.sampling",
    "default_model_path": "sglang_trimode.models",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name not in _EXPORTS:
        raise AttributeError(f"module 'sglang_trimode' has no attribute {name!r}; has {__all__}")
    return getattr(importlib.import_module(_EXPORTS[name]), name)
