"""Measure the scheduler's cost model (and draft acceptance) on this device; write the files.

    python bench/calibrate.py --out DIR [--model PATH] [--device cpu|cuda] [--dtype float32]
                              [--batches 1,4,16] [--tokens 1,4,16,64] [--contexts 16,256]

Times one forward of the reference engine per (batch, tokens per request, context per request)
shape (best of ``--repeats`` after a warm-up), fits ``fixed + per_token * tokens + per_context *
context`` by least squares and writes:

- ``DIR/cost.json``: the :class:`~sglang_trimode.scheduler.cost.CostModel` (``CostModel.load``;
  ``bench/scheduler_sim.py --cost DIR/cost.json``);
- ``DIR/calibration.json``: the measured rows, the fit's prediction and relative error per row;
- ``DIR/acceptance.json`` (unless ``--no-acceptance``): the per-draft acceptance ``alpha`` of
  greedy quadratic self-speculation on held-out prompts (``scheduler_sim.py --acceptance``).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from sglang_trimode import TriModeEngine, default_model_path  # noqa: E402
from sglang_trimode.scheduler.calibrate import fit, measure  # noqa: E402


def csv(kind):
    return lambda s: [kind(x) for x in s.split(",") if x]


def acceptance(engine: TriModeEngine, model_path: Path, n: int, block: int, new: int) -> dict:
    """Per-draft acceptance of greedy quadratic self-speculation (drafts accepted / offered
    drafts up to and including the first rejection: the geometric model's MLE)."""
    from sglang_trimode.models import load_tokenizer

    tok = load_tokenizer(model_path)
    if tok is not None:
        from sglang_trimode.training.corpus import heldout_prompts

        prompts = [tok.encode(t) for t in heldout_prompts(n)]
    else:
        g = torch.Generator().manual_seed(0)
        vocab, mask = engine.config.vocab_size, engine.config.mask_token_id
        prompts = [
            [t for t in torch.randint(4, vocab, (16,), generator=g).tolist() if t != mask]
            for _ in range(n)
        ]
    outs = engine.generate(
        prompts, mode="self_spec_quadratic", block_size=block, max_new_tokens=new
    )
    lengths = [a for o in outs for a in o.stats.accept_lengths[:-1]]  # last step is cut short
    accepted = sum(a - 1 for a in lengths)
    rejected = sum(a < block for a in lengths)
    alpha = accepted / max(1, accepted + rejected)
    return dict(alpha=alpha, block=block, steps=len(lengths), prompts=len(prompts))


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--model", type=Path, default=None, help="default: the shipped model")
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--dtype", choices=["float32", "bfloat16", "float16"], default="float32")
    ap.add_argument("--batches", type=csv(int), default=[1, 4, 16])
    ap.add_argument("--tokens", type=csv(int), default=[1, 4, 16, 64])
    ap.add_argument("--contexts", type=csv(int), default=[16, 256])
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--no-acceptance", action="store_true")
    ap.add_argument("--acceptance-block", type=int, default=8)
    ap.add_argument("--acceptance-prompts", type=int, default=8)
    args = ap.parse_args(argv)
    model_path = args.model or default_model_path()
    engine = TriModeEngine.from_pretrained(
        model_path, device=args.device, dtype=getattr(torch, args.dtype)
    )
    device = str(engine.device)
    if engine.device.type == "cuda":
        device += f" ({torch.cuda.get_device_name(engine.device)})"

    def timer(b: int, n: int, c: int) -> float:
        return engine.time_forward(b, n, c, repeats=args.repeats)

    rows = measure(timer, args.batches, args.tokens, args.contexts)
    cost = fit(rows, source=f"measured: {model_path.name} on {device}, {args.dtype}")
    for r in rows:
        r["predicted"] = cost.time(r["total_tokens"], r["total_context"])
        r["rel_error"] = r["predicted"] / r["seconds"] - 1
    args.out.mkdir(parents=True, exist_ok=True)
    cost.save(args.out / "cost.json")
    result = {"model": str(model_path), "device": device, "cost_model": cost.__dict__, "rows": rows}
    (args.out / "calibration.json").write_text(json.dumps(result, indent=1))
    print(f"{'batch':>5} {'tokens':>6} {'context':>7} {'ms':>9} {'fit ms':>9} {'err':>7}")
    for r in rows:
        print(
            f"{r['batch']:>5} {r['tokens']:>6} {r['context']:>7} {1e3 * r['seconds']:>9.2f} "
            f"{1e3 * r['predicted']:>9.2f} {100 * r['rel_error']:>6.0f}%"
        )
    print(json.dumps(cost.__dict__))
    if not args.no_acceptance:
        acc = acceptance(
            engine, Path(model_path), args.acceptance_prompts, args.acceptance_block, 64
        )
        (args.out / "acceptance.json").write_text(json.dumps(acc, indent=1))
        result["acceptance"] = acc
        print(json.dumps(acc))
    return result


if __name__ == "__main__":
    main()
