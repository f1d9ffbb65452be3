"""SGLang's offline ``sglang.Engine`` in-process (needs sglang; not installed on CPU dev machines).

Like the reference-engine backend, concurrency N = waves of N prompts per ``generate`` call, so
every request of a wave gets the wave's wall time; TTFT is unavailable (no stream). Stats come
from each output's ``meta_info`` as for the native HTTP API. Untested until the SGLang plugin
issue lands (it needs a machine with sglang).
"""

from __future__ import annotations

import time

from bench.speed_bench.backends.base import (
    Backend,
    BackendUnavailable,
    GenConfig,
    Progress,
    RequestResult,
    TurnResult,
    join_conversation,
)
from bench.speed_bench.backends.http import HttpBackend
from bench.speed_bench.dataset import Request


class SGLangEngineBackend(Backend):
    name = "sglang-engine"

    def __init__(self, model_path: str, gen: GenConfig, engine_args: dict | None = None) -> None:
        try:
            import sglang
        except ImportError as e:
            raise BackendUnavailable(
                f"--backend sglang-engine needs sglang, which is not importable here ({e}); "
                "install sglang (0.5.23, with the trimode plugin) on a GPU machine, or use "
                "--backend engine (reference engine) or --backend native/openai --url for a server"
            ) from None
        self.engine = sglang.Engine(model_path=str(model_path), **(engine_args or {}))
        self.gen = gen

    def run(
        self, requests: list[Request], mode: str, concurrency: int, progress: Progress
    ) -> list[RequestResult]:
        params = {"max_new_tokens": self.gen.max_new_tokens, "temperature": self.gen.temperature}
        results: list[RequestResult] = []
        for w in range(0, len(requests), concurrency):
            wave = requests[w : w + concurrency]
            turns: list[list[TurnResult]] = [[] for _ in wave]
            for t in range(max(len(r.turns) for r in wave)):
                live = [j for j, r in enumerate(wave) if t < len(r.turns)]
                texts = [
                    join_conversation(wave[j].turns[: t + 1], [x.text for x in turns[j]])
                    for j in live
                ]
                start = time.perf_counter()
                outs = self.engine.generate(prompt=texts, sampling_params=params)
                end = time.perf_counter()
                for j, o in zip(live, outs):
                    res = TurnResult(text=o.get("text", ""), start=start, end=end)
                    res.meta = dict(o.get("meta_info") or {})
                    res.output_ids = o.get("output_ids")
                    HttpBackend._stats(res)
                    turns[j].append(res)
            results.extend(RequestResult(r, ts) for r, ts in zip(wave, turns))
            progress(len(wave))
        return results

    def close(self) -> None:
        self.engine.shutdown()
