"""Train a small tri-mode model on the standard library with the joint objective.

    python -m sglang_trimode.training.train --out DIR [--steps 1500] [--max-minutes 30]

Writes DIR/{config.json, model.safetensors, tokenizer files, training_log.json}: the layout of the
real checkpoints, loadable by ``TriModeEngine.from_pretrained`` and ``AutoTokenizer``.

Levers beyond the shipped recipe (all off by default; with them off a run is today's, bit for
bit): ``--distill W`` (KL of the diffusion head toward the detached AR head; with
``--distill-target argmax`` the cross-entropy to the AR argmax instead), ``--early-weight G``
(diffusion loss weight ``G**(-j)``, mean 1, by position ``j`` in the block), ``--draft-share S``
(a share of the noisy blocks masked like an inference draft) — all three defined in
``objective.py`` —, ``--dropout P`` (training only: attention dropout plus dropout on the
embeddings and on each attention / MLP output before the residual add; the saved config has
``attention_dropout`` 0; ``--attn-dropout`` sets the attention share alone, 0 keeping a CPU's
fused attention kernel), ``--tf32`` (TF32 matmuls on a GPU), ``--bf16`` (bf16 autocast of the
training forward; weights, optimizer and the held-out evaluation stay fp32: on a CPU with AMX /
AVX512-BF16 about 1.5x faster per step), ``--compile`` (``torch.compile`` of the training forward)
and ``--budget-minutes M`` (shrink the step count, and with it the cosine schedule, when the
measured pace would overrun ``M`` minutes; used by the concurrent sweep, ``bench/train_sweep.py``).
"""

from __future__ import annotations

import argparse
import json
import math
import shutil
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from tqdm import tqdm

from sglang_trimode.config import NemotronLabsDiffusionConfig
from sglang_trimode.reference.checkpoint import load_model, save_checkpoint
from sglang_trimode.reference.model import NemotronLabsDiffusionModel
from sglang_trimode.training import corpus
from sglang_trimode.training.objective import dual_stream_mask, joint_loss


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--out", type=Path, required=True, help="checkpoint folder to write")
    ap.add_argument("--steps", type=int, default=800)
    ap.add_argument("--max-minutes", type=float, default=28.0, help="stop early past this budget")
    ap.add_argument("--batch", type=int, default=16, help="sequences per step")
    ap.add_argument("--seq-len", type=int, default=256)
    ap.add_argument(
        "--block-sizes",
        type=lambda v: [int(x) for x in v.split(",")],
        default=[8, 16],
        help="training block sizes, used in turn step by step; the first is the config default",
    )
    ap.add_argument("--vocab-size", type=int, default=2048)
    ap.add_argument("--hidden", type=int, default=192)
    ap.add_argument("--layers", type=int, default=4)
    ap.add_argument("--heads", type=int, default=4)
    ap.add_argument("--kv-heads", type=int, default=2)
    ap.add_argument("--intermediate", type=int, default=512)
    ap.add_argument("--lr", type=float, default=3e-3)
    ap.add_argument("--warmup", type=int, default=100)
    ap.add_argument("--w-diff", type=float, default=0.3, help="diffusion loss weight")
    ap.add_argument("--w-ar", type=float, default=1.0, help="AR loss weight")
    ap.add_argument(
        "--distill", type=float, default=0.0, help="weight of KL(p_AR || p_diff) (0 = off)"
    )
    ap.add_argument(
        "--distill-target",
        choices=("kl", "argmax"),
        default="kl",
        help="what --distill pulls the drafter toward: the AR distribution (KL) or its argmax (CE)",
    )
    ap.add_argument(
        "--early-weight",
        type=float,
        default=1.0,
        help="diffusion loss weight G**(-j) by position j in the block, mean 1 (1 = off)",
    )
    ap.add_argument(
        "--draft-share",
        type=float,
        default=0.0,
        help="share of noisy blocks masked like an inference draft (0 = off)",
    )
    ap.add_argument(
        "--dropout", type=float, default=0.0, help="attention + hidden dropout, training only"
    )
    ap.add_argument(
        "--attn-dropout",
        type=float,
        default=None,
        help="attention dropout alone (default: --dropout); 0 keeps hidden dropout only and the\n"
        "CPU's fused attention kernel (attention dropout takes a ~4x slower kernel on a CPU)",
    )
    ap.add_argument("--tf32", action="store_true", help="allow TF32 matmuls (CUDA)")
    ap.add_argument(
        "--bf16",
        action="store_true",
        help="bf16 autocast of the training forward (weights, optimizer, evaluation stay fp32)",
    )
    ap.add_argument(
        "--compile", action="store_true", help="torch.compile the training forward (inductor)"
    )
    ap.add_argument(
        "--budget-minutes",
        type=float,
        default=None,
        help="fewer steps (cosine refit) when the measured pace would overrun this",
    )
    ap.add_argument("--eval-every", type=int, default=250)
    ap.add_argument("--eval-batches", type=int, default=4, help="held-out batches of 8 crops")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument(
        "--device", default="cpu", help="cpu or cuda (the recipe and its defaults are the same)"
    )
    ap.add_argument(
        "--snapshots", type=Path, default=None, help="also save a checkpoint here at each eval"
    )
    ap.add_argument("--corpus-files", type=int, default=None, help="first N files only (smoke)")
    ap.add_argument(
        "--init",
        type=Path,
        default=None,
        help="continue from this checkpoint (its weights, config and tokenizer; the size and\n"
        "--vocab-size flags are then ignored), e.g. to fine-tune the default model with a lever",
    )
    return ap


def set_attention_dropout(model: NemotronLabsDiffusionModel, p: float) -> int:
    """Set the attention-probability dropout rate (training only) on every attention layer, which
    reads it at each forward; returns the number of layers set."""
    mods = [m for m in model.modules() if hasattr(m, "attention_dropout")]
    for m in mods:
        m.attention_dropout = p
    return len(mods)


def add_dropout(model: NemotronLabsDiffusionModel, p: float) -> list:
    """Training-only dropout on the embeddings and on each attention / MLP output (before the
    residual add), as forward hooks: nothing of it is saved and ``model.eval()`` turns it off.
    Returns the hook handles."""
    if not p:
        return []

    def hook(module, _inputs, out):
        return F.dropout(out, p, module.training)

    enc = model.encoder
    mods = [enc.embed_tokens]
    for layer in enc.layers:
        mods += [layer.self_attn.o_proj, layer.mlp.down_proj]
    return [m.register_forward_hook(hook) for m in mods]


class StepPlan:
    """The step count, shrunk when the measured pace would overrun ``budget_minutes``.

    Checked every ``every`` steps from ``first`` on, with the pace of the steps since the previous
    check; never grows. ``--steps N`` with the final count redoes the run up to lr differences
    of the cosine factor before the last change (tiny while the changes come early)."""

    def __init__(self, steps: int, budget_minutes: float | None, first: int = 40, every: int = 100):
        self.steps, self.budget, self.first, self.every = steps, budget_minutes, first, every
        self.changes: list[dict] = []
        self._mark: tuple[int, float] | None = None

    def update(self, done: int, minutes: float) -> None:
        if self.budget is None or done < self.first:
            return
        if self._mark is None or done - self._mark[0] >= self.every:
            if self._mark is not None:
                pace = (minutes - self._mark[1]) / (done - self._mark[0])
                fit = done + int(0.97 * max(0.0, self.budget - minutes) / max(pace, 1e-9))
                if fit < self.steps:
                    self.steps = max(done + 1, fit)
                    self.changes.append({"at_step": done, "steps": self.steps})
            self._mark = (done, minutes)


def make_config(args: argparse.Namespace, vocab_size: int) -> NemotronLabsDiffusionConfig:
    return NemotronLabsDiffusionConfig(
        vocab_size=vocab_size,
        hidden_size=args.hidden,
        intermediate_size=args.intermediate,
        num_hidden_layers=args.layers,
        num_attention_heads=args.heads,
        num_key_value_heads=args.kv_heads,
        head_dim=args.hidden // args.heads,
        max_position_embeddings=16384,
        pad_token_id=corpus.PAD_ID,
        bos_token_id=corpus.BOS_ID,
        eos_token_id=corpus.EOS_ID,
        mask_token_id=corpus.MASK_ID,
        block_size=args.block_sizes[0],
        tie_word_embeddings=False,
        rope_parameters={
            "rope_type": "yarn",
            "rope_theta": 10000.0,
            "factor": 16.0,
            "original_max_position_embeddings": 1024,
            "beta_fast": 32.0,
            "beta_slow": 1.0,
            "mscale": 1.0,
            "mscale_all_dim": 1.0,
            "llama_4_scaling_beta": 0.1,
        },
    )


TOKENIZER_FILES = (
    "tokenizer.json",
    "tokenizer_config.json",
    "special_tokens_map.json",
    "chat_template.jinja",
)


def init_tokenizer(args: argparse.Namespace):
    """The ``--init`` checkpoint's tokenizer, copied to ``--out``; clear errors before any work."""
    from sglang_trimode.models import load_tokenizer

    if not (args.init / "config.json").is_file():
        raise SystemExit(f"--init {args.init}: no config.json there; pass a checkpoint folder")
    tokenizer = load_tokenizer(args.init)
    if tokenizer is None:
        raise SystemExit(f"--init {args.init}: no tokenizer.json; the corpus needs its tokenizer")
    for name in TOKENIZER_FILES:  # verbatim (a re-save would drop or add settings)
        if (args.init / name).is_file():
            shutil.copy2(args.init / name, args.out / name)
    print(f"[train] --init {args.init}: its weights and tokenizer ({len(tokenizer)} tokens)")
    return tokenizer


def batches(stream: torch.Tensor, n: int, t: int, gen: torch.Generator) -> torch.Tensor:
    starts = torch.randint(0, len(stream) - t, (n,), generator=gen)
    return torch.stack([stream[s : s + t] for s in starts.tolist()])


@torch.no_grad()
def evaluate(model, held: torch.Tensor, args, mask: torch.Tensor) -> dict:
    """AR loss / accuracy and diffusion loss on fixed held-out crops."""
    model.eval()
    gen = torch.Generator().manual_seed(1234)
    x = batches(held, args.eval_batches * 8, args.seq_len, gen)
    x = x.to(mask.device)
    parts = [
        joint_loss(model, c, args.block_sizes[0], corpus.MASK_ID, gen, attn_mask=mask)
        for c in x.split(8)
    ]
    model.train()
    mean = lambda f: float(sum(f(p) for p in parts) / len(parts))  # noqa: E731
    return {
        "ar_loss": mean(lambda p: p.ar),
        "ar_accuracy": mean(lambda p: p.ar_accuracy),
        "diffusion_loss": mean(lambda p: p.diffusion),
    }


def _loss(forward, x: torch.Tensor, block: int, gen: torch.Generator, args, mask: torch.Tensor):
    """The training objective with the run's levers (``objective.joint_loss``)."""
    return joint_loss(
        forward,
        x,
        block,
        corpus.MASK_ID,
        gen,
        args.w_diff,
        args.w_ar,
        mask,
        distill=args.distill,
        distill_target=args.distill_target,
        early_weight=args.early_weight,
        draft_share=args.draft_share,
    )


def main(argv: list[str] | None = None) -> dict:
    args = build_parser().parse_args(argv)
    for flag, p in (("--dropout", args.dropout), ("--attn-dropout", args.attn_dropout)):
        if p is not None and not 0.0 <= p < 1.0:
            raise SystemExit(f"{flag} must be in [0, 1); got {p}")
    torch.manual_seed(args.seed)
    args.out.mkdir(parents=True, exist_ok=True)
    t_start = time.perf_counter()
    limit = args.corpus_files
    if args.init is not None:
        tokenizer = init_tokenizer(args)
    else:
        print(f"[train] tokenizer: byte-level BPE, {args.vocab_size} tokens, stdlib train split")
        tokenizer = corpus.train_tokenizer(args.vocab_size, args.out, limit)
    train = torch.tensor(corpus.token_stream(tokenizer, "train", limit))
    held = torch.tensor(corpus.token_stream(tokenizer, "heldout", limit))
    print(f"[train] corpus: {len(train):,} train tokens, {len(held):,} held-out tokens")

    if args.tf32:
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
    if args.init is not None:
        model = load_model(args.init, device=args.device, dtype=torch.float32).train()
        cfg = model.config
    else:
        cfg = make_config(args, len(tokenizer))
        model = NemotronLabsDiffusionModel(cfg).to(args.device).train()
    # training-only dropout: set on the attention modules, never in a saved config (snapshots,
    # the final checkpoint)
    cfg.attention_dropout = 0.0
    set_attention_dropout(model, args.dropout if args.attn_dropout is None else args.attn_dropout)
    add_dropout(model, args.dropout)
    n_params = sum(p.numel() for p in model.parameters())
    print(f"[train] model: {n_params / 1e6:.2f}M parameters, block sizes {args.block_sizes}")
    plan = StepPlan(args.steps, args.budget_minutes)
    opt = torch.optim.AdamW(model.parameters(), lr=args.lr, betas=(0.9, 0.95), weight_decay=0.1)
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt,
        lambda s: min(1.0, (s + 1) / args.warmup)
        * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * min(1.0, s / plan.steps)))),
    )
    masks = {
        b: model.additive_mask(dual_stream_mask(args.seq_len, b), torch.float32).to(args.device)
        for b in args.block_sizes
    }
    gen = torch.Generator().manual_seed(args.seed)
    forward = torch.compile(model) if args.compile else model  # shares the weights
    device_type = torch.device(args.device).type
    log: list[dict] = []
    bar = tqdm(range(args.steps), desc="train", unit="step")
    for step in bar:
        x = batches(train, args.batch, args.seq_len, gen).to(args.device)
        block = args.block_sizes[step % len(args.block_sizes)]
        with torch.autocast(device_type, dtype=torch.bfloat16, enabled=args.bf16):
            parts = _loss(forward, x, block, gen, args, masks[block])
        opt.zero_grad(set_to_none=True)
        parts.total.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        sched.step()
        bar.set_postfix(
            ar=f"{parts.ar:.3f}", diff=f"{parts.diffusion:.3f}", acc=f"{parts.ar_accuracy:.2f}"
        )
        minutes = (time.perf_counter() - t_start) / 60
        row = {
            "step": step + 1,
            "ar_loss": float(parts.ar),
            "diffusion_loss": float(parts.diffusion),
            "minutes": minutes,
        }
        if parts.distill is not None:
            row[f"distill_{args.distill_target}"] = float(parts.distill)  # distill_kl / _argmax
        plan.update(step + 1, minutes)
        last = step + 1 >= plan.steps or minutes > args.max_minutes
        if (step + 1) % args.eval_every == 0 or last:
            row["heldout"] = evaluate(model, held, args, masks[args.block_sizes[0]])
            bar.write(f"[train] step {step + 1}: held-out {row['heldout']}")
            if args.snapshots is not None:
                snap = args.snapshots / f"step-{step + 1}"
                save_checkpoint(model, snap)
                tokenizer.save_pretrained(str(snap))
        log.append(row)
        if step + 1 >= plan.steps:
            if plan.steps < args.steps:
                bar.write(f"[train] stopping at step {step + 1}: --budget-minutes plan")
            break
        if minutes > args.max_minutes:
            bar.write(
                f"[train] stopping at step {step + 1}: --max-minutes {args.max_minutes} reached"
            )
            break
    bar.close()
    model.eval()
    save_checkpoint(model.cpu(), args.out)
    summary = {
        "args": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()},
        "parameters": n_params,
        "train_tokens": len(train),
        "heldout_tokens": len(held),
        "steps_done": len(log),
        "step_plan_changes": plan.changes,
        "minutes": (time.perf_counter() - t_start) / 60,
        "final_heldout": log[-1].get("heldout"),
        "log": log,
    }
    if args.init is not None and (args.init / "training_log.json").is_file():
        # the run this one continued, so that a chain of fine-tunes keeps its whole history
        summary["init_training_log"] = json.loads((args.init / "training_log.json").read_text())
    (args.out / "training_log.json").write_text(json.dumps(summary, indent=1))
    print(f"[train] wrote {args.out} in {summary['minutes']:.1f} min")
    return summary


if __name__ == "__main__":
    main()
