"""Where a decode step's time goes: model forwards vs host work, TRIMODE vs plain SGLang AR.

    python bench/step_profile.py [--concurrency 1,8,32,64] [--modes ar,self_spec_linear,...]
        [--rounds 2] [--max-new-tokens 64] [--block-size 8] [--model PATH] [--device cpu|cuda]
        [--server-arg=--some-flag ...] [--trimode-arg=--trimode-flag ...] [--threads N]
        [--out out/step_profile]

Each round starts a plain SGLang AR server and a TRIMODE server one after the other (never both:
an idle SGLang CPU scheduler spins a core), order alternating by round, each with
`SGLANG_TRIMODE_STEP_PROFILE` (`sglang_trimode/srt/step_profile.py`: one line per scheduler step
with its synchronised forward time). For every concurrency `c` and mode, `c` greedy requests
(`ignore_eos`, about 600 characters of stdlib Python each) are sent at once; the steps where the
whole batch decodes give, as medians:

- `loop ms`: one scheduler iteration (this step's start to the next's);
- `fwd ms`: its model forwards (`fwd/step` of them: a TRIMODE step runs whole cycles);
- `host ms`: loop - fwd (worker + scheduler host work), `host/fwd`: per sub-forward,
  `sched ms`: outside the worker (loop - run_batch);

and per run tokens/s; `vs AR`: the median over rounds of tokens/s / that round's plain AR.
Prints a table, writes `OUT/step_profile.json` and the servers' logs. On a GPU pass
`--device cuda` and the model/flags (`--server-arg`) users run; synchronising each forward costs a
plain AR server its overlap, so compare `fwd ms`, not tokens/s, there.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import signal
import socket
import statistics
import subprocess
import sys
import time
import urllib.error
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

PLAIN = "plain_ar"
TRIMODE_MODES = ("ar", "diffusion", "self_spec_linear", "self_spec_quadratic", "auto")
CPU_ARGS = [
    "--device", "cpu", "--attention-backend", "torch_native", "--disable-cuda-graph",
    "--skip-server-warmup", "--mem-fraction-static", "0.05", "--dtype", "float32",
]  # fmt: skip
PROMPT_CHARS = 600


def csv(kind):
    return lambda s: [kind(x) for x in s.split(",") if x]


def prompts(n: int) -> list[str]:
    """`n` windows of `PROMPT_CHARS` characters of an installed stdlib module's source."""
    import json.decoder as src  # noqa: PLC0415 (a fixed, always-installed text)

    text = Path(src.__file__).read_text()
    step = max(1, (len(text) - PROMPT_CHARS) // max(n, 1))
    return [text[i * step : i * step + PROMPT_CHARS] for i in range(n)]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _post(url: str, body: dict | None, timeout: float) -> dict:
    """POST `body` as JSON (GET when None) -> the parsed answer; a clear error on HTTP errors."""
    data = None if body is None else json.dumps(body).encode()
    req = urllib.request.Request(url, data, {"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(req, timeout=timeout) as r:
            return json.loads(r.read())
    except urllib.error.HTTPError as e:
        raise RuntimeError(f"{url} answered {e.code}: {e.read()[:300]!r}") from e


@contextlib.contextmanager
def server(
    args: list[str],
    env: dict[str, str],
    log_path: Path,
    timeout: float = 300.0,
    python: str = sys.executable,
):
    """`PYTHON -m sglang.launch_server ARGS` on a free port; yields its base URL."""
    port = _free_port()
    cmd = [python, "-m", "sglang.launch_server", "--host", "127.0.0.1", "--port", str(port)]
    with open(log_path, "wb") as log:
        proc = subprocess.Popen(
            cmd + args,
            env=env,
            cwd=log_path.parent,  # not the repo root, whose sglang_trimode/ lacks kernels/
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        base = f"http://127.0.0.1:{port}"
        try:
            deadline = time.monotonic() + timeout
            while True:
                if proc.poll() is not None:
                    tail = log_path.read_text(errors="replace").splitlines()[-15:]
                    raise RuntimeError(
                        f"server exited ({proc.returncode}) during start-up; {log_path}:\n"
                        + "\n".join(tail)
                    )
                with contextlib.suppress(urllib.error.URLError, ConnectionError, TimeoutError):
                    with urllib.request.urlopen(base + "/health", timeout=5) as r:
                        if r.status == 200:
                            break
                if time.monotonic() > deadline:
                    raise RuntimeError(f"server not healthy after {timeout:.0f} s; see {log_path}")
                time.sleep(1)
            yield base
        finally:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGTERM)
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(timeout=30)
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
            _wait_group_gone(proc.pid)


def _wait_group_gone(pgid: int, timeout: float = 30.0) -> None:
    """Until no process of the server's group is left (a lingering scheduler spins a core and
    would slow the next server of the round)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and _live_members(pgid):
        time.sleep(0.2)


def _live_members(pgid: int) -> int:
    """Processes of group `pgid` that still run (zombies do not count; Linux /proc)."""
    n = 0
    for stat in Path("/proc").glob("[0-9]*/stat"):
        with contextlib.suppress(OSError, ValueError, IndexError):
            fields = stat.read_text().rsplit(")", 1)[1].split()
            n += int(fields[2]) == pgid and fields[0] != "Z"
    return n


def load(base: str, mode: str, texts: list[str], max_new: int, timeout: float) -> dict:
    """Send every text at once (greedy, `ignore_eos`); wall time and completion tokens."""

    def one(text: str) -> dict:
        sp = {"temperature": 0.0, "max_new_tokens": max_new, "ignore_eos": True}
        if mode != PLAIN:
            sp["custom_params"] = {"trimode_mode": mode}
        return _post(base + "/generate", {"text": text, "sampling_params": sp}, timeout)

    start = time.perf_counter()
    with ThreadPoolExecutor(len(texts)) as ex:
        outs = list(ex.map(one, texts))
    wall = time.perf_counter() - start
    for out in outs:
        ran = out["meta_info"].get("trimode_mode")
        if mode != PLAIN and ran != mode:
            raise RuntimeError(f"a {mode!r} request ran {ran!r}: is this a TRIMODE server?")
    tokens = sum(o["meta_info"]["completion_tokens"] for o in outs)
    return {"wall_s": wall, "tokens": tokens, "texts": [o["text"] for o in outs]}


def step_stats(records: list[dict]) -> dict:
    """Medians over the decode steps that ran the run's largest batch (see the module doc)."""
    decode = [r for r in records if r["mode"] == "DECODE"]
    if len(decode) < 2:
        return {"steps": len(decode)}
    bs = max(r["bs"] for r in decode)
    full = []
    for a, b in zip(records, records[1:], strict=False):  # consecutive scheduler steps
        if a["mode"] == "DECODE" and a["bs"] == bs:
            loop = b["t"] - a["t"]
            full.append((loop, a["fwd_s"], a["forwards"], a["run_s"]))
    if not full:
        return {"steps": len(decode), "bs": bs}

    def med(xs):
        return statistics.median(xs) * 1e3

    return {
        "steps": len(decode),
        "bs": bs,
        "full_steps": len(full),
        "loop_ms": med([f[0] for f in full]),
        "fwd_ms": med([f[1] for f in full]),
        "forwards": statistics.median([f[2] for f in full]),
        "host_ms": med([f[0] - f[1] for f in full]),
        "host_per_fwd_ms": med([(f[0] - f[1]) / max(f[2], 1) for f in full]),
        "worker_ms": med([f[3] - f[1] for f in full]),
        "sched_ms": med([f[0] - f[3] for f in full]),
    }


def read_new(path: Path, offset: int) -> tuple[list[dict], int]:
    if not path.exists():
        return [], offset
    data = path.read_bytes()
    lines = data[offset:].decode().splitlines()
    return [json.loads(x) for x in lines if x.strip()], len(data)


def run_server(kind: str, a, rnd: int, out: Path) -> list[dict]:
    """One server (`kind` plain or trimode) through every concurrency and mode."""
    prof = out / f"steps_{kind}_r{rnd}.jsonl"
    prof.unlink(missing_ok=True)
    env = dict(os.environ, SGLANG_TRIMODE_STEP_PROFILE=str(prof))
    if a.threads:
        env["OMP_NUM_THREADS"] = str(a.threads)
    args = ["--model-path", a.model, "--random-seed", "0", "--max-total-tokens", str(a.max_total)]
    if a.device == "cpu":
        from sglang_trimode.srt.cpu_platform import PYTHONPATH_ENTRY

        env["SGLANG_USE_CPU_ENGINE"] = "1"
        env["PYTHONPATH"] = os.pathsep.join(
            p for p in (PYTHONPATH_ENTRY, env.get("PYTHONPATH")) if p
        )
        args += CPU_ARGS
    modes = [PLAIN]
    if kind == "trimode":
        args += ["--speculative-algorithm", "TRIMODE", "--trimode-block-size", str(a.block_size)]
        modes = a.modes
        args += a.trimode_arg
    args += a.server_arg
    rows = []
    t0 = time.perf_counter()
    with server(args, env, out / f"server_{kind}_r{rnd}.log") as base:
        print(f"[step_profile] round {rnd}: {kind} server up in {time.perf_counter() - t0:.0f} s",
              file=sys.stderr, flush=True)  # fmt: skip
        for mode in modes:  # warm-up: first requests compile / allocate
            load(base, mode, prompts(1), 8, a.timeout)
        offset = 0
        _, offset = read_new(prof, offset)
        for c in a.concurrency:
            texts = prompts(c)
            for mode in modes:
                run = load(base, mode, texts, a.max_new_tokens, a.timeout)
                time.sleep(0.2)  # the last step's line
                records, offset = read_new(prof, offset)
                row = {"server": kind, "mode": mode, "c": c, "round": rnd}
                row |= {"tok_s": run["tokens"] / run["wall_s"], "tokens": run["tokens"]}
                row |= {"wall_s": run["wall_s"], "texts": run["texts"]} | step_stats(records)
                rows.append(row)
                print(f"[step_profile] round {rnd} {kind} {mode} c={c}: {row['tok_s']:.1f} tok/s, "
                      f"loop {row.get('loop_ms', float('nan')):.2f} ms, "
                      f"fwd {row.get('fwd_ms', float('nan')):.2f} ms x{row.get('forwards', 0)}",
                      file=sys.stderr, flush=True)  # fmt: skip
    return rows


def summarize(rows: list[dict]) -> list[dict]:
    """Per (server, mode, c): medians over rounds; `vs_ar`: median of per-round ratios."""
    plain = {(r["round"], r["c"]): r["tok_s"] for r in rows if r["server"] == PLAIN}
    keys = []
    for r in rows:
        k = (r["server"], r["mode"], r["c"])
        if k not in keys:
            keys.append(k)
    out = []
    for server_kind, mode, c in keys:
        rs = [r for r in rows if (r["server"], r["mode"], r["c"]) == (server_kind, mode, c)]
        s = {"server": server_kind, "mode": mode, "c": c, "rounds": len(rs)}
        for f in ("tok_s", "loop_ms", "fwd_ms", "forwards", "host_ms", "host_per_fwd_ms",
                  "worker_ms", "sched_ms"):  # fmt: skip
            vals = [r[f] for r in rs if f in r]
            s[f] = statistics.median(vals) if vals else None
        ratios = [r["tok_s"] / plain[(r["round"], c)] for r in rs if (r["round"], c) in plain]
        s["vs_ar"] = statistics.median(ratios) if ratios else None
        s["vs_ar_rounds"] = ratios
        out.append(s)
    return out


def format_table(summary: list[dict]) -> str:
    cols = [("server", 8, "s"), ("mode", 20, "s"), ("c", 3, "d"), ("tok_s", 7, ".1f"),
            ("vs_ar", 6, ".2f"), ("loop_ms", 8, ".2f"), ("fwd_ms", 7, ".2f"),
            ("forwards", 8, ".1f"), ("host_ms", 7, ".2f"), ("host_per_fwd_ms", 8, ".2f"),
            ("worker_ms", 9, ".2f"), ("sched_ms", 8, ".2f")]  # fmt: skip
    names = {"tok_s": "tok/s", "vs_ar": "vs AR", "loop_ms": "loop ms", "fwd_ms": "fwd ms",
             "forwards": "fwd/step", "host_ms": "host ms", "host_per_fwd_ms": "host/fwd",
             "worker_ms": "worker ms", "sched_ms": "sched ms"}  # fmt: skip
    lines = ["  ".join(f"{names.get(n, n):>{w}}" for n, w, _ in cols)]
    for s in summary:
        cells = []
        for n, w, f in cols:
            v = s.get(n)
            if n == "server":
                v = "plain" if v == PLAIN else "trimode"
            cells.append(f"{'-':>{w}}" if v is None else f"{v:>{w}{f}}")
        lines.append("  ".join(cells))
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--concurrency", type=csv(int), default=[1, 8, 32, 64])
    p.add_argument(
        "--modes", type=csv(str), default=["ar", "self_spec_linear", "self_spec_quadratic"]
    )
    p.add_argument("--rounds", type=int, default=2)
    p.add_argument("--max-new-tokens", type=int, default=64)
    p.add_argument("--block-size", type=int, default=8)
    p.add_argument("--model", default=None, help="checkpoint folder (default: the shipped model)")
    p.add_argument("--device", choices=("cpu", "cuda"), default="cpu")
    p.add_argument("--max-total", type=int, default=32768, help="--max-total-tokens of servers")
    p.add_argument("--server-arg", action="append", default=[], help="extra server flag (repeat)")
    p.add_argument(
        "--trimode-arg", action="append", default=[], help="extra TRIMODE-server flag (repeat)"
    )
    p.add_argument("--servers", type=csv(str), default=["plain", "trimode"])
    p.add_argument(
        "--threads",
        type=int,
        default=0,
        help="OMP_NUM_THREADS of both servers (torch's intra-op threads); 0: unset (default)",
    )
    p.add_argument("--timeout", type=float, default=900.0)
    p.add_argument("--out", default="out/step_profile")
    a = p.parse_args(argv)
    bad = [m for m in a.modes if m not in TRIMODE_MODES]
    if bad:
        p.error(f"--modes: unknown {bad}; expected some of {','.join(TRIMODE_MODES)}")
    bad = [s for s in a.servers if s not in ("plain", "trimode")]
    if bad or not a.servers:
        p.error(f"--servers: expected plain and/or trimode, got {a.servers}")
    if a.threads < 0:
        p.error("--threads must be >= 0 (0: leave OMP_NUM_THREADS unset)")
    if a.rounds < 1 or a.max_new_tokens < 1 or not a.concurrency or min(a.concurrency) < 1:
        p.error("--rounds, --max-new-tokens and every --concurrency must be >= 1")
    if a.model is None:
        from sglang_trimode.models import default_model_path

        a.model = str(default_model_path())
    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    rows = []
    for rnd in range(a.rounds):
        order = list(a.servers) if rnd % 2 == 0 else list(reversed(a.servers))
        for kind in order:
            rows += run_server(PLAIN if kind == "plain" else "trimode", a, rnd, out)
    summary = summarize(rows)
    table = format_table(summary)
    print(table)
    same = _greedy_agreement(rows)
    if same is not None:
        print(f"greedy texts equal to plain AR's: {same}")
    result = {
        "args": {k: v for k, v in vars(a).items()},
        "summary": summary,
        "rows": [{k: v for k, v in r.items() if k != "texts"} for r in rows],
        "greedy_equal_plain": same,
    }
    (out / "step_profile.json").write_text(json.dumps(result, indent=2))
    (out / "step_profile.md").write_text(table + "\n")
    print(f"wrote {out / 'step_profile.json'}")
    return result


def _greedy_agreement(rows: list[dict]) -> bool | None:
    """Whether every TRIMODE ar / self-speculation run returned plain AR's texts (same round, c)."""
    plain = {(r["round"], r["c"]): r["texts"] for r in rows if r["server"] == PLAIN}
    checks = [
        r["texts"] == plain[(r["round"], r["c"])]
        for r in rows
        if r["server"] != PLAIN
        and r["mode"] in ("ar", "self_spec_linear", "self_spec_quadratic")
        and (r["round"], r["c"]) in plain
    ]
    return all(checks) if checks else None


if __name__ == "__main__":
    main()
