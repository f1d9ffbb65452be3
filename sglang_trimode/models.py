"""Where the default model lives.

``default_model_path()`` returns the embedded trained tiny model once the package ships one
(``sglang_trimode/assets/default_model``); until then it builds a small random model of the same
checkpoint layout once, under ``$SGLANG_TRIMODE_CACHE`` (default ``~/.cache/sglang_trimode``).
"""

from __future__ import annotations

import os
from pathlib import Path

EMBEDDED = Path(__file__).parent / "assets" / "default_model"


def cache_dir() -> Path:
    root = os.environ.get("SGLANG_TRIMODE_CACHE") or Path.home() / ".cache" / "sglang_trimode"
    return Path(root)


def default_model_path() -> Path:
    """Folder of the default model (config.json + safetensors + tokenizer)."""
    if (EMBEDDED / "config.json").is_file():
        return EMBEDDED
    return random_model_path()


def random_model_path() -> Path:
    """A small random model of the real layout, built once in :func:`cache_dir` (no tokenizer)."""
    path = cache_dir() / "tiny-random-v1"
    if not (path / "config.json").is_file():
        from sglang_trimode.reference.tiny import make_tiny_checkpoint

        print(f"[sglang-trimode] building a small random model at {path}")
        make_tiny_checkpoint(path, seed=0)
    return path


def load_tokenizer(path: str | Path):
    """The model folder's tokenizer via ``AutoTokenizer``, or None when it ships none."""
    if not (Path(path) / "tokenizer.json").is_file():
        return None
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(str(path))
