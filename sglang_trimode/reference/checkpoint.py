"""Save and strictly load Nemotron-Labs-Diffusion checkpoints in the HF layout.

A checkpoint folder holds `config.json` and either `model.safetensors` or shards
`model-0000K-of-0000N.safetensors` with `model.safetensors.index.json`
(`{"metadata": {"total_size": ...}, "weight_map": {name: file}}`). Tensor names are `encoder.*`
and `diffusion_head.weight`. Sub-folders such as the optional LoRA drafter `linear_spec_lora/`
and any other files are ignored by `load_model`.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from pathlib import Path

import torch
from huggingface_hub import save_torch_state_dict
from safetensors import safe_open
from transformers.models.ministral3.modeling_ministral3 import Ministral3RotaryEmbedding

from sglang_trimode.config import ARCHITECTURE, MODEL_TYPE, NemotronLabsDiffusionConfig
from sglang_trimode.reference.model import NemotronLabsDiffusionModel

CONFIG_NAME = "config.json"
WEIGHTS_NAME = "model.safetensors"
INDEX_NAME = "model.safetensors.index.json"
_MAX_LISTED = 20


class CheckpointError(ValueError):
    """The checkpoint's tensors do not match the model (names and/or shapes)."""


def _listing(what: str, names: Iterable[str]) -> str:
    names = sorted(names)
    shown = ", ".join(names[:_MAX_LISTED])
    more = f", ... ({len(names) - _MAX_LISTED} more)" if len(names) > _MAX_LISTED else ""
    return f"{len(names)} {what}: {shown}{more}"


def save_checkpoint(
    model: NemotronLabsDiffusionModel, path: str | Path, max_shard_bytes: int | None = None
) -> None:
    """Write `config.json` and the weights (sharded when they exceed `max_shard_bytes`)."""
    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    config = model.config
    config.architectures = [ARCHITECTURE]
    config.save_pretrained(path)

    if max_shard_bytes is not None and max_shard_bytes < 1:
        raise ValueError(f"max_shard_bytes must be >= 1, got {max_shard_bytes}")
    state = {k: v.detach().to("cpu").contiguous() for k, v in model.state_dict().items()}
    for old in [*path.glob("model*.safetensors"), path / INDEX_NAME]:
        old.unlink(missing_ok=True)  # stale files from an earlier save would confuse loading
    # huggingface_hub writes `model.safetensors`, or shards `model-0000K-of-0000N.safetensors`
    # with `model.safetensors.index.json` when the tensors exceed `max_shard_size`
    total = sum(t.numel() * t.element_size() for t in state.values())
    save_torch_state_dict(
        state, path, max_shard_size=max_shard_bytes or total + 1, metadata={"format": "pt"}
    )


def load_config(path: str | Path) -> NemotronLabsDiffusionConfig:
    """Read and check `config.json` of a checkpoint folder."""
    path = Path(path)
    if not path.is_dir():
        raise FileNotFoundError(f"checkpoint folder {path} does not exist")
    cfg_file = path / CONFIG_NAME
    if not cfg_file.is_file():
        raise FileNotFoundError(f"{cfg_file} is missing; a checkpoint folder needs a config.json")
    raw = json.loads(cfg_file.read_text())
    archs = raw.get("architectures") or []
    if not archs or archs[0] != ARCHITECTURE:
        raise ValueError(
            f"{cfg_file}: architectures is {archs!r}, expected [{ARCHITECTURE!r}]; this loader "
            "only serves Nemotron-Labs-Diffusion text checkpoints (fix config.json or use the "
            "right folder)."
        )
    if raw.get("model_type") != MODEL_TYPE:
        raise ValueError(
            f"{cfg_file}: model_type is {raw.get('model_type')!r}, expected {MODEL_TYPE!r} "
            "(fix config.json or use the right folder)."
        )
    config = NemotronLabsDiffusionConfig.from_dict(raw)
    config._name_or_path = str(path)
    return config


def _weight_files(path: Path) -> list[Path]:
    index = path / INDEX_NAME
    if index.is_file():
        weight_map = json.loads(index.read_text()).get("weight_map")
        if not isinstance(weight_map, dict) or not weight_map:
            raise CheckpointError(f"{index} has no weight_map")
        files = [path / f for f in sorted(set(weight_map.values()))]
        absent = [f.name for f in files if not f.is_file()]
        if absent:
            raise FileNotFoundError(f"{index} names shard files that are missing: {absent}")
        return files
    single = path / WEIGHTS_NAME
    if single.is_file():
        return [single]
    raise FileNotFoundError(f"{path} has neither {WEIGHTS_NAME} nor {INDEX_NAME}")


def _tensor_locations(files: list[Path]) -> tuple[dict[str, Path], dict[str, tuple[int, ...]]]:
    where: dict[str, Path] = {}
    shapes: dict[str, tuple[int, ...]] = {}
    for file in files:
        with safe_open(str(file), framework="pt") as f:
            for name in f.keys():
                if name in where:
                    raise CheckpointError(
                        f"tensor {name} is in both {where[name].name} and {file.name}"
                    )
                where[name] = file
                shapes[name] = tuple(f.get_slice(name).get_shape())
    return where, shapes


def load_model(
    path: str | Path,
    device: str | torch.device = "cpu",
    dtype: torch.dtype = torch.float32,
    attn_implementation: str = "sdpa",
) -> NemotronLabsDiffusionModel:
    """Build the model on the meta device and fill it strictly from the checkpoint's safetensors.

    Missing, unexpected and wrongly shaped tensors are all reported by name in one
    `CheckpointError`. Floating tensors are cast to `dtype`; the model is returned in eval mode.
    """
    path = Path(path)
    config = load_config(path)
    where, shapes = _tensor_locations(_weight_files(path))

    with torch.device("meta"):
        model = NemotronLabsDiffusionModel(config, attn_implementation=attn_implementation)
    expected = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    missing = expected.keys() - shapes.keys()
    unexpected = shapes.keys() - expected.keys()
    wrong = sorted(
        f"{k} (checkpoint {list(shapes[k])}, model {list(expected[k])})"
        for k in expected.keys() & shapes.keys()
        if shapes[k] != expected[k]
    )
    if missing or unexpected or wrong:
        parts = [
            _listing(what, names)
            for what, names in (
                ("missing tensors", missing),
                ("unexpected tensors", unexpected),
                ("shape mismatches", wrong),
            )
            if names
        ]
        raise CheckpointError(f"checkpoint {path} does not match the model: " + "; ".join(parts))

    state: dict[str, torch.Tensor] = {}
    by_file: dict[Path, list[str]] = {}
    for name, file in where.items():
        by_file.setdefault(file, []).append(name)
    for file, names in by_file.items():
        with safe_open(str(file), framework="pt", device="cpu") as f:
            for name in names:
                t = f.get_tensor(name)
                t = t.to(device=device, dtype=dtype if t.is_floating_point() else t.dtype)
                state[name] = t
    model.load_state_dict(state, strict=True, assign=True)
    # Non-persistent RoPE buffers are not in the checkpoint: rebuild them (fp32) on the device.
    model.encoder.rotary_emb = Ministral3RotaryEmbedding(config=config).to(device)
    on_meta = [n for n, t in [*model.named_parameters(), *model.named_buffers()] if t.is_meta]
    if on_meta:  # pragma: no cover - guards against new buffers in a future transformers
        raise CheckpointError(_listing("tensors left uninitialised", on_meta))
    config.dtype = dtype
    return model.eval()


__all__ = ["CheckpointError", "load_config", "load_model", "save_checkpoint"]
