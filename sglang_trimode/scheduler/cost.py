"""Cost model of one forward: time as a function of the tokens and the context in the batch.

``t = fixed + per_token * tokens + per_context * context_tokens`` (least squares over measured
forwards), or a roofline for a GPU: ``max(weights / bandwidth, 2 * params * tokens / flops)`` plus
the KV read. The mask scheduler reads a calibration file written by a benchmark or a measurement
taken at start-up; nothing here is a hard-coded device constant.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np


@dataclass(frozen=True)
class CostModel:
    fixed_s: float
    per_token_s: float
    per_context_s: float = 0.0
    compute_floor_per_token_s: float = 0.0  # roofline: compute time per token once compute-bound
    source: str = "fit"

    def time(self, tokens: int, context: int = 0) -> float:
        """Seconds for one forward over ``tokens`` new tokens attending ``context`` cached ones."""
        linear = self.fixed_s + self.per_token_s * tokens + self.per_context_s * context
        return max(linear, self.compute_floor_per_token_s * tokens + self.per_context_s * context)

    @classmethod
    def fit(cls, samples: Sequence[tuple[int, int, float]], source: str = "fit") -> CostModel:
        """Least squares over ``(tokens, context, seconds)`` measurements (>= 3 distinct)."""
        if len(samples) < 3:
            raise ValueError(f"samples: need >= 3 measured forwards to fit, got {len(samples)}")
        a = np.array([[1.0, t, c] for t, c, _ in samples])
        y = np.array([s for _, _, s in samples])
        coef, *_ = np.linalg.lstsq(a, y, rcond=None)
        fixed, per_tok, per_ctx = (max(0.0, float(x)) for x in coef)
        return cls(fixed, per_tok, per_ctx, source=source)

    @classmethod
    def roofline(
        cls,
        params: float,
        bytes_per_param: float,
        bandwidth_Bps: float,
        flops: float,
        kv_bytes_per_token: float,
    ) -> CostModel:
        """A GPU-like model: weight reads bound small batches, matmul FLOPs bound large ones."""
        return cls(
            fixed_s=params * bytes_per_param / bandwidth_Bps,
            per_token_s=0.0,
            per_context_s=kv_bytes_per_token / bandwidth_Bps,
            compute_floor_per_token_s=2.0 * params / flops,
            source="roofline",
        )

    def save(self, path: str | Path) -> None:
        Path(path).write_text(json.dumps(asdict(self), indent=2))

    @classmethod
    def load(cls, path: str | Path) -> CostModel:
        data = json.loads(Path(path).read_text())
        unknown = set(data) - set(cls.__dataclass_fields__)
        if unknown:
            raise ValueError(f"{path}: unknown cost-model fields {sorted(unknown)}")
        return cls(**data)
