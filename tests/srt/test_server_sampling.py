"""A TRIMODE server (block size 4) on request input and sampling parameters, on a real CPU
server: prompt token ids outside the vocabulary are a clear 400 and the server keeps serving.
Skipped without sglang."""

from __future__ import annotations

import pytest

pytest.importorskip(
    "sglang", reason="sglang is not installed (bash scripts/setup_sglang.sh installs it for CPU)"
)

import torch  # noqa: E402
from _srt_server import check_bad_token_ids, prompts, trimode_server  # noqa: E402

from sglang_trimode import TriModeEngine, default_model_path  # noqa: E402

BLOCK, MAX_NEW_TOKENS = 4, 16


@pytest.fixture(scope="module")
def engine():
    return TriModeEngine.from_pretrained(default_model_path(), device="cpu", dtype=torch.float32)


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    with trimode_server(tmp_path_factory, "sglang_trimode_sampling", BLOCK) as srv:
        yield srv


@pytest.mark.parametrize("mode", ["self_spec_quadratic", "diffusion"])
def test_prompt_token_ids_outside_the_vocabulary_are_a_clear_400(server, engine, mode):
    ps = prompts()
    (want,) = engine.generate(
        [ps[0]], mode=mode, block_size=BLOCK, max_new_tokens=MAX_NEW_TOKENS, stop_token_ids=[]
    )
    sp = {"temperature": 0.0, "max_new_tokens": MAX_NEW_TOKENS, "ignore_eos": True}
    sp["custom_params"] = {"trimode_mode": mode}
    check_bad_token_ids(server, ps[0], list(want.token_ids), sp)
