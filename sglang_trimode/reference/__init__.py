"""Reference (pure PyTorch / transformers) implementation of Nemotron-Labs-Diffusion.

Imports here stay cheap: config, model, checkpoint I/O and tiny test models only.
"""

from sglang_trimode.reference.checkpoint import (
    CheckpointError,
    load_config,
    load_model,
    save_checkpoint,
)
from sglang_trimode.reference.model import NemotronLabsDiffusionModel
from sglang_trimode.reference.tiny import make_tiny_checkpoint, make_tiny_model, tiny_config

# --- engine exports (added by the lead): e.g. `from sglang_trimode.reference.engine import ...`

__all__ = [
    "CheckpointError",
    "NemotronLabsDiffusionModel",
    "load_config",
    "load_model",
    "make_tiny_checkpoint",
    "make_tiny_model",
    "save_checkpoint",
    "tiny_config",
]
