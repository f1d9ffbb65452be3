"""Plain AR serving through a real `python -m sglang.launch_server` on a CPU, against the oracle.

One server per module (start-up takes ~50 s on 2 cores): SGLANG_USE_CPU_ENGINE=1, `--device cpu`,
`--attention-backend torch_native`, fp32, with the plugin's `sgl_kernel` CPU stand-in on
PYTHONPATH. Greedy tokens through the native `/generate` API (a ragged batch of 4) and the OpenAI
`/v1/completions` API must equal the reference engine's greedy AR tokens. Skipped when sglang is
not installed (`bash scripts/setup_sglang.sh` installs it).
"""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
from _deps import require

require(
    "sglang", reason="sglang is not installed (bash scripts/setup_sglang.sh installs it for CPU)"
)

pytestmark = pytest.mark.server  # a real SGLang server (or engine) on the CPU: minutes

import torch  # noqa: E402
from _srt_server import (  # noqa: E402
    check_bad_token_ids,
    post_ok,
    prompts,
    request,
    server_env,
    start_server,
)

from sglang_trimode import TriModeEngine, default_model_path  # noqa: E402

MAX_NEW_TOKENS = 24


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    with start_server(tmp_path_factory.mktemp("sglang_server"), []) as srv:
        yield srv


@pytest.fixture(scope="module")
def reference():
    ps = prompts()
    engine = TriModeEngine.from_pretrained(default_model_path(), device="cpu", dtype=torch.float32)
    outs = engine.generate(
        ps, mode="ar", max_new_tokens=MAX_NEW_TOKENS, temperature=0.0, stop_token_ids=[]
    )
    tokens = [list(o.token_ids) for o in outs]
    assert all(len(t) == MAX_NEW_TOKENS for t in tokens)
    return ps, tokens


def test_native_generate_batch_equals_reference(server, reference):
    prompts, expected = reference
    out = post_ok(
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
    one = post_ok(
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
        out = post_ok(
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
        [sys.executable, "-c", code], cwd=tmp_path, env=server_env(),
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


def test_plain_server_refuses_other_modes_with_400(server, reference):
    prompts, expected = reference
    body = {
        "input_ids": prompts[0],
        "sampling_params": {
            "temperature": 0.0,
            "max_new_tokens": MAX_NEW_TOKENS,
            "ignore_eos": True,
            "custom_params": {"trimode_mode": "diffusion"},
        },
    }
    status, out = request(server["base"] + "/generate", body)
    assert status == 400, out
    assert "trimode_mode 'diffusion' is not served by this server" in json.dumps(out)
    body["sampling_params"]["custom_params"] = {"trimode_mode": "ar"}
    assert post_ok(server["base"] + "/generate", body)["output_ids"] == expected[0]


def test_prompt_with_mask_token_is_a_clear_400(server, reference):
    prompts, expected = reference
    mask = json.loads((default_model_path() / "config.json").read_text())["mask_token_id"]
    body = {
        "input_ids": [mask, *prompts[0]],
        "sampling_params": {"temperature": 0.0, "max_new_tokens": 4, "ignore_eos": True},
    }
    status, out = request(server["base"] + "/generate", body)
    assert status == 400, out
    assert f"input_ids) contains the mask token id {mask} at position 0" in json.dumps(out)


def test_prompt_token_ids_outside_the_vocabulary_are_a_clear_400(server, reference):
    """Today's crash (IndexError in the embedding takes the scheduler down): a 400 instead, and
    the server keeps serving."""
    prompts, expected = reference
    sp = {"temperature": 0.0, "max_new_tokens": MAX_NEW_TOKENS, "ignore_eos": True}
    check_bad_token_ids(server, prompts[1], expected[1], sp)
