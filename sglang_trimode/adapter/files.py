"""The drafter adapter on disk: which folder a checkpoint's drafter is, and the checks that refuse
an adapter the engines cannot apply exactly (no peft import).

Both layouts are PEFT's (``PeftModel.save_pretrained``): ``adapter_config.json`` and
``adapter_model.safetensors`` holding ``base_model.model.encoder.layers.{i}.self_attn.o_proj.
lora_{A,B}.weight`` (``[r, heads x head_dim]`` / ``[hidden, r]``), applied as
``o_proj(x) + (lora_alpha / r) B A x``:

- :data:`VENDOR_DIR` ``linear_spec_lora/``: NVIDIA's drafter (r 128, lora_alpha 512, dropout 0;
  the vendor loads it with ``PeftModel.from_pretrained(model, path,
  subfolder="linear_spec_lora")``), and what this project's training writes;
- :data:`LEGACY_DIR` ``drafter_lora/``: the folder name this project wrote before; still read.

Every refusal is a ``ValueError`` (``FileNotFoundError`` for a missing file) naming the file and
the field, and how to go on without the adapter (``--trimode-drafter off`` / ``drafter=False``).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from safetensors import safe_open

VENDOR_DIR = "linear_spec_lora"
LEGACY_DIR = "drafter_lora"
ADAPTER_CONFIG = "adapter_config.json"
ADAPTER_WEIGHTS = "adapter_model.safetensors"
KEY = "base_model.model.encoder.layers.{}.self_attn.o_proj.lora_{}.weight"
TARGET = "o_proj"
OFF_HINT = "or turn the drafter off (--trimode-drafter off / drafter=False)"
#: PEFT LoRA options this loader does not apply: each must keep a neutral value (absent, None,
#: False, "none", empty), else the adapter is refused naming the field.
UNSUPPORTED_OPTIONS = (
    "use_rslora", "use_dora", "bias", "lora_bias", "fan_in_fan_out", "rank_pattern",
    "alpha_pattern", "modules_to_save", "layers_to_transform", "layers_pattern",
    "exclude_modules", "target_parameters", "trainable_token_indices", "layer_replication",
    "use_qalora", "alora_invocation_tokens", "use_bdlora", "megatron_config",
)  # fmt: skip
_NEUTRAL = (None, False, "none", "", [], {})


def adapter_folder(checkpoint: str | Path, choice: bool | str = "on") -> Path | None:
    """The drafter folder ``--trimode-drafter CHOICE`` picks for ``checkpoint``: ``off`` (or
    False) none; ``on`` (or True) the checkpoint's ``linear_spec_lora/``, else its
    ``drafter_lora/``, else none (a refusal when it holds both); any other value is the path of
    an adapter folder, which must exist."""
    if choice in (False, "off"):
        return None
    if choice not in (True, "on"):
        folder = Path(str(choice))
        if not folder.is_dir():
            raise FileNotFoundError(
                f"--trimode-drafter {choice}: no such adapter folder (one holding "
                f"{ADAPTER_CONFIG} and {ADAPTER_WEIGHTS}); give an existing folder, {OFF_HINT}"
            )
        return folder
    found = [Path(checkpoint) / d for d in (VENDOR_DIR, LEGACY_DIR)]
    found = [f for f in found if f.is_dir()]
    if len(found) > 1:
        raise ValueError(
            f"{checkpoint} holds two drafter adapters, {VENDOR_DIR}/ and {LEGACY_DIR}/: pick one "
            f"with --trimode-drafter PATH (drafter=PATH), remove the other, {OFF_HINT}"
        )
    return found[0] if found else None


def local_checkpoint(
    model_path: str | Path,
    cache_dir: str | None = None,
    revision: str | None = None,
    local_files_only: bool = False,
) -> Path:
    """``model_path`` when it is a folder; for a hub id (``nvidia/Nemotron-Labs-Diffusion-8B``)
    the local snapshot with its drafter folders only (``huggingface_hub.snapshot_download`` of
    ``linear_spec_lora/*`` and ``drafter_lora/*``, into SGLang's ``--download-dir`` and at its
    ``--revision``), so ``--trimode-drafter on`` finds a hub checkpoint's drafter."""
    if Path(model_path).is_dir():
        return Path(model_path)
    from huggingface_hub import snapshot_download

    try:
        snapshot = snapshot_download(
            str(model_path),
            revision=revision,
            cache_dir=cache_dir,
            allow_patterns=[f"{d}/*" for d in (VENDOR_DIR, LEGACY_DIR)],
            local_files_only=local_files_only,
        )
    except Exception as e:  # huggingface_hub raises many kinds (offline, gated, missing repo)
        raise ValueError(
            f"--trimode-drafter: cannot fetch the drafter folders of {model_path} from the hub "
            f"({type(e).__name__}: {e}); pass a local checkpoint folder, an adapter PATH, "
            f"{OFF_HINT.removeprefix('or ')}"
        ) from e
    return Path(snapshot)


def read_config(folder: str | Path) -> tuple[int, float]:
    """``(r, lora_alpha)`` of ``folder/adapter_config.json`` after checking every field the
    engines rely on: a LoRA on ``o_proj`` only, none of :data:`UNSUPPORTED_OPTIONS` set."""
    conf_file, weights = Path(folder) / ADAPTER_CONFIG, Path(folder) / ADAPTER_WEIGHTS
    for f in (conf_file, weights):
        if not f.is_file():
            raise FileNotFoundError(
                f"{f}: missing; a drafter adapter folder needs {ADAPTER_CONFIG} and "
                f"{ADAPTER_WEIGHTS} (PEFT's save_pretrained writes both): restore it, {OFF_HINT}"
            )
    try:
        conf: dict[str, Any] = json.loads(conf_file.read_text())
    except json.JSONDecodeError as e:
        raise ValueError(f"{conf_file}: not JSON ({e}); {OFF_HINT}") from None
    if conf.get("peft_type", "LORA") != "LORA":
        raise ValueError(f"{conf_file}: peft_type must be 'LORA', got {conf['peft_type']!r}")
    targets = conf.get("target_modules")
    names = [targets] if isinstance(targets, str) else targets
    if not names or not all(isinstance(n, str) and n.split(".")[-1] == TARGET for n in names):
        raise ValueError(
            f"{conf_file}: target_modules must name {TARGET!r} only (a draft-only LoRA on the "
            f"attention output projection), got {targets!r}; {OFF_HINT}"
        )
    for field in UNSUPPORTED_OPTIONS:
        if conf.get(field) not in _NEUTRAL:
            raise ValueError(
                f"{conf_file}: {field} = {conf[field]!r} is not supported (plain LoRA, scale "
                f"lora_alpha / r, on every layer's {TARGET}); {OFF_HINT}"
            )
    rank, alpha = conf.get("r"), conf.get("lora_alpha")
    if isinstance(rank, bool) or not isinstance(rank, int) or rank < 1:
        raise ValueError(f"{conf_file}: r must be an integer >= 1, got {rank!r}")
    if isinstance(alpha, bool) or not isinstance(alpha, (int, float)) or alpha <= 0:
        raise ValueError(f"{conf_file}: lora_alpha must be a number > 0, got {alpha!r}")
    return rank, float(alpha)


def check_adapter(
    folder: str | Path, num_layers: int, in_features: int, out_features: int
) -> tuple[int, float]:
    """``read_config`` plus the tensors' names and shapes (read from the safetensors header, no
    data) against a model with these ``o_proj`` shapes; returns ``(r, lora_alpha)``."""
    rank, alpha = read_config(folder)
    weights = Path(folder) / ADAPTER_WEIGHTS
    want = {"A": (rank, in_features), "B": (out_features, rank)}
    expected = {KEY.format(i, ab) for i in range(num_layers) for ab in "AB"}
    with safe_open(str(weights), framework="pt") as f:
        names = set(f.keys())
        if names != expected:
            raise ValueError(
                f"{weights}: tensors do not match a {num_layers}-layer model's o_proj LoRA: "
                f"missing {sorted(expected - names)[:4]}, unexpected "
                f"{sorted(names - expected)[:4]}; {OFF_HINT}"
            )
        for name in sorted(expected):
            shape = tuple(f.get_slice(name).get_shape())
            ab = name.rsplit(".", 2)[-2][-1]
            if shape != want[ab]:
                raise ValueError(
                    f"{weights}: {name} has shape {shape}, expected {want[ab]} (field r = "
                    f"{rank} in {ADAPTER_CONFIG}; o_proj {in_features} -> {out_features}): the "
                    f"config's r and the tensors disagree, or the adapter is another model's; "
                    f"{OFF_HINT}"
                )
    return rank, alpha


def model_shapes(config: Any) -> tuple[int, int, int]:
    """``(layers, o_proj in features heads x head_dim, o_proj out features hidden)`` of a model
    config (an object or config.json's dict)."""
    get = config.get if isinstance(config, dict) else lambda k, d=None: getattr(config, k, d)
    heads, hidden = int(get("num_attention_heads")), int(get("hidden_size"))
    head_dim = get("head_dim") or hidden // heads
    return int(get("num_hidden_layers")), heads * int(head_dim), hidden


def config_peft_fields(rank: int, alpha: float) -> dict[str, Any]:
    """The ``adapter_config.json`` this project writes: loadable by ``PeftModel.from_pretrained``
    and by :func:`read_config`."""
    return {
        "peft_type": "LORA",
        "r": rank,
        "lora_alpha": alpha,
        "lora_dropout": 0.0,
        "target_modules": [TARGET],
        "bias": "none",
        "use_rslora": False,
        "use_dora": False,
        "fan_in_fan_out": False,
        "task_type": None,
        "inference_mode": True,
        "base_model_name_or_path": None,
    }
