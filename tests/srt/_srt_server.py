"""Shared helpers of the srt tests: start one real `python -m sglang.launch_server` on a CPU.

SGLANG_USE_CPU_ENGINE=1, `--device cpu`, `--attention-backend torch_native`, fp32, the plugin's
`sgl_kernel` stand-in on PYTHONPATH, tiny memory settings. `start_server(tmp, extra_args)` yields
a dict with `base` (URL), `log` (path) and `proc`; the process group is killed afterwards.
`env`: extra environment variables for the server. `trimode_server(tmp_path_factory, name, block,
extra)` is the same with `--speculative-algorithm TRIMODE --trimode-block-size BLOCK` (the shared
start of every TRIMODE test server). `tp_env(size)`: the environment of a `--tp-size SIZE` CPU
server. `request` / `post_ok`: one JSON POST; `sse_events` / `open_stream` / `stream_events`:
streamed (SSE) requests, read whole or held open mid-stream.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest

from sglang_trimode import default_model_path
from sglang_trimode.scheduler.cost import CostModel
from sglang_trimode.srt.cpu_platform import PYTHONPATH_ENTRY

STARTUP_TIMEOUT_S = float(os.environ.get("SGLANG_TRIMODE_STARTUP_TIMEOUT", "300"))
TEXTS = [
    "def main():\n",
    "import os\nimport sys\n\n\nclass Path",
    "    for i in range(len(items)):\n        if items[i] is None:\n",
    '# Copyright (c) Python Software Foundation.\n"""Helpers for reading',
]


def prompts() -> list[list[int]]:
    from tokenizers import Tokenizer

    tok = Tokenizer.from_file(str(Path(default_model_path()) / "tokenizer.json"))
    out = [tok.encode(t, add_special_tokens=False).ids for t in TEXTS]
    assert len({len(p) for p in out}) == len(out), "prompts must be ragged"
    return out


#: One mode per prompt of `TEXTS` for the mixed-batch fill-in tests: one-forward cycles (ar,
#: quadratic) next to cycles of several forwards (diffusion blocks, linear draft + verify).
FILL_IN_MODES = ("ar", "diffusion", "self_spec_quadratic", "self_spec_linear")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def log_tail(path: Path, n: int = 60) -> str:
    lines = path.read_text(errors="replace").splitlines()
    lines = [ln for ln in lines if "Ignore import error" not in ln and "server_args=" not in ln]
    return "\n".join(lines[-n:])


def server_env() -> dict[str, str]:
    env = dict(os.environ)
    env["SGLANG_USE_CPU_ENGINE"] = "1"
    env["PYTHONPATH"] = os.pathsep.join(p for p in (PYTHONPATH_ENTRY, env.get("PYTHONPATH")) if p)
    return env


#: SGLang builds a PyNccl communicator in every TP group when it finds libnccl, and the pinned
#: torch is a CUDA build that ships it: on a CPU the ranks then stop in `parallel_state` ("Expected
#: a cuda device, but got: cpu"). A library path that does not exist makes SGLang skip PyNccl, as
#: on a CPU torch build without NCCL; the TP collectives then run on gloo.
NO_NCCL = "/nonexistent/libnccl.so.2"


def tp_env(size: int) -> dict[str, str]:
    """Environment of a `--tp-size SIZE` CPU server: PyNccl off (`NO_NCCL`) and one core per
    rank (`SGLANG_CPU_OMP_THREADS_BIND`, which SGLang's CPU engine asks for at TP > 1; the ranks
    are then bound to the first SIZE cores this process may use). Skips with fewer cores."""
    cores = sorted(os.sched_getaffinity(0))
    if len(cores) < size:
        pytest.skip(f"--tp-size {size} on a CPU needs a core per rank; {len(cores)} available")
    return {
        "SGLANG_NCCL_SO_PATH": NO_NCCL,
        "SGLANG_CPU_OMP_THREADS_BIND": "|".join(str(c) for c in cores[:size]),
    }


def request(url: str, body: dict | None = None, timeout: float = 300.0) -> tuple[int, object]:
    """POST `body` (GET when None) -> (HTTP status, parsed JSON or text)."""
    data = None if body is None else json.dumps(body).encode()
    req = urllib.request.Request(url, data=data, headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(req, timeout=timeout) as resp:
            status, raw = resp.status, resp.read()
    except urllib.error.HTTPError as e:
        status, raw = e.code, e.read()
    try:
        return status, json.loads(raw)
    except json.JSONDecodeError:
        return status, raw.decode(errors="replace")


def post_ok(url: str, body: dict, timeout: float = 300.0):
    status, out = request(url, body, timeout)
    assert status == 200, f"{url} -> HTTP {status}: {out}"
    return out


def trimode_state(base: str) -> dict:
    """The TRIMODE worker's counters (`GET /get_server_info`, `internal_states[0]["trimode"]`:
    settings, forwards by path, attention calls by impl)."""
    status, out = request(base + "/get_server_info", None, timeout=30)
    assert status == 200, f"/get_server_info -> HTTP {status}: {out}"
    return out["internal_states"][0]["trimode"]


def stream_events(resp):
    """The parsed `data:` events of an open SSE response, up to `[DONE]` or its end."""
    for raw in resp:
        line = raw.decode().strip()
        if not line.startswith("data:"):
            continue
        data = line[len("data:") :].strip()
        if data == "[DONE]":
            return
        yield json.loads(data)


def sse_events(url: str, body: dict) -> list[dict]:
    """POST `body` (which asks for `stream: true`); the parsed `data:` events up to `[DONE]`."""
    req = urllib.request.Request(
        url, data=json.dumps(body).encode(), headers={"Content-Type": "application/json"}
    )
    with urllib.request.urlopen(req, timeout=300) as resp:
        assert resp.status == 200
        return list(stream_events(resp))


def open_stream(url: str, body: dict):
    """POST `body` with `stream: true`; the open response once its first event arrived (the
    request is then running in the scheduler). The caller reads on or closes it."""
    req = urllib.request.Request(
        url, data=json.dumps(body | {"stream": True}).encode(),
        headers={"Content-Type": "application/json"},
    )  # fmt: skip
    resp = urllib.request.urlopen(req, timeout=300)
    for raw in resp:  # wait for the first streamed tokens: the request is running
        if raw.startswith(b"data:"):
            return resp
    raise AssertionError("stream ended before its first event")


def kill_group(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGTERM)
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.wait(timeout=30)
    with contextlib.suppress(ProcessLookupError):  # children may outlive the launcher
        os.killpg(proc.pid, signal.SIGKILL)
    if proc.poll() is None:
        proc.wait(timeout=30)


@contextlib.contextmanager
def start_server(tmp: Path, extra_args: list[str], env: dict[str, str] | None = None):
    log_path = tmp / "server.log"
    port = free_port()
    cmd = [
        sys.executable, "-m", "sglang.launch_server",
        "--model-path", str(default_model_path()),
        "--host", "127.0.0.1", "--port", str(port),
        "--device", "cpu", "--attention-backend", "torch_native",
        "--disable-cuda-graph", "--skip-server-warmup",
        "--mem-fraction-static", "0.05", "--max-total-tokens", "4096",
        "--dtype", "float32", "--random-seed", "0",
        *extra_args,
    ]  # fmt: skip
    log = open(log_path, "wb")  # noqa: SIM115  (closed below)
    proc = subprocess.Popen(
        cmd, cwd=tmp, env=server_env() | (env or {}), stdout=log, stderr=subprocess.STDOUT,
        start_new_session=True,
    )  # fmt: skip
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + STARTUP_TIMEOUT_S
        while True:
            if proc.poll() is not None:
                pytest.fail(
                    f"sglang server exited with code {proc.returncode} during start-up; "
                    f"last lines of {log_path}:\n{log_tail(log_path)}"
                )
            with contextlib.suppress(urllib.error.URLError, ConnectionError, TimeoutError):
                with urllib.request.urlopen(base + "/health", timeout=5) as r:
                    if r.status == 200:
                        break
            if time.monotonic() > deadline:
                pytest.fail(
                    f"sglang server not healthy after {STARTUP_TIMEOUT_S:.0f} s; last lines of "
                    f"{log_path}:\n{log_tail(log_path)}"
                )
            time.sleep(2)
        yield {"base": base, "log": log_path, "proc": proc}
    finally:
        kill_group(proc)
        log.close()


@contextlib.contextmanager
def trimode_server(
    tmp_path_factory,
    name: str,
    block: int,
    extra: tuple[str, ...] | list[str] = (),
    env: dict[str, str] | None = None,
):
    """A TRIMODE server (`--speculative-algorithm TRIMODE --trimode-block-size BLOCK`, then
    `extra`) in a fresh `tmp_path_factory` folder `name`; yields `start_server`'s dict."""
    tmp = tmp_path_factory.mktemp(name)
    args = ["--speculative-algorithm", "TRIMODE", "--trimode-block-size", str(block), *extra]
    with start_server(tmp, args, env) as srv:
        yield srv


#: Lines SGLang's idle pool check (`scheduler_components/invariant_checker.py`) writes on a
#: leaked KV token, leaked request slot, double free or freed-but-owned page.
LEAK_MARKERS = ("memory leak detected", "KV double free", "use-after-free")


def fixed_cost_file(tmp_path_factory, name: str) -> Path:
    """A `--trimode-cost-file` whose fixed per-forward cost dominates (auto then drafts)."""
    cost = tmp_path_factory.mktemp(name) / "cost.json"
    CostModel(fixed_s=0.01, per_token_s=1e-4, source="test: fixed cost dominates").save(cost)
    return cost


def leak_lines(log_text: str) -> list[str]:
    """The lines of a server log that report a KV / request-slot leak."""
    return [ln for ln in log_text.splitlines() if any(m in ln for m in LEAK_MARKERS)]


def kv_load(base: str) -> dict:
    """The scheduler's counters (`GET /v1/loads`): `num_used_tokens` (KV slots neither free nor
    held by the radix cache), `num_running_reqs` / `num_waiting_reqs` (a snapshot: a request in
    the middle of its forward may be missing from `num_running_reqs`), ..."""
    status, out = request(base + "/v1/loads?include=core", None, timeout=30)
    assert status == 200, f"/v1/loads -> HTTP {status}: {out}"
    (load,) = out["loads"]
    return load


def kv_pool_problems(server: dict, log_start: int = 0, timeout_s: float = 120.0) -> list[str]:
    """Why not every KV slot of `server` is free; [] when all are.

    Waits up to `timeout_s` until the radix cache can be emptied (`/flush_cache`, refused while
    a request is in the scheduler), then requires `num_used_tokens == 0` (after
    the flush: every slot back in the allocator's free list) and no leak report of SGLang's own
    idle pool check in the log written since byte `log_start`."""
    base, problems = server["base"], []
    deadline = time.monotonic() + timeout_s
    while True:
        load = kv_load(base)
        busy = load["num_running_reqs"] + load["num_waiting_reqs"]
        status, out = request(base + "/flush_cache", None) if busy == 0 else (None, "busy")
        if status == 200 or time.monotonic() > deadline:
            break
        time.sleep(0.5)
    if busy:
        problems.append(
            f"{load['num_running_reqs']} running / {load['num_waiting_reqs']} waiting requests "
            f"after {timeout_s:.0f} s"
        )
    if status != 200:
        problems.append(f"/flush_cache refused (HTTP {status}): {out}")
    time.sleep(3)  # idle: the scheduler's pool check runs on every idle pass
    load = kv_load(base)
    if load["num_used_tokens"]:
        problems.append(
            f"{load['num_used_tokens']} KV slots in use (of {load['max_total_num_tokens']})"
        )
    problems += leak_lines(server["log"].read_bytes()[log_start:].decode(errors="replace"))
    return problems


def check_bad_token_ids(server: dict, good: list[int], want: list[int], sp: dict) -> None:
    """Prompts holding a token id outside [0, vocabulary) (default model: 2048 ids) get a 400
    naming the position and the valid range, natively (`input_ids`, single and batched) and
    through OpenAI `/v1/completions` (`prompt` as a token array); afterwards `good` still
    generates `want` under `sp` and every KV slot is free."""
    base, log_start = server["base"], server["log"].stat().st_size
    cases = [  # (url, body, the message's position and id)
        ("/generate", {"input_ids": [30, -4, 50]}, "token id -4 at position 1"),
        ("/generate", {"input_ids": good[:3] + [5000] + good[3:]}, "token id 5000 at position 3"),
        ("/generate", {"input_ids": [good, [7, 2048]]}, "token id 2048 at position 1"),
        ("/v1/completions", {"prompt": [5000, *good]}, "token id 5000 at position 0"),
        ("/v1/completions", {"prompt": [good, [1, -1]]}, "token id -1 at position 1"),
    ]
    for url, body, where in cases:
        if url == "/generate":
            body = body | {"sampling_params": sp}
        else:
            body = body | {"model": "default", "max_tokens": 4, "temperature": 0.0}
        status, out = request(base + url, body)
        text = json.dumps(out)
        assert status == 400, (url, body, status, out)
        assert where in text and "valid ids are in [0, 2048)" in text, (url, out)
    out = post_ok(base + "/generate", {"input_ids": good, "sampling_params": sp})
    assert out["output_ids"] == want
    assert kv_pool_problems(server, log_start) == []
