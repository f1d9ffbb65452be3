"""The single-machine examples run end to end on a CPU against the tiny default model.

One server for the module, started by `examples/serve.sh` itself (DEVICE=cpu, its default);
every client example then runs as a subprocess against it, as the examples' docstrings say, and
its printed completion must equal the reference engine's greedy output in the mode the request
asked for (greedy self-speculation equals AR; diffusion has its own output), streamed or not.
`request_stats.py` must report SGLang's speculative counters agreeing with the reference's
accepted lengths. The offline `sglang.Engine` example is in `test_examples_offline.py` (its own
module, so this server is down by then). Skipped without sglang.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest
from _deps import require

require(
    "sglang", reason="sglang is not installed (bash scripts/setup_sglang.sh installs it for CPU)"
)

pytestmark = pytest.mark.server  # a real SGLang server (or engine) on the CPU: minutes

from sglang_trimode import default_model_path  # noqa: E402

sys.path.insert(0, str(Path(__file__).parent))
sys.path.insert(0, str(Path(__file__).parents[1] / "srt"))
from _srt_server import free_port, kill_group, log_tail  # noqa: E402
from runner import (  # noqa: E402
    EXAMPLES,
    NEW,
    PROMPT,
    README_NEW,
    README_PROMPT,
    README_URL,
    completion,
    env,
    readme_requests,
    reference,
    run,
    sections,
)

SERVER_MODE = "self_spec_linear"  # serve.sh's default; every mode is served per request
STARTUP_TIMEOUT_S = float(os.environ.get("SGLANG_TRIMODE_STARTUP_TIMEOUT", "300"))


@pytest.fixture(scope="module")
def expected():
    return reference()


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("examples_server")
    log_path, port = tmp / "server.log", free_port()
    log = open(log_path, "wb")  # noqa: SIM115  (closed below)
    proc = subprocess.Popen(
        ["bash", str(EXAMPLES / "serve.sh"), SERVER_MODE, str(default_model_path()), str(port)],
        cwd=tmp, env=env(), stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
    )  # fmt: skip
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + STARTUP_TIMEOUT_S
        while True:
            if proc.poll() is not None:
                pytest.fail(f"serve.sh exited with {proc.returncode}:\n{log_tail(log_path)}")
            try:
                with urllib.request.urlopen(url + "/health", timeout=5) as r:
                    if r.status == 200:
                        break
            except (urllib.error.URLError, ConnectionError, TimeoutError):
                pass
            if time.monotonic() > deadline:
                pytest.fail(f"serve.sh server not healthy in time:\n{log_tail(log_path)}")
            time.sleep(2)
        yield url
    finally:
        kill_group(proc)
        log.close()


@pytest.mark.parametrize("stream", [False, True], ids=["plain", "stream"])
def test_openai_client(server, expected, stream):
    common = ["--url", server, "--prompt", PROMPT, "--max-tokens", str(NEW)]
    flag = ["--stream"] if stream else []
    assert completion(run("openai_client.py", *common, *flag)) == expected[SERVER_MODE]["text"]
    got = run("openai_client.py", *common, *flag, "--mode", "diffusion")
    assert completion(got) == expected["diffusion"]["text"]


@pytest.mark.parametrize("stream", [False, True], ids=["plain", "stream"])
def test_native_client(server, expected, stream):
    common = ["--url", server, "--prompt", PROMPT, "--max-new-tokens", str(NEW)]
    flag = ["--stream"] if stream else []
    assert completion(run("native_client.py", *common, *flag)) == expected[SERVER_MODE]["text"]
    got = run("native_client.py", *common, *flag, "--mode", "diffusion")
    assert completion(got) == expected["diffusion"]["text"]


def test_per_request_mode(server, expected):
    args = ["--url", server, "--prompt", PROMPT, "--max-new-tokens", str(NEW)]
    out = run("per_request_mode.py", *args)
    assert sections(out) == {m: e["text"] for m, e in expected.items()}


@pytest.mark.parametrize("mode", ["ar", "self_spec_linear", "diffusion"])
def test_request_stats(server, expected, mode):
    args = ["--url", server, "--mode", mode, "--prompt", PROMPT, "--max-new-tokens", str(NEW)]
    stats = json.loads(run("request_stats.py", *args))
    ref = expected[mode]
    assert stats["completion_tokens"] == ref["tokens"], stats
    assert stats.get("spec_verify_ct") == len(ref["accept_lengths"]), (stats, ref)


def test_readme_requests_work_as_written(server):
    """README.md's curl (native API, diffusion) and OpenAI-client (quadratic self-speculation)
    examples, run verbatim but for the port: diffusion's text is the reference engine's, and
    greedy quadratic self-speculation prints the reference's greedy AR text."""
    curl, code = readme_requests()
    for block in (curl, code):
        assert README_URL in block and README_PROMPT in block and str(README_NEW) in block
    ref = reference(README_PROMPT, README_NEW)
    got = subprocess.run(
        ["bash", "-c", curl.replace(README_URL, server)],
        capture_output=True, text=True, timeout=300, check=True,
    )  # fmt: skip
    out = json.loads(got.stdout)
    assert out["meta_info"]["trimode_mode"] == "diffusion"
    assert out["text"] == ref["diffusion"]["text"]
    got = subprocess.run(
        [sys.executable, "-c", code.replace(README_URL, server)], env=env(),
        capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert got.returncode == 0, got.stderr[-3000:]
    assert completion(got.stdout) == ref["ar"]["text"]
