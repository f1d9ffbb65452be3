"""`--speculative-algorithm TRIMODE` through a real `python -m sglang.launch_server` on a CPU.

One server per module (block size 4, default mode self_spec_linear); every mode is exercised on
it through the per-request `custom_params: {"trimode_mode": ...}`. Greedy tokens through the
native `/generate` API, a ragged batch of 4 and a single request, must equal the reference
engine's (`TriModeEngine.generate(..., mode=...)`) token for token. Skipped without sglang.
"""

from __future__ import annotations

import json

import pytest

pytest.importorskip(
    "sglang", reason="sglang is not installed (bash scripts/setup_sglang.sh installs it for CPU)"
)

import torch  # noqa: E402
from _srt_server import post_ok, prompts, request, start_server  # noqa: E402

from sglang_trimode import TriModeEngine, default_model_path  # noqa: E402
from sglang_trimode.srt.flags import REQUEST_MODES  # noqa: E402

BLOCK = 4
MAX_NEW_TOKENS = 24


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("sglang_trimode_server")
    args = ["--speculative-algorithm", "TRIMODE", "--trimode-block-size", str(BLOCK)]
    with start_server(tmp, args) as srv:
        yield srv


@pytest.fixture(scope="module")
def engine():
    return TriModeEngine.from_pretrained(default_model_path(), device="cpu", dtype=torch.float32)


@pytest.fixture(scope="module")
def reference(engine):
    ps = prompts()
    expected, steps, stats = {}, {}, {}
    for mode in REQUEST_MODES:
        outs = engine.generate(
            ps, mode=mode, block_size=BLOCK, max_new_tokens=MAX_NEW_TOKENS, stop_token_ids=[]
        )
        expected[mode] = [list(o.token_ids) for o in outs]
        steps[mode] = [len(o.stats.accept_lengths) for o in outs]
        stats[mode] = [
            {
                "trimode_mode": mode,
                "trimode_forwards": o.stats.forwards,
                "trimode_accept_lengths": list(o.stats.accept_lengths),
            }
            for o in outs
        ]
        assert all(len(t) == MAX_NEW_TOKENS for t in expected[mode])
    return ps, expected, steps, stats


def _stats(out: dict) -> dict:
    keys = ("trimode_mode", "trimode_forwards", "trimode_accept_lengths")
    return {k: out["meta_info"].get(k) for k in keys}


def _body(input_ids, mode: str | None) -> dict:
    sp = {"temperature": 0.0, "max_new_tokens": MAX_NEW_TOKENS, "ignore_eos": True}
    if mode is not None:
        sp["custom_params"] = {"trimode_mode": mode}
    return {"input_ids": input_ids, "sampling_params": sp}


@pytest.mark.parametrize("mode", REQUEST_MODES)
def test_generate_batch_and_single_equal_reference(server, reference, mode):
    ps, expected, steps, stats = reference
    out = post_ok(server["base"] + "/generate", _body(ps, mode))
    assert [o["output_ids"] for o in out] == expected[mode]
    # one scheduler step per verify / commit cycle of the reference
    assert [o["meta_info"]["spec_verify_ct"] for o in out] == steps[mode]
    # meta_info stats == the reference engine's RequestStats
    assert [_stats(o) for o in out] == stats[mode]
    one = post_ok(server["base"] + "/generate", _body(ps[1], mode))
    assert one["output_ids"] == expected[mode][1]
    assert _stats(one) == stats[mode][1]


def test_server_default_mode_is_self_spec_linear(server, reference):
    ps, expected, steps, stats = reference
    out = post_ok(server["base"] + "/generate", _body(ps[3], None))
    assert out["output_ids"] == expected["self_spec_linear"][3]
    assert out["meta_info"]["spec_verify_ct"] == steps["self_spec_linear"][3]
    assert _stats(out) == stats["self_spec_linear"][3]


def test_server_used_our_worker_and_model(server):
    log = server["log"].read_text(errors="replace")
    assert "type=NemotronLabsDiffusionModel" in log
    assert "TRIMODE: mode=self_spec_linear block_size=4" in log


def test_unknown_mode_is_a_clear_400_and_server_keeps_serving(server, reference):
    ps, expected, _, _ = reference
    status, out = request(server["base"] + "/generate", _body(ps[0], "turbo"))
    assert status == 400, out
    assert "unknown trimode_mode 'turbo'" in json.dumps(out)
    one = post_ok(server["base"] + "/generate", _body(ps[0], "diffusion"))
    assert one["output_ids"] == expected["diffusion"][0]


def test_radix_cache_holds_no_draft_kv_after_diffusion_stopped_mid_block(server, engine):
    """A diffusion request whose last block is cut by max_new_tokens ends without the causal
    commit pass; its tokens must not reach the radix cache with their bidirectional draft KV.
    Follow-up requests extending them (prefix-cache hits) must decode exactly like the reference."""
    ps = prompts()
    n = 1 + BLOCK + BLOCK - 1  # prefill token, one full block, then the last block's draft
    body = _body(ps, "diffusion")
    body["sampling_params"]["max_new_tokens"] = n
    first = [o["output_ids"] for o in post_ok(server["base"] + "/generate", body)]
    want = engine.generate(
        ps, mode="diffusion", block_size=BLOCK, max_new_tokens=n, stop_token_ids=[]
    )
    assert first == [list(o.token_ids) for o in want]
    follow = [p + o for p, o in zip(ps, first, strict=True)]
    out = post_ok(server["base"] + "/generate", _body(follow, "ar"))
    # the follow-ups reused cached KV beyond their prompts (else this test proves nothing)
    for o, p in zip(out, ps, strict=True):
        assert o["meta_info"]["cached_tokens"] > len(p) + 1 + BLOCK, o["meta_info"]
    ref = engine.generate(follow, mode="ar", max_new_tokens=MAX_NEW_TOKENS, stop_token_ids=[])
    assert [o["output_ids"] for o in out] == [list(o.token_ids) for o in ref]
