"""Reference (pure PyTorch / transformers) Nemotron-Labs-Diffusion model.

The backbone is transformers' own `Ministral3Model` (no reimplementation); the checkpoint's untied
`diffusion_head` projects hidden states to logits in every mode (AR, diffusion, self-speculation).
Parameter names match the HF checkpoint exactly: `encoder.*` and `diffusion_head.weight`.

Attention masks are 4D *additive* float masks `[B, 1, Q, K]` in the model dtype (0 = attend,
`finfo(dtype).min` = blocked); transformers returns a 4D mask unchanged from `create_causal_mask`,
so the caller fully controls which keys each query sees (causal, bidirectional block, TiDAR, ...).
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn
from transformers import PreTrainedModel
from transformers.models.ministral3.modeling_ministral3 import Ministral3Model

from sglang_trimode.config import NemotronLabsDiffusionConfig

ATTN_IMPLEMENTATIONS = ("sdpa", "eager")


class NemotronLabsDiffusionModel(PreTrainedModel):
    """Ministral-3 encoder plus an untied `diffusion_head`; `forward` returns fp32 logits."""

    config_class = NemotronLabsDiffusionConfig
    base_model_prefix = "encoder"
    main_input_name = "input_ids"
    supports_gradient_checkpointing = False
    _no_split_modules = ["Ministral3DecoderLayer"]
    _skip_keys_device_placement = ["past_key_values"]
    _supports_sdpa = True
    _supports_flash_attn = False
    _supports_flex_attn = False
    _supports_attention_backend = False

    def __init__(
        self, config: NemotronLabsDiffusionConfig, attn_implementation: str | None = None
    ) -> None:
        if not isinstance(config, NemotronLabsDiffusionConfig):
            raise TypeError(
                f"config must be a NemotronLabsDiffusionConfig, got {type(config).__name__}"
            )
        impl = attn_implementation or config._attn_implementation or "sdpa"
        if impl not in ATTN_IMPLEMENTATIONS:
            raise ValueError(
                f"attn_implementation {impl!r} is not supported; use one of {ATTN_IMPLEMENTATIONS}."
            )
        config._attn_implementation = impl
        super().__init__(config)
        self.encoder = Ministral3Model(config)
        self.diffusion_head = nn.Linear(config.hidden_size, config.vocab_size, bias=False)
        self.post_init()

    def get_input_embeddings(self) -> nn.Embedding:
        """The token embedding of the encoder."""
        return self.encoder.embed_tokens

    def get_output_embeddings(self) -> nn.Linear:
        """The (untied) diffusion head."""
        return self.diffusion_head

    def _apply(self, fn: Any, recurse: bool = True) -> NemotronLabsDiffusionModel:
        """Like `nn.Module._apply`, but the RoPE `inv_freq` buffers stay float32.

        `model.to(torch.bfloat16)` would otherwise round the inverse frequencies to bf16 and shift
        the rotary angles by radians at long positions (HF's own `from_pretrained(dtype=bf16)`
        keeps them fp32 as well, as does `load_model`).
        """
        rotary = self.encoder.rotary_emb
        before = dict(rotary.named_buffers(recurse=False))
        super()._apply(fn, recurse)
        for name, old in before.items():
            new = getattr(rotary, name)
            if old.dtype == torch.float32 and new.dtype != old.dtype and not old.is_meta:
                setattr(rotary, name, old.to(new.device))
        return self

    @property
    def attn_implementation(self) -> str:
        """The attention backend in use ("sdpa" or "eager")."""
        return str(self.config._attn_implementation)

    def forward(
        self,
        input_ids: torch.LongTensor,
        position_ids: torch.LongTensor,
        attention_mask: torch.Tensor | None = None,
        past_key_values: Any | None = None,
    ) -> torch.Tensor:
        """Logits `[B, Q, V]` in float32.

        Args:
            input_ids: `[B, Q]` token ids.
            position_ids: `[B, Q]` absolute positions (RoPE and Llama-4 query scaling use them).
            attention_mask: `[B, 1, Q, K]` additive float mask in the model dtype, `K` = cached
                keys + Q (see `additive_mask`); passed straight to the encoder. `None` lets the
                encoder build its causal mask; with a cache that requires the cache to implement
                transformers' `get_query_offset` / `get_mask_sizes`, so pass an explicit mask.
            past_key_values: object with `update(key_states, value_states, layer_idx) -> (k, v)`
                (per-layer keys/values `[B, H_kv, S, D]` after RoPE); it decides what is stored.
        """
        if input_ids.dim() != 2 or position_ids.shape != input_ids.shape:
            raise ValueError(
                f"input_ids and position_ids must both be [B, Q]; got {tuple(input_ids.shape)} "
                f"and {tuple(position_ids.shape)}"
            )
        if attention_mask is not None:
            if attention_mask.dim() != 4 or attention_mask.shape[-2] != input_ids.shape[1]:
                raise ValueError(
                    f"attention_mask must be [B, 1, Q, K] with Q={input_ids.shape[1]}; got "
                    f"{tuple(attention_mask.shape)}"
                )
            if attention_mask.dtype == torch.bool:
                raise ValueError("attention_mask must be additive float; use additive_mask(...)")
        out = self.encoder(
            input_ids=input_ids,
            attention_mask=attention_mask,
            position_ids=position_ids,
            past_key_values=past_key_values,
            use_cache=past_key_values is not None,
        )
        return self.diffusion_head(out.last_hidden_state).float()

    @staticmethod
    def additive_mask(allowed: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
        """Turn a bool mask (True = may attend) into the additive float mask `[B, 1, Q, K]`.

        Accepts `[Q, K]`, `[B, Q, K]` or `[B, 1, Q, K]`; blocked entries get `finfo(dtype).min`.
        """
        if allowed.dtype != torch.bool:
            raise TypeError(f"allowed must be a bool tensor, got {allowed.dtype}")
        if allowed.dim() == 2:
            allowed = allowed[None, None]
        elif allowed.dim() == 3:
            allowed = allowed[:, None]
        elif allowed.dim() != 4:
            raise ValueError(f"allowed must be 2D, 3D or 4D, got shape {tuple(allowed.shape)}")
        mask = torch.zeros(allowed.shape, dtype=dtype, device=allowed.device)
        return mask.masked_fill(~allowed, torch.finfo(dtype).min)

    @staticmethod
    def causal_mask(
        q_len: int, past_len: int = 0, dtype: torch.dtype = torch.float32, device: Any = None
    ) -> torch.Tensor:
        """Additive causal mask `[1, 1, Q, past_len + Q]` (query i sees keys <= past_len + i)."""
        q = torch.arange(q_len, device=device)[:, None] + past_len
        k = torch.arange(past_len + q_len, device=device)[None, :]
        return NemotronLabsDiffusionModel.additive_mask(k <= q, dtype)


__all__ = ["ATTN_IMPLEMENTATIONS", "NemotronLabsDiffusionModel"]
