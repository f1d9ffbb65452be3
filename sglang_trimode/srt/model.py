"""SGLang model class for Nemotron-Labs-Diffusion checkpoints: plain AR (causal) serving.

The backbone is SGLang's own Ministral-3 implementation (Llama layers: `QKVParallelLinear`,
`MergedColumnParallelLinear`, `RadixAttention`, YaRN rotary embedding, Llama-4 per-position query
scaling); the untied `diffusion_head` is the LM head, read through SGLang's `LogitsProcessor`.
Weight names map `encoder.*` -> `model.*` and `diffusion_head.weight` -> `lm_head.weight`; the
stacked `qkv_proj` / `gate_up_proj` shards are handled by the Llama loader.

Only causal attention is served here; the diffusion / self-speculation masks need the TRIMODE
worker and its attention backend (`srt/worker.py`, `srt/attention.py`). One hook for the worker:
a forward whose plan (`forward_batch.spec_info`) names `logit_rows` returns a `RowLogitsOutput`:
the logits of those rows only, and `head(rows)`, the LM head over any other rows' hidden states
of the same forward (a quadratic step reads one of its mask groups, chosen after verifying).

The Llama-4 query scaling happens in SGLang's `Ministral3Attention.forward` (q times the
per-position factor) before attention is called, so no attention backend scales q again.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Iterable

import torch
from sglang.srt.layers.logits_processor import LogitsMetadata, LogitsProcessorOutput
from sglang.srt.models.ministral3 import Ministral3ForCausalLM

_RENAMES = (("encoder.", "model."), ("diffusion_head.", "lm_head."))


def checkpoint_name_to_sglang(name: str) -> str:
    """Map a checkpoint tensor name to the name of this SGLang model's parameter."""
    for old, new in _RENAMES:
        if name.startswith(old):
            return new + name[len(old) :]
    raise ValueError(
        f"unexpected tensor {name!r} in a Nemotron-Labs-Diffusion checkpoint: expected "
        "'encoder.*' or 'diffusion_head.weight'"
    )


class NemotronLabsDiffusionModel(Ministral3ForCausalLM):
    """`architectures[0]` of the checkpoints; SGLang's Ministral-3 with the tri-mode names."""

    def __init__(self, config, quant_config=None, prefix: str = "") -> None:
        if config.tie_word_embeddings:
            raise ValueError(
                "Nemotron-Labs-Diffusion checkpoints have an untied diffusion_head; "
                "tie_word_embeddings must be false"
            )
        super().__init__(config, quant_config=quant_config, prefix=prefix)
        # SGLang's Ministral3Attention reads the Llama-4 scaling length from a top-level
        # `original_max_position_embeddings` (default 16384); transformers (our reference) reads
        # it from rope_parameters. Use the reference's value for the query scaling only.
        orig = (config.rope_parameters or {}).get("original_max_position_embeddings")
        if orig is not None:
            for layer in self.model.layers:
                attn = getattr(layer, "self_attn", None)
                if attn is not None and hasattr(attn, "llama_4_scaling_beta"):
                    attn.max_position_embeddings = int(orig)

    @torch.no_grad()
    def forward(self, input_ids, positions, forward_batch, input_embeds=None, **kwargs):
        plan = forward_batch.spec_info
        rows = getattr(plan, "logit_rows", None)
        plain = kwargs.get("get_embedding") or self.capture_aux_hidden_states
        if rows is None or plain or not self.pp_group.is_last_rank:
            return super().forward(input_ids, positions, forward_batch, input_embeds, **kwargs)
        hidden = self.model(
            input_ids,
            positions,
            forward_batch,
            input_embeds,
            pp_proxy_tensors=kwargs.get("pp_proxy_tensors"),
        )  # [T, hidden]
        meta = LogitsMetadata.from_forward_batch(forward_batch)

        @torch.no_grad()
        def head(idx: torch.Tensor) -> torch.Tensor:  # [n] row indices -> [n, V] logits
            states = hidden[idx.to(hidden.device)]
            # a fresh tensor per call: SGLang's shared logits buffer would alias earlier rows
            return self.logits_processor._get_logits(
                states, self.lm_head, meta, use_logits_buffer=False
            )

        return RowLogitsOutput(next_token_logits=head(rows), head=head)

    def load_weights(self, weights: Iterable[tuple[str, torch.Tensor]]):
        return super().load_weights(
            (checkpoint_name_to_sglang(name), tensor) for name, tensor in weights
        )


@dataclasses.dataclass
class RowLogitsOutput(LogitsProcessorOutput):
    """`next_token_logits` of the plan's `logit_rows` only, `[len(logit_rows), V]`; `head(idx)`:
    the logits of any rows `idx [n]` of the same forward -> `[n, V]` (a fresh tensor per call)."""

    head: Callable[[torch.Tensor], torch.Tensor] | None = None


EntryClass = [NemotronLabsDiffusionModel]
