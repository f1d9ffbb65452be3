r"""SPEED-Bench sweep: modes x concurrency on one backend; reference-format files and our table.

    python -m bench.speed_bench --backend engine --dataset sample --mode ar,self_spec_linear \
        --concurrency 1,2,4 --out out/speed_bench

Defaults differ from the reference runner's (output length 4096) so that a CPU run finishes:
``--max-new-tokens 64``; temperature 0 and concurrency 1 as there. See docs/benchmarks.md,
"SPEED-Bench".
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from tqdm import tqdm

from bench.speed_bench.backends import BACKENDS, Backend, GenConfig
from bench.speed_bench.dataset import CONFIGS, SAMPLES, load_requests
from bench.speed_bench.metrics import specbench, timing
from bench.speed_bench.report import markdown, plots, text_table, write_run
from bench.speed_bench.summary import agreement, run_summary


def _csv(kind):
    return lambda s: [kind(x) for x in s.split(",") if x]


def parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--backend", choices=BACKENDS, default="engine")
    ap.add_argument(
        "--dataset",
        default="sample",
        help=f"{sorted(SAMPLES)}, a hub config {CONFIGS}, or a .jsonl/.parquet path",
    )
    ap.add_argument(
        "--categories",
        type=_csv(str),
        default=None,
        help="keep these categories (qualitative) or entropy tiers (throughput_*)",
    )
    ap.add_argument("--turns", choices=["first", "all"], default="first")
    ap.add_argument("--num-requests", type=int, default=None)
    ap.add_argument(
        "--mode",
        type=_csv(str),
        default=["ar", "self_spec_linear"],
        help="modes to sweep (engine, or a server with --trimode-server: ar, diffusion,\n"
        "self_spec_linear, self_spec_quadratic; other servers: labels, substituted for\n"
        "{mode} in --extra-body)",
    )
    ap.add_argument("--concurrency", type=_csv(int), default=[1])
    ap.add_argument("--max-concurrency", type=int, default=None, help="sweep 1, 2, 4, ... N")
    ap.add_argument("--max-new-tokens", type=int, default=64)
    ap.add_argument("--temperature", type=float, default=0.0)
    ap.add_argument("--block-size", type=int, default=None)
    ap.add_argument("--threshold", type=float, default=0.9)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--model", type=Path, default=None, help="checkpoint folder (engine backends)")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--dtype", choices=["float32", "bfloat16", "float16"], default="float32")
    ap.add_argument(
        "--no-ttft",
        action="store_true",
        help="engine: skip the separate 1-token generate that measures TTFT",
    )
    ap.add_argument("--url", default="http://127.0.0.1:30000", help="server (HTTP backends)")
    ap.add_argument("--model-name", default="default", help="OpenAI 'model' field")
    ap.add_argument(
        "--extra-body",
        type=json.loads,
        default=None,
        help='JSON merged into each request body; "{mode}" becomes the mode',
    )
    ap.add_argument(
        "--trimode-server",
        action="store_true",
        help="the server runs our plugin with --speculative-algorithm TRIMODE: each request\n"
        'asks for its --mode with custom_params {"trimode_mode": MODE} (native: in\n'
        "sampling_params; openai/openai-chat: a body field; sglang-engine: starts the engine\n"
        "with TRIMODE). Without it a server's modes are labels only (baselines)",
    )
    ap.add_argument(
        "--ignore-eos",
        action="store_true",
        help="always generate --max-new-tokens (servers: ignore_eos; engine: no stop tokens)",
    )
    ap.add_argument("--timeout", type=float, default=600.0)
    ap.add_argument("--num-gpus", type=int, default=1, help="divides Output TPS/gpu")
    ap.add_argument("--out", type=Path, default=Path("out/speed_bench"))
    ap.add_argument("--no-progress", action="store_true")
    return ap


def make_backend(args: argparse.Namespace, gen: GenConfig) -> Backend:
    if args.backend == "engine":
        import torch

        from bench.speed_bench.backends.engine import EngineBackend
        from bench.speed_bench.tokenize import load_text_tokenizer
        from sglang_trimode.config import NemotronLabsDiffusionConfig
        from sglang_trimode.models import default_model_path

        path = args.model or default_model_path()
        vocab = NemotronLabsDiffusionConfig.from_pretrained(str(path)).vocab_size
        tok = load_text_tokenizer(path, vocab)
        dtype = getattr(torch, args.dtype)
        return EngineBackend(path, tok, gen, args.device, dtype, measure_ttft=not args.no_ttft)
    if args.backend == "sglang-engine":
        from bench.speed_bench.backends.sglang_engine import SGLangEngineBackend, cpu_engine_args
        from sglang_trimode.models import default_model_path

        engine_args = cpu_engine_args() if args.device == "cpu" else {"dtype": args.dtype}
        path = args.model or default_model_path()
        return SGLangEngineBackend(str(path), gen, engine_args, trimode=args.trimode_server)
    from bench.speed_bench.backends.http import HttpBackend

    return HttpBackend(
        args.backend,
        args.url,
        gen,
        args.model_name,
        args.extra_body,
        args.timeout,
        trimode=args.trimode_server,
    )


def main(argv: list[str] | None = None) -> dict:
    args = parser().parse_args(argv)
    concs = args.concurrency
    if args.max_concurrency:
        concs = [
            2**i for i in range(args.max_concurrency.bit_length()) if 2**i <= args.max_concurrency
        ]
    requests = load_requests(args.dataset, args.categories, args.turns, args.num_requests)
    if args.backend == "engine":
        from sglang_trimode.reference.engine import SUPPORTED_MODES

        bad = sorted(set(args.mode) - set(SUPPORTED_MODES))
        if bad:
            sys.exit(f"--mode: unknown {bad} for the engine backend; choose from {SUPPORTED_MODES}")
    sglang_trimode_engine = args.backend == "sglang-engine" and args.trimode_server
    if args.backend != "engine" and not sglang_trimode_engine and args.block_size is not None:
        sys.exit(
            "--block-size is for --backend engine and --backend sglang-engine --trimode-server; "
            "a server's is its --trimode-block-size flag"
        )
    labels_only = not args.trimode_server and "{mode}" not in json.dumps(args.extra_body or {})
    if args.backend != "engine" and labels_only and len(args.mode) > 1:
        print(
            f"[speed_bench] --mode {','.join(args.mode)}: labels only (no --trimode-server, no "
            '"{mode}" in --extra-body); every run uses what the server was started with'
        )
    gen = GenConfig(
        args.max_new_tokens,
        args.temperature,
        args.block_size,
        args.threshold,
        args.seed,
        args.ignore_eos,
    )
    backend = make_backend(args, gen)
    runs, raw = [], {}
    bar = tqdm(
        total=len(args.mode) * len(concs) * len(requests),
        unit="req",
        disable=args.no_progress,
        desc="speed_bench",
    )
    try:
        for conc in concs:
            for mode in args.mode:
                bar.set_postfix_str(f"{mode} c={conc}")
                results = backend.run(requests, mode, conc, bar.update)
                spec, tim = specbench(results), timing(results, args.num_gpus)
                write_run(args.out / mode / f"c{conc}", results, spec, tim)
                runs.append(run_summary(results, mode, conc, tim))
                raw[(mode, conc)] = results
    finally:
        bar.close()
        backend.close()
    checks = {}
    for (mode, conc), results in raw.items():
        if mode != "ar" and ("ar", conc) in raw:
            checks[f"{mode}@{conc}"] = agreement(raw[("ar", conc)], results)
    greedy_bad = {
        k: c["mismatches"]
        for k, c in checks.items()
        if k.startswith("self_spec") and args.temperature == 0 and c["mismatches"]
    }
    result = {
        "backend": args.backend,
        "dataset": args.dataset,
        "turns": args.turns,
        "categories": args.categories,
        "requests": len(requests),
        "max_new_tokens": args.max_new_tokens,
        "temperature": args.temperature,
        "block_size": args.block_size,
        "threshold": args.threshold,
        "concurrency_meaning": (
            "batch size of one generate call per wave"
            if args.backend.endswith("engine")
            else "concurrent client connections"
        ),
        "ttft_method": {
            "engine": "none" if args.no_ttft else "separate 1-token generate of the same wave",
            "sglang-engine": "unavailable (no stream)",
        }.get(args.backend, "first streamed chunk"),
        "runs": runs,
        "agreement_with_ar": checks,
        "greedy_mismatches": greedy_bad,
    }
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "results.json").write_text(json.dumps(result, indent=2))
    (args.out / "results.md").write_text(markdown(runs, checks))
    plots(runs, args.out)
    print(text_table(runs))
    for key, c in checks.items():
        print(
            f"agreement with AR  {key:<28} exact {c['exact_match']}/{c['requests']}  "
            f"token agreement {c['token_agreement']:.3f}"
        )
    if greedy_bad:
        print(
            "!" * 72
            + f"\nMISMATCH: greedy self-speculation differs from AR: {greedy_bad}\n"
            + "!" * 72
        )
    print(f"wrote {args.out}/results.json, results.md and <mode>/c<N>/{{specbench,timing}}.json")
    return result
