"""Test helpers: a PEFT adapter written by the `peft` library in the vendor's layout
(`linear_spec_lora/`), and the vendor's linear self-speculation run on a PEFT-wrapped model.

The oracle (`peft_linear_spec`) follows the vendor's description (docs/model.md), batch size 1
as its code is, with transformers' `DynamicCache`: a causal prefill, then per step a
bidirectional draft forward over `[seed, MASK x (n-1)]` against the cache (its K/V cropped away
after), a causal verify of `[seed, d_1..]` (cropped to the accepted tokens). PEFT's own LoRA
layers apply the adapter, enabled (the vendor's `_disable_adapters = False`) for the draft
forwards only; prefill and verify run inside `disable_adapter()`. The cache matters: the draft
forward attends to the prefix's K/V as the adapter-free forwards wrote them (a forward without
a cache over prefix + block would run the prefix through the adapter too).
"""

from __future__ import annotations

import shutil
from pathlib import Path

import torch
from peft import LoraConfig, PeftModel, get_peft_model
from transformers import DynamicCache

from sglang_trimode import default_model_path
from sglang_trimode.adapter.files import LEGACY_DIR, VENDOR_DIR
from sglang_trimode.reference.checkpoint import load_model

RANK, ALPHA = 8, 32  # scale 4, as the vendor's r 128 / alpha 512
B_STD = 1.0  # random nonzero lora_B (a fresh PEFT adapter has B = 0: the base model)


def write_peft_adapter(
    checkpoint: Path, seed: int = 0, target: str = "o_proj", b_std: float = B_STD
) -> Path:
    """`checkpoint/linear_spec_lora/` written by `PeftModel.save_pretrained`: LoRA r 8, alpha
    32, dropout 0 on `target`, A and B seeded and nonzero (B of std `b_std`)."""
    model = load_model(checkpoint)
    cfg = LoraConfig(r=RANK, lora_alpha=ALPHA, target_modules=[target], lora_dropout=0.0)
    peft_model = get_peft_model(model, cfg)
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in peft_model.named_parameters():
            if "lora_A" in name:
                p.copy_(torch.randn(p.shape, generator=gen) * p.shape[-1] ** -0.5)
            elif "lora_B" in name:
                p.copy_(torch.randn(p.shape, generator=gen) * b_std)
    out = Path(checkpoint) / VENDOR_DIR
    shutil.rmtree(out, ignore_errors=True)
    peft_model.save_pretrained(str(out))
    return out


def drafted_default_model(dest: Path, b_std: float, seed: int = 0) -> Path:
    """A copy of the default model at `dest` with a seeded random PEFT adapter (any shipped
    adapter replaced); the servers' drafter tests use it."""
    shutil.copytree(default_model_path(), dest)
    for d in (VENDOR_DIR, LEGACY_DIR):
        shutil.rmtree(dest / d, ignore_errors=True)
    write_peft_adapter(dest, seed=seed, b_std=b_std)
    return dest


def peft_model(checkpoint: Path) -> PeftModel:
    """The base checkpoint wrapped as the vendor does: `PeftModel.from_pretrained(model, path,
    subfolder="linear_spec_lora")`."""
    return PeftModel.from_pretrained(load_model(checkpoint), str(checkpoint), subfolder=VENDOR_DIR)


def _forward(
    pm: PeftModel, cache: DynamicCache, ids: list[int], bidirectional: bool, adapter: bool
) -> torch.Tensor:
    """Logits `[len(ids), V]` of `ids` after the cached tokens (their K/V appended)."""
    past, n = cache.get_seq_length(), len(ids)
    allowed = torch.ones(n, past + n, dtype=torch.bool)
    if not bidirectional:
        allowed[:, past:] = torch.ones(n, n).tril().bool()
    mask = pm.get_base_model().additive_mask(allowed[None, None], torch.float32)
    args = (torch.tensor([ids]), torch.arange(past, past + n)[None], mask)
    if adapter:
        return pm(*args, past_key_values=cache)[0]
    with pm.disable_adapter():
        return pm(*args, past_key_values=cache)[0]


@torch.no_grad()
def peft_linear_spec(
    pm: PeftModel, prompt: list[int], max_new: int, block: int, mask_id: int
) -> tuple[list[int], list[list[int]]]:
    """Greedy linear self-speculation (tokens, drafts of every step) with the adapter on for
    the draft forwards only. Drafts are `min(block, remaining)` long, as the engine's."""
    cache = DynamicCache(config=pm.get_base_model().config)
    seed = int(_forward(pm, cache, list(prompt), False, adapter=False)[-1].argmax())
    out, drafts_seen = [seed], []
    while len(out) < max_new:
        n, past = min(block, max_new - len(out)), cache.get_seq_length()
        drafts: list[int] = []
        if n > 1:
            rows = _forward(pm, cache, [seed] + [mask_id] * (n - 1), True, adapter=True)
            cache.crop(past)  # the draft forward keeps no K/V
            drafts = rows[1:].argmax(-1).tolist()
            drafts_seen.append(drafts)
        ar = _forward(pm, cache, [seed] + drafts, False, adapter=False).argmax(-1).tolist()
        a = 0
        while a < len(drafts) and drafts[a] == ar[a]:
            a += 1
        cache.crop(past + 1 + a)  # keep the seed and the accepted drafts
        out += drafts[:a] + [ar[a]]
        seed = ar[a]
    return out[:max_new], drafts_seen
