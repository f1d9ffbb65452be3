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
import random
import sys
from dataclasses import dataclass
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from sglang_trimode.scheduler.cost import CostModel  # noqa: E402
from sglang_trimode.scheduler.policy import (  # noqa: E402
    AutoPolicy,
    Choice,
    RequestView,
    fit_budget,
)
from sglang_trimode.scheduler.step import Budget, Scheduler  # noqa: E402


@dataclass
class FixedPolicy:
    """Every request the same choice (shrunk to AR where the budget demands): the baseline."""

    choice: Choice

    def choose(self, reqs, budget: int | None = None, base: object = None) -> list[Choice]:
        return fit_budget([self.choice] * len(reqs), budget)


FIXED = {
    "ar": Choice("ar", 1),
    "self_spec_linear_8": Choice("self_spec_linear", 8),
    "self_spec_linear_16": Choice("self_spec_linear", 16),
    "self_spec_quadratic_4": Choice("self_spec_quadratic", 4),
    "self_spec_quadratic_8": Choice("self_spec_quadratic", 8),
    "self_spec_quadratic_16": Choice("self_spec_quadratic", 16),
}


def true_alphas(c: int, alpha: float, spread: float) -> list[float]:
    """Per-request acceptance spread evenly (golden-ratio sequence) around ``alpha``."""
    return [
        min(0.99, max(0.0, alpha + spread * (((i * 0.6180339887) % 1.0) - 0.5))) for i in range(c)
    ]


def diffusion_rate(block: int, per_step: float, cost: CostModel, c: int, context: int) -> float:
    forwards = math.ceil((block - 1) / per_step) + 1  # draft forwards + the commit pass
    return c * block / forwards / cost.time(block * c, c * context)


def run_policy(policy, alphas, cost, context, budget, steps, seed) -> tuple[float, dict]:
    """Steady-state tokens/s of ``policy`` over ``steps`` forwards of the real step planner.

    Each forward: :class:`Scheduler` plans (admission, locks, choices); a verify of ``k`` drafts
    accepts a truncated-geometric prefix at the request's hidden ``alpha``; a linear draft
    forward emits nothing and locks its verify. Auto sees only the observed acceptance."""
    rng = random.Random(seed)
    views = [RequestView(i, context) for i in range(len(alphas))]
    sched = Scheduler(policy, budget)
    tokens, seconds, mix = 0, 0.0, {}
    for _ in range(steps):
        plan = sched.plan(views)
        seconds += cost.time(plan.tokens, context * len(plan.entries))
        for e in plan.entries:
            v, c = views[e.rid], e.choice
            key = f"{c.mode}:{c.block}"
            mix[key] = mix.get(key, 0) + 1
            if c.mode == "self_spec_linear" and v.locked is None:
                v.locked = c
                continue
            v.locked = None
            drafts = c.block - 1 if c.mode != "ar" else 0
            k = 0
            while k < drafts and rng.random() < alphas[e.rid]:
                k += 1
            if drafts:
                v.observe(drafts, k)
            tokens += k + 1
    return tokens / seconds, mix


def simulate(args: argparse.Namespace, cost: CostModel) -> list[dict]:
    rows = []
    c = 1
    budget = Budget(args.max_concurrency, args.max_tokens)
    while c <= args.max_concurrency:
        alphas = true_alphas(c, args.alpha, args.spread)
        policies = {
            n: FixedPolicy(ch) for n, ch in FIXED.items() if ch.tokens * c <= args.max_tokens
        }
        policies["auto"] = AutoPolicy(cost, max_tokens_per_forward=args.max_tokens)
        for name, pol in policies.items():
            tps, mix = run_policy(pol, alphas, cost, args.context, budget, args.steps, args.seed)
            rows.append(
                dict(concurrency=c, mode=name, tokens_per_s=tps, tokens_per_s_per_user=tps / c)
                | dict(mix=mix)
            )
        if 32 * c <= args.max_tokens:
            d = diffusion_rate(32, args.diffusion_tokens_per_step, cost, c, args.context)
            rows.append(
                dict(
                    concurrency=c, mode="diffusion_32", tokens_per_s=d, tokens_per_s_per_user=d / c
                )
                | dict(mix={"diffusion:32": c}, lossless=False)
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


def table(rows: list[dict], key: str) -> str:
    modes = [*FIXED, "diffusion_32", "auto"]
    lines = [f"{'c':>4} " + " ".join(f"{m[-22:]:>22}" for m in modes)]
    for c in sorted({r["concurrency"] for r in rows}):
        vals = {r["mode"]: r[key] for r in rows if r["concurrency"] == c}
        lines.append(f"{c:>4} " + " ".join(f"{vals.get(m, float('nan')):>22.1f}" for m in modes))
    return "\n".join(lines)


def plot(rows: list[dict], path: Path, title: str) -> bool:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("[scheduler_sim] matplotlib is not installed (requirements/bench.txt): PNG skipped")
        return False
    fig, axes = plt.subplots(1, 2, figsize=(13, 5))
    for ax, key, label in (
        (axes[0], "tokens_per_s", "tokens/s in total"),
        (axes[1], "tokens_per_s_per_user", "tokens/s per user"),
    ):
        for mode in [*FIXED, "diffusion_32", "auto"]:
            pts = [(r["concurrency"], r[key]) for r in rows if r["mode"] == mode]
            if pts:
                style = dict(lw=3, color="black") if mode == "auto" else dict(lw=1.2)
                ls = ":" if mode == "diffusion_32" else "-"
                ax.plot(*zip(*pts), ls, marker="o", ms=3, label=mode, **style)
        ax.set_xscale("log", base=2)
        ax.set_yscale("log")
        ax.set_xlabel("concurrency")
        ax.set_ylabel(label)
        ax.grid(True, which="both", alpha=0.3)
    axes[0].legend(fontsize=8)
    fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return True


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--cost", type=Path, default=None, help="calibration JSON (bench/calibrate.py)")
    ap.add_argument(
        "--acceptance", type=Path, default=None, help="acceptance.json (bench/calibrate.py)"
    )
    ap.add_argument("--alpha", type=float, default=0.8, help="mean per-draft acceptance")
    ap.add_argument("--spread", type=float, default=0.3, help="spread of alpha across requests")
    ap.add_argument("--context", type=int, default=2048, help="context tokens per request")
    ap.add_argument("--max-concurrency", type=int, default=256)
    ap.add_argument("--max-tokens", type=int, default=16384, help="tokens per forward budget")
    ap.add_argument("--steps", type=int, default=200, help="forwards simulated per point")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--diffusion-tokens-per-step", type=float, default=2.5)
    args = ap.parse_args(argv)
    if args.cost is not None:
        cost = CostModel.load(args.cost)
    else:  # synthetic: 8B bf16, 3.35 TB/s, 400 TFLOP/s effective, KV 139 kB/token
        cost = CostModel.roofline(8e9, 2, 3.35e12, 4e14, 139264)
    if args.acceptance is not None:
        args.alpha = json.loads(args.acceptance.read_text())["alpha"]
    rows = simulate(args, cost)
    result = {
        "cost_model": cost.__dict__,
        "args": {k: str(v) for k, v in vars(args).items()},
        "rows": rows,
        "verdict": verdict(rows),
    }
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "scheduler_sim.json").write_text(json.dumps(result, indent=1))
    print(f"cost model: {cost.source}; alpha {args.alpha:.3f} +- {args.spread / 2:.2f}")
    print("tokens/s in total\n" + table(rows, "tokens_per_s"))
    print("tokens/s per user\n" + table(rows, "tokens_per_s_per_user"))
    print(json.dumps(result["verdict"]))
    title = f"cost: {cost.source}; alpha {args.alpha:.2f} +- {args.spread / 2:.2f}"
    if plot(rows, args.out / "scheduler_sim.png", title):
        print(f"wrote {args.out / 'scheduler_sim.png'}")
    return result


if __name__ == "__main__":
    main()
