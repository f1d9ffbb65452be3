"""`--trimode-pad-forwards on` through a real CPU server: padded forwards == unpadded ones.

Every structural-mask forward is padded to a bucket of (segments, tokens), powers of two (the
shapes a CUDA graph replays; `sglang_trimode.layout`), and runs over that bucket's preallocated
buffers (`sglang_trimode.static_layout`, what its graph would read): padding segments run causal
over no prefix, write their K/V to SGLang's padding slot and their logits are dropped. A ragged
batch of four modes (ar, diffusion, quadratic, linear; block 4) and each mode alone give the
reference engine's tokens and stats (which the unpadded server gives too:
tests/srt/test_server_trimode.py), and every KV slot is free afterwards. Skipped without sglang.
"""

from __future__ import annotations

import pytest
from _deps import require

require(
    "sglang", reason="sglang is not installed (bash scripts/setup_sglang.sh installs it for CPU)"
)

pytestmark = pytest.mark.server  # a real SGLang server (or engine) on the CPU: minutes

import torch  # noqa: E402
from _srt_server import (  # noqa: E402
    FILL_IN_MODES,
    kv_pool_problems,
    post_ok,
    prompts,
    trimode_server,
    trimode_state,
)

from sglang_trimode import TriModeEngine, default_model_path  # noqa: E402

BLOCK = 4
MAX_NEW_TOKENS = 16


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    extra = ("--trimode-pad-forwards", "on")
    with trimode_server(tmp_path_factory, "sglang_trimode_padded", BLOCK, extra) as srv:
        yield srv


@pytest.fixture(scope="module")
def reference():
    engine = TriModeEngine.from_pretrained(default_model_path(), dtype=torch.float32)
    kw = dict(block_size=BLOCK, max_new_tokens=MAX_NEW_TOKENS, stop_token_ids=[])
    return [
        engine.generate([p], mode=mode, **kw)[0]
        for p, mode in zip(prompts(), FILL_IN_MODES, strict=True)
    ]


def _params(mode: str) -> dict:
    sp = {"temperature": 0.0, "max_new_tokens": MAX_NEW_TOKENS, "ignore_eos": True}
    return sp | {"custom_params": {"trimode_mode": mode}}


def _check(out: dict, want, mode: str) -> None:
    meta = out["meta_info"]
    assert out["output_ids"] == list(want.token_ids), mode
    assert meta["trimode_forwards"] == want.stats.forwards, mode
    assert meta["trimode_accept_lengths"] == list(want.stats.accept_lengths), mode


def test_padded_forwards_equal_the_reference(server, reference):
    ps, base = prompts(), server["base"]
    params = [_params(mode) for mode in FILL_IN_MODES]
    out = post_ok(base + "/generate", {"input_ids": ps, "sampling_params": params})
    for o, want, mode in zip(out, reference, FILL_IN_MODES, strict=True):
        _check(o, want, mode)
    for p, want, mode in zip(ps, reference, FILL_IN_MODES, strict=True):
        _check(post_ok(base + "/generate", {"input_ids": p, "sampling_params": _params(mode)}),
               want, mode)  # fmt: skip
    assert kv_pool_problems(server) == []
    state = trimode_state(base)  # the worker's counters, not its log
    assert state["pad_forwards"] is True and state["attention_impl"] == "sdpa"
    forwards = state["forwards"]
    assert forwards["padded"] > 0 and forwards["padded_tokens"] >= forwards["padded"]
    assert forwards.get("unbucketed", 0) == 0  # every forward fit a bucket
    assert forwards["packed"] >= forwards["padded"]
    assert state["attention_calls"]["sdpa"] > 0
    # every padded forward ran over its bucket's preallocated buffers (`StaticLayout`)
    assert state["buckets"] and all(r <= t for r, t in state["buckets"]), state["buckets"]
    log = server["log"].read_text(errors="replace")
    assert "pad_forwards=on" in log and "padded to" in log  # operators see it too
