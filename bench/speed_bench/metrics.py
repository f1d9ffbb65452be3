"""``specbench.json`` / ``timing.json`` in Model-Optimizer specdec_bench's shapes, plus our extras.

Facts taken from ``examples/specdec_bench/specdec_bench/metrics`` (NVIDIA/Model-Optimizer):
acceptance length (AL) is tokens per engine step; per turn the last step is dropped (the stop
token truncates it) when there is more than one, Request_AL is the mean over all the request's
steps, Category_AL the mean of its requests' ALs, Average_AL the mean of Request_AL; the
histogram counts steps per length; the conditional rate at length k is P(L >= k) / P(L >= k_prev)
over the lengths present and the joint rate their running product. Timing statistics are min,
max, mean, std (population), quartiles 0.25/0.5/0.75 (linear), written as 4-decimal strings;
Output TPS is all output tokens over the span from the first send to the last token.
Engine stats exclude the prefill, so no leading prefill step is there to drop.
"""

from __future__ import annotations

import math
from collections import defaultdict
from statistics import mean

from bench.speed_bench.backends.base import RequestResult


def _percentile(xs: list[float], q: float) -> float:
    s = sorted(xs)
    pos = (len(s) - 1) * q
    lo, hi = math.floor(pos), math.ceil(pos)
    return s[lo] + (s[hi] - s[lo]) * (pos - lo)


def statistics(xs: list[float]) -> dict | None:
    """The reference runner's ``compute_statistics`` shape; None when there is no data."""
    if not xs:
        return None
    m = mean(xs)
    std = math.sqrt(sum((x - m) ** 2 for x in xs) / len(xs))
    return {
        "min": f"{min(xs):.4f}",
        "max": f"{max(xs):.4f}",
        "mean": f"{m:.4f}",
        "std": f"{std:.4f}",
        "quantiles": {str(q): f"{_percentile(xs, q):.4f}" for q in (0.25, 0.5, 0.75)},
    }


def trimmed_steps(steps: list[int]) -> list[int]:
    return steps[:-1] if len(steps) > 1 else list(steps)


def request_al(r: RequestResult) -> float | None:
    """Mean AL over the request's (trimmed) steps; tokens / verify steps where only counts exist."""
    steps = [a for t in r.turns if t.accept_lengths for a in trimmed_steps(t.accept_lengths)]
    if steps:
        return mean(steps)
    if all(t.verify_steps and t.num_tokens for t in r.turns):
        return sum(t.num_tokens for t in r.turns) / sum(t.verify_steps for t in r.turns)
    return None


def specbench(results: list[RequestResult]) -> dict:
    req_al = {r.request.question_id: request_al(r) for r in results}
    req_al = {k: v for k, v in req_al.items() if v is not None}
    per_cat: dict[str, list[float]] = defaultdict(list)
    for r in results:
        if r.request.question_id in req_al:
            per_cat[r.request.category].append(req_al[r.request.question_id])
    hist: dict[int, int] = defaultdict(int)
    for r in results:
        for t in r.turns:
            for a in trimmed_steps(t.accept_lengths or []):
                hist[a] += 1
    hist = dict(sorted(hist.items()))
    total, running, prev, cond, joint, acc = (
        sum(hist.values()),
        sum(hist.values()),
        1.0,
        {},
        {},
        1.0,
    )
    for k, v in hist.items():
        cond[k] = running / total / prev
        prev = running / total
        running -= v
        acc *= cond[k]
        joint[k] = acc
    return {
        "Request_AL": req_al,
        "Category_AL": {c: mean(v) for c, v in sorted(per_cat.items())},
        "Average_AL": mean(req_al.values()) if req_al else None,
        "Acceptance_Length_Histogram": hist,
        "Conditional_Acceptance_Rate": cond,
        "Joint_Acceptance_Rate": joint,
    }


def request_tokens(r: RequestResult) -> int | None:
    counts = [t.num_tokens for t in r.turns]
    return None if any(c is None for c in counts) else sum(counts)


def timing(results: list[RequestResult], num_gpus: int = 1) -> dict:
    turns = [t for r in results for t in r.turns]
    tokens = [request_tokens(r) for r in results]
    known = [n for n in tokens if n is not None]
    span = max(t.end for t in turns) - min(t.start for t in turns)
    tps = sum(known) / span if len(known) == len(tokens) and span > 0 else None
    gen_tps = [
        (t.num_tokens - 1) / (t.e2e - t.ttft)
        for t in turns
        if t.ttft is not None and t.num_tokens and t.num_tokens > 1 and t.e2e > t.ttft
    ]
    return {
        "Output TPS": tps,
        "Output TPS/gpu": tps / num_gpus if tps is not None else None,
        "TTFT Time": statistics([t.ttft for t in turns if t.ttft is not None]),
        "E2E Request Time": statistics([t.e2e for t in turns]),
        "Request Generation Tokens Per Second": statistics(gen_tps),
        "Number of Output Tokens": statistics([float(n) for n in known]),
    }
