"""`--trimode-fill-in off` through a real CPU server: the control of
`test_server_trimode.py::test_fill_in_runs_one_forward_cycles_while_others_are_mid_cycle`.

The same ragged batch of four modes (ar, diffusion, quadratic, linear; block 4): without fill-in
every request runs exactly one cycle per SGLang step (`spec_verify_ct` == its cycles, the ar and
quadratic requests included), and the tokens and stats are the same as with it (the reference
engine's). Skipped without sglang.
"""

from __future__ import annotations

import pytest

pytest.importorskip(
    "sglang", reason="sglang is not installed (bash scripts/setup_sglang.sh installs it for CPU)"
)

import torch  # noqa: E402
from _srt_server import FILL_IN_MODES, post_ok, prompts, trimode_server  # noqa: E402

from sglang_trimode import TriModeEngine, default_model_path  # noqa: E402

BLOCK = 4
MAX_NEW_TOKENS = 24


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    extra = ("--trimode-fill-in", "off")
    with trimode_server(tmp_path_factory, "sglang_trimode_fill_in_off", BLOCK, extra) as srv:
        yield srv


def test_without_fill_in_every_request_runs_one_cycle_per_step(server):
    ps = prompts()
    engine = TriModeEngine.from_pretrained(default_model_path(), device="cpu", dtype=torch.float32)
    want = [
        engine.generate(
            [p], mode=mode, block_size=BLOCK, max_new_tokens=MAX_NEW_TOKENS, stop_token_ids=[]
        )[0]
        for p, mode in zip(ps, FILL_IN_MODES, strict=True)
    ]
    sp = {"temperature": 0.0, "max_new_tokens": MAX_NEW_TOKENS, "ignore_eos": True}
    params = [sp | {"custom_params": {"trimode_mode": mode}} for mode in FILL_IN_MODES]
    out = post_ok(server["base"] + "/generate", {"input_ids": ps, "sampling_params": params})
    for o, w, mode in zip(out, want, FILL_IN_MODES, strict=True):
        meta = o["meta_info"]
        assert o["output_ids"] == list(w.token_ids), mode
        assert meta["trimode_forwards"] == w.stats.forwards, mode
        assert meta["trimode_accept_lengths"] == list(w.stats.accept_lengths), mode
        assert meta["spec_verify_ct"] == len(w.stats.accept_lengths), mode
    log = server["log"].read_text(errors="replace")
    assert "TRIMODE: mode=self_spec_linear block_size=4" in log and "fill_in=off" in log
