"""A TRIMODE server (block size 4) on request input and sampling parameters, against SGLang itself.

The oracle is a plain SGLang AR server (no TRIMODE) on the same default model, started first and
shut down before the TRIMODE server starts (two CPU schedulers would starve each other on 2
cores): the same greedy requests under `logit_bias`, `min_new_tokens` and both at once must give
exactly its tokens and text in `ar`, `self_spec_linear`, `self_spec_quadratic` and `auto`;
`diffusion` honours them (bias observable, minimum length reached). Also: prompt token ids outside
the vocabulary are a clear 400 and the server keeps serving. Skipped without sglang.
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
    check_bad_token_ids,
    kv_pool_problems,
    post_ok,
    prompts,
    start_server,
    trimode_server,
)

from sglang_trimode import TriModeEngine, default_model_path  # noqa: E402
from sglang_trimode.scheduler.cost import CostModel  # noqa: E402

BLOCK, MAX_NEW_TOKENS, MIN_NEW = 4, 16, 10
EXACT_MODES = ("ar", "self_spec_linear", "self_spec_quadratic", "auto")


@pytest.fixture(scope="module")
def engine():
    return TriModeEngine.from_pretrained(default_model_path(), device="cpu", dtype=torch.float32)


@pytest.fixture(scope="module")
def cases(engine) -> dict[str, list[dict]]:
    """Per case, one greedy `sampling_params` per prompt, built from the greedy AR output."""
    ps = prompts()
    free = [o.token_ids for o in engine.generate(ps, mode="ar", max_new_tokens=MAX_NEW_TOKENS)]
    base = {"temperature": 0.0, "max_new_tokens": MAX_NEW_TOKENS}
    out: dict[str, list[dict]] = {"free": [base] * len(ps), "min_p": [base | {"min_p": 0.3}] * 4}
    # forbid two tokens greedy AR would emit, favour another
    out["logit_bias"] = [
        base | {"logit_bias": {str(f[1]): -100.0, str(f[4]): -100.0, "9": 2.0}} for f in free
    ]
    # the third token stops the request, unless held back until MIN_NEW tokens are out
    out["min_new_tokens"] = [
        base | {"stop_token_ids": [f[2]], "min_new_tokens": MIN_NEW} for f in free
    ]
    # x until the stop token may come, then the stop token: drafts are accepted across MIN_NEW
    out["both"] = [
        base
        | {
            "stop_token_ids": [f[2]],
            "min_new_tokens": MIN_NEW,
            "logit_bias": {str(9 if f[2] != 9 else 10): 100.0, str(f[2]): 200.0},
        }
        for f in free
    ]
    return out


def _generate(server: dict, cases: dict, name: str, mode: str | None = None) -> list[dict]:
    sps = cases[name]
    if mode is not None:
        sps = [sp | {"custom_params": {"trimode_mode": mode}} for sp in sps]
    return post_ok(server["base"] + "/generate", {"input_ids": prompts(), "sampling_params": sps})


@pytest.fixture(scope="module")
def oracle(tmp_path_factory, cases) -> dict[str, list[tuple[list[int], str]]]:
    """Each case's (output ids, text) per prompt from a plain SGLang AR server."""
    with start_server(tmp_path_factory.mktemp("sglang_plain_oracle"), []) as plain:
        got = {
            name: [(o["output_ids"], o["text"]) for o in _generate(plain, cases, name)]
            for name in cases
        }
    return got


@pytest.fixture(scope="module")
def server(tmp_path_factory, oracle):
    cost = tmp_path_factory.mktemp("sampling_cost") / "cost.json"
    CostModel(fixed_s=0.01, per_token_s=1e-4, source="test: fixed cost dominates").save(cost)
    extra = ["--trimode-cost-file", str(cost)]
    with trimode_server(tmp_path_factory, "sglang_trimode_sampling", BLOCK, extra) as srv:
        yield srv


def test_the_oracle_shows_each_field_at_work(oracle, cases):
    free = [ids for ids, _ in oracle["free"]]
    assert [ids for ids, _ in oracle["logit_bias"]] != free
    for (ids, _), f in zip(oracle["logit_bias"], free, strict=True):
        assert f[1] not in ids and f[4] not in ids
    for (ids, _), f in zip(oracle["min_new_tokens"], free, strict=True):
        assert len(ids) >= MIN_NEW and f[2] not in ids[:MIN_NEW]
    for (ids, _), sp in zip(oracle["both"], cases["both"], strict=True):
        x, stop = (int(t) for t in sp["logit_bias"])
        assert ids == [x] * MIN_NEW + [stop]


@pytest.mark.parametrize("name", ["logit_bias", "min_new_tokens", "both", "min_p"])
@pytest.mark.parametrize("mode", EXACT_MODES)
def test_greedy_equals_the_plain_ar_server(server, oracle, cases, mode, name):
    out = _generate(server, cases, name, mode)
    assert [(o["output_ids"], o["text"]) for o in out] == oracle[name]
    if mode != "ar" and name == "both":  # drafts were accepted across min_new_tokens
        assert any(max(o["meta_info"]["trimode_accept_lengths"]) > 1 for o in out)


def test_diffusion_honours_them(server, oracle, cases):
    free = [o["output_ids"] for o in _generate(server, cases, "free", "diffusion")]
    biased = [o["output_ids"] for o in _generate(server, cases, "logit_bias", "diffusion")]
    assert biased != free
    for ids, sp in zip(biased, cases["logit_bias"], strict=True):
        banned = [int(t) for t, v in sp["logit_bias"].items() if v < 0]
        assert not set(banned) & set(ids)
    held = _generate(server, cases, "min_new_tokens", "diffusion")
    for o, sp in zip(held, cases["min_new_tokens"], strict=True):
        assert len(o["output_ids"]) >= MIN_NEW
        assert sp["stop_token_ids"][0] not in o["output_ids"][:MIN_NEW]
    both = _generate(server, cases, "both", "diffusion")
    assert [o["output_ids"] for o in both] == [ids for ids, _ in oracle["both"]]


def test_openai_completions_logit_bias_and_min_tokens(server, oracle, cases):
    log_start = server["log"].stat().st_size
    for mode in ("self_spec_quadratic", "auto"):
        for i, sp in enumerate(cases["both"]):
            body = {
                "model": "default", "prompt": prompts()[i], "max_tokens": MAX_NEW_TOKENS,
                "temperature": 0.0, "logit_bias": sp["logit_bias"], "min_tokens": MIN_NEW,
                "stop_token_ids": sp["stop_token_ids"], "return_token_ids": True,
                "custom_params": {"trimode_mode": mode},
            }  # fmt: skip
            (choice,) = post_ok(server["base"] + "/v1/completions", body)["choices"]
            assert (choice["token_ids"], choice["text"]) == oracle["both"][i]
    assert kv_pool_problems(server, log_start) == []


@pytest.mark.parametrize("mode", ["self_spec_quadratic", "diffusion"])
def test_prompt_token_ids_outside_the_vocabulary_are_a_clear_400(server, engine, mode):
    ps = prompts()
    (want,) = engine.generate(
        [ps[0]], mode=mode, block_size=BLOCK, max_new_tokens=MAX_NEW_TOKENS, stop_token_ids=[]
    )
    sp = {"temperature": 0.0, "max_new_tokens": MAX_NEW_TOKENS, "ignore_eos": True}
    sp["custom_params"] = {"trimode_mode": mode}
    check_bad_token_ids(server, ps[0], list(want.token_ids), sp)
