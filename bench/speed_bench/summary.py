"""Our figures per run (mode x concurrency): TPF next to AL, per request and per category, the
greedy-equivalence check against AR, diffusion's agreement with AR.

TPF (tokens per forward) = output tokens after the prefill's first token / every forward after
the prefill (draft, verify and commit each count one), as in ``sglang_trimode.report``. AL is the
SPEED-Bench acceptance length (tokens per step); for linear self-speculation and diffusion a step
costs two or more forwards, so the two differ.
"""

from __future__ import annotations

from collections import defaultdict
from statistics import mean

from bench.speed_bench.backends.base import RequestResult
from bench.speed_bench.metrics import _percentile, request_al, request_tokens


def percentiles(xs: list[float]) -> dict | None:
    if not xs:
        return None
    return {"mean": mean(xs), **{f"p{q}": _percentile(xs, q / 100) for q in (50, 90, 99)}}


def request_row(r: RequestResult) -> dict:
    tokens = request_tokens(r)
    fwd = [t.forwards for t in r.turns]
    forwards = None if any(f is None for f in fwd) else sum(fwd)
    e2e = sum(t.e2e for t in r.turns)
    counts = [
        t.verify_steps if t.accept_lengths is None else len(t.accept_lengths) for t in r.turns
    ]
    ttft = r.turns[0].ttft
    return {
        "question_id": r.request.question_id,
        "category": r.request.category,
        "turns": len(r.turns),
        "output_tokens": tokens,
        "forwards": forwards,
        "steps": None if None in counts else sum(counts),  # verify/commit steps (no prefill)
        "tpf": (tokens - len(r.turns)) / forwards if forwards and tokens is not None else None,
        "al": request_al(r),
        "e2e_s": e2e,
        "ttft_s": ttft,
        "tps_per_user": tokens / e2e if tokens is not None and e2e > 0 else None,
    }


def _ratio(rows: list[dict], num: str, den: str, minus_turns: bool = False) -> float | None:
    if any(r[num] is None or r[den] is None for r in rows):
        return None
    d = sum(r[den] for r in rows)
    n = sum(r[num] - (r["turns"] if minus_turns else 0) for r in rows)
    return n / d if d else None


def run_summary(results: list[RequestResult], mode: str, concurrency: int, timing: dict) -> dict:
    rows = [request_row(r) for r in results]
    by_cat: dict[str, list[dict]] = defaultdict(list)
    for row in rows:
        by_cat[row["category"]].append(row)
    als = [row["al"] for row in rows if row["al"] is not None]
    return {
        "mode": mode,
        "concurrency": concurrency,
        "requests": len(rows),
        "output_tokens": sum(r["output_tokens"] or 0 for r in rows),
        "forwards": None
        if any(r["forwards"] is None for r in rows)
        else sum(r["forwards"] for r in rows),
        "tpf": _ratio(rows, "output_tokens", "forwards", minus_turns=True),
        "al": mean(als) if als else None,
        "output_tps": timing["Output TPS"],
        "tps_per_user": percentiles([r["tps_per_user"] for r in rows if r["tps_per_user"]]),
        "ttft_s": percentiles([r["ttft_s"] for r in rows if r["ttft_s"] is not None]),
        "e2e_s": percentiles([r["e2e_s"] for r in rows]),
        "categories": {
            c: {
                "requests": len(v),
                "al": mean([x["al"] for x in v]) if all(x["al"] for x in v) else None,
                "tpf": _ratio(v, "output_tokens", "forwards", minus_turns=True),
                "tps_per_user": percentiles([x["tps_per_user"] for x in v if x["tps_per_user"]]),
            }
            for c, v in sorted(by_cat.items())
        },
        "per_request": rows,
    }


def _outputs(r: RequestResult) -> list:
    return [t.output_ids if t.output_ids is not None else t.text for t in r.turns]


def agreement(ar: list[RequestResult], other: list[RequestResult]) -> dict:
    """Exact-match count, mismatching ids and mean per-position token agreement vs AR."""
    mismatches, scores = [], []
    for a, b in zip(ar, other):
        if _outputs(a) != _outputs(b):
            mismatches.append(a.request.question_id)
        for x, y in zip(_outputs(a), _outputs(b)):
            n = max(len(x), len(y))
            scores.append(sum(p == q for p, q in zip(x, y)) / n if n else 1.0)
    return {
        "requests": len(ar),
        "exact_match": len(ar) - len(mismatches),
        "mismatches": mismatches,
        "token_agreement": mean(scores) if scores else None,
    }
