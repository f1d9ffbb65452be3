"""SGLang's offline ``sglang.Engine`` in-process (needs sglang).

Like the reference-engine backend, concurrency N = waves of N prompts per ``generate`` call, so
every request of a wave gets the wave's wall time; TTFT is unavailable (no stream). Stats come
from each output's ``meta_info`` as for the native HTTP API. With ``trimode=True`` the engine
starts with ``speculative_algorithm="TRIMODE"`` and each request asks for its mode with
``custom_params: {"trimode_mode": MODE}``; its block size (``GenConfig.block_size``, None: the
checkpoint's) and diffusion threshold reach the engine through
``sglang_trimode.srt.offline.server_args`` (``sglang.Engine`` keyword arguments cannot carry
``--trimode-*`` settings). ``cpu_engine_args()``: SGLang's CPU engine
with the plugin's ``sgl_kernel`` stand-in, as in ``examples/offline_engine.py``. Not covered by
the test suite (the server tests cover the same plugin through ``launch_server``).
"""

from __future__ import annotations

import os
import sys
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


def cpu_engine_args() -> dict:
    """Set the environment SGLang's CPU engine needs (inherited by its processes) -> Engine args."""
    from sglang_trimode.srt.cpu_platform import PYTHONPATH_ENTRY

    os.environ["SGLANG_USE_CPU_ENGINE"] = "1"
    path = [PYTHONPATH_ENTRY, *filter(None, [os.environ.get("PYTHONPATH")])]
    os.environ["PYTHONPATH"] = os.pathsep.join(path)
    if PYTHONPATH_ENTRY not in sys.path:
        sys.path.insert(0, PYTHONPATH_ENTRY)
    return dict(device="cpu", attention_backend="torch_native", disable_cuda_graph=True,
                mem_fraction_static=0.05, max_total_tokens=4096, dtype="float32")  # fmt: skip


class SGLangEngineBackend(Backend):
    name = "sglang-engine"

    def __init__(
        self,
        model_path: str,
        gen: GenConfig,
        engine_args: dict | None = None,
        trimode: bool = False,
    ) -> None:
        try:
            import sglang
        except ImportError as e:
            raise BackendUnavailable(
                f"--backend sglang-engine needs sglang, which is not importable here ({e}); "
                "install sglang (0.5.23, with the trimode plugin) on a GPU machine, or use "
                "--backend engine (reference engine) or --backend native/openai --url for a server"
            ) from None
        args = dict(engine_args or {})
        if trimode:
            from sglang_trimode.srt.offline import server_args

            args.setdefault("speculative_algorithm", "TRIMODE")
            record = server_args(
                model_path=str(model_path), trimode_block_size=gen.block_size,
                trimode_threshold=gen.threshold, **args,
            )  # fmt: skip
            self.engine = sglang.Engine(server_args=record)
        else:
            self.engine = sglang.Engine(model_path=str(model_path), **args)
        self.gen, self.trimode = gen, trimode

    def run(
        self, requests: list[Request], mode: str, concurrency: int, progress: Progress
    ) -> list[RequestResult]:
        g = self.gen
        params: dict = {"max_new_tokens": g.max_new_tokens, "temperature": g.temperature}
        if g.ignore_eos:
            params["ignore_eos"] = True
        if self.trimode:
            params["custom_params"] = {"trimode_mode": mode}
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
