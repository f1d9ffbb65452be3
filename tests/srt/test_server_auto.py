"""`--trimode-mode auto` through a real `python -m sglang.launch_server` on a CPU.

Own server (block size 4, default mode `auto`, a calibration file whose fixed cost per forward
makes drafting pay, and the test-only load override `SGLANG_TRIMODE_AUTO_BUDGETS`: the auto
policy's token budget per forward cycles uncapped x3, then 5 tokens x4, as if other requests came
and went). Uncapped, the scheduler's real `AutoPolicy` picks self-speculation; capped, only AR
fits, so every request changes mode mid-request several times. Greedy tokens must equal the
reference engine's AR token for token; the worker's per-request log line shows the switches, and
`meta_info["trimode_step_modes"]` the mode of every step (the same sequence as that log line).
The reference engine's own auto trace is not the comparison: its block loop forwards every
request every step, while the worker's requests that finished their cycle ride along until the
batch's step ends, so the same policy sees other forwards and chooses differently.
Skipped without sglang.
"""

from __future__ import annotations

import json
import re
import time

import pytest
from _deps import require

require(
    "sglang", reason="sglang is not installed (bash scripts/setup_sglang.sh installs it for CPU)"
)

pytestmark = pytest.mark.server  # a real SGLang server (or engine) on the CPU: minutes

import torch  # noqa: E402
from _srt_server import fixed_cost_file, post_ok, prompts, request, trimode_server  # noqa: E402

from sglang_trimode import TriModeEngine, default_model_path  # noqa: E402

BLOCK = 4
MAX_NEW_TOKENS = 32
BUDGETS = "0,0,0,5,5,5,5"  # per forward; 0: no cap (the policy's own choice)
LOG_LINE = re.compile(r"TRIMODE auto rid=(\S+) switches=(\d+): (.*)")


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    cost = fixed_cost_file(tmp_path_factory, "auto_cost")
    extra = ["--trimode-mode", "auto", "--trimode-cost-file", str(cost)]
    env = {"SGLANG_TRIMODE_AUTO_BUDGETS": BUDGETS}
    with trimode_server(tmp_path_factory, "sglang_trimode_auto", BLOCK, extra, env) as srv:
        yield srv


@pytest.fixture(scope="module")
def reference():
    engine = TriModeEngine.from_pretrained(default_model_path(), device="cpu", dtype=torch.float32)
    ps = prompts()
    outs = engine.generate(ps, mode="ar", max_new_tokens=MAX_NEW_TOKENS, stop_token_ids=[])
    return ps, [list(o.token_ids) for o in outs]


def _body(input_ids, modes, rids) -> dict:
    sps = []
    for mode in modes:
        sp = {"temperature": 0.0, "max_new_tokens": MAX_NEW_TOKENS, "ignore_eos": True}
        if mode is not None:
            sp["custom_params"] = {"trimode_mode": mode}
        sps.append(sp)
    return {"input_ids": input_ids, "sampling_params": sps, "rid": rids}


def _modes_logged(log_path, rids, timeout_s: float = 30.0) -> dict[str, tuple[int, list[str]]]:
    """rid -> (switches, [mode/block per run]) from the worker's log lines."""
    deadline = time.monotonic() + timeout_s
    while True:
        found = {}
        for line in log_path.read_text(errors="replace").splitlines():
            m = LOG_LINE.search(line)
            if m and m.group(1) in rids:
                runs = [r.rsplit(" x", 1)[0] for r in m.group(3).split(" > ")]
                found[m.group(1)] = (int(m.group(2)), runs)
        if set(found) == set(rids) or time.monotonic() > deadline:
            return found
        time.sleep(0.5)


def _collapse(modes) -> list[str]:
    """Consecutive repeats merged: ["ar", "ar", "q", "q", "ar"] -> ["ar", "q", "ar"]."""
    return [m for k, m in enumerate(modes) if k == 0 or modes[k - 1] != m]


def check_step_modes(meta: dict, logged_runs: list[str]) -> list[str]:
    """`meta_info["trimode_step_modes"]` of an auto request: one served mode per verify/commit
    step, aligned with `trimode_accept_lengths` (an AR step emits exactly one token), and the
    same sequence of modes as the worker's own log line for the request (its forwards, mode/block
    per run); returns the step modes."""
    modes, lengths = meta["trimode_step_modes"], meta["trimode_accept_lengths"]
    assert meta["trimode_mode"] == "auto"
    assert len(modes) == len(lengths) and modes, meta
    assert set(modes) <= {"ar", "self_spec_linear", "self_spec_quadratic"}, modes
    assert all(n == 1 for m, n in zip(modes, lengths, strict=True) if m == "ar"), meta
    assert _collapse(modes) == _collapse([r.split("/")[0] for r in logged_runs]), (
        modes,
        logged_runs,
    )
    return modes


def test_auto_batch_changes_modes_mid_request_and_equals_ar(server, reference):
    ps, ar = reference
    rids = [f"auto-{i}" for i in range(len(ps))]
    # server default (auto) for two requests, an explicit per-request "auto" for the others
    out = post_ok(server["base"] + "/generate", _body(ps, [None, "auto", None, "auto"], rids))
    assert [o["output_ids"] for o in out] == ar
    logged = _modes_logged(server["log"], rids)
    assert set(logged) == set(rids), f"no auto log line for {set(rids) - set(logged)}"
    for rid, (switches, runs) in logged.items():
        assert switches == len(runs) - 1 >= 2, (rid, runs)
        assert "ar" in runs, (rid, runs)  # the capped forwards
        assert any(r.startswith("self_spec_") for r in runs), (rid, runs)  # the policy's own
    drafted = []  # accept lengths of every drafting step of every request
    for rid, o in zip(rids, out, strict=True):
        modes = check_step_modes(o["meta_info"], logged[rid][1])
        assert len(_collapse(modes)) >= 3, modes  # the modes changed mid-request
        lengths = o["meta_info"]["trimode_accept_lengths"]
        drafted += [n for m, n in zip(modes, lengths, strict=True) if m != "ar"]
    # drafting steps accepted more than one token somewhere in the batch (per request it depends
    # on the model: one request's few drafting steps may all be rejected)
    assert any(n > 1 for n in drafted), drafted


def test_auto_mixed_with_fixed_modes_in_one_batch_equals_ar(server, reference):
    ps, ar = reference
    rids = ["mix-0", "mix-1", "mix-2", "mix-3"]
    modes = ["self_spec_quadratic", "auto", "ar", "self_spec_linear"]
    out = post_ok(server["base"] + "/generate", _body(ps, modes, rids))
    assert [o["output_ids"] for o in out] == ar
    logged = _modes_logged(server["log"], ["mix-1"])
    assert logged["mix-1"][0] >= 2, logged
    check_step_modes(out[1]["meta_info"], logged["mix-1"][1])
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
