"""Training levers (train.py --distill / --early-weight / --draft-share / --dropout /
--budget-minutes).

Off, they leave the recipe bit for bit (the old loss formula is restated below and compared
exactly); on, the KL term and the position weights follow their formulas, the KL's one-position
shift is the right one, and a few steps still lower both losses.
"""

import json

import pytest
import torch
import torch.nn.functional as F

from sglang_trimode.reference.tiny import make_tiny_model
from sglang_trimode.training.objective import (
    ar_argmax_to_diffusion_ce,
    ar_to_diffusion_kl,
    dual_stream_mask,
    dual_stream_positions,
    joint_loss,
    noise_blocks,
    position_weights,
)
from sglang_trimode.training.train import StepPlan, add_dropout, set_attention_dropout
from sglang_trimode.training.train import main as train_main

MASK = 3


def old_joint_loss(model, x, block_size, mask_id, generator, w_diff=0.3, w_ar=1.0):
    """The objective as shipped before the levers (commit b6eb4df), restated."""
    n, t = x.shape
    noised = noise_blocks(x, block_size, mask_id, generator)
    ids = torch.cat([x, noised.tokens], 1)
    pos = dual_stream_positions(t).expand(n, -1)
    mask = model.additive_mask(dual_stream_mask(t, block_size), torch.float32)
    logits = model(ids, pos, mask)
    ar_logits = logits[:, : t - 1]
    ar = F.cross_entropy(ar_logits.reshape(-1, ar_logits.shape[-1]), x[:, 1:].reshape(-1))
    noisy = logits[:, t:]
    ce = F.cross_entropy(noisy.reshape(-1, noisy.shape[-1]), x.reshape(-1), reduction="none")
    diff = (ce.view(n, t) * noised.masked / noised.ratio).sum() / (n * t)
    return w_diff * diff + w_ar * ar


def _batch(seed=0, n=3, t=16, vocab=128):
    return torch.randint(4, vocab, (n, t), generator=torch.Generator().manual_seed(seed))


def test_defaults_are_the_old_objective_bit_for_bit():
    x = _batch()
    grads = []
    for fn in ("old", "default", "explicit_off"):
        model = make_tiny_model(seed=1).train()
        gen = torch.Generator().manual_seed(7)
        if fn == "old":
            loss = old_joint_loss(model, x, 8, MASK, gen)
        elif fn == "default":
            loss = joint_loss(model, x, 8, MASK, gen).total
        else:
            parts = joint_loss(
                model, x, 8, MASK, gen, distill=0.0, early_weight=1.0, draft_share=0.0
            )
            assert parts.distill is None
            loss = parts.total
        loss.backward()
        grads.append((loss.detach(), [p.grad.clone() for p in model.parameters()]))
    (l0, g0), *rest = grads
    for loss, g in rest:
        assert torch.equal(loss, l0)
        assert all(torch.equal(a, b) for a, b in zip(g, g0, strict=True))


@pytest.mark.parametrize("block", [4, 8])
def test_draft_share_masks_whole_blocks_like_a_draft(block):
    x = _batch(n=64, t=32)
    all_draft = noise_blocks(x, block, MASK, torch.Generator().manual_seed(3), draft_share=1.0)
    m = all_draft.masked.view(64, -1, block)
    known = (~m).sum(-1)
    assert set(known.unique().tolist()) == {0, 1}  # the seed known or not (TiDAR bonus position)
    assert torch.equal(m[..., 1:], torch.ones_like(m[..., 1:]))  # every later token masked
    assert torch.equal(all_draft.ratio, torch.ones_like(all_draft.ratio))
    assert torch.equal(all_draft.tokens, x.masked_fill(all_draft.masked, MASK))
    half = noise_blocks(x, block, MASK, torch.Generator().manual_seed(3), draft_share=0.5)
    ratio = half.ratio.view(64, -1, block)
    like = (ratio == 1.0).all(-1)  # blocks that took the draft pattern
    assert 0.3 < like.float().mean() < 0.7
    suffix = half.masked.view(64, -1, block)[like][:, 1:]
    assert torch.equal(suffix, torch.ones_like(suffix))
    default = noise_blocks(x, block, MASK, torch.Generator().manual_seed(3))
    d_masked, d_ratio = default.masked.view(64, -1, block), default.ratio.view(64, -1, block)
    assert torch.equal(half.masked.view(64, -1, block)[~like], d_masked[~like])  # same first draws
    assert torch.equal(ratio[~like], d_ratio[~like])


def test_position_weights_formula():
    w = position_weights(10, 4, 2.0)
    per_block = torch.tensor([1, 1 / 2, 1 / 4, 1 / 8]) / (15 / 8 / 4)
    assert torch.allclose(w[:4], per_block) and abs(float(w[:4].mean()) - 1) < 1e-6
    assert torch.equal(w[4:8], w[:4]) and torch.equal(w[8:], w[:2])  # j = i mod B
    assert torch.equal(position_weights(16, 8, 1.0), torch.ones(16))
    assert (position_weights(8, 8, 1.3).diff() < 0).all()  # G > 1 favours early positions
    with pytest.raises(ValueError, match="early_weight"):
        position_weights(8, 8, 0.0)


def _dual_logits(clean, noisy):
    return torch.cat([clean, noisy], 1)


def test_kl_zero_when_the_heads_agree_positive_otherwise():
    n, t, v = 2, 6, 11
    clean = torch.randn(n, t, v, generator=torch.Generator().manual_seed(0))
    noisy = torch.zeros(n, t, v)
    noisy[:, 1:] = clean[:, :-1]  # noisy i predicts x_i, like clean i-1
    kl = ar_to_diffusion_kl(_dual_logits(clean, noisy), t)
    assert kl.shape == (n, t) and kl.abs().max() < 1e-6
    other = noisy + torch.randn(n, t, v, generator=torch.Generator().manual_seed(1))
    kl = ar_to_diffusion_kl(_dual_logits(clean, other), t)
    assert (kl[:, 1:] > 1e-4).all() and (kl[:, 0] == 0).all()


def test_argmax_target_is_the_ce_to_the_shifted_ar_argmax():
    n, t, v = 2, 6, 11
    clean = torch.randn(n, t, v, generator=torch.Generator().manual_seed(0))
    noisy = torch.randn(n, t, v, generator=torch.Generator().manual_seed(1))
    ce = ar_argmax_to_diffusion_ce(_dual_logits(clean, noisy), t)
    assert ce.shape == (n, t) and (ce[:, 0] == 0).all()
    for i in range(1, t):  # noisy i against the argmax of clean i - 1, by hand
        want = -torch.log_softmax(noisy[:, i], -1).gather(1, clean[:, i - 1].argmax(-1, True))
        assert torch.allclose(ce[:, i], want[:, 0], atol=1e-6)
    # a drafter that puts all its mass on the AR argmax has (near) zero loss, whatever else p_AR is
    sharp = torch.full((n, t, v), -30.0)
    sharp[:, 1:].scatter_(-1, clean[:, :-1].argmax(-1, True), 30.0)
    assert ar_argmax_to_diffusion_ce(_dual_logits(clean, sharp), t)[:, 1:].max() < 1e-6


def test_distill_target_selects_the_term_and_refuses_unknown_names():
    x = _batch(seed=3)
    model = make_tiny_model(seed=2).train()
    kw = dict(distill=2.0, early_weight=1.5)
    kl = joint_loss(model, x, 8, MASK, torch.Generator().manual_seed(5), **kw)
    hard = joint_loss(
        model, x, 8, MASK, torch.Generator().manual_seed(5), distill_target="argmax", **kw
    )
    assert torch.equal(kl.ar, hard.ar) and torch.equal(kl.diffusion, hard.diffusion)
    assert float(hard.distill) > 0 and not torch.allclose(hard.distill, kl.distill)
    assert torch.allclose(hard.total, kl.total + 2.0 * (hard.distill - kl.distill), atol=1e-5)
    with pytest.raises(ValueError, match="distill_target must be one of"):
        joint_loss(model, x, 8, MASK, torch.Generator().manual_seed(5), distill_target="tv", **kw)


def test_kl_shift_pairs_noisy_i_with_clean_i_minus_1():
    """Clean i == noisy i (the wrong pairing) gives a non-zero KL; the explicit formula matches."""
    n, t, v = 2, 6, 11
    clean = torch.randn(n, t, v, generator=torch.Generator().manual_seed(2))
    noisy = clean.clone()
    kl = ar_to_diffusion_kl(_dual_logits(clean, noisy), t)
    assert (kl[:, 1:] > 1e-3).all()  # an unshifted implementation would give 0 here
    for b in range(n):
        for i in range(1, t):
            p = clean[b, i - 1].softmax(-1)
            want = (p * (p.log() - noisy[b, i].log_softmax(-1))).sum()
            assert torch.allclose(kl[b, i], want, atol=1e-5)


def test_distill_term_is_the_masked_mean_kl_and_has_gradient():
    x = _batch(seed=3)
    model = make_tiny_model(seed=2).train()
    base = joint_loss(model, x, 8, MASK, torch.Generator().manual_seed(5), early_weight=1.5)
    on = joint_loss(
        model, x, 8, MASK, torch.Generator().manual_seed(5), distill=2.0, early_weight=1.5
    )
    assert on.distill is not None and float(on.distill) > 0
    assert torch.allclose(on.total, base.total + 2.0 * on.distill, atol=1e-5)
    # by hand: the same noise, the same forward
    n, t = x.shape
    noised = noise_blocks(x, 8, MASK, torch.Generator().manual_seed(5))
    with torch.no_grad():
        logits = model(
            torch.cat([x, noised.tokens], 1),
            dual_stream_positions(t).expand(n, -1),
            model.additive_mask(dual_stream_mask(t, 8), torch.float32),
        )
    masked = noised.masked.clone()
    masked[:, 0] = False
    w = position_weights(t, 8, 1.5)
    want = (ar_to_diffusion_kl(logits, t) * masked * w).sum() / masked.sum()
    assert torch.allclose(on.distill, want, atol=1e-5)
    on.total.backward()
    assert model.diffusion_head.weight.grad.abs().sum() > 0


def test_early_weight_changes_only_the_diffusion_term():
    x = _batch(seed=4)
    model = make_tiny_model(seed=3).eval()
    a = joint_loss(model, x, 8, MASK, torch.Generator().manual_seed(9))
    b = joint_loss(model, x, 8, MASK, torch.Generator().manual_seed(9), early_weight=1.5)
    assert torch.equal(a.ar, b.ar) and not torch.allclose(a.diffusion, b.diffusion)


def test_step_plan_shrinks_to_the_budget_and_never_grows():
    plan = StepPlan(1000, budget_minutes=1.0, first=10, every=10)
    for done in range(1, 400):
        plan.update(done, done * 0.004)  # 0.004 min per step: 1000 steps need 4 min
        if done >= plan.steps:
            break
    assert plan.changes and 230 <= plan.steps <= 250  # about 1.0 / 0.004, with a 3 % margin
    assert StepPlan(1000, None).steps == 1000
    fast = StepPlan(100, budget_minutes=10.0, first=5, every=5)
    for done in range(1, 100):
        fast.update(done, done * 0.001)
    assert fast.steps == 100 and not fast.changes


TINY = (
    "--corpus-files 8 --vocab-size 300 --hidden 32 --intermediate 64 --layers 1 --heads 2"
    " --kv-heads 1 --batch 4 --seq-len 64 --block-sizes 4,8 --lr 1e-2 --warmup 5 --eval-batches 1"
).split()


def test_off_flags_give_the_default_run(tmp_path):
    a = train_main(["--out", str(tmp_path / "a"), "--steps", "3", "--eval-every", "3", *TINY])
    b = train_main(
        ["--out", str(tmp_path / "b"), "--steps", "3", "--eval-every", "3", *TINY]
        + ["--distill", "0", "--early-weight", "1", "--dropout", "0", "--budget-minutes", "99"]
        + ["--draft-share", "0", "--distill-target", "argmax"]  # no effect with --distill 0
    )
    strip = lambda log: [{k: v for k, v in r.items() if k != "minutes"} for r in log]  # noqa: E731
    assert strip(a["log"]) == strip(b["log"])


def test_a_few_steps_with_the_levers_on_lower_both_losses(tmp_path):
    out = tmp_path / "m"
    summary = train_main(
        ["--out", str(out), "--steps", "40", "--eval-every", "20", *TINY]
        + ["--distill", "1.0", "--early-weight", "1.2", "--dropout", "0.1", "--draft-share", "0.5"]
    )
    log = summary["log"]
    for key in ("ar_loss", "diffusion_loss"):
        before = sum(r[key] for r in log[:5]) / 5
        after = sum(r[key] for r in log[-5:]) / 5
        assert after < before - 0.5, (key, before, after)
    assert all(r["distill_kl"] >= 0 for r in log)
    cfg = json.loads((out / "config.json").read_text())
    assert cfg.get("attention_dropout", 0.0) == 0.0  # training-only setting not exported


def _dropout_inputs() -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """A 3 x 16-token batch, its dual-stream positions and a full (bidirectional) mask."""
    x = _batch(seed=5)
    pos = dual_stream_positions(8)[:16].expand(3, -1)
    mask = make_tiny_model().additive_mask(torch.ones(16, 16, dtype=torch.bool), torch.float32)
    return x, pos, mask


def test_dropout_is_training_only_and_not_in_the_config():
    x, pos, mask = _dropout_inputs()
    plain = make_tiny_model(seed=4)
    model = make_tiny_model(seed=4)
    hooks = add_dropout(model, 0.3)
    assert len(hooks) == 1 + 2 * model.config.num_hidden_layers
    with torch.no_grad():
        model.train()
        a, b = model(x, pos, mask), model(x, pos, mask)
        assert not torch.allclose(a, b)  # dropout draws differ in training
        model.eval()
        assert torch.equal(model(x, pos, mask), plain(x, pos, mask))  # off at inference
    assert add_dropout(model, 0.0) == []


def test_attention_dropout_is_set_on_every_layer_and_only_in_training():
    x, pos, mask = _dropout_inputs()
    plain, model = make_tiny_model(seed=4), make_tiny_model(seed=4)
    assert set_attention_dropout(model, 0.3) == model.config.num_hidden_layers
    with torch.no_grad():
        model.train()
        assert not torch.allclose(model(x, pos, mask), model(x, pos, mask))
        model.eval()
        assert torch.equal(model(x, pos, mask), plain(x, pos, mask))
        set_attention_dropout(model, 0.0)  # rate 0: training forwards are the plain ones
        model.train()
        plain.train()
        assert torch.equal(model(x, pos, mask), plain(x, pos, mask))
    assert model.config.attention_dropout == 0.0  # the config is never touched


def test_attn_dropout_flag_splits_attention_from_hidden_dropout(tmp_path):
    """``--attn-dropout`` defaults to ``--dropout``; set apart, each rate acts on its own: the
    first step's loss (same seed, same batch) changes with either rate alone."""
    flags = ["--steps", "1", "--eval-every", "1", *TINY]
    loss = {}
    for name, extra in {
        "none": [],
        "both": ["--dropout", "0.5"],
        "both_explicit": ["--dropout", "0.5", "--attn-dropout", "0.5"],
        "hidden": ["--dropout", "0.5", "--attn-dropout", "0"],
        "attn": ["--attn-dropout", "0.5"],
    }.items():
        log = train_main(["--out", str(tmp_path / name), *flags, *extra])["log"]
        loss[name] = log[0]["ar_loss"]
    assert loss["both"] == loss["both_explicit"]
    assert len({loss["none"], loss["both"], loss["hidden"], loss["attn"]}) == 4
    for bad in (["--dropout", "1.0"], ["--attn-dropout", "-0.1"]):
        with pytest.raises(SystemExit, match=bad[0]):
            train_main(["--out", str(tmp_path / "bad"), *flags, *bad])


def test_init_continues_from_a_checkpoint_with_its_tokenizer(tmp_path):
    from safetensors.torch import load_file

    train_main(["--out", str(tmp_path / "a"), "--steps", "2", "--eval-every", "2", *TINY])
    # lr 0: the continued run must save exactly the weights it started from
    flags = ["--steps", "1", "--eval-every", "1", *TINY, "--lr", "0", "--distill", "1"]
    flags += ["--hidden", "64", "--vocab-size", "400"]  # ignored: the checkpoint's config rules
    b = train_main(["--out", str(tmp_path / "b"), "--init", str(tmp_path / "a"), *flags])
    wa, wb = (load_file(str(tmp_path / d / "model.safetensors")) for d in ("a", "b"))
    assert wa.keys() == wb.keys() and all(torch.equal(wa[k], wb[k]) for k in wa)
    for f in ("tokenizer.json", "tokenizer_config.json"):  # copied verbatim
        assert (tmp_path / "b" / f).read_bytes() == (tmp_path / "a" / f).read_bytes()
    log_a = json.loads((tmp_path / "a" / "training_log.json").read_text())
    assert b["init_training_log"] == log_a  # the history of the run it continued
    cfg_a, cfg_b = (json.loads((tmp_path / d / "config.json").read_text()) for d in ("a", "b"))
    assert {k: v for k, v in cfg_b.items() if k != "dtype"} == {
        k: v for k, v in cfg_a.items() if k != "dtype"
    }
    assert b["steps_done"] == 1
    with pytest.raises(SystemExit, match="no config.json"):
        train_main(["--out", str(tmp_path / "c"), "--init", str(tmp_path / "nope"), *flags])
    # --dropout applies to a continued run too (the attention layers get the rate after loading):
    # the same step draws another loss, and the saved config stays free of the setting
    c = train_main(
        ["--out", str(tmp_path / "c"), "--init", str(tmp_path / "a"), "--dropout", "0.5"]
        + [*flags, "--distill-target", "argmax"]
    )
    assert c["log"][0]["ar_loss"] != b["log"][0]["ar_loss"]
    assert c["log"][0]["distill_argmax"] > 0 and "distill_kl" not in c["log"][0]
    cfg_c = json.loads((tmp_path / "c" / "config.json").read_text())
    assert cfg_c.get("attention_dropout", 0.0) == 0.0


def test_bf16_autocast_loss_is_the_fp32_loss_within_bf16_rounding():
    """``--bf16`` runs the same objective under bf16 autocast: on one batch its parts equal the
    fp32 ones within a few bf16 ulps (eps 2**-8 relative; logits are cast back to fp32)."""
    model = make_tiny_model(seed=3)
    x = _batch(seed=7, n=4, t=32)
    parts = {}
    for bf16 in (False, True):
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
            gen = torch.Generator().manual_seed(11)  # the same noise both times
            parts[bf16] = joint_loss(model, x, 8, MASK, gen, distill=1.0)
    eps = torch.finfo(torch.bfloat16).eps
    for name in ("total", "ar", "diffusion", "distill"):
        a, b = (float(getattr(parts[k], name).detach()) for k in (False, True))
        assert abs(a - b) <= 8 * eps * max(1.0, abs(a)), (name, a, b)
        assert a != b or name == "distill"  # bf16 really ran (the distill term may round alike)


@pytest.mark.slow
def test_bf16_and_compile_train_and_lower_both_losses(tmp_path):
    from sglang_trimode.models import load_tokenizer
    from sglang_trimode.reference.checkpoint import load_model
    from sglang_trimode.training import corpus
    from sglang_trimode.training.train import build_parser, evaluate

    argv = ["--out", str(tmp_path / "m"), "--steps", "40", "--eval-every", "20", *TINY]
    summary = train_main([*argv, "--bf16", "--compile"])
    log = summary["log"]
    for key in ("ar_loss", "diffusion_loss"):
        before = sum(r[key] for r in log[:5]) / 5
        after = sum(r[key] for r in log[-5:]) / 5
        assert after < before - 0.5, (key, before, after)
    assert summary["args"]["bf16"] and summary["args"]["compile"]
    # the held-out evaluation stays fp32 and uncompiled: the saved weights give the same figures
    args = build_parser().parse_args(argv)
    model = load_model(args.out, dtype=torch.float32)
    held = torch.tensor(corpus.token_stream(load_tokenizer(args.out), "heldout", 8))
    mask = model.additive_mask(dual_stream_mask(args.seq_len, 4), torch.float32)
    assert evaluate(model, held, args, mask) == pytest.approx(log[-1]["heldout"], rel=1e-6)
