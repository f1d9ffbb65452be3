"""Files and tables of a sweep: per-run ``specbench.json`` / ``timing.json`` /
``specbench_responses.jsonl``, the sweep's ``results.json`` and ``results.md``, PNG plots when
matplotlib is importable, and the summary table printed at the end.

``specbench.json`` and ``timing.json`` are written as the reference runner's ``Metric.write`` does:
a JSON list holding one result object per run (the reference appends later runs to the list).
"""

from __future__ import annotations

import json
from pathlib import Path

from bench.speed_bench.backends.base import RequestResult


def write_run(run_dir: Path, results: list[RequestResult], specbench: dict, timing: dict) -> None:
    run_dir.mkdir(parents=True, exist_ok=True)
    (run_dir / "specbench.json").write_text(json.dumps([specbench], indent=4))
    (run_dir / "timing.json").write_text(json.dumps([timing], indent=4))
    with open(run_dir / "specbench_responses.jsonl", "w") as f:
        for r in results:
            line = {
                "question_id": r.request.question_id,
                "category": r.request.category,
                "turns": r.request.turns,
                "acceptance_lengths": [t.accept_lengths for t in r.turns],
                "choices": [{"index": 0, "turns": [t.text for t in r.turns]}],
                "output_ids": [t.output_ids for t in r.turns],  # ours; null where not sent
            }
            f.write(json.dumps(line) + "\n")


def _fmt(x, spec: str = ".2f") -> str:
    return "n/a" if x is None else format(x, spec)


def _mean(d: dict | None):
    return None if d is None else d["mean"]


COLUMNS = (
    "mode",
    "conc",
    "reqs",
    "tokens",
    "forwards",
    "TPF",
    "AL",
    "TPS",
    "TPS/user",
    "TTFT s",
    "E2E s",
    "E2E p90",
)


def table_rows(runs: list[dict]) -> list[list[str]]:
    return [
        [
            r["mode"],
            str(r["concurrency"]),
            str(r["requests"]),
            str(r["output_tokens"]),
            _fmt(r["forwards"], "d"),
            _fmt(r["tpf"]),
            _fmt(r["al"]),
            _fmt(r["output_tps"], ".1f"),
            _fmt(_mean(r["tps_per_user"]), ".1f"),
            _fmt(_mean(r["ttft_s"]), ".3f"),
            _fmt(_mean(r["e2e_s"]), ".3f"),
            _fmt((r["e2e_s"] or {}).get("p90"), ".3f"),
        ]
        for r in runs
    ]


def text_table(runs: list[dict]) -> str:
    rows = [list(COLUMNS), *table_rows(runs)]
    widths = [max(len(row[i]) for row in rows) for i in range(len(COLUMNS))]
    lines = ["  ".join(c.rjust(w) for c, w in zip(row, widths)) for row in rows]
    return "\n".join([lines[0], "-" * len(lines[0]), *lines[1:]])


def markdown(runs: list[dict], checks: dict) -> str:
    out = ["| " + " | ".join(COLUMNS) + " |", "|" + "---|" * len(COLUMNS)]
    out += ["| " + " | ".join(row) + " |" for row in table_rows(runs)]
    cats = sorted({c for r in runs for c in r["categories"]})
    if cats:
        out += ["", "AL per category (TPF in brackets)", ""]
        out += ["| mode | conc | " + " | ".join(cats) + " |", "|" + "---|" * (len(cats) + 2)]
        for r in runs:
            cells = [
                f"{_fmt(r['categories'][c]['al'])} ({_fmt(r['categories'][c]['tpf'])})"
                if c in r["categories"]
                else "-"
                for c in cats
            ]
            out.append(f"| {r['mode']} | {r['concurrency']} | " + " | ".join(cells) + " |")
    if checks:
        out += ["", "Agreement with AR (same concurrency)", ""]
        out += ["| mode | conc | exact match | token agreement |", "|---|---|---|---|"]
        for key, c in checks.items():
            mode, conc = key.rsplit("@", 1)
            exact = f"{c['exact_match']}/{c['requests']}"
            out.append(f"| {mode} | {conc} | {exact} | {_fmt(c['token_agreement'], '.3f')} |")
    return "\n".join(out) + "\n"


def plots(runs: list[dict], out: Path) -> list[Path]:
    """AL per category and mode; output tokens/s against concurrency. Skipped without matplotlib."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("[speed_bench] plots skipped: matplotlib is not importable here")
        return []
    paths = []
    first = {}
    for r in runs:
        first.setdefault(r["mode"], r)
    cats = sorted({c for r in first.values() for c in r["categories"]})
    fig, ax = plt.subplots(figsize=(max(6, len(cats)), 4))
    width = 0.8 / max(1, len(first))
    for i, (mode, r) in enumerate(first.items()):
        ys = [r["categories"].get(c, {}).get("al") or 0 for c in cats]
        ax.bar([x + i * width for x in range(len(cats))], ys, width, label=mode)
    ax.set_xticks([x + 0.4 - width / 2 for x in range(len(cats))], cats, rotation=45, ha="right")
    ax.set_ylabel("acceptance length (tokens/step)")
    ax.legend()
    fig.tight_layout()
    paths.append(out / "al_per_category.png")
    fig.savefig(paths[-1], dpi=120)
    fig, ax = plt.subplots(figsize=(6, 4))
    for mode in first:
        pts = [(r["concurrency"], r["output_tps"]) for r in runs if r["mode"] == mode]
        if all(y is not None for _, y in pts):
            ax.plot(*zip(*pts), marker="o", label=mode)
    ax.set_xscale("log", base=2)
    ax.set_xlabel("concurrency")
    ax.set_ylabel("output tokens/s")
    ax.legend()
    fig.tight_layout()
    paths.append(out / "tps_vs_concurrency.png")
    fig.savefig(paths[-1], dpi=120)
    plt.close("all")
    return paths
