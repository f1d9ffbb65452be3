"""Tokens per forward (TPF), acceptance length (AL) and wall time per mode and block size.

    python bench/tpf.py [--model PATH] [--prompts FILE.jsonl] [--modes ar,diffusion,...]
                        [--block-sizes 8,16] [--max-new-tokens 64] [--threshold 0.9] [--out DIR]
                        [--bonus-candidates 0,4] [--bonus-lengths 0,2]

Prompts: a JSONL file with one ``{"token_ids": [...]}`` or ``{"text": "..."}`` per line (text
needs a tokenizer in the model folder); without a file, seeded random token prompts. Prints a
table and writes ``DIR/tpf.json``. Runs on the reference engine (CPU or GPU).
"""

from __future__ import annotations

import argparse
import json
import sys
from dataclasses import replace
from pathlib import Path

import torch
from tqdm import tqdm

from sglang_trimode.models import default_model_path, load_tokenizer
from sglang_trimode.reference.engine import SUPPORTED_MODES, TriModeEngine
from sglang_trimode.report import ModeRow, format_table, random_prompts, run_mode


def csv(kind):
    return lambda s: [kind(x) for x in s.split(",") if x]


def read_prompts(path: Path | None, engine: TriModeEngine, model_path: Path, n: int) -> list:
    cfg = engine.config
    if path is None:
        return random_prompts(cfg, n, base_len=8, step=5)
    tokenizer = load_tokenizer(model_path)
    prompts = []
    for i, line in enumerate(path.read_text().splitlines()):
        if not line.strip():
            continue
        rec = json.loads(line)
        if "token_ids" in rec:
            prompts.append([int(t) for t in rec["token_ids"]])
        elif "text" in rec:
            if tokenizer is None:
                sys.exit(f"{path}:{i + 1}: 'text' prompts need a tokenizer in {model_path}")
            prompts.append(tokenizer.encode(rec["text"]))
        else:
            sys.exit(f"{path}:{i + 1}: each line needs 'token_ids' or 'text'")
    return prompts[:n]


def _resamples(n: int, resamples: int, seed: int) -> torch.Tensor:
    """``[resamples, n]`` request indices drawn with replacement (seeded)."""
    if n == 0:
        raise ValueError("a bootstrap needs at least one request")
    return torch.randint(0, n, (resamples, n), generator=torch.Generator().manual_seed(seed))


def _ratio(tokens: torch.Tensor, forwards: torch.Tensor, idx: torch.Tensor) -> torch.Tensor:
    return tokens[idx].sum(1) / forwards[idx].sum(1).clamp(min=1)


def _interval(values: torch.Tensor) -> tuple[float, float]:
    q = torch.tensor([0.025, 0.975], dtype=torch.float64)
    lo, hi = torch.quantile(values, q).tolist()
    return lo, hi


def bootstrap_ci(
    tokens: list[int], forwards: list[int], resamples: int = 2000, seed: int = 0
) -> tuple[float, float]:
    """95% interval of TPF = sum(tokens) / sum(forwards) under resampling the requests with
    replacement (percentile bootstrap): how much the figure depends on which prompts ran."""
    t = torch.tensor(tokens, dtype=torch.float64)
    f = torch.tensor(forwards, dtype=torch.float64)
    return _interval(_ratio(t, f, _resamples(len(t), resamples, seed)))


def paired_diff_ci(
    a: list[tuple[int, int]], b: list[tuple[int, int]], resamples: int = 2000, seed: int = 0
) -> tuple[float, float, float]:
    """TPF(b) - TPF(a) and its 95% paired-bootstrap interval, ``a``/``b`` being per-request
    ``(tokens, forwards)`` of two runs on the *same* prompts (request ``i`` of each resampled
    together, so the prompts' spread cancels)."""
    if len(a) != len(b):
        raise ValueError(f"paired runs need the same prompts: {len(a)} vs {len(b)} requests")
    ta, fa = torch.tensor(a, dtype=torch.float64).reshape(-1, 2).unbind(1)
    tb, fb = torch.tensor(b, dtype=torch.float64).reshape(-1, 2).unbind(1)
    idx = _resamples(len(a), resamples, seed)
    point = float(tb.sum() / fb.sum().clamp(min=1) - ta.sum() / fa.sum().clamp(min=1))
    return (point, *_interval(_ratio(tb, fb, idx) - _ratio(ta, fa, idx)))


def chars_per_forward(tokenizer, outs) -> float:
    """Characters of generated text per forward, the prefill's token excluded as in TPF: unlike
    TPF it does not grow when a smaller vocabulary cuts the same text into more tokens."""
    chars = sum(len(tokenizer.decode(o.token_ids[1:], skip_special_tokens=True)) for o in outs)
    forwards = sum(o.stats.forwards for o in outs)
    return chars / forwards if forwards else float("nan")


def print_bonus_gains(rows: list, cis: list[dict]) -> None:
    """Quadratic rows with bonus candidates against the plain quadratic row of the same block
    (same prompts): the TPF change with its paired 95% interval."""
    plain = {r.block_size: c for r, c in zip(rows, cis) if r.mode == "self_spec_quadratic"}
    lines = []
    for r, c in zip(rows, cis, strict=True):
        if c["bonus_candidates"] and r.block_size in plain:  # every G of bonus_lengths
            d, lo, hi = paired_diff_ci(plain[r.block_size]["per_request"], c["per_request"])
            lines.append(f"  {r.mode:<28} {r.block_size:>5}  {d:+.2f} [{lo:+.2f}, {hi:+.2f}]")
    if lines:
        print("bonus candidates vs plain quadratic, TPF change [paired 95%]:")
        print("\n".join(lines))


def main(argv: list[str] | None = None) -> list[dict]:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument(
        "--model", type=Path, default=None, help="checkpoint folder (default: built-in)"
    )
    ap.add_argument("--prompts", type=Path, default=None, help="JSONL prompts (default: random)")
    ap.add_argument(
        "--heldout",
        action="store_true",
        help="prompts from held-out stdlib files (needs the model's tokenizer)",
    )
    ap.add_argument("--num-prompts", type=int, default=8)
    ap.add_argument("--modes", type=csv(str), default=list(SUPPORTED_MODES))
    ap.add_argument("--block-sizes", type=csv(int), default=[8, 16])
    ap.add_argument("--max-new-tokens", type=int, default=64)
    ap.add_argument("--threshold", type=float, default=0.9)
    ap.add_argument("--temperature", type=float, default=0.0)
    ap.add_argument("--dtype", choices=["float32", "bfloat16", "float16"], default="float32")
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument(
        "--drafter",
        choices=["on", "off"],
        default="on",
        help="the checkpoint's draft-only adapter (linear_spec_lora/ or drafter_lora/), if any "
        "(default on; self-speculation drafts only)",
    )
    ap.add_argument(
        "--bonus-candidates",
        type=csv(int),
        default=[0],
        help="quadratic rows for each C in this list (C > 0: mode label "
        "self_spec_quadratic+bcC, C guessing mask groups per acceptance length); default 0",
    )
    ap.add_argument(
        "--bonus-lengths",
        type=csv(int),
        default=[0],
        help="with --bonus-candidates: rows for each G in this list (G > 0: label +bcCgG, "
        "guessing groups for acceptance lengths 0..G-1 only); default 0 (every length)",
    )
    ap.add_argument("--out", type=Path, default=Path("out/tpf"))
    args = ap.parse_args(argv)
    bad = sorted(set(args.modes) - set(SUPPORTED_MODES))
    if bad:
        ap.error(f"--modes: unknown {bad}; choose from {list(SUPPORTED_MODES)}")

    model_path = args.model or default_model_path()
    engine = TriModeEngine.from_pretrained(
        model_path,
        device=args.device,
        dtype=getattr(torch, args.dtype),
        drafter=args.drafter == "on",
    )
    print(f"drafter adapter: {'on' if engine.drafter is not None else 'none / off'}")
    tokenizer = load_tokenizer(Path(model_path))  # None: no characters-per-forward figure
    if args.heldout:
        from sglang_trimode.training.corpus import heldout_prompts

        if tokenizer is None:
            ap.error(f"--heldout needs a tokenizer in {model_path}")
        prompts = [tokenizer.encode(t) for t in heldout_prompts(args.num_prompts)]
    else:
        prompts = read_prompts(args.prompts, engine, Path(model_path), args.num_prompts)
    if any(g < 0 for g in args.bonus_lengths):
        ap.error(
            f"--bonus-lengths: each G must be >= 0 (0: every length), got {args.bonus_lengths}"
        )
    runs = [
        (m, b, c, g)
        for m in args.modes
        for b in ([1] if m == "ar" else args.block_sizes)
        for c in (args.bonus_candidates if m == "self_spec_quadratic" else [0])
        for g in (args.bonus_lengths if c else [0])
    ]
    rows, cis = [], []
    for mode, block, count, lengths in tqdm(runs, desc="tpf", unit="run"):
        row, outs = run_mode(
            engine,
            prompts,
            mode,
            block,
            max_new_tokens=args.max_new_tokens,
            threshold=args.threshold,
            temperature=args.temperature,
            bonus_candidates=count,
            bonus_lengths=lengths,
        )
        if count:
            row = replace(row, mode=f"{mode}+bc{count}" + (f"g{lengths}" if lengths else ""))
        rows.append(row)
        per = [(len(o.token_ids) - 1, o.stats.forwards) for o in outs]  # as `summarize` counts
        c = {"per_request": per, "ci95": bootstrap_ci(*zip(*per))}
        c |= {"bonus_candidates": count, "bonus_lengths": lengths}
        if tokenizer is not None:
            c["chars_per_forward"] = chars_per_forward(tokenizer, outs)
        cis.append(c)
    print(format_table(rows))
    print(f"TPF 95% interval over the {len(prompts)} prompts (bootstrap):")
    for r, c in zip(rows, cis, strict=True):
        lo, hi = c["ci95"]
        cpf = (
            f"   {c['chars_per_forward']:.2f} characters / forward"
            if "chars_per_forward" in c
            else ""
        )
        tpf = f"{r.tokens_per_forward:.2f} [{lo:.2f}, {hi:.2f}]"
        print(f"  {r.mode:<28} {r.block_size:>5}  {tpf}{cpf}")
    print_bonus_gains(rows, cis)
    print_denoise_steps(rows)
    args.out.mkdir(parents=True, exist_ok=True)
    result = {
        "model": str(model_path),
        "device": args.device,
        "dtype": args.dtype,
        "prompts": len(prompts),
        "prompt_source": "heldout" if args.heldout else str(args.prompts or "random"),
        "max_new_tokens": args.max_new_tokens,
        "threshold": args.threshold,
        "drafter": engine.drafter is not None,
        "temperature": args.temperature,
        "rows": [
            r.to_dict()
            | {"tokens_per_forward_ci95": list(c["ci95"]), "per_request": c["per_request"]}
            | {"bonus_candidates": c["bonus_candidates"], "bonus_lengths": c["bonus_lengths"]}
            | ({"chars_per_forward": c["chars_per_forward"]} if "chars_per_forward" in c else {})
            for r, c in zip(rows, cis, strict=True)
        ],
    }
    (args.out / "tpf.json").write_text(json.dumps(result, indent=2))
    print(f"wrote {args.out / 'tpf.json'}")
    return result["rows"]


def print_denoise_steps(rows: list[ModeRow]) -> None:
    """Diffusion blocks by their number of denoising forwards (the commit pass not counted): a
    block of ``B`` that needs ``B - 1`` forwards unmasked one token per forward (the threshold was
    never met beside the top-1 token)."""
    for r in rows:
        hist = r.denoise_histogram
        if not hist:
            continue
        blocks = sum(hist)
        mean = sum(i * c for i, c in enumerate(hist)) / blocks
        print(
            f"  {r.mode} block {r.block_size}: {blocks} blocks by denoising forwards "
            f"0..{len(hist) - 1} = {hist} (mean {mean:.2f}; + 1 commit pass each)"
        )


if __name__ == "__main__":
    main()
