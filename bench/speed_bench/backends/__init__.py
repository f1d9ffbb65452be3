"""Backends behind one interface (``Backend.run``): ``engine`` (reference engine, in-process),
``openai`` / ``openai-chat`` / ``native`` (a running server), ``sglang-engine`` (offline SGLang)."""

from bench.speed_bench.backends.base import (
    Backend,
    BackendUnavailable,
    GenConfig,
    RequestResult,
    TurnResult,
)

BACKENDS = ("engine", "native", "openai", "openai-chat", "sglang-engine")

__all__ = ["BACKENDS", "Backend", "BackendUnavailable", "GenConfig", "RequestResult", "TurnResult"]
