"""Measure forward time against tokens and context, and fit the scheduler's :class:`CostModel`.

``time_forward(batch, tokens, context) -> seconds`` is any timer of one real forward (the
reference engine's :meth:`TriModeEngine.time_forward`, later the SGLang worker's). ``calibrate``
times a grid of shapes and fits ``fixed + per_token * tokens + per_context * context`` by least
squares; ``bench/calibrate.py`` writes the result as the calibration file ``cost.py`` reads.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

from sglang_trimode.scheduler.cost import CostModel

Timer = Callable[[int, int, int], float]


def measure(
    time_forward: Timer,
    batches: Sequence[int] = (1, 4),
    tokens: Sequence[int] = (1, 4, 16),
    contexts: Sequence[int] = (16, 128),
) -> list[dict]:
    """One row per shape: ``batch``, per-request ``tokens`` and ``context``, the forward's
    totals (``total_tokens``, ``total_context``) and its ``seconds``."""
    rows = []
    for b in batches:
        for n in tokens:
            for c in contexts:
                s = time_forward(b, n, c)
                rows.append(
                    dict(batch=b, tokens=n, context=c, total_tokens=b * n, total_context=b * c)
                    | dict(seconds=s)
                )
    return rows


def fit(rows: Sequence[dict], source: str = "measured") -> CostModel:
    return CostModel.fit(
        [(r["total_tokens"], r["total_context"], r["seconds"]) for r in rows], source=source
    )


def calibrate(time_forward: Timer, source: str = "measured at start-up", **grid) -> CostModel:
    return fit(measure(time_forward, **grid), source=source)
