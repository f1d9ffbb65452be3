"""A draft-only LoRA adapter on each layer's attention output projection (``o_proj``).

The vendor ships an optional drafter adapter (``linear_spec_lora/``: LoRA on ``o_proj`` only,
applied in the draft pass only). Here it is applied *per token*: ``o_proj(x) + s * B A x`` on the
rows a step drafts with (a linear draft block, a quadratic step's mask groups; diffusion blocks
only on request, ``adapter/rows.py``) and plain
``o_proj(x)`` on every committable (causal) row, so the verifying AR path, and with it greedy
self-speculation's output, is the base model's exactly. Rows that draft never feed a causal row
(causal rows do not attend to them), so one forward may mix both.

Shapes: ``A [layers, r, H*D]``, ``B [layers, hidden, r]``, ``s = alpha / r`` (LoRA, Hu et al.
2021, eq. 3). ``B`` starts at zero: a fresh adapter is the base model.

Tensor parallel (:meth:`DrafterLoRA.shard`): ``o_proj`` is row-parallel, so rank ``k`` sees only
its heads' slice ``x_k`` of the input and computes a partial output ``W_k x_k``; the ranks' partial
outputs are summed by an all-reduce. ``A`` is sharded along its input dimension like ``o_proj``'s
weight (``A_k = A[:, cols_k]``; ``B`` replicated) and ``B A_k x_k`` is added to the partial output,
so that same all-reduce sums the LoRA too: ``sum_k B A_k x_k = B A x``, no collective of its own.
Where ``o_proj`` reduces its output itself (SGLang's ``reduce_results``; SGLang's Ministral-3
leaves it to the decoder layer), the hook sees the sum already, and the ``r``-wide partial
products ``A_k x_k`` are all-reduced before ``B`` instead.

On disk: PEFT's layout in ``linear_spec_lora/`` (the vendor's folder, :data:`DRAFTER_DIR`; the
older ``drafter_lora/`` is still read): ``adapter/files.py`` finds and checks it, with
no peft import. Which rows of a forward get the adapter: ``sglang_trimode/adapter/rows.py``.
"""

from __future__ import annotations

import contextlib
import json
import shutil
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors import safe_open
from safetensors.torch import save_file
from torch import nn

from sglang_trimode.adapter.files import (
    ADAPTER_CONFIG,
    ADAPTER_WEIGHTS,
    KEY,
    LEGACY_DIR,
    VENDOR_DIR,
    adapter_folder,
    check_adapter,
    config_peft_fields,
    model_shapes,
)

#: the folder this project writes (the vendor's name); ``adapter_files.LEGACY_DIR`` is read too
DRAFTER_DIR = VENDOR_DIR


@dataclass(frozen=True)
class DrafterConfig:
    """LoRA rank and alpha of the drafter (``scale`` = alpha / rank)."""

    rank: int
    alpha: float

    def __post_init__(self) -> None:
        if self.rank < 1:
            raise ValueError(f"drafter rank must be >= 1, got {self.rank}")
        if self.alpha <= 0:
            raise ValueError(f"drafter alpha must be > 0, got {self.alpha}")

    @property
    def scale(self) -> float:
        return self.alpha / self.rank


class DrafterLoRA(nn.Module):
    """LoRA factors for every layer's ``o_proj``; :meth:`attach` hooks them into a model and
    :meth:`rows` selects, per forward, the token rows they apply to."""

    def __init__(self, cfg: DrafterConfig, num_layers: int, in_features: int, out_features: int):
        super().__init__()
        self.cfg = cfg
        self.lora_A = nn.Parameter(torch.empty(num_layers, cfg.rank, in_features))
        self.lora_B = nn.Parameter(torch.zeros(num_layers, out_features, cfg.rank))
        nn.init.normal_(self.lora_A, std=in_features**-0.5)
        self._gate: torch.Tensor | None = None  # [B, Q] float, 1 = draft row
        self._handles: list = []
        self._reduce: Callable[[torch.Tensor], torch.Tensor] | None = None  # sums A_k x_k
        self._sharded = False

    def shard(
        self,
        start: int,
        stop: int,
        reduce: Callable[[torch.Tensor], torch.Tensor] | None = None,
    ) -> DrafterLoRA:
        """Keep ``A``'s input columns ``[start, stop)`` (this rank's slice of a row-parallel
        ``o_proj``'s input). ``reduce`` None: the hook adds this rank's partial ``B A_k x_k`` to
        ``o_proj``'s partial output, summed over the ranks downstream with it; else ``reduce``
        (an all-reduce over the TP group, for an ``o_proj`` that returns the sum) sums the
        ``A_k x_k`` first. Every rank must run the same forwards with the same gates."""
        full = self.lora_A.shape[2]
        if not 0 <= start < stop <= full:
            raise ValueError(f"drafter shard [{start}, {stop}) outside o_proj's {full} inputs")
        self.lora_A = nn.Parameter(self.lora_A.detach()[:, :, start:stop].contiguous())
        self._reduce, self._sharded = reduce, True
        return self

    @classmethod
    def for_model(cls, model: nn.Module, cfg: DrafterConfig) -> DrafterLoRA:
        """A fresh adapter shaped for ``model`` (a reference ``NemotronLabsDiffusionModel``), on
        its device and dtype, not yet attached."""
        return _like(cls(cfg, *_shapes(model)), model)

    def attach(self, model: nn.Module) -> DrafterLoRA:
        """Hook every layer's ``o_proj`` of ``model`` (idempotent): the reference model
        (``encoder.layers``) or SGLang's (``model.layers``)."""
        self.detach()
        layers = model.encoder.layers if hasattr(model, "encoder") else model.model.layers
        if len(layers) != self.lora_A.shape[0]:
            raise ValueError(
                f"drafter has {self.lora_A.shape[0]} layers, the model {len(layers)}: it belongs "
                "to another checkpoint"
            )
        for i, layer in enumerate(layers):
            hook = self._hook(i)
            self._handles.append(layer.self_attn.o_proj.register_forward_hook(hook))
        return self

    def detach(self) -> None:
        for h in self._handles:
            h.remove()
        self._handles = []

    def _hook(self, layer: int):
        def hook(_module: nn.Module, inputs: tuple, out: torch.Tensor) -> torch.Tensor:
            if self._gate is None:
                return out
            x = inputs[0]  # [B, Q, H*D] (reference) or [T, H*D] (SGLang, packed)
            if self._gate.shape != x.shape[:-1]:
                raise RuntimeError(
                    f"drafter gate {tuple(self._gate.shape)} does not match the o_proj input "
                    f"{tuple(x.shape)}: one flag per token row is needed"
                )
            base = out[0] if isinstance(out, tuple) else out  # SGLang's linears: (out, bias)
            a, b = self.lora_A[layer], self.lora_B[layer]
            z = x.to(a.dtype) @ a.T  # [..., r]; one rank's share of A x when sharded
            if self._reduce is not None:
                z = self._reduce(z.contiguous())
            delta = z @ b.T  # [..., hidden]
            base = base + (self.cfg.scale * delta * self._gate[..., None]).to(base.dtype)
            return (base, *out[1:]) if isinstance(out, tuple) else base

        return hook

    @contextlib.contextmanager
    def rows(self, gate: torch.Tensor | None) -> Iterator[None]:
        """Apply the adapter to the rows where ``gate`` (bool, the input's shape without its last
        dimension: ``[B, Q]`` here, ``[T]`` in SGLang's packed forwards) is True inside the block;
        ``None`` or an all-False gate runs the base model. Pass the gate on the CPU: it is checked
        there (no device sync) and moved to the adapter's device here."""
        if gate is not None and not bool(gate.any()):
            gate = None
        a = self.lora_A
        self._gate = None if gate is None else gate.to(device=a.device, dtype=a.dtype)
        try:
            yield
        finally:
            self._gate = None

    def save(self, checkpoint: str | Path) -> Path:
        """Write the adapter into ``checkpoint/linear_spec_lora/`` (PEFT's layout and names, so
        ``PeftModel.from_pretrained(model, checkpoint, subfolder="linear_spec_lora")`` loads
        it too). It replaces the checkpoint's drafter: an older ``drafter_lora/`` is removed."""
        if self._sharded:
            raise ValueError("a sharded drafter holds one rank's columns of A: save the whole one")
        shutil.rmtree(Path(checkpoint) / LEGACY_DIR, ignore_errors=True)
        out = Path(checkpoint) / DRAFTER_DIR
        out.mkdir(parents=True, exist_ok=True)
        conf = config_peft_fields(self.cfg.rank, self.cfg.alpha)
        (out / ADAPTER_CONFIG).write_text(json.dumps(conf, indent=1) + "\n")
        tensors = {}
        for i in range(self.lora_A.shape[0]):
            tensors[KEY.format(i, "A")] = self.lora_A[i].detach().cpu().contiguous()
            tensors[KEY.format(i, "B")] = self.lora_B[i].detach().cpu().contiguous()
        save_file(tensors, str(out / ADAPTER_WEIGHTS), metadata={"format": "pt"})
        return out


def has_drafter(checkpoint: str | Path) -> bool:
    """Whether ``checkpoint`` ships a drafter adapter folder (``linear_spec_lora/`` or the older
    ``drafter_lora/``)."""
    return adapter_folder(checkpoint, "on") is not None


def load_drafter(
    folder: str | Path, num_layers: int, in_features: int, out_features: int
) -> DrafterLoRA:
    """Read the adapter folder ``folder`` for a model of these shapes (fp32, CPU) after
    ``adapter_files.check_adapter``: a refusal names the file and the field that does not fit."""
    rank, alpha = check_adapter(folder, num_layers, in_features, out_features)
    lora = DrafterLoRA(DrafterConfig(rank, alpha), num_layers, in_features, out_features)
    with safe_open(str(Path(folder) / ADAPTER_WEIGHTS), framework="pt") as f, torch.no_grad():
        for i in range(num_layers):
            lora.lora_A[i].copy_(f.get_tensor(KEY.format(i, "A")).float())
            lora.lora_B[i].copy_(f.get_tensor(KEY.format(i, "B")).float())
    return lora


def load_drafter_for(model: nn.Module, folder: str | Path) -> DrafterLoRA:
    """The whole adapter in ``folder`` shaped for ``model`` (a reference model or SGLang's), on
    the model's device and dtype, not yet attached (``DrafterLoRA.shard``: one TP rank's)."""
    return _like(load_drafter(folder, *_shapes(model)), model)


def _shapes(model: nn.Module) -> tuple[int, int, int]:
    """``(layers, o_proj in features H*D, o_proj out features hidden)`` from the model's config."""
    return model_shapes(model.config)


def _like(lora: DrafterLoRA, model: nn.Module) -> DrafterLoRA:
    p = next(model.parameters())
    return lora.to(device=p.device, dtype=p.dtype)


__all__ = [
    "DRAFTER_DIR",
    "DrafterConfig",
    "DrafterLoRA",
    "has_drafter",
    "load_drafter",
    "load_drafter_for",
]
