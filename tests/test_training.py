"""Training: the dual-stream mask, and a few steps of a very small model end to end."""

import json

import pytest
import torch
from transformers import AutoTokenizer

from sglang_trimode import TriModeEngine
from sglang_trimode.training import corpus
from sglang_trimode.training.objective import dual_stream_mask, noise_blocks
from sglang_trimode.training.train import main as train_main


def test_dual_stream_mask():
    t, b = 12, 4
    m = dual_stream_mask(t, b)
    clean, noisy = slice(0, t), slice(t, 2 * t)
    assert torch.equal(m[clean, clean], torch.ones(t, t).tril().bool())  # token-causal
    assert not m[clean, noisy].any()  # the clean stream never sees the noise
    blk = torch.arange(t) // b
    assert torch.equal(m[noisy, noisy], blk[:, None] == blk[None, :])  # own block, both ways
    assert torch.equal(m[noisy, clean], blk[None, :] < blk[:, None])  # earlier clean blocks only


def test_noise_blocks_uses_one_ratio_per_block():
    x = torch.arange(4, 4 + 64).repeat(200, 1)
    out = noise_blocks(x, 8, mask_id=3, generator=torch.Generator().manual_seed(0))
    assert torch.equal(out.tokens == 3, out.masked)
    assert torch.equal(out.tokens[~out.masked], x[~out.masked])
    ratio = out.ratio.view(200, 8, 8)
    assert (ratio == ratio[..., :1]).all()
    # the empirical masking rate follows the drawn ratio
    assert abs(out.masked.float().mean() - out.ratio.mean()) < 0.02


def test_a_few_steps_lower_both_losses_and_the_checkpoint_loads(tmp_path):
    out = tmp_path / "m"
    summary = train_main(
        [
            "--out",
            str(out),
            "--steps",
            "40",
            "--corpus-files",
            "8",
            "--vocab-size",
            "300",
            "--hidden",
            "32",
            "--intermediate",
            "64",
            "--layers",
            "1",
            "--heads",
            "2",
            "--kv-heads",
            "1",
            "--batch",
            "4",
            "--seq-len",
            "64",
            "--block-sizes",
            "4,8",
            "--lr",
            "1e-2",
            "--warmup",
            "5",
            "--eval-every",
            "20",
            "--eval-batches",
            "1",
        ]
    )
    log = summary["log"]
    first = log[:5]
    last = log[-5:]
    for key in ("ar_loss", "diffusion_loss"):
        before = sum(r[key] for r in first) / 5
        after = sum(r[key] for r in last) / 5
        assert after < before - 0.5, (key, before, after)
    saved = json.loads((out / "training_log.json").read_text())
    assert saved["steps_done"] == 40 and saved["final_heldout"]["ar_loss"] > 0
    tok = AutoTokenizer.from_pretrained(str(out))
    assert tok.mask_token_id == corpus.MASK_ID and tok.eos_token_id == corpus.EOS_ID
    engine = TriModeEngine.from_pretrained(out)
    assert engine.config.architectures == ["NemotronLabsDiffusionModel"]
    assert engine.config.mask_token_id == corpus.MASK_ID and engine.config.block_size == 4
    prompt = tok.encode("def f(x):\n    return")
    (o,) = engine.generate([prompt], mode="self_spec_quadratic", max_new_tokens=8, block_size=4)
    assert 1 <= len(o.token_ids) <= 8
    assert isinstance(tok.decode(o.token_ids), str)


def test_stdlib_copy_named_by_env_gives_the_same_split(tmp_path, monkeypatch):
    """A copied stdlib (what bench/gpu_train.sh carries to a GPU box) splits like the original."""
    root = corpus.stdlib_root()
    picked = {s: corpus.stdlib_files(s)[:3] for s in ("train", "heldout")}
    for files in picked.values():
        for p in files:
            q = tmp_path / p.relative_to(root)
            q.parent.mkdir(parents=True, exist_ok=True)
            q.write_bytes(p.read_bytes())
    monkeypatch.setenv(corpus.STDLIB_ENV, str(tmp_path))
    for split, files in picked.items():
        got = [p.relative_to(tmp_path) for p in corpus.stdlib_files(split)]
        assert got == [p.relative_to(root) for p in files]
    monkeypatch.setenv(corpus.STDLIB_ENV, str(tmp_path / "missing"))
    with pytest.raises(FileNotFoundError, match="SGLANG_TRIMODE_STDLIB"):
        corpus.stdlib_root()
