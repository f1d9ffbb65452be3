"""Export a trained checkpoint as the embedded default model (weights cast to save space).

    python -m sglang_trimode.training.export SRC [--dst sglang_trimode/assets/default_model]
                                             [--dtype bfloat16]

Copies the tokenizer files, ``training_log.json`` and the drafter adapter into the vendor's
``linear_spec_lora/`` (a source's older ``drafter_lora/`` is written there too, its config in
PEFT's form; a destination adapter without a source one is removed: it belongs to the old
weights); the model
card (README.md) in the destination is kept. A ``tokenizer_config.json`` without a chat
template gets ``CHAT_TEMPLATE`` (the messages' contents, one per line: the model is not
chat-trained, but SGLang's ``/v1/chat/completions`` needs a template).
"""

from __future__ import annotations

import argparse
import json
import shutil
from pathlib import Path

import torch

from sglang_trimode.adapter.files import (
    ADAPTER_CONFIG,
    LEGACY_DIR,
    VENDOR_DIR,
    adapter_folder,
    config_peft_fields,
    read_config,
)
from sglang_trimode.models import EMBEDDED
from sglang_trimode.reference.checkpoint import load_model, save_checkpoint

COPIED = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "training_log.json")
#: The shipped model's chat template: the messages' contents joined by newlines.
CHAT_TEMPLATE = (
    "{%- for message in messages -%}{{ message['content'] }}"
    "{%- if not loop.last -%}{{ '\\n' }}{%- endif -%}{%- endfor -%}"
)


def export(src: Path, dst: Path, dtype: torch.dtype) -> Path:
    model = load_model(src, dtype=dtype)
    dst.mkdir(parents=True, exist_ok=True)
    save_checkpoint(model, dst)
    for name in COPIED:
        if (src / name).is_file():
            shutil.copy2(src / name, dst / name)
    add_chat_template(dst / "tokenizer_config.json")
    copy_drafter(src, dst)
    size = sum(p.stat().st_size for p in dst.rglob("*") if p.is_file())
    print(f"[export] {src} -> {dst} ({dtype}), {size / 1e6:.2f} MB")
    return dst


def copy_drafter(src: Path, dst: Path) -> None:
    """The source's drafter adapter replaces the destination's, in ``linear_spec_lora/``: an
    adapter belongs to the weights it was trained on, so a destination adapter is removed when
    the source has none."""
    new = adapter_folder(src, "on")
    for old in (dst / VENDOR_DIR, dst / LEGACY_DIR):
        if old.exists():
            shutil.rmtree(old)
            if new is None:
                print(f"[export] removed {old}: it was trained on the previous weights")
    if new is not None:
        out = dst / VENDOR_DIR
        shutil.copytree(new, out)
        conf = config_peft_fields(*read_config(out))
        (out / ADAPTER_CONFIG).write_text(json.dumps(conf, indent=1) + "\n")


def add_chat_template(path: Path) -> None:
    """Give a ``tokenizer_config.json`` without a chat template ``CHAT_TEMPLATE``."""
    if not path.is_file():
        return
    cfg = json.loads(path.read_text())
    if not cfg.get("chat_template"):
        cfg["chat_template"] = CHAT_TEMPLATE
        path.write_text(json.dumps(cfg, indent=2) + "\n")


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("src", type=Path)
    ap.add_argument("--dst", type=Path, default=EMBEDDED)
    ap.add_argument("--dtype", choices=["float32", "bfloat16", "float16"], default="bfloat16")
    args = ap.parse_args(argv)
    export(args.src, args.dst, getattr(torch, args.dtype))


if __name__ == "__main__":
    main()
