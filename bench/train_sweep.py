"""Train several configurations of the default model at once on one GPU, evaluate, keep the best.

    python bench/train_sweep.py --out DIR [--budget-minutes 5] [--only a,b] [--add 'name:--flag v']
    python bench/train_sweep.py --out DIR --cpu-smoke        # the whole path on a CPU, tiny sizes

Each configuration is one ``python -m sglang_trimode.training.train`` process (all started
together; ``--max-parallel`` caps them) writing ``WORK/NAME/``; ``--budget-minutes`` goes to each
(train.py shrinks its step count and cosine when its measured pace would overrun). A finished run
is cast to bf16 (``WORK/NAME/bf16``, what ``training.export`` ships) and evaluated in its own
process, on the CPU in fp32 by default (the model card's figures): the held-out prompts of
``bench/tpf.py --heldout`` (all 31 of them, 64 new tokens, greedy, threshold 0.9), modes ar,
diffusion (block 8, 16), self_spec_linear (8), self_spec_quadratic (8, 16), and whether each
self-speculation output equals the AR output token for token.

Best: the highest quadratic TPF at block 8 (then block 16, then the lower held-out AR loss) among
the runs whose greedy self-speculation equals greedy AR in every run. It is written to
``OUT/best/`` (bf16 weights, config, tokenizer, training log), ready for
``python -m sglang_trimode.training.export OUT/best``. ``OUT/train_sweep.json`` holds every run
(arguments, steps, minutes, held-out losses, a thinned loss curve, the TPF rows, GPU utilisation
samples) and ``OUT/train_sweep.txt`` the table and each run's last log lines. Seven files in all,
each under 16 MB, so that a device call brings them back.
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import shutil
import subprocess
import sys
import threading
import time
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:  # `python bench/train_sweep.py` without the package installed
    sys.path.insert(0, str(REPO))

# name, extra train.py flags, steps factor, size
GRID: list[tuple[str, list[str], float, str]] = [
    ("baseline", [], 1.0, "base"),
    ("distill1", ["--distill", "1.0"], 1.0, "base"),
    ("early1.15", ["--early-weight", "1.15"], 1.0, "base"),
    ("distill3", ["--distill", "3.0"], 1.0, "base"),  # the lever the CPU runs favour
    ("drop0.1_x1.6", ["--dropout", "0.1"], 1.6, "base"),
    ("large_drop0.1", ["--dropout", "0.1"], 1.0, "large"),
]
SIZES = {
    # the shipped model (4.20M parameters) and a deeper, wider one (6.95M, 13.9 MB in bf16)
    "gpu": {
        "base": "--hidden 256 --layers 4 --heads 4 --kv-heads 2 --intermediate 768",
        "large": "--hidden 256 --layers 6 --heads 4 --kv-heads 2 --intermediate 1024",
    },
    "smoke": {
        "base": "--hidden 32 --layers 1 --heads 2 --kv-heads 1 --intermediate 64",
        "large": "--hidden 48 --layers 2 --heads 2 --kv-heads 1 --intermediate 96",
    },
}
COMMON = {
    "gpu": "--batch 32 --seq-len 256 --block-sizes 8,16 --eval-every 1000 --tf32",
    "smoke": "--batch 4 --seq-len 64 --block-sizes 8,16 --eval-every 10 --eval-batches 1"
    " --vocab-size 300 --corpus-files 8 --warmup 5 --lr 1e-2",
}
EVAL_RUNS = [
    ("ar", 1),
    ("diffusion", 8),
    ("diffusion", 16),
    ("self_spec_linear", 8),
    ("self_spec_quadratic", 8),
    ("self_spec_quadratic", 16),
]
SHORT = {"ar": "ar", "diffusion": "diff", "self_spec_linear": "lin", "self_spec_quadratic": "quad"}
OUT_FILES = ("config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json")
MAX_FILE_BYTES = 16 * 2**20


def evaluate(model_dir: Path, num_prompts: int, max_new_tokens: int, device: str) -> dict:
    """TPF rows on held-out prompts and greedy self-spec == AR, as in ``bench/tpf.py``."""
    from sglang_trimode.models import load_tokenizer
    from sglang_trimode.reference.engine import TriModeEngine
    from sglang_trimode.report import format_table, run_mode
    from sglang_trimode.training.corpus import heldout_prompts

    engine = TriModeEngine.from_pretrained(model_dir, device=device, dtype=torch.float32)
    tokenizer = load_tokenizer(model_dir)
    prompts = [tokenizer.encode(t) for t in heldout_prompts(num_prompts)]
    rows, outs = [], {}
    for mode, block in EVAL_RUNS:
        row, out = run_mode(
            engine,
            prompts,
            mode,
            block,
            max_new_tokens=max_new_tokens,
            threshold=0.9,
            temperature=0.0,
        )
        rows.append(row)
        outs[f"{SHORT[mode]}{block}"] = [o.token_ids for o in out]
    equal = {k: v == outs["ar1"] for k, v in outs.items() if k.startswith(("lin", "quad"))}
    return {
        "prompts": len(prompts),
        "max_new_tokens": max_new_tokens,
        "threshold": 0.9,
        "device": device,
        "tpf": {f"{SHORT[r.mode]}{r.block_size}": r.tokens_per_forward for r in rows},
        "al": {f"{SHORT[r.mode]}{r.block_size}": r.acceptance_length for r in rows},
        "spec_equals_ar": equal,
        "rows": [r.to_dict() for r in rows],
        "table": format_table(rows),
    }


def thin(log: list[dict], points: int = 50) -> list[dict]:
    """Every k-th row of a training log, plus every row with a held-out evaluation."""
    k = max(1, len(log) // points)
    return [r for i, r in enumerate(log) if i % k == 0 or "heldout" in r or i == len(log) - 1]


def gpu_sampler(samples: list, stop: threading.Event, every: float = 10.0) -> None:
    """``nvidia-smi`` utilisation / memory every ``every`` seconds, where it exists."""
    if shutil.which("nvidia-smi") is None:
        return
    q = ["nvidia-smi", "--query-gpu=utilization.gpu,memory.used", "--format=csv,noheader,nounits"]
    t0 = time.perf_counter()
    while not stop.wait(every):
        try:
            out = subprocess.run(q, capture_output=True, text=True, timeout=5).stdout.split(",")
            samples.append(
                {"s": round(time.perf_counter() - t0), "util": int(out[0]), "mib": int(out[1])}
            )
        except (OSError, ValueError, IndexError, subprocess.SubprocessError):
            return


def tail(path: Path, lines: int = 12) -> list[str]:
    if not path.is_file():
        return []
    text = path.read_text(errors="replace").replace("\r", "\n")
    return [s for s in text.splitlines() if s.strip() and not s.startswith("train:")][-lines:]


def pick_best(runs: list[dict]) -> dict | None:
    ok = [r for r in runs if r.get("eval") and all(r["eval"]["spec_equals_ar"].values())]
    if not ok:
        return None
    key = lambda r: (  # noqa: E731
        r["eval"]["tpf"]["quad8"],
        r["eval"]["tpf"]["quad16"],
        -(r["train"]["final_heldout"] or {}).get("ar_loss", float("inf")),
    )
    return max(ok, key=key)


def format_sweep(runs: list[dict], best: dict | None) -> str:
    head = (
        f"{'config':<16} {'params':>6} {'steps':>11} {'min':>5} {'ar_loss':>7} {'ar_acc':>6} "
        f"{'diff_loss':>9} {'quad8':>5} {'quad16':>6} {'diff8':>5} {'diff16':>6} {'lin8':>5} "
        f"{'spec=ar':>7}"
    )
    lines = [head, "-" * len(head)]
    for r in runs:
        t, e = r.get("train") or {}, r.get("eval")
        h = t.get("final_heldout") or {}
        steps = f"{t.get('steps_done', 0)}/{r['steps']}"
        cells = [
            f"{r['name']:<16}",
            f"{t.get('parameters', 0) / 1e6:>5.2f}M",
            f"{steps:>11}",
            f"{t.get('minutes', float('nan')):>5.1f}",
            f"{h.get('ar_loss', float('nan')):>7.3f}",
            f"{h.get('ar_accuracy', float('nan')):>6.3f}",
            f"{h.get('diffusion_loss', float('nan')):>9.3f}",
        ]
        if e:
            tpf = e["tpf"]
            cells += [f"{tpf[k]:>{w}.2f}" for k, w in [("quad8", 5), ("quad16", 6)]]
            cells += [f"{tpf[k]:>{w}.2f}" for k, w in [("diff8", 5), ("diff16", 6), ("lin8", 5)]]
            cells.append(f"{'yes' if all(e['spec_equals_ar'].values()) else 'NO':>7}")
        else:
            cells.append(f"failed: {r.get('error', 'no evaluation')}")
        lines.append(" ".join(cells) + ("  <- best" if r is best else ""))
    lines.append(
        "best = highest quad8 TPF (then quad16, then lower held-out AR loss) among runs whose "
        "greedy self-spec == greedy AR; TPF on held-out prompts, threshold 0.9"
    )
    return "\n".join(lines)


def build_runs(args: argparse.Namespace) -> list[dict]:
    kind = "smoke" if args.cpu_smoke else "gpu"
    grid = [g for g in GRID if not args.only or g[0] in args.only]
    for spec in args.add:
        name, _, flags = spec.partition(":")
        grid.append((name.strip(), shlex.split(flags), 1.0, "base"))
    if not grid:
        sys.exit(f"no configuration left; names: {[g[0] for g in GRID]}")
    runs = []
    for name, flags, factor, size in grid:
        steps = max(1, round(args.steps * factor))
        argv = [*SIZES[kind][size].split(), *COMMON[kind].split(), "--steps", str(steps)]
        argv += ["--device", args.device, "--seed", str(args.seed)]
        if args.budget_minutes:
            argv += ["--budget-minutes", str(args.budget_minutes)]
            argv += ["--max-minutes", str(args.budget_minutes + 1)]
        runs.append({"name": name, "steps": steps, "argv": [*argv, *flags]})
    return runs


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """The driver's options, with the GPU or (``--cpu-smoke``) the CPU defaults filled in."""
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--out", type=Path, default=Path(os.environ.get("OUT", "out/train_sweep")))
    ap.add_argument("--work", type=Path, default=Path("out/train_sweep_work"))
    ap.add_argument("--cpu-smoke", action="store_true", help="tiny sizes, a few steps, on a CPU")
    ap.add_argument("--steps", type=int, default=None, help="base steps (gpu 5000, smoke 12)")
    ap.add_argument("--budget-minutes", type=float, default=None, help="per run (gpu 5.0)")
    ap.add_argument("--device", default=None, help="training device (gpu: cuda)")
    ap.add_argument("--eval-device", default="cpu")
    ap.add_argument("--eval-threads", type=int, default=None, help="gpu 2, smoke 1")
    ap.add_argument("--max-parallel", type=int, default=None, help="gpu: all; smoke: 2")
    ap.add_argument("--num-prompts", type=int, default=None, help="gpu 32 (all 31), smoke 2")
    ap.add_argument("--max-new-tokens", type=int, default=None, help="gpu 64, smoke 12")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--only", type=lambda s: s.split(","), default=None, help="config names")
    ap.add_argument("--add", action="append", default=[], help="'name:--flag v ...' (base size)")
    ap.add_argument("--eval-one", type=Path, default=None, help=argparse.SUPPRESS)
    ap.add_argument("--eval-json", type=Path, default=None, help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    smoke = args.cpu_smoke
    for name, gpu, cpu in [
        ("steps", 5000, 12),
        ("budget_minutes", 5.0, 3.0),
        ("device", "cuda", "cpu"),
        ("max_parallel", 0, 2),
        ("eval_threads", 2, 1),
        ("num_prompts", 32, 2),
        ("max_new_tokens", 64, 12),
    ]:
        if getattr(args, name) is None:
            setattr(args, name, cpu if smoke else gpu)
    return args


def write_report(args, runs: list[dict], samples: list, t0: float, final: bool) -> dict:
    """``OUT/train_sweep.json`` and ``.txt`` (rewritten as runs finish); at the end ``OUT/best``."""
    best = pick_best(runs)
    table = format_sweep(runs, best)
    if final:
        print(table)
        best_dir = args.out / "best"
        shutil.rmtree(best_dir, ignore_errors=True)
        if best is not None:
            best_dir.mkdir()
            for f in (*OUT_FILES, "training_log.json"):
                src = best["dir"] / ("bf16" if f in OUT_FILES else "") / f
                if src.is_file():
                    shutil.copy2(src, best_dir / f)
            print(f"[sweep] best: {best['name']} -> {best_dir}")
    result = {
        "device": torch.cuda.get_device_name(0) if torch.cuda.is_available() else "cpu",
        "cpu_smoke": args.cpu_smoke,
        "complete": final,
        "wall_minutes": (time.perf_counter() - t0) / 60,
        "budget_minutes": args.budget_minutes,
        "best": best["name"] if best else None,
        "best_rule": "max quad8 TPF, then quad16, then min held-out AR loss; greedy spec == AR",
        "gpu_samples": samples,
        "runs": [{k: (str(v) if isinstance(v, Path) else v) for k, v in r.items()} for r in runs],
    }
    for r in result["runs"]:
        if r.get("eval"):
            r["eval"] = {k: v for k, v in r["eval"].items() if k != "table"}
    (args.out / "train_sweep.json").write_text(json.dumps(result, indent=1))
    logs = [
        f"== {r['name']} {kind}\n" + "\n".join(tail(args.work / f"{r['name']}.{kind}.log"))
        for r in runs
        for kind in ("train", "eval")
    ]
    (args.out / "train_sweep.txt").write_text(table + "\n\n" + "\n".join(logs) + "\n")
    if final:
        for p in args.out.rglob("*"):
            if p.is_file() and p.stat().st_size > MAX_FILE_BYTES:
                print(f"[sweep] warning: {p} is over 16 MiB: a device call will not return it")
        minutes = result["wall_minutes"]
        print(f"[sweep] wrote {args.out}/train_sweep.json, train_sweep.txt in {minutes:.1f} min")
    return result


def main(argv: list[str] | None = None) -> dict:
    args = parse_args(argv)
    if args.eval_one is not None:  # the per-run evaluation process
        torch.set_num_threads(args.eval_threads)
        res = evaluate(args.eval_one, args.num_prompts, args.max_new_tokens, args.eval_device)
        args.eval_json.write_text(json.dumps(res, indent=1))
        print(res["table"])
        print(f"greedy self-spec == AR: {res['spec_equals_ar']}")
        return res

    t0 = time.perf_counter()
    runs = build_runs(args)
    shutil.rmtree(args.work, ignore_errors=True)
    args.work.mkdir(parents=True)
    args.out.mkdir(parents=True, exist_ok=True)
    env = {
        **os.environ,
        "PYTHONUNBUFFERED": "1",
        "TQDM_DISABLE": "1",
        "OMP_NUM_THREADS": "1",
        "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")])),
    }
    py = sys.executable
    samples: list = []
    stop = threading.Event()
    threading.Thread(target=gpu_sampler, args=(samples, stop), daemon=True).start()

    def start(cmd: list[str], log: Path) -> subprocess.Popen:
        return subprocess.Popen(cmd, stdout=log.open("w"), stderr=subprocess.STDOUT, env=env)

    pending, training, evaluating = list(runs), {}, {}
    limit = args.max_parallel or len(runs)
    while pending or training or evaluating:
        while pending and len(training) < limit:
            r = pending.pop(0)
            r["dir"] = args.work / r["name"]
            cmd = [py, "-m", "sglang_trimode.training.train", "--out", str(r["dir"]), *r["argv"]]
            print(f"[sweep] start {r['name']}: {shlex.join(cmd[3:])}", flush=True)
            training[r["name"]] = (r, start(cmd, args.work / f"{r['name']}.train.log"))
        for name, (r, proc) in list(training.items()):
            if proc.poll() is None:
                continue
            del training[name]
            summary = r["dir"] / "training_log.json"
            if proc.returncode or not summary.is_file():
                r["error"] = f"training exit {proc.returncode}"
                print(f"[sweep] {name}: {r['error']}", flush=True)
                write_report(args, runs, samples, t0, final=False)
                continue
            s = json.loads(summary.read_text())
            r["train"] = {k: v for k, v in s.items() if k not in ("log", "args")}
            r["train"]["curve"] = thin(s["log"])
            from sglang_trimode.training.export import export

            export(r["dir"], r["dir"] / "bf16", torch.bfloat16)
            cmd = [py, str(Path(__file__).resolve()), "--eval-one", str(r["dir"] / "bf16")]
            cmd += ["--eval-json", str(r["dir"] / "eval.json"), "--eval-device", args.eval_device]
            cmd += ["--eval-threads", str(args.eval_threads), "--num-prompts"]
            cmd += [str(args.num_prompts), "--max-new-tokens", str(args.max_new_tokens)]
            print(f"[sweep] {name}: trained, {r['train']['steps_done']} steps, evaluating")
            evaluating[name] = (r, start(cmd, args.work / f"{name}.eval.log"))
        for name, (r, proc) in list(evaluating.items()):
            if proc.poll() is None:
                continue
            del evaluating[name]
            if proc.returncode:
                r["error"] = f"evaluation exit {proc.returncode}"
            else:
                r["eval"] = json.loads((r["dir"] / "eval.json").read_text())
            print(f"[sweep] {name}: {r.get('error', 'evaluated')}", flush=True)
            write_report(args, runs, samples, t0, final=False)  # partial results, if cut off
        time.sleep(0.5)
    stop.set()

    return write_report(args, runs, samples, t0, final=True)


if __name__ == "__main__":
    main()
