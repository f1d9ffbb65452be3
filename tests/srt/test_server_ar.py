"""Plain AR serving through a real `python -m sglang.launch_server` on a CPU, against the oracle.

One server per module (start-up takes ~50 s on 2 cores): SGLANG_USE_CPU_ENGINE=1, `--device cpu`,
`--attention-backend torch_native`, fp32, with the plugin's `sgl_kernel` CPU stand-in on
PYTHONPATH. Greedy tokens through the native `/generate` API (a ragged batch of 4) and the OpenAI
`/v1/completions` API must equal the reference engine's greedy AR tokens. Skipped when sglang is
not installed (`bash scripts/setup_sglang.sh` installs it).
"""

from __future__ import annotations

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

pytest.importorskip(
    "sglang", reason="sglang is not installed (bash scripts/setup_sglang.sh installs it for CPU)"
)

import torch  # noqa: E402

from sglang_trimode import TriModeEngine, default_model_path  # noqa: E402
from sglang_trimode.srt.cpu_platform import PYTHONPATH_ENTRY  # noqa: E402

MAX_NEW_TOKENS = 24
STARTUP_TIMEOUT_S = float(os.environ.get("SGLANG_TRIMODE_STARTUP_TIMEOUT", "300"))
TEXTS = [
    "def main():\n",
    "import os\nimport sys\n\n\nclass Path",
    "    for i in range(len(items)):\n        if items[i] is None:\n",
    '# Copyright (c) Python Software Foundation.\n"""Helpers for reading',
]


def _prompts() -> list[list[int]]:
    from tokenizers import Tokenizer

    tok = Tokenizer.from_file(str(Path(default_model_path()) / "tokenizer.json"))
    prompts = [tok.encode(t, add_special_tokens=False).ids for t in TEXTS]
    assert len({len(p) for p in prompts}) == len(prompts), "prompts must be ragged"
    return prompts


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _log_tail(path: Path, n: int = 60) -> str:
    lines = path.read_text(errors="replace").splitlines()
    lines = [line for line in lines if "Ignore import error" not in line]
    return "\n".join(lines[-n:])


def _server_env() -> dict[str, str]:
    env = dict(os.environ)
    env["SGLANG_USE_CPU_ENGINE"] = "1"
    env["PYTHONPATH"] = os.pathsep.join(
        p for p in (PYTHONPATH_ENTRY, env.get("PYTHONPATH", "")) if p
    )
    return env


def _post(url: str, body: dict, timeout: float = 120.0) -> dict:
    req = urllib.request.Request(
        url, data=json.dumps(body).encode(), headers={"Content-Type": "application/json"}
    )
    try:
        with urllib.request.urlopen(req, timeout=timeout) as resp:
            return json.loads(resp.read())
    except urllib.error.HTTPError as e:
        raise AssertionError(f"{url} -> HTTP {e.code}: {e.read().decode(errors='replace')}") from e


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("sglang_server")
    log_path = tmp / "server.log"
    port = _free_port()
    cmd = [
        sys.executable, "-m", "sglang.launch_server",
        "--model-path", str(default_model_path()),
        "--host", "127.0.0.1", "--port", str(port),
        "--device", "cpu", "--attention-backend", "torch_native",
        "--disable-cuda-graph", "--skip-server-warmup",
        "--mem-fraction-static", "0.05", "--max-total-tokens", "4096",
        "--dtype", "float32", "--random-seed", "0",
    ]  # fmt: skip
    log = open(log_path, "wb")  # noqa: SIM115  (closed in the finalizer)
    proc = subprocess.Popen(
        cmd, cwd=tmp, env=_server_env(), stdout=log, stderr=subprocess.STDOUT,
        start_new_session=True,
    )  # fmt: skip
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + STARTUP_TIMEOUT_S
        while True:
            if proc.poll() is not None:
                pytest.fail(
                    f"sglang server exited with code {proc.returncode} during start-up; "
                    f"last lines of {log_path}:\n{_log_tail(log_path)}"
                )
            try:
                with urllib.request.urlopen(base + "/health", timeout=5) as r:
                    if r.status == 200:
                        break
            except (urllib.error.URLError, ConnectionError, TimeoutError):
                pass
            if time.monotonic() > deadline:
                pytest.fail(
                    f"sglang server not healthy after {STARTUP_TIMEOUT_S:.0f} s; last lines of "
                    f"{log_path}:\n{_log_tail(log_path)}"
                )
            time.sleep(2)
        yield {"base": base, "log": log_path}
    finally:
        _kill_group(proc)
        log.close()


def _kill_group(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        try:
            os.killpg(proc.pid, signal.SIGTERM)
        except ProcessLookupError:
            pass
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            pass
    try:  # children (scheduler, detokenizer) may outlive the launcher
        os.killpg(proc.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    if proc.poll() is None:
        proc.wait(timeout=30)


@pytest.fixture(scope="module")
def reference():
    prompts = _prompts()
    engine = TriModeEngine.from_pretrained(default_model_path(), device="cpu", dtype=torch.float32)
    outs = engine.generate(
        prompts, mode="ar", max_new_tokens=MAX_NEW_TOKENS, temperature=0.0, stop_token_ids=[]
    )
    tokens = [list(o.token_ids) for o in outs]
    assert all(len(t) == MAX_NEW_TOKENS for t in tokens)
    return prompts, tokens


def test_native_generate_batch_equals_reference(server, reference):
    prompts, expected = reference
    out = _post(
        server["base"] + "/generate",
        {
            "input_ids": prompts,
            "sampling_params": {
                "temperature": 0.0,
                "max_new_tokens": MAX_NEW_TOKENS,
                "ignore_eos": True,
            },
        },
    )
    assert isinstance(out, list) and len(out) == len(prompts)
    got = [o["output_ids"] for o in out]
    assert got == expected
    # a single request (batch size 1) too
    one = _post(
        server["base"] + "/generate",
        {
            "input_ids": prompts[2],
            "sampling_params": {
                "temperature": 0.0,
                "max_new_tokens": MAX_NEW_TOKENS,
                "ignore_eos": True,
            },
        },
    )
    assert one["output_ids"] == expected[2]


def test_openai_completions_equal_reference(server, reference):
    prompts, expected = reference
    for prompt, want in zip(prompts, expected, strict=True):
        out = _post(
            server["base"] + "/v1/completions",
            {
                "model": "default",
                "prompt": prompt,
                "max_tokens": MAX_NEW_TOKENS,
                "temperature": 0.0,
                "ignore_eos": True,
                "return_token_ids": True,
            },
        )
        (choice,) = out["choices"]
        assert choice["token_ids"] == want
        assert choice["finish_reason"] == "length"


def test_server_loaded_our_model_class(server):
    # SGLang logs the loaded class name; a silent fallback would name another class.
    assert "type=NemotronLabsDiffusionModel" in server["log"].read_text(errors="replace")


def test_entry_point_resolves_our_model_class(tmp_path):
    code = """
import json
from sglang.srt.plugins import load_plugins
load_plugins()
from sglang.srt.models.registry import ModelRegistry
from transformers import AutoConfig
cls, arch = ModelRegistry.resolve_model_cls(["NemotronLabsDiffusionModel"])
cfg = AutoConfig.for_model("nemotron_labs_diffusion")
print("RESULT " + json.dumps({
    "cls": cls.__module__ + "." + cls.__qualname__, "arch": arch,
    "config": type(cfg).__module__ + "." + type(cfg).__qualname__,
}))
"""
    res = subprocess.run(
        [sys.executable, "-c", code], cwd=tmp_path, env=_server_env(),
        capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    lines = [ln for ln in res.stdout.splitlines() if ln.startswith("RESULT ")]
    assert res.returncode == 0 and lines, f"rc={res.returncode}\n{res.stderr[-3000:]}"
    got = json.loads(lines[-1][len("RESULT ") :])
    assert got == {
        "cls": "sglang_trimode.srt.model.NemotronLabsDiffusionModel",
        "arch": "NemotronLabsDiffusionModel",
        "config": "sglang_trimode.config.NemotronLabsDiffusionConfig",
    }
