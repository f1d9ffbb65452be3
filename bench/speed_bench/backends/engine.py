"""The reference engine in-process (any mode): exact forwards and acceptance lengths from stats.

Concurrency N means waves of N requests, each wave one batched ``generate`` call per turn (the
engine has no continuous batching). Every request of a wave therefore gets the wave's wall time
as its end-to-end latency: its result exists only when the call returns. TTFT is not separable
inside one call, so it is measured by a separate 1-token ``generate`` of the same wave just before
(prefill + first token, the same batch); ``measure_ttft=False`` reports it as unavailable.
"""

from __future__ import annotations

import time
from pathlib import Path

import torch

from bench.speed_bench.backends.base import Backend, GenConfig, Progress, RequestResult, TurnResult
from bench.speed_bench.dataset import Request
from bench.speed_bench.tokenize import encode


class EngineBackend(Backend):
    name = "engine"

    def __init__(
        self,
        model_path: str | Path,
        tokenizer,
        gen: GenConfig,
        device: str = "cpu",
        dtype: torch.dtype = torch.float32,
        measure_ttft: bool = True,
    ) -> None:
        from sglang_trimode.reference.engine import TriModeEngine

        self.engine = TriModeEngine.from_pretrained(model_path, device=device, dtype=dtype)
        self.tokenizer = tokenizer
        self.gen = gen
        self.measure_ttft = measure_ttft

    def _generate(self, prompts: list[list[int]], mode: str, max_new_tokens: int):
        g = self.gen
        return self.engine.generate(
            prompts,
            mode=mode,
            max_new_tokens=max_new_tokens,
            block_size=g.block_size,
            threshold=g.threshold,
            temperature=g.temperature,
            seed=g.seed,
            stop_token_ids=[] if g.ignore_eos else None,
        )

    def run(
        self, requests: list[Request], mode: str, concurrency: int, progress: Progress
    ) -> list[RequestResult]:
        results: list[RequestResult] = []
        for w in range(0, len(requests), concurrency):
            wave = requests[w : w + concurrency]
            history: list[list[int]] = [[] for _ in wave]
            turns: list[list[TurnResult]] = [[] for _ in wave]
            for t in range(max(len(r.turns) for r in wave)):
                live = [j for j, r in enumerate(wave) if t < len(r.turns)]
                sep = "\n\n" if t else ""
                prompts = [
                    history[j] + encode(self.tokenizer, sep + wave[j].turns[t]) for j in live
                ]
                ttft = None
                if self.measure_ttft:
                    t0 = time.perf_counter()
                    self._generate(prompts, mode, 1)
                    ttft = time.perf_counter() - t0
                start = time.perf_counter()
                outs = self._generate(prompts, mode, self.gen.max_new_tokens)
                end = time.perf_counter()
                for j, p, o in zip(live, prompts, outs):
                    history[j] = p + o.token_ids
                    turns[j].append(
                        TurnResult(
                            text=self.tokenizer.decode(o.token_ids),
                            output_ids=list(o.token_ids),
                            num_tokens=len(o.token_ids),
                            forwards=o.stats.forwards,
                            accept_lengths=list(o.stats.accept_lengths),
                            start=start,
                            end=end,
                            ttft=ttft,
                            meta={"finish_reason": o.finish_reason},
                        )
                    )
            results.extend(RequestResult(r, ts) for r, ts in zip(wave, turns))
            progress(len(wave))
        return results

    def close(self) -> None:
        del self.engine
