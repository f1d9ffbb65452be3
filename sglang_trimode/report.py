"""Run decoding modes side by side and tabulate forwards, tokens per forward and time.

Shared by the demo (``python -m sglang_trimode.demo``) and ``bench/tpf.py``. Two figures are kept
apart everywhere: AL (acceptance length: tokens per verify or commit step, bonus included) and
TPF (tokens per forward: every draft, verify and commit forward counts one).
"""

from __future__ import annotations

import time
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass, field

import torch

from sglang_trimode.reference.engine import GenerationOutput, TriModeEngine


@dataclass(frozen=True)
class ModeRow:
    mode: str
    block_size: int
    requests: int
    tokens: int
    forwards: int
    steps: int
    wall_s: float
    histogram: list[int]
    # diffusion blocks by their denoising forwards 0..B-1 ([] for the other modes)
    denoise_histogram: list[int] = field(default_factory=list)

    @property
    def tokens_per_forward(self) -> float:
        return self.tokens / self.forwards if self.forwards else float("nan")

    @property
    def acceptance_length(self) -> float:
        return self.tokens / self.steps if self.steps else float("nan")

    def to_dict(self) -> dict:
        return {
            **asdict(self),
            "tokens_per_forward": self.tokens_per_forward,
            "acceptance_length": self.acceptance_length,
            "tokens_per_s": self.tokens / self.wall_s if self.wall_s else float("nan"),
        }


def random_prompts(config, n: int, base_len: int = 6, step: int = 3) -> list[list[int]]:
    """Seeded ragged prompts of random token ids, avoiding the mask and stop tokens."""
    g = torch.Generator().manual_seed(0)
    reserved = {config.mask_token_id, *config.eos_token_ids}
    rand = [
        torch.randint(0, config.vocab_size, (base_len + step * i,), generator=g) for i in range(n)
    ]
    return [[t for t in r.tolist() if t not in reserved] for r in rand]


def summarize(
    outs: Sequence[GenerationOutput], mode: str, block_size: int, wall_s: float
) -> ModeRow:
    """Totals over requests. The prefill's first token is excluded from tokens, like forwards."""
    hist = [0] * max(1, block_size)
    denoise = [0] * max(1, block_size)  # a block of B has at most B - 1 masks to denoise
    for o in outs:
        for i, count in enumerate(o.stats.histogram(len(hist))):
            hist[i] += count
        for i, count in enumerate(o.stats.denoise_histogram(len(denoise))):
            denoise[i] += count
    return ModeRow(
        mode=mode,
        block_size=block_size,
        requests=len(outs),
        tokens=sum(len(o.token_ids) - 1 for o in outs),
        forwards=sum(o.stats.forwards for o in outs),
        steps=sum(len(o.stats.accept_lengths) for o in outs),
        wall_s=wall_s,
        histogram=hist,
        denoise_histogram=denoise if any(denoise) else [],
    )


def run_mode(
    engine: TriModeEngine, prompts: Sequence[Sequence[int]], mode: str, block_size: int, **kw
) -> tuple[ModeRow, list[GenerationOutput]]:
    t0 = time.perf_counter()
    outs = engine.generate(prompts, mode=mode, block_size=block_size, **kw)
    return summarize(outs, mode, block_size, time.perf_counter() - t0), outs


def format_table(rows: Iterable[ModeRow]) -> str:
    head = (
        f"{'mode':<28} {'block':>5} {'tokens':>7} {'forwards':>8} "
        f"{'TPF':>6} {'AL':>6} {'time s':>7}"
    )
    lines = [head, "-" * len(head)]
    for r in rows:
        lines.append(
            f"{r.mode:<28} {r.block_size:>5} {r.tokens:>7} {r.forwards:>8} "
            f"{r.tokens_per_forward:>6.2f} {r.acceptance_length:>6.2f} {r.wall_s:>7.2f}"
        )
    return "\n".join(lines)
