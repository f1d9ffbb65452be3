"""The TRIMODE server on a GPU in one run: correctness, then speed at real shapes.

    python bench/gpu/serve.py [--cpu-smoke] [--budget-s 450] [--out DIR]

Phases, in order of importance; each starts only if the time left covers its estimate, so the
run stops cleanly at the budget and writes what it has (`OUT/gpu_serve.json`, `OUT/gpu_serve.md`,
the servers' logs):

a. correctness: the shipped default model, fp32, greedy: every mode through a TRIMODE server equals
   the reference engine on the same device (else the first divergent position), plus the server
   log's line naming the attention path.
b. speed: `--load-format dummy` with NLD-8B's config (then 3B at block 8), bf16, block 32, prompts
   of 512 random token ids, `--skip-tokenizer-init`: a plain SGLang AR server (CUDA graphs on, as
   users run it), then the TRIMODE server per mode, at concurrency 1, 4, 16, 64: tokens/s, ms per
   decode step (synchronised forwards from `SGLANG_TRIMODE_STEP_PROFILE`), forwards per step, peak
   GPU memory. Random weights accept no drafts, so self-speculation at acceptance length AL is a
   projection: c * AL / (ms per step), labelled as such, at AL 3 and 6.8.
c. one TRIMODE point with `--trimode-attention-impl torch` (the kernel's share of the step).
d. padded: (a) again with `--trimode-pad-forwards on` (every forward padded to a bucket and run
   over the bucket's preallocated buffers, the inputs CUDA graphs would replay), plus the
   worker's forward counters (`GET /get_server_info`).

`--cpu-smoke` runs the same code on this machine: CPU servers, fp32, the default model's shapes
in place of 8B/3B, concurrency 1 and 2, short prompts and outputs.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "bench"))
sys.path.insert(0, str(ROOT / "bench" / "gpu"))

import report  # noqa: E402  (bench/gpu/report.py: table + projection)
import step_profile as sp  # noqa: E402

MODES = ("ar", "self_spec_linear", "self_spec_quadratic", "diffusion")
SHAPES = {"8B": (34, 4096, 14336, 32), "3B": (26, 3072, 9216, 8)}  # layers, hidden, ffn, block
ALS = (3.0, 6.8)
#: estimated seconds of each phase on the GPU: a first server start there took about 85 s to
#: /health (40 s imports, 40 s of compiles in SGLang's warm-up request; 2026-12-04)
COST_S = {"correctness": 150, "8B": 200, "3B": 150, "torch_impl": 80, "padded": 120}


def default_model() -> Path:
    return ROOT / "sglang_trimode" / "assets" / "default_model"


def server_env(a) -> dict[str, str]:
    env = dict(os.environ, SGLANG_UNIFIED_RADIX_TREE_CORE_BACKEND="python")
    env["SGLANG_SKIP_SGL_KERNEL_VERSION_CHECK"] = "1"  # the stand-in has no sglang-kernel dist
    stand_in = str(ROOT / "sglang_trimode" / "srt" / "cpu_platform")  # no sgl_kernel there
    env["PYTHONPATH"] = os.pathsep.join(p for p in (stand_in, env.get("PYTHONPATH")) if p)
    if a.cpu_smoke:
        env["SGLANG_USE_CPU_ENGINE"] = "1"
    return env


def device_args(a, graphs: bool) -> list[str]:
    if a.cpu_smoke:
        return [*sp.CPU_ARGS, "--max-total-tokens", "8192"]
    args = ["--device", "cuda", "--attention-backend", "triton", "--sampling-backend", "pytorch"]
    args += ["--mem-fraction-static", "0.8"]  # graphs up to the largest concurrency measured
    return args + (["--cuda-graph-max-bs-decode", "64"] if graphs else ["--disable-cuda-graph"])


def start_timeout(deadline: float) -> float:
    """Seconds a server may take to become healthy: the budget left plus a minute, 120..600."""
    return min(600.0, max(120.0, deadline - time.monotonic() + 60.0))


def generate(base: str, mode: str | None, ids: list[list[int]], max_new: int) -> dict:
    """All requests at once (greedy, ignore_eos); wall seconds, output ids, completion tokens."""
    from concurrent.futures import ThreadPoolExecutor

    def one(p: list[int]) -> dict:
        spar = {"temperature": 0.0, "max_new_tokens": max_new, "ignore_eos": True}
        if mode is not None:
            spar["custom_params"] = {"trimode_mode": mode}
        return sp._post(base + "/generate", {"input_ids": p, "sampling_params": spar}, 900)

    t0 = time.perf_counter()
    with ThreadPoolExecutor(len(ids)) as ex:
        outs = list(ex.map(one, ids))
    wall = time.perf_counter() - t0
    toks = sum(o["meta_info"]["completion_tokens"] for o in outs)
    return {"wall_s": wall, "tokens": toks, "ids": [o["output_ids"] for o in outs]}


def correctness(a, out: Path, deadline: float, padded: bool = False) -> list[dict]:
    """Every mode: TRIMODE server tokens vs the reference engine on the same device (fp32);
    `padded`: with `--trimode-pad-forwards on`, and the worker's forward counters."""
    import torch

    from sglang_trimode import TriModeEngine

    device = "cpu" if a.cpu_smoke else "cuda"
    block, max_new = 8, 32
    engine = TriModeEngine.from_pretrained(default_model(), device=device, dtype=torch.float32)
    rng = torch.Generator().manual_seed(0)
    prompts = [torch.randint(4, 2000, (n,), generator=rng).tolist() for n in (5, 9, 14, 23)]
    args = ["--model-path", str(default_model()), "--random-seed", "0", "--dtype", "float32"]
    args += ["--speculative-algorithm", "TRIMODE", "--trimode-block-size", str(block)]
    args += device_args(a, graphs=False)
    if not a.cpu_smoke:
        args += ["--max-total-tokens", "65536"]
    if padded:
        args += ["--trimode-pad-forwards", "on"]
    rows = []
    log = out / f"server_correctness{'_padded' if padded else ''}.log"
    with sp.server(args, server_env(a), log, timeout=start_timeout(deadline)) as base:
        for mode in a.modes:
            ref = engine.generate(prompts, mode=mode, block_size=block, max_new_tokens=max_new,
                                  stop_token_ids=[])  # fmt: skip
            got = generate(base, mode, prompts, max_new)["ids"]
            want = [list(o.token_ids) for o in ref]
            rows.append({"mode": mode, "padded": padded, **report.first_divergence(want, got)})
            print(f"[gpu_serve] correctness {mode}: {report.verdict(rows[-1])}", flush=True)
        if padded:
            info = sp._post(base + "/get_server_info", None, 60)["internal_states"][0]["trimode"]
            rows.append({"trimode_forwards": info["forwards"], "buckets": info["buckets"]})
    rows.append({"attention_path": report.attention_line(log)})
    return rows


def model_dir(size: str, out: Path, a) -> tuple[Path, int]:
    """A config-only folder of NLD-`size` shapes (dummy weights); returns (path, block)."""
    cfg = json.loads((default_model() / "config.json").read_text())
    layers, hidden, ffn, block = SHAPES[size]
    if a.cpu_smoke:  # the default model's own shapes, same code path
        block = 8
    else:
        cfg |= {"num_hidden_layers": layers, "hidden_size": hidden, "intermediate_size": ffn}
        cfg |= {"vocab_size": 131072, "num_attention_heads": 32, "num_key_value_heads": 8}
        cfg |= {"head_dim": 128, "mask_token_id": 100, "eos_token_id": 11, "dtype": "bfloat16"}
        cfg |= {"max_position_embeddings": 262144}
    cfg["block_size"] = block
    path = out / f"nld_{size}_dummy"
    path.mkdir(parents=True, exist_ok=True)
    (path / "config.json").write_text(json.dumps(cfg, indent=1))
    return path, block


class PeakMemory:
    """Peak device memory in use (all processes), sampled every 50 ms; None on a CPU."""

    def __init__(self, on: bool) -> None:
        self.on, self.peak, self._stop = on, 0, threading.Event()

    def __enter__(self):
        if self.on:
            import torch

            def poll():
                while not self._stop.wait(0.05):
                    free, total = torch.cuda.mem_get_info()
                    self.peak = max(self.peak, total - free)

            threading.Thread(target=poll, daemon=True).start()
        return self

    def __exit__(self, *exc):
        self._stop.set()

    def gib(self) -> float | None:
        return round(self.peak / 2**30, 2) if self.on else None


def speed(
    a, size: str, out: Path, deadline: float, rows: list[dict], extra: tuple[str, ...] = ()
) -> None:
    """Plain AR server, then TRIMODE per mode, at each concurrency; appends to `rows` as it goes
    (a server that fails to start keeps the rows before it). A plain AR server that fails with
    CUDA graphs is retried once without them (its rows say so)."""
    path, block = model_dir(size, out, a)
    vocab = json.loads((path / "config.json").read_text())["vocab_size"]
    run = SpeedRun(a, size, deadline, random.Random(0), vocab, rows)
    servers = [("plain_ar", [None])] if not extra else []
    servers.append(("trimode", list(a.modes) if not extra else ["self_spec_linear"]))
    for kind, modes in servers:
        tag = f"{size}_{kind}" + ("_impl_" + extra[-1] if extra else "")
        env = server_env(a) | {"SGLANG_TRIMODE_STEP_PROFILE": str(out / f"steps_{tag}.jsonl")}
        args = ["--model-path", str(path), "--load-format", "dummy", "--skip-tokenizer-init"]
        args += ["--dtype", "float32" if a.cpu_smoke else "bfloat16", "--random-seed", "0"]
        if kind == "trimode":
            args += ["--speculative-algorithm", "TRIMODE", "--trimode-block-size", str(block)]
            args += list(extra)
        graphs = [True, False] if kind == "plain_ar" and not a.cpu_smoke else [False]
        for i, g in enumerate(graphs):
            run_args = args + device_args(a, graphs=g)
            try:
                log = out / f"server_{tag}.log"
                serve_modes(run, kind, modes, run_args, env, log, " ".join(extra) or "auto", g)
                break
            except RuntimeError as err:
                if i + 1 == len(graphs) or "during start-up" not in str(err):
                    raise
                print(f"[gpu_serve] {tag} failed with CUDA graphs, again without: {err}",
                      file=sys.stderr, flush=True)  # fmt: skip
                (out / f"server_{tag}.log").rename(out / f"server_{tag}_graphs_failed.log")
        if time.monotonic() > deadline:
            return


@dataclass
class SpeedRun:
    """What every server of one speed phase shares: the options, the model size, the deadline,
    the prompts' random source and vocabulary, and the rows measured so far."""

    a: argparse.Namespace
    size: str
    deadline: float
    rnd: random.Random
    vocab: int
    rows: list[dict]


def serve_modes(
    run: SpeedRun, kind: str, modes: list, args: list[str], env: dict, log: Path, impl: str,
    graphs: bool,
) -> None:  # fmt: skip
    """One server: warm up, then each mode at each concurrency until the deadline."""
    a, size, deadline, rnd, vocab, rows = (
        run.a, run.size, run.deadline, run.rnd, run.vocab, run.rows
    )  # fmt: skip
    prof = Path(env["SGLANG_TRIMODE_STEP_PROFILE"])
    with PeakMemory(not a.cpu_smoke) as mem:
        with sp.server(args, env, log, timeout=start_timeout(deadline)) as base:
            offset = 0
            for mode in modes:
                generate(base, mode, [[5] * 16], 4)  # warm-up (compiles)
                for c in a.concurrency:
                    if time.monotonic() > deadline:
                        print(f"[gpu_serve] budget reached: {size} {kind} stops", flush=True)
                        return
                    _, offset = sp.read_new(prof, offset)
                    ids = [
                        [rnd.randrange(200, vocab) for _ in range(a.prompt_len)] for _ in range(c)
                    ]
                    got = generate(base, mode, ids, a.max_new_for(c))
                    time.sleep(0.2)
                    records, offset = sp.read_new(prof, offset)
                    label = f"{size} (smoke: default shapes)" if a.cpu_smoke else size
                    row = {"size": label, "server": kind, "mode": mode or "plain_ar", "c": c}
                    row |= {"tok_s": got["tokens"] / got["wall_s"], "new_tokens": a.max_new_for(c)}
                    row |= {"impl": impl, "cuda_graphs": graphs} | sp.step_stats(records)
                    row["peak_gib"] = mem.gib()
                    rows.append(row)
                    print(
                        f"[gpu_serve] {size} {row['mode']} c={c}: {report.brief(row)}", flush=True
                    )


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--cpu-smoke", action="store_true", help="tiny shapes, CPU servers")
    ap.add_argument("--budget-s", type=float, default=450.0, help="stop starting work after this")
    ap.add_argument("--out", type=Path, default=Path(os.environ.get("OUT", "out/gpu_serve")))
    ap.add_argument("--modes", default=",".join(MODES), type=sp.csv(str))
    ap.add_argument("--phases", default=",".join(COST_S), type=sp.csv(str), help="which to run")
    a = ap.parse_args(argv)
    a.concurrency = (1, 2) if a.cpu_smoke else (1, 4, 16, 64)
    a.prompt_len = 48 if a.cpu_smoke else 512
    a.max_new_for = (lambda c: 16) if a.cpu_smoke else (lambda c: 128 if c <= 16 else 64)
    a.out = a.out.resolve()  # servers run in it: every path they get must be absolute
    a.out.mkdir(parents=True, exist_ok=True)
    start = time.monotonic()
    deadline = start + a.budget_s
    result = {"cpu_smoke": a.cpu_smoke, "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())}
    result |= {"correctness": [], "speed": [], "skipped": []}
    phases = [
        ("correctness", lambda: result["correctness"].extend(correctness(a, a.out, deadline)))
    ]
    for size in ("8B",) if a.cpu_smoke else ("8B", "3B"):  # 3B: the same code again
        phases.append((size, lambda s=size: speed(a, s, a.out, deadline, result["speed"])))
    impl = ("--trimode-attention-impl", "torch")
    phases.append(("torch_impl", lambda: speed(a, "8B", a.out, deadline, result["speed"], impl)))
    phases.append(
        ("padded", lambda: result["correctness"].extend(correctness(a, a.out, deadline, True)))
    )
    status = 0
    for name, fn in phases:
        if name not in a.phases:
            continue
        left = deadline - time.monotonic()
        if not a.cpu_smoke and left < COST_S[name]:
            result["skipped"].append(f"{name}: {left:.0f} s left < {COST_S[name]} s estimate")
            continue
        try:
            fn()
        except Exception as err:  # one phase failing must not lose the others' figures
            result["skipped"].append(f"{name}: failed: {err}")
            print(f"[gpu_serve] {name} failed: {err}", file=sys.stderr, flush=True)
            status = 1
        report.write(result, a.out, ALS)
    print(report.markdown(result, ALS))
    print(f"[gpu_serve] {time.monotonic() - start:.0f} s; wrote {a.out}/gpu_serve.{{json,md}}")
    if any(not r.get("equal", True) for r in result["correctness"]):
        status = 1
    return status


if __name__ == "__main__":
    sys.exit(main())
