"""`--trimode-fill-in off` through a real CPU server: the control of
`test_server_trimode.py::test_fill_in_runs_one_forward_cycles_while_others_are_mid_cycle`.

The same ragged batch of four modes (ar, diffusion, quadratic, linear; block 4): without fill-in
every request runs exactly one cycle per SGLang step (`spec_verify_ct` == its cycles, the ar and
quadratic requests included), and the tokens and stats are the same as with it (the reference
engine's). This server also serves a copy of the default model with a seeded random draft-only
adapter written by the `peft` library in the vendor's layout (`linear_spec_lora/`, o_proj, r 8,
alpha 32): the worker applies it to the self-speculation drafting rows exactly as the reference
engine does (same tokens and stats: greedy self-speculation = greedy AR), it matters (the
reference without it accepts other draft lengths) and diffusion blocks keep the base model
(the default `--trimode-drafter-rows self_spec`). Its quadratic requests run with
`--trimode-bonus-candidates 2 --trimode-bonus-lengths 2` (two guessing mask groups for
acceptance lengths 0 and 1): same tokens and stats as the reference engine with
`bonus_candidates=2, bonus_lengths=2`, and those stats
differ from plain quadratic's. Skipped without sglang.
"""

from __future__ import annotations

import pytest
from _deps import require

require(
    "sglang", reason="sglang is not installed (bash scripts/setup_sglang.sh installs it for CPU)"
)

pytestmark = pytest.mark.server  # a real SGLang server (or engine) on the CPU: minutes

require("peft", reason="peft writes the adapter (requirements/test.txt)")

import sys  # noqa: E402
from pathlib import Path  # noqa: E402

import torch  # noqa: E402
from _srt_server import FILL_IN_MODES, post_ok, prompts, trimode_server  # noqa: E402

from sglang_trimode import TriModeEngine  # noqa: E402

sys.path.insert(0, str(Path(__file__).parents[1]))
from vendor_adapter import drafted_default_model  # noqa: E402

BLOCK = 4
MAX_NEW_TOKENS = 24
BONUS = 2
LENGTHS = 2
DRAFTER_B_STD = 0.1  # x scale 4: a random adapter that drafts other tokens, not garbage


@pytest.fixture(scope="module")
def drafted(tmp_path_factory):
    """The default model with a seeded random PEFT adapter (any shipped one replaced)."""
    return drafted_default_model(tmp_path_factory.mktemp("drafted") / "model", DRAFTER_B_STD)


@pytest.fixture(scope="module")
def server(tmp_path_factory, drafted):
    extra = ("--trimode-fill-in", "off", "--model-path", str(drafted))
    extra += ("--trimode-bonus-candidates", str(BONUS), "--trimode-bonus-lengths", str(LENGTHS))
    with trimode_server(tmp_path_factory, "sglang_trimode_fill_in_off", BLOCK, extra) as srv:
        yield srv


def _reference(path, drafter: bool, bonus: int = BONUS):
    engine = TriModeEngine.from_pretrained(path, dtype=torch.float32, drafter=drafter)
    kw = dict(block_size=BLOCK, max_new_tokens=MAX_NEW_TOKENS, stop_token_ids=[])
    kw["bonus_candidates"] = bonus
    kw["bonus_lengths"] = LENGTHS if bonus else 0
    return [
        engine.generate([p], mode=mode, **kw)[0]
        for p, mode in zip(prompts(), FILL_IN_MODES, strict=True)
    ]


def test_without_fill_in_every_request_runs_one_cycle_per_step(server, drafted):
    ps = prompts()
    want = _reference(drafted, drafter=True)
    without = _reference(drafted, drafter=False)
    diffusion, linear = FILL_IN_MODES.index("diffusion"), FILL_IN_MODES.index("self_spec_linear")
    assert want[linear].stats.accept_lengths != without[linear].stats.accept_lengths  # it matters
    assert want[diffusion].token_ids == without[diffusion].token_ids  # not on diffusion blocks
    engine = TriModeEngine.from_pretrained(drafted, dtype=torch.float32, drafter=False)
    kw = dict(max_new_tokens=MAX_NEW_TOKENS, stop_token_ids=[])
    for mode in ("self_spec_linear", "self_spec_quadratic"):  # greedy self-spec = greedy AR
        i = FILL_IN_MODES.index(mode)
        ar = engine.generate([ps[i]], mode="ar", **kw)[0]
        assert want[i].token_ids == ar.token_ids, mode
    quad = FILL_IN_MODES.index("self_spec_quadratic")
    plain = _reference(drafted, drafter=True, bonus=0)[quad]
    assert plain.stats.accept_lengths != want[quad].stats.accept_lengths  # the guesses matter
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
    assert f"drafter=on bonus_candidates={BONUS} bonus_lengths={LENGTHS}" in log
    assert log.count(f"TRIMODE: drafter adapter {drafted}/") == 1
