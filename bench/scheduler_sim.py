"""Simulated tokens/s per user and in total against concurrency, for AR, fixed modes and auto.

    python bench/scheduler_sim.py --out DIR [--cost cost.json] [--alpha 0.8] [--spread 0.3]

Each concurrency level runs ``c`` requests whose per-draft acceptance ``alpha_i`` spreads evenly
around ``--alpha``; every policy picks each request's mode and block for one forward; throughput
is the expected tokens of that forward divided by the cost model's time for it (steady state).
The cost model is ``--cost`` (a calibration file written by a benchmark, see
``sglang_trimode.scheduler.cost.CostModel.save``) or, by default, a roofline of an 8B model on an
H100-class GPU (synthetic, stated in the JSON). Diffusion (not lossless, so not an auto choice)
is modelled by ``--diffusion-tokens-per-step`` tokens unmasked per draft forward. Writes
``DIR/scheduler_sim.json`` ``{"rows": [{"concurrency", "mode", "tokens_per_s", ...}]}`` and a PNG
when matplotlib is importable.
"""

from __future__ import annotations

import argparse
import json
import math
from pathlib import Path

from sglang_trimode.scheduler.cost import CostModel
from sglang_trimode.scheduler.policy import AutoPolicy, Choice, FixedPolicy, RequestView

FIXED = {
    "ar": Choice("ar", 1),
    "self_spec_linear_16": Choice("self_spec_linear", 16),
    "self_spec_quadratic_8": Choice("self_spec_quadratic", 8),
    "self_spec_quadratic_16": Choice("self_spec_quadratic", 16),
}


def requests(c: int, alpha: float, spread: float, context: int) -> list[RequestView]:
    out = []
    for i in range(c):
        a = min(0.99, max(0.0, alpha + spread * (((i * 0.6180339887) % 1.0) - 0.5)))
        out.append(RequestView(i, context, prior=(a * 1000, (1 - a) * 1000)))
    return out


def diffusion_rate(block: int, per_step: float, cost: CostModel, reqs) -> float:
    forwards = math.ceil((block - 1) / per_step) + 1  # draft forwards + the commit pass
    t = cost.time(block * len(reqs), sum(r.context for r in reqs))
    return len(reqs) * block / forwards / t


def simulate(args: argparse.Namespace, cost: CostModel) -> list[dict]:
    rows = []
    c = 1
    while c <= args.max_concurrency:
        reqs = requests(c, args.alpha, args.spread, args.context)
        auto = AutoPolicy(cost, max_tokens_per_forward=args.max_tokens)
        policies = {name: FixedPolicy(ch) for name, ch in FIXED.items()}
        policies["auto"] = auto
        for name, pol in policies.items():
            choices = pol.choose(reqs)
            score = auto.objective(reqs, choices)
            if score == float("-inf"):
                continue  # over the token budget: this fixed mode cannot run at this load
            mix = {}
            for ch in choices:
                key = f"{ch.mode}:{ch.block}"
                mix[key] = mix.get(key, 0) + 1
            rows.append(
                dict(
                    concurrency=c,
                    mode=name,
                    tokens_per_s=score,
                    tokens_per_s_per_user=score / c,
                    mix=mix,
                )
            )
        d = diffusion_rate(32, args.diffusion_tokens_per_step, cost, reqs)
        if 32 * c <= args.max_tokens:
            rows.append(
                dict(
                    concurrency=c,
                    mode="diffusion_32",
                    tokens_per_s=d,
                    tokens_per_s_per_user=d / c,
                    mix={"diffusion:32": c},
                )
            )
        c *= 2
    return rows


def verdict(rows: list[dict]) -> dict:
    by_c: dict[int, dict[str, float]] = {}
    for r in rows:
        by_c.setdefault(r["concurrency"], {})[r["mode"]] = r["tokens_per_s"]
    worst, better = 1e9, []
    for c, m in by_c.items():
        fixed = {k: v for k, v in m.items() if k != "auto"}
        best = max(fixed.values())
        worst = min(worst, m["auto"] / best)
        if all(m["auto"] > v * 1.0001 for v in fixed.values()):
            better.append(c)
    return {
        "auto_over_best_fixed_min": worst,
        "auto_beats_every_fixed_at": better,
        "goal_within_5pct": worst >= 0.95,
        "goal_better_somewhere": bool(better),
    }


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--cost", type=Path, default=None, help="calibration JSON (CostModel.save)")
    ap.add_argument("--alpha", type=float, default=0.8, help="mean per-draft acceptance")
    ap.add_argument("--spread", type=float, default=0.3, help="spread of alpha across requests")
    ap.add_argument("--context", type=int, default=2048, help="context tokens per request")
    ap.add_argument("--max-concurrency", type=int, default=256)
    ap.add_argument("--max-tokens", type=int, default=16384, help="tokens per forward budget")
    ap.add_argument("--diffusion-tokens-per-step", type=float, default=2.5)
    args = ap.parse_args(argv)
    if args.cost is not None:
        cost = CostModel.load(args.cost)
    else:  # synthetic: 8B bf16, 3.35 TB/s, 400 TFLOP/s effective, KV 139 kB/token
        cost = CostModel.roofline(8e9, 2, 3.35e12, 4e14, 139264)
    rows = simulate(args, cost)
    result = {
        "cost_model": cost.__dict__,
        "args": {k: str(v) for k, v in vars(args).items()},
        "rows": rows,
        "verdict": verdict(rows),
    }
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "scheduler_sim.json").write_text(json.dumps(result, indent=1))
    print(f"{'c':>4} " + " ".join(f"{m:>22}" for m in [*FIXED, "diffusion_32", "auto"]))
    for c in sorted({r["concurrency"] for r in rows}):
        vals = {r["mode"]: r["tokens_per_s"] for r in rows if r["concurrency"] == c}
        print(
            f"{c:>4} "
            + " ".join(
                f"{vals.get(m, float('nan')):>22.0f}" for m in [*FIXED, "diffusion_32", "auto"]
            )
        )
    print(json.dumps(result["verdict"]))
    try:
        import matplotlib.pyplot as plt
    except ImportError:
        print("[scheduler_sim] matplotlib is not installed: PNG plot skipped")
        return result
    for mode in sorted({r["mode"] for r in rows}):
        pts = [(r["concurrency"], r["tokens_per_s"]) for r in rows if r["mode"] == mode]
        plt.plot(*zip(*pts), marker="o", label=mode)
    plt.xscale("log", base=2)
    plt.xlabel("concurrency")
    plt.ylabel("tokens/s (total)")
    plt.legend()
    plt.savefig(args.out / "scheduler_sim.png", dpi=120)
    return result


if __name__ == "__main__":
    main()
