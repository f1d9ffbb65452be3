"""Tiny deterministic Nemotron-Labs-Diffusion models and checkpoints for CPU tests.

The tiny config keeps the real architecture (GQA, YaRN RoPE, Llama-4 query scaling, untied head)
but shrinks every size. `original_max_position_embeddings` is 64, so the Llama-4 scaling
`1 + beta * log(1 + floor(pos / 64))` already changes queries from position 64 on.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from sglang_trimode.config import NemotronLabsDiffusionConfig
from sglang_trimode.reference.checkpoint import save_checkpoint
from sglang_trimode.reference.model import NemotronLabsDiffusionModel

TINY_DEFAULTS: dict[str, Any] = {
    "vocab_size": 128,
    "hidden_size": 64,
    "intermediate_size": 128,
    "num_hidden_layers": 2,
    "num_attention_heads": 4,
    "num_key_value_heads": 2,
    "head_dim": 16,
    "max_position_embeddings": 1024,  # = factor 16 x original 64, as YaRN expects
    "pad_token_id": 0,
    "bos_token_id": 1,
    "eos_token_id": 2,
    "mask_token_id": 3,
    "block_size": 8,
    "tie_word_embeddings": False,
    "rope_parameters": {
        "rope_type": "yarn",
        "rope_theta": 10000.0,
        "factor": 16.0,
        "original_max_position_embeddings": 64,
        "beta_fast": 32.0,
        "beta_slow": 1.0,
        "mscale": 1.0,
        "mscale_all_dim": 1.0,
        "llama_4_scaling_beta": 0.1,
    },
}


def tiny_config(**overrides: Any) -> NemotronLabsDiffusionConfig:
    """A tiny valid config; keyword overrides replace defaults (rope_parameters as a whole)."""
    kwargs = {**TINY_DEFAULTS, **overrides}
    kwargs["rope_parameters"] = dict(kwargs["rope_parameters"])  # never share the default dict
    return NemotronLabsDiffusionConfig(**kwargs)


@torch.no_grad()
def make_tiny_model(
    seed: int = 0,
    init_std: float = 0.2,
    head_std: float = 0.5,
    attn_implementation: str = "sdpa",
    **overrides: Any,
) -> NemotronLabsDiffusionModel:
    """A tiny fp32 model with deterministic random weights (eval mode, CPU).

    Matrices are N(0, init_std); RMSNorm weights are 1 + N(0, 0.1); the diffusion head is
    N(0, head_std) so that logits are peaked enough for confidence thresholds to be met and the
    argmax varies with the context. The weights depend only on `seed` and the config.
    """
    config = tiny_config(**overrides)
    model = NemotronLabsDiffusionModel(config, attn_implementation=attn_implementation)
    gen = torch.Generator(device="cpu").manual_seed(seed)
    for name, param in model.named_parameters():
        noise = torch.randn(param.shape, generator=gen, dtype=torch.float32)
        if name == "diffusion_head.weight":
            param.copy_(noise * head_std)
        elif param.dim() == 1:
            param.copy_(1.0 + 0.1 * noise)
        else:
            param.copy_(noise * init_std)
    return model.eval()


def make_tiny_checkpoint(
    path: str | Path,
    seed: int = 0,
    max_shard_bytes: int | None = None,
    **overrides: Any,
) -> Path:
    """Write a tiny checkpoint folder (config.json + safetensors) and return its path.

    `overrides` go to `make_tiny_model` (config fields, `init_std`, `head_std`).
    """
    path = Path(path)
    save_checkpoint(make_tiny_model(seed=seed, **overrides), path, max_shard_bytes=max_shard_bytes)
    return path


__all__ = ["TINY_DEFAULTS", "make_tiny_checkpoint", "make_tiny_model", "tiny_config"]
