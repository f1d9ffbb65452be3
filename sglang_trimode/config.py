"""Configuration for NVIDIA Nemotron-Labs-Diffusion tri-mode checkpoints.

`NemotronLabsDiffusionConfig` extends transformers' `Ministral3Config` (the backbone is a
Ministral-3 decoder) with the diffusion fields of the vendor's config.json. Defaults follow the
8B checkpoint. Importing this module registers the class with `AutoConfig` under `model_type`
"nemotron_labs_diffusion" (idempotent).
"""

from __future__ import annotations

from typing import Any

from transformers import AutoConfig, Ministral3Config

MODEL_TYPE = "nemotron_labs_diffusion"
ARCHITECTURE = "NemotronLabsDiffusionModel"

#: dlm_paradigm values seen in the vendor's code. "bidirectional" is the inference default;
#: "block_diff" / "sbd_block_diff" are training-time paradigms (same weights, same layout).
#: The serving code builds its own per-mode masks, so the value is informational.
DLM_PARADIGMS: frozenset[str] = frozenset(
    {"bidirectional", "autoregressive", "block_diff", "sbd_block_diff"}
)

# rope_parameters keys read unconditionally by Ministral3Attention (Llama-4 query scaling).
_REQUIRED_ROPE_KEYS = ("rope_theta", "llama_4_scaling_beta", "original_max_position_embeddings")


class NemotronLabsDiffusionConfig(Ministral3Config):
    """Ministral-3 backbone config plus the tri-mode diffusion fields.

    Unknown keys of config.json (e.g. `dlm_loss_weight`, `dp_varying_mask_ratio`) are kept as
    attributes and written back on save. Invalid values raise `ValueError` naming the field.
    """

    model_type = MODEL_TYPE

    vocab_size: int = 131072
    eos_token_id: int | list[int] | None = 11
    mask_token_id: int = 100
    block_size: int = 32
    dlm_paradigm: str = "bidirectional"

    def __post_init__(self, **kwargs: Any) -> None:
        super().__post_init__(**kwargs)
        if self.architectures is None:
            self.architectures = [ARCHITECTURE]
        self.check()

    # ------------------------------------------------------------------ validation
    def check(self) -> None:
        """Raise `ValueError` (naming the field and the fix) if the config cannot be served."""
        for name in ("vocab_size", "hidden_size", "intermediate_size", "num_hidden_layers"):
            _require_positive_int(name, getattr(self, name))
        for name in ("num_attention_heads", "num_key_value_heads", "head_dim"):
            _require_positive_int(name, getattr(self, name))
        if self.num_attention_heads % self.num_key_value_heads:
            raise ValueError(
                f"num_attention_heads ({self.num_attention_heads}) must be divisible by "
                f"num_key_value_heads ({self.num_key_value_heads}); fix one of the two."
            )
        if self.head_dim % 2:
            raise ValueError(f"head_dim ({self.head_dim}) must be even for RoPE.")
        if not isinstance(self.mask_token_id, int) or not 0 <= self.mask_token_id < self.vocab_size:
            raise ValueError(
                f"mask_token_id ({self.mask_token_id!r}) must be an int in [0, vocab_size="
                f"{self.vocab_size}); set it to the tokenizer's mask token id (vendor: 100)."
            )
        if self.eos_token_id is None:
            raise ValueError("eos_token_id is missing; set it (11 for the vendor's tokenizer).")
        raw = self.eos_token_id if isinstance(self.eos_token_id, list) else [self.eos_token_id]
        if not raw or any(not isinstance(t, int) or not 0 <= t < self.vocab_size for t in raw):
            raise ValueError(
                f"eos_token_id ({self.eos_token_id!r}) must be an int or a non-empty list of "
                f"ints in [0, vocab_size={self.vocab_size})."
            )
        if self.mask_token_id in raw:
            raise ValueError(
                f"mask_token_id ({self.mask_token_id}) must differ from eos_token_id ({raw})."
            )
        if not isinstance(self.block_size, int) or self.block_size < 1:
            raise ValueError(f"block_size ({self.block_size!r}) must be an int >= 1 (vendor: 32).")
        if self.dlm_paradigm not in DLM_PARADIGMS:
            raise ValueError(
                f"dlm_paradigm ({self.dlm_paradigm!r}) is unknown; use one of "
                f"{sorted(DLM_PARADIGMS)} (checkpoints ship 'bidirectional')."
            )
        if self.tie_word_embeddings:
            raise ValueError(
                "tie_word_embeddings=True is unsupported: the checkpoint has an untied "
                "diffusion_head.weight; set tie_word_embeddings to false."
            )
        for name in ("attention_bias", "mlp_bias"):
            if getattr(self, name, False):
                raise ValueError(
                    f"{name}=True is unsupported by the Ministral-3 backbone; set false."
                )
        if self.sliding_window is not None:
            raise ValueError(
                f"sliding_window ({self.sliding_window}) is unsupported (full attention only); "
                "set it to null."
            )
        self._check_rope()

    def _check_rope(self) -> None:
        rope = self.rope_parameters
        if not isinstance(rope, dict):
            raise ValueError(f"rope_parameters must be a dict, got {type(rope).__name__}.")
        missing = [k for k in _REQUIRED_ROPE_KEYS if rope.get(k) is None]
        if missing:
            raise ValueError(
                f"rope_parameters is missing {missing}; the Ministral-3 attention needs "
                "rope_theta, llama_4_scaling_beta and original_max_position_embeddings "
                "(vendor: 1e6, 0.1, 16384)."
            )
        _require_positive_int(
            "rope_parameters.original_max_position_embeddings",
            rope["original_max_position_embeddings"],
        )
        if rope.get("rope_type") == "yarn" and rope.get("factor") is None:
            raise ValueError(
                "rope_parameters.factor is required for rope_type 'yarn' (vendor: 16)."
            )

    # ------------------------------------------------------------------ derived values
    @property
    def kv_group_size(self) -> int:
        """Query heads per key/value head."""
        return self.num_attention_heads // self.num_key_value_heads

    @property
    def eos_token_ids(self) -> tuple[int, ...]:
        """All end-of-sequence ids as a tuple."""
        eos = self.eos_token_id
        return tuple(eos) if isinstance(eos, list | tuple) else (int(eos),)


def _require_positive_int(name: str, value: object) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"{name} ({value!r}) must be an int >= 1.")


def register_config() -> None:
    """Register the config with `AutoConfig` (safe to call repeatedly)."""
    # exist_ok=True: re-registering (module reload, repeated call) just replaces the entry, and a
    # future transformers that ships its own "nemotron_labs_diffusion" does not make import fail.
    AutoConfig.register(MODEL_TYPE, NemotronLabsDiffusionConfig, exist_ok=True)


register_config()

__all__ = [
    "ARCHITECTURE",
    "DLM_PARADIGMS",
    "MODEL_TYPE",
    "NemotronLabsDiffusionConfig",
    "register_config",
]
