"""What every backend returns: per-turn outputs, timings and (where the backend knows them) steps.

A field a backend cannot observe is ``None`` ("unavailable"), never estimated: forwards and
per-step acceptance lengths come from the reference engine's stats or from a server's
``meta_info``; TTFT from a stream (or, for the in-process engine, a separate 1-token generate).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

from bench.speed_bench.dataset import Request


class BackendUnavailable(RuntimeError):
    """The backend cannot run here (package missing, server unreachable); the message says why."""


@dataclass
class TurnResult:
    text: str = ""
    output_ids: list[int] | None = None
    num_tokens: int | None = None  # output tokens, the first (prefill) token included
    forwards: int | None = None  # model forwards after the prefill (draft/verify/commit each one)
    accept_lengths: list[int] | None = None  # tokens per verify/commit step, bonus included
    verify_steps: int | None = None  # steps when only their count is known (spec_verify_ct)
    start: float = 0.0  # perf_counter when the request was sent
    end: float = 0.0  # perf_counter when its last token arrived
    ttft: float | None = None  # seconds to the first token
    meta: dict = field(default_factory=dict)  # raw per-request stats from the server

    @property
    def e2e(self) -> float:
        return self.end - self.start


@dataclass
class RequestResult:
    request: Request
    turns: list[TurnResult]


@dataclass(frozen=True)
class GenConfig:
    max_new_tokens: int = 64
    temperature: float = 0.0
    block_size: int | None = None
    threshold: float | None = 0.9
    seed: int = 0
    ignore_eos: bool = False  # generate max_new_tokens every time (engine: no stop tokens)


Progress = Callable[[int], None]


class Backend:
    """``run(requests, mode, concurrency, progress)`` -> one ``RequestResult`` per request."""

    name = "base"

    def run(
        self, requests: list[Request], mode: str, concurrency: int, progress: Progress
    ) -> list[RequestResult]:
        raise NotImplementedError

    def close(self) -> None:
        """Release what the backend holds (models, connections)."""


def join_conversation(turns: list[str], answers: list[str], sep: str = "\n\n") -> str:
    """Plain-text conversation for servers without a chat template: user, answer, user, ..."""
    parts: list[str] = []
    for i, turn in enumerate(turns):
        parts.append(turn)
        if i < len(answers):
            parts.append(answers[i])
    return sep.join(parts)
