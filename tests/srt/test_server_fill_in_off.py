"""`--trimode-fill-in off` through a real CPU server: the control of
`test_server_trimode.py::test_fill_in_runs_one_forward_cycles_while_others_are_mid_cycle`.

The same ragged batch of four modes (ar, diffusion, quadratic, linear; block 4): without fill-in
every request runs exactly one cycle per SGLang step (`spec_verify_ct` == its cycles, the ar and
quadratic requests included), and the tokens and stats are the same as with it (the reference
engine's). This server also serves a copy of the default model with a seeded random draft-only
adapter (`drafter_lora/`): the worker applies it to the drafting rows exactly as the reference
engine does (same tokens and stats), and it matters (the reference without it decodes other
diffusion tokens). Its quadratic requests run with `--trimode-bonus-candidates 2
--trimode-bonus-lengths 2` (two guessing mask groups for acceptance lengths 0 and 1): same tokens
and stats as the reference engine with `bonus_candidates=2, bonus_lengths=2`, and those stats
differ from plain quadratic's. Skipped without sglang.
"""

from __future__ import annotations

import pytest

pytest.importorskip(
    "sglang", reason="sglang is not installed (bash scripts/setup_sglang.sh installs it for CPU)"
)

import shutil  # noqa: E402

import torch  # noqa: E402
from _srt_server import FILL_IN_MODES, post_ok, prompts, trimode_server  # noqa: E402

from sglang_trimode import TriModeEngine, default_model_path  # noqa: E402
from sglang_trimode.reference.drafter import DRAFTER_DIR, DrafterConfig, DrafterLoRA  # noqa: E402

BLOCK = 4
MAX_NEW_TOKENS = 24
BONUS = 2
LENGTHS = 2


@pytest.fixture(scope="module")
def drafted(tmp_path_factory):
    """The default model with a seeded random drafter adapter (any shipped one replaced)."""
    path = tmp_path_factory.mktemp("drafted") / "model"
    shutil.copytree(default_model_path(), path)
    shutil.rmtree(path / DRAFTER_DIR, ignore_errors=True)
    model = TriModeEngine.from_pretrained(path, drafter=False).model
    lora = DrafterLoRA.for_model(model, DrafterConfig(8, 16.0))
    with torch.no_grad():  # both factors seeded: lora_A's own init draws from the global RNG
        gen = torch.Generator().manual_seed(0)
        a_std = lora.lora_A.shape[-1] ** -0.5
        lora.lora_A.copy_(torch.randn(lora.lora_A.shape, generator=gen) * a_std)
        lora.lora_B.copy_(torch.randn(lora.lora_B.shape, generator=gen) * 0.2)
    lora.save(path)
    return path


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
    diffusion = FILL_IN_MODES.index("diffusion")
    assert want[diffusion].token_ids != without[diffusion].token_ids  # the adapter matters
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
