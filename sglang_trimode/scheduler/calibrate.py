"""Measure forward time against tokens and context, and fit the scheduler's :class:`CostModel`.

``time_forward(batch, tokens, context) -> seconds`` is any timer of one real forward (the
reference engine's :meth:`TriModeEngine.time_forward`, later the SGLang worker's). ``calibrate``
times a grid of shapes and fits ``fixed + per_token * tokens + per_context * context`` by least
squares; ``bench/calibrate.py`` writes the result as the calibration file ``cost.py`` reads.
:class:`OnlineCalibration` fits the same model from a server's own timed forwards (the SGLang
worker's ``auto`` without a calibration file).
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


class OnlineCalibration:
    """A server's own forwards as the measurement: ``add(tokens, context, seconds)`` after each
    timed forward; ``model()`` is the :class:`CostModel` fitted over the last ``window`` of them,
    refitted every ``refit`` new samples, or None until they span ``min_shapes`` token counts
    (least squares needs distinct shapes)."""

    def __init__(self, window: int = 512, refit: int = 64, min_shapes: int = 3) -> None:
        from collections import deque

        self.samples: deque[tuple[int, int, float]] = deque(maxlen=window)
        self.refit, self.min_shapes = refit, min_shapes
        self._model: CostModel | None = None
        self._since = 0

    def add(self, tokens: int, context: int, seconds: float) -> None:
        self.samples.append((int(tokens), int(context), float(seconds)))
        self._since += 1

    def model(self) -> CostModel | None:
        if self._model is None or self._since >= self.refit:
            if len({t for t, _, _ in self.samples}) >= self.min_shapes:
                self._model = CostModel.fit(list(self.samples), source="measured online")
                self._since = 0
        return self._model
