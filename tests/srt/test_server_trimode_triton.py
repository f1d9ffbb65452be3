"""`--trimode-attention-impl triton` through a real `python -m sglang.launch_server` on a CPU.

The TRIMODE worker's attention runs the Triton kernel `sglang_trimode.kernels.extend_attention`
under the interpreter (`TRITON_INTERPRET=1` in the server's environment). Greedy tokens of a
ragged batch of 4 must equal the reference engine's token for token in every mode, and the
server log must show the Triton impl in use (the backend logs each impl at its first use) and
never the torch one (quadratic steps with `--trimode-bonus-candidates 2`: the kernel's mask groups
per acceptance length); AR-only forwards take the wrapped backend's own decode, as on a GPU.
The interpreter is slow: few new tokens. A second check: the same flag
without `TRITON_INTERPRET` on a CPU refuses to start with a message naming the flag and the fix.
Skipped without sglang.
"""

from __future__ import annotations

import subprocess
import sys

import pytest
from _deps import require

require(
    "sglang", reason="sglang is not installed (bash scripts/setup_sglang.sh installs it for CPU)"
)

pytestmark = [
    pytest.mark.server,
    pytest.mark.interpreter,
]  # a real SGLang server (or engine) on the CPU: minutes

import torch  # noqa: E402
from _srt_server import (  # noqa: E402
    kill_group,
    post_ok,
    prompts,
    server_env,
    start_server,
    trimode_state,
)

from sglang_trimode import TriModeEngine, default_model_path  # noqa: E402
from sglang_trimode.srt.flags import REQUEST_MODES  # noqa: E402

BLOCK = 4
MAX_NEW_TOKENS = 10


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("sglang_trimode_triton")
    args = [
        "--speculative-algorithm", "TRIMODE", "--trimode-block-size", str(BLOCK),
        "--trimode-attention-impl", "triton", "--trimode-bonus-candidates", "2",
    ]  # fmt: skip
    with start_server(tmp, args, env={"TRITON_INTERPRET": "1"}) as srv:
        yield srv


@pytest.fixture(scope="module")
def reference():
    engine = TriModeEngine.from_pretrained(default_model_path(), device="cpu", dtype=torch.float32)
    ps = prompts()
    expected = {}
    for mode in REQUEST_MODES:
        outs = engine.generate(
            ps, mode=mode, block_size=BLOCK, max_new_tokens=MAX_NEW_TOKENS, stop_token_ids=[],
            bonus_candidates=2 if mode == "self_spec_quadratic" else 0,
        )  # fmt: skip
        expected[mode] = [list(o.token_ids) for o in outs]
        assert all(len(t) == MAX_NEW_TOKENS for t in expected[mode])
    return ps, expected


def test_every_mode_with_the_triton_kernel_equals_reference(server, reference):
    ps, expected = reference
    for mode in REQUEST_MODES:
        sp = {"temperature": 0.0, "max_new_tokens": MAX_NEW_TOKENS, "ignore_eos": True}
        sp["custom_params"] = {"trimode_mode": mode}
        out = post_ok(server["base"] + "/generate", {"input_ids": ps, "sampling_params": sp})
        assert [o["output_ids"] for o in out] == expected[mode], mode
    state = trimode_state(server["base"])  # the worker's counters
    assert state["attention_impl"] == "triton"
    calls = state["attention_calls"]
    assert calls["triton"] > 0 and set(calls) == {"triton"}  # the kernel path, no other impl
    # with any impl but `sdpa`, AR-only forwards are SGLang's own DECODE (wrapped backend)
    forwards = state["forwards"]
    assert forwards["decode"] > 0 and forwards["packed"] > 0
    assert "padded" not in forwards  # no padding unless --trimode-pad-forwards on


def test_triton_on_cpu_without_the_interpreter_is_a_clear_error(tmp_path):
    env = server_env()
    env.pop("TRITON_INTERPRET", None)
    cmd = [
        sys.executable, "-m", "sglang.launch_server", "--model-path", str(default_model_path()),
        "--device", "cpu", "--attention-backend", "torch_native", "--dtype", "float32",
        "--speculative-algorithm", "TRIMODE", "--trimode-attention-impl", "triton",
    ]  # fmt: skip
    proc = subprocess.Popen(
        cmd, cwd=tmp_path, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
        start_new_session=True,
    )  # fmt: skip
    try:
        out, _ = proc.communicate(timeout=300)
    finally:
        kill_group(proc)  # a server that started anyway must not outlive the test
    assert proc.returncode != 0
    assert "--trimode-attention-impl triton on a CPU needs the Triton interpreter" in out, out[
        -3000:
    ]
    assert "TRITON_INTERPRET=1" in out and "--trimode-attention-impl torch" in out
