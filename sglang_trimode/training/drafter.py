"""Train a draft-only LoRA adapter on a trained tri-mode checkpoint (its weights stay frozen).

    python -m sglang_trimode.training.drafter --model DIR [--minutes 18] [--rank 64]

Writes ``DIR/linear_spec_lora/`` (the vendor's folder name and PEFT layout; see
``adapter/lora.py``), which both engines apply to rows a step drafts with (never to the
causal rows that verify or commit), so greedy self-speculation still equals greedy AR.

Objective (default): self-distillation toward the frozen AR path (DistillSpec, Zhou et al.
2024) on the dual stream of ``objective.py``, the adapter on the noisy stream only:
``KL(p_AR(x_i | x_<i) || p_draft(x_i))`` on masked noisy positions of corpus crops, the teacher
being the clean stream's detached logits at ``i - 1``. ``--rollouts N``: sequence-level
distillation (Kim & Rush 2016) instead: the frozen model first writes ``N`` greedy AR
continuations of ``--new-tokens`` after random ``--prefix-len``-token train-split crops, and the
drafter learns the cross-entropy of each masked continuation token, i.e. of the AR argmax given
the true prefix, which is what greedy verification accepts. Half of the crops
(``--draft-pattern``) use the training noise (ratio ``t ~ U(eps, 1)`` per block), half the
inference pattern of a draft: in every block the first ``c`` tokens known (``c`` = 0, a
quadratic mask group; ``c`` = 1, a linear draft after its seed) and the rest masked.

Measured on the shipped default model (CPU, 500 steps, about 18 minutes; held-out TPF of
``bench/tpf.py --heldout``, block 8): quadratic 2.02 -> 2.06, linear 1.50 -> 1.43, diffusion
1.16 -> 1.15 (``--rollouts 2048``: 1.87 / 1.46 / 1.18), so the default model ships without one.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from tqdm import tqdm

from sglang_trimode.adapter.lora import DrafterConfig, DrafterLoRA
from sglang_trimode.reference.checkpoint import load_model
from sglang_trimode.training import corpus
from sglang_trimode.training.objective import (
    ar_to_diffusion_kl,
    draft_pattern,
    dual_stream_mask,
    dual_stream_positions,
    noise_blocks,
)
from sglang_trimode.training.train import batches


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--model", type=Path, required=True, help="trained checkpoint (with tokenizer)")
    ap.add_argument(
        "--out",
        type=Path,
        default=None,
        help="checkpoint folder to write the adapter into (default: --model)",
    )
    ap.add_argument("--steps", type=int, default=100_000)
    ap.add_argument("--minutes", type=float, default=18.0, help="stop after this wall time")
    ap.add_argument("--rank", type=int, default=64)
    ap.add_argument("--alpha", type=float, default=None, help="LoRA alpha (default 2 x rank)")
    ap.add_argument("--lr", type=float, default=2e-3)
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--seq-len", type=int, default=256, help="crop length (--rollouts 0)")
    ap.add_argument(
        "--rollouts",
        type=int,
        default=0,
        help="0 (default): corpus crops, KL to the AR head; N: N greedy AR continuations, CE",
    )
    ap.add_argument("--prefix-len", type=int, default=128, help="train-text prefix per rollout")
    ap.add_argument("--new-tokens", type=int, default=128, help="greedy tokens per rollout")
    ap.add_argument("--block-sizes", type=lambda v: [int(x) for x in v.split(",")], default=[8, 16])
    ap.add_argument(
        "--draft-pattern",
        type=float,
        default=0.5,
        help="share of crops noised like an inference draft",
    )
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--corpus-files", type=int, default=None, help="first N files only (smoke)")
    return ap


def distill_loss(
    model: torch.nn.Module,
    lora: DrafterLoRA,
    x: torch.Tensor,
    block: int,
    mask_id: int,
    gen: torch.Generator,
    attn_mask: torch.Tensor,
    draft_share: float,
    start: int = 0,
) -> torch.Tensor:
    """The drafter's loss on the masked noisy positions ``>= start`` of ``x [N, T]``.

    ``start == 0`` (corpus text): mean ``KL(p_AR || p_draft)``, the teacher being the clean
    stream's detached logits one position earlier. ``start > 0`` (``x`` = a text prefix of
    ``start`` tokens + the frozen model's greedy AR continuation): mean cross-entropy toward the
    continuation's tokens, i.e. toward the AR argmax given the true prefix, which is exactly what
    greedy verification accepts (sequence-level distillation, Kim & Rush 2016)."""
    n, t = x.shape
    masked = noise_blocks(x, block, mask_id, gen).masked.cpu()
    like_draft = torch.rand(n, generator=gen) < draft_share
    masked = torch.where(like_draft[:, None], draft_pattern(n, t, block, gen), masked)
    masked[:, : max(start, 1)] = False  # position 0 has no AR prediction
    masked = masked.to(x.device)
    ids = torch.cat([x, x.masked_fill(masked, mask_id)], 1)  # [N, 2T]
    pos = dual_stream_positions(t).to(x.device).expand(n, -1)
    gate = torch.zeros(n, 2 * t, dtype=torch.bool)
    gate[:, t:] = True  # the adapter on the noisy stream only
    with lora.rows(gate):
        logits = model(ids, pos, attn_mask)  # [N, 2T, V]
    if start > 0:
        student = F.log_softmax(logits[:, t + 1 :], -1)  # noisy 1..T-1, predicting x_1..x_{T-1}
        per = -student.gather(-1, x[:, 1:, None]).squeeze(-1)  # [N, T-1]
    else:
        per = ar_to_diffusion_kl(logits, t)[:, 1:]  # [N, T-1]
    m = masked[:, 1:]
    return (per * m).sum() / m.sum().clamp(min=1)


@torch.no_grad()
def greedy_rollouts(
    model: torch.nn.Module,
    stream: torch.Tensor,
    count: int,
    prefix_len: int,
    new_tokens: int,
    gen: torch.Generator,
    batch: int = 64,
) -> torch.Tensor:
    """``[count, prefix_len + new_tokens]``: random ``prefix_len``-token crops of ``stream``, each
    followed by the model's own greedy AR continuation (no stop token)."""
    from sglang_trimode.reference.engine import TriModeEngine

    engine = TriModeEngine(model)
    starts = torch.randint(0, len(stream) - prefix_len, (count,), generator=gen).tolist()
    rows = []
    for i in tqdm(range(0, count, batch), desc="rollouts", unit="batch"):
        prompts = [stream[s : s + prefix_len].tolist() for s in starts[i : i + batch]]
        outs = engine.generate(prompts, mode="ar", max_new_tokens=new_tokens, stop_token_ids=[])
        rows += [p + list(o.token_ids) for p, o in zip(prompts, outs, strict=True)]
    return torch.tensor(rows)


def main(argv: list[str] | None = None) -> dict:
    args = build_parser().parse_args(argv)
    from transformers import AutoTokenizer

    torch.manual_seed(args.seed)
    out = args.out or args.model
    t0 = time.perf_counter()
    model = load_model(args.model, device=args.device)
    for p in model.parameters():
        p.requires_grad_(False)
    tok = AutoTokenizer.from_pretrained(str(args.model))
    cfg = DrafterConfig(args.rank, args.alpha or 2.0 * args.rank)
    lora = DrafterLoRA.for_model(model, cfg).attach(model)
    train = torch.tensor(corpus.token_stream(tok, "train", args.corpus_files))
    print(
        f"[drafter] {sum(p.numel() for p in lora.parameters()):,} adapter parameters "
        f"(r={cfg.rank}); {len(train):,} train tokens"
    )
    gen = torch.Generator().manual_seed(args.seed)
    start, seq_len = 0, args.seq_len
    if args.rollouts:
        start, seq_len = args.prefix_len, args.prefix_len + args.new_tokens
        print(
            f"[drafter] {args.rollouts} greedy AR rollouts of {args.new_tokens} tokens after "
            f"{args.prefix_len}-token train-split prefixes (the targets)"
        )
        data = greedy_rollouts(model, train, args.rollouts, start, args.new_tokens, gen)
    opt = torch.optim.AdamW(lora.parameters(), lr=args.lr, weight_decay=0.0)
    masks = {
        b: model.additive_mask(dual_stream_mask(seq_len, b), torch.float32).to(args.device)
        for b in args.block_sizes
    }
    model.train()
    log: list[dict] = []
    bar = tqdm(range(args.steps), desc="drafter", unit="step")
    for step in bar:
        block = args.block_sizes[step % len(args.block_sizes)]
        if args.rollouts:
            x = data[torch.randint(0, len(data), (args.batch,), generator=gen)]
        else:
            x = batches(train, args.batch, seq_len, gen)
        loss = distill_loss(
            model,
            lora,
            x.to(args.device),
            block,
            corpus.MASK_ID,
            gen,
            masks[block],
            args.draft_pattern,
            start,
        )
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        minutes = (time.perf_counter() - t0) / 60
        log.append({"step": step + 1, "loss": float(loss.detach()), "minutes": minutes})
        bar.set_postfix(loss=f"{float(loss.detach()):.3f}")
        if minutes > args.minutes:
            bar.write(f"[drafter] stopping at step {step + 1}: --minutes {args.minutes} reached")
            break
    bar.close()
    lora.detach()
    folder = lora.cpu().save(out)
    summary = {
        "args": {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()},
        "steps_done": len(log),
        "minutes": (time.perf_counter() - t0) / 60,
        "log": log,
    }
    (folder / "training_log.json").write_text(json.dumps(summary, indent=1))
    print(f"[drafter] wrote {folder} ({len(log)} steps, {summary['minutes']:.1f} min)")
    return summary


if __name__ == "__main__":
    main()
