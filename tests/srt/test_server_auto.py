"""`--trimode-mode auto` through a real `python -m sglang.launch_server` on a CPU.

Own server (block size 4, default mode `auto`, a calibration file whose fixed cost per forward
makes drafting pay, and `--trimode-auto-token-budget 6`: the auto requests together take at most
6 query tokens per forward). A ragged batch of 4 requests of 8, 16, 24 and 40 new tokens: while
three or four share a forward only AR fits the budget (a quadratic block of 2 takes 6 tokens, a
linear block of 4 takes 4 and does not pay at the prior acceptance), and once the longest runs
alone the scheduler's real `AutoPolicy` drafts: the load, not a test hook, changes its mode
mid-request. Greedy tokens must equal the reference engine's AR token for token;
`meta_info["trimode_step_modes"]` shows the mode of every step, and the worker's counters
(`GET /get_server_info`: auto's forwards per choice and its switches) that the scheduler chose
them. The reference engine's own auto trace is not the
comparison: its block loop forwards every request every step, while the worker's requests that
finished their cycle ride along until the batch's step ends, so the same policy sees other
forwards and chooses differently. Skipped without sglang.
"""

from __future__ import annotations

import json

import pytest
from _deps import require

require(
    "sglang", reason="sglang is not installed (bash scripts/setup_sglang.sh installs it for CPU)"
)

pytestmark = pytest.mark.server  # a real SGLang server (or engine) on the CPU: minutes

import torch  # noqa: E402
from _srt_server import (  # noqa: E402
    fixed_cost_file,
    post_ok,
    prompts,
    request,
    trimode_server,
    trimode_state,
)

from sglang_trimode import TriModeEngine, default_model_path  # noqa: E402

BLOCK = 4
MAX_NEW_TOKENS = 40
LENGTHS = (8, 16, 24, MAX_NEW_TOKENS)  # the ragged batch's new tokens: the load falls as they end
BUDGET = 6  # --trimode-auto-token-budget: 4 or 3 requests, AR only; alone, a quadratic block


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    cost = fixed_cost_file(tmp_path_factory, "auto_cost")
    extra = ["--trimode-mode", "auto", "--trimode-cost-file", str(cost)]
    extra += ["--trimode-auto-token-budget", str(BUDGET)]
    with trimode_server(tmp_path_factory, "sglang_trimode_auto", BLOCK, extra) as srv:
        yield srv


@pytest.fixture(scope="module")
def reference():
    engine = TriModeEngine.from_pretrained(default_model_path(), device="cpu", dtype=torch.float32)
    ps = prompts()
    outs = engine.generate(ps, mode="ar", max_new_tokens=MAX_NEW_TOKENS, stop_token_ids=[])
    return ps, [list(o.token_ids) for o in outs]


def _body(input_ids, modes, rids, lengths=None) -> dict:
    sps = []
    for k, mode in enumerate(modes):
        n = MAX_NEW_TOKENS if lengths is None else lengths[k]
        sp = {"temperature": 0.0, "max_new_tokens": n, "ignore_eos": True}
        if mode is not None:
            sp["custom_params"] = {"trimode_mode": mode}
        sps.append(sp)
    return {"input_ids": input_ids, "sampling_params": sps, "rid": rids}


def _collapse(modes) -> list[str]:
    """Consecutive repeats merged: ["ar", "ar", "q", "q", "ar"] -> ["ar", "q", "ar"]."""
    return [m for k, m in enumerate(modes) if k == 0 or modes[k - 1] != m]


def check_step_modes(meta: dict) -> list[str]:
    """`meta_info["trimode_step_modes"]` of an auto request: one served mode per verify/commit
    step, aligned with `trimode_accept_lengths` (an AR step emits exactly one token); returns
    the step modes."""
    modes, lengths = meta["trimode_step_modes"], meta["trimode_accept_lengths"]
    assert meta["trimode_mode"] == "auto"
    assert len(modes) == len(lengths) and modes, meta
    assert set(modes) <= {"ar", "self_spec_linear", "self_spec_quadratic"}, modes
    assert all(n == 1 for m, n in zip(modes, lengths, strict=True) if m == "ar"), meta
    return modes


def _auto_state(server) -> dict:
    """Auto's counters in the worker (forwards per choice label, switches)."""
    auto = trimode_state(server["base"])["auto"]
    assert auto["cost_model"] == "file"
    return auto


def test_auto_batch_changes_modes_with_the_load_and_equals_ar(server, reference):
    ps, ar = reference
    before = _auto_state(server)
    rids = [f"auto-{i}" for i in range(len(ps))]
    # server default (auto) for two requests, an explicit per-request "auto" for the others
    body = _body(ps, [None, "auto", None, "auto"], rids, LENGTHS)
    out = post_ok(server["base"] + "/generate", body)
    assert [o["output_ids"] for o in out] == [a[:n] for a, n in zip(ar, LENGTHS, strict=True)]
    steps = {rid: check_step_modes(o["meta_info"]) for rid, o in zip(rids, out)}
    # the shortest request ends while all four share the forwards: AR throughout (the budget)
    assert set(steps["auto-0"]) == {"ar"}, steps["auto-0"]
    # the longest: AR while the others run, self-speculation once alone
    longest = steps["auto-3"]
    assert longest[0] == "ar" and any(m.startswith("self_spec_") for m in longest), longest
    assert len(_collapse(longest)) >= 2, longest  # changed mid-request
    after = _auto_state(server)  # the scheduler's own choices, counted by the worker
    assert after["switches"] - before["switches"] >= len(_collapse(longest)) - 1
    grew = {k: n - before["forwards"].get(k, 0) for k, n in after["forwards"].items()}
    assert grew["ar"] > 0 and any(k.startswith("self_spec_") and n > 0 for k, n in grew.items())
    drafted = [
        n
        for rid, o in zip(rids, out, strict=True)
        for m, n in zip(steps[rid], o["meta_info"]["trimode_accept_lengths"], strict=True)
        if m != "ar"
    ]
    # drafting steps accepted more than one token somewhere (the default model's drafts)
    assert any(n > 1 for n in drafted), drafted


def test_auto_mixed_with_fixed_modes_in_one_batch_equals_ar(server, reference):
    ps, ar = reference
    rids = ["mix-0", "mix-1", "mix-2", "mix-3"]
    modes = ["self_spec_quadratic", "auto", "ar", "self_spec_linear"]
    out = post_ok(server["base"] + "/generate", _body(ps, modes, rids))
    assert [o["output_ids"] for o in out] == ar
    check_step_modes(out[1]["meta_info"])
    for mode, o in zip(modes, out, strict=True):  # the fixed ones: their own mode every step
        if mode != "auto":
            meta = o["meta_info"]
            assert meta["trimode_step_modes"] == [mode] * len(meta["trimode_accept_lengths"])


def test_auto_single_request_and_log(server, reference):
    ps, ar = reference
    one = post_ok(server["base"] + "/generate", _body([ps[2]], ["auto"], ["one-2"]))[0]
    assert one["output_ids"] == ar[2]
    log = server["log"].read_text(errors="replace")
    assert "TRIMODE: mode=auto block_size=4" in log
    assert "TRIMODE auto: candidates ar,self_spec_quadratic/2,self_spec_quadratic/3," in log


def test_auto_unknown_mode_still_a_clear_400(server, reference):
    ps, _ = reference
    status, out = request(server["base"] + "/generate", _body([ps[0]], ["turbo"], ["bad-0"]))
    assert status == 400, out
    assert "unknown trimode_mode 'turbo'" in json.dumps(out)
