"""A TRIMODE server (block size 4) on request input and sampling parameters, against SGLang itself.

The oracle is a plain SGLang AR server (no TRIMODE, `--disable-overlap-schedule` like a TRIMODE
server) on the same default model, started first and
shut down before the TRIMODE server starts (two CPU schedulers would starve each other on 2
cores): the same greedy requests under `logit_bias`, `min_new_tokens`, both at once, `min_p`,
each penalty and frequency + presence must give exactly its tokens and text in `ar`,
`self_spec_linear`, `self_spec_quadratic` and `auto` (also through `/v1/completions`, with
`return_logprob` and with `n = 2`); `diffusion` honours them (bias observable, minimum length
reached, fewer repeats). Also: prompt token ids outside the vocabulary are a clear 400 and the
server keeps serving. Skipped without sglang.
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
    fixed_cost_file,
    kv_pool_problems,
    post_ok,
    prompts,
    start_server,
    trimode_server,
)

from sglang_trimode import TriModeEngine, default_model_path  # noqa: E402

BLOCK, MAX_NEW_TOKENS, MIN_NEW = 4, 16, 10
EXACT_MODES = ("ar", "self_spec_linear", "self_spec_quadratic", "auto")
#: SGLang's penalties, one case each and the two additive ones at once. Not repetition with
#: another: a plain server without overlap applies its penalizers in the iteration order of a
#: Python set of classes, which changes from process to process (the overlap scheduler's order,
#: additive then scaling, is ours: `tests/test_penalties.py` against SGLang's orchestrator)
PENALTIES = {
    "frequency_penalty": {"frequency_penalty": 1.0},
    "presence_penalty": {"presence_penalty": 1.5},
    "repetition_penalty": {"repetition_penalty": 1.5},
    "additive_pair": {"frequency_penalty": 0.5, "presence_penalty": 0.25},
}
STRONG = {"frequency_penalty": 2.0, "presence_penalty": 2.0, "repetition_penalty": 2.0}


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
    out |= {name: [base | pen] * len(ps) for name, pen in PENALTIES.items()}
    return out


def _generate(server: dict, cases: dict, name: str, mode: str | None = None) -> list[dict]:
    sps = cases[name]
    if mode is not None:
        sps = [sp | {"custom_params": {"trimode_mode": mode}} for sp in sps]
    return post_ok(server["base"] + "/generate", {"input_ids": prompts(), "sampling_params": sps})


def _logprobs(server: dict, cases: dict, mode: str | None = None, n: int = 1) -> list[dict]:
    """A penalised greedy batch with logprobs (top 2), `n` samples per prompt."""
    sps = [sp | {"n": n} for sp in cases["additive_pair"]]
    if mode is not None:
        sps = [sp | {"custom_params": {"trimode_mode": mode}} for sp in sps]
    body = {"input_ids": prompts(), "sampling_params": sps, "return_logprob": True}
    return post_ok(server["base"] + "/generate", body | {"top_logprobs_num": 2})


def _logprob_view(out: list[dict]) -> list[tuple]:
    """Per output: ids, text, each token's (logprob, id) and top-2 ids."""
    view = []
    for o in out:
        meta = o["meta_info"]
        lps = [(lp, t) for lp, t, _ in meta["output_token_logprobs"]]
        tops = [[t for _, t, _ in top] for top in meta["output_top_logprobs"]]
        view.append((o["output_ids"], o["text"], lps, tops))
    return view


def _check_same(got: list[tuple], want: list[tuple]) -> None:
    """Two `_logprob_view`s: the same ids, text, top-2 ids; logprobs within 1e-4."""
    assert len(got) == len(want)
    for ours, theirs in zip(got, want, strict=True):
        assert ours[0] == theirs[0] and ours[1] == theirs[1] and ours[3] == theirs[3]
        assert [t for _, t in ours[2]] == [t for _, t in theirs[2]]
        lps = [torch.tensor([lp for lp, _ in v[2]]) for v in (ours, theirs)]
        torch.testing.assert_close(lps[0], lps[1], atol=1e-4, rtol=0)


@pytest.fixture(scope="module")
def oracle(tmp_path_factory, cases) -> dict[str, list]:
    """Each case's (output ids, text) per prompt from a plain SGLang AR server; under
    "logprobs" / "n2" a penalised batch with logprobs, once and with n = 2."""
    # overlap off, as on every TRIMODE server: SGLang's overlap scheduler counts each output
    # token for the penalties one step late (its penalizer reads `req.output_ids` before the last
    # step's result is in), which the exact per-position counts are not
    args = ["--disable-overlap-schedule"]
    with start_server(tmp_path_factory.mktemp("sglang_plain_oracle"), args) as plain:
        got = {
            name: [(o["output_ids"], o["text"]) for o in _generate(plain, cases, name)]
            for name in cases
        }
        got["logprobs"] = _logprob_view(_logprobs(plain, cases))
        got["n2"] = _logprob_view(_logprobs(plain, cases, n=2))
    return got


@pytest.fixture(scope="module")
def server(tmp_path_factory, oracle):
    cost = fixed_cost_file(tmp_path_factory, "sampling_cost")
    extra = ["--trimode-cost-file", str(cost)]
    with trimode_server(tmp_path_factory, "sglang_trimode_sampling", BLOCK, extra) as srv:
        yield srv


def test_the_oracle_shows_each_field_at_work(oracle, cases, engine):
    free = [ids for ids, _ in oracle["free"]]
    for name, pen in PENALTIES.items():  # each penalty changes greedy AR; our reference agrees
        assert [ids for ids, _ in oracle[name]] != free, name
        ours = engine.generate(prompts(), mode="ar", max_new_tokens=MAX_NEW_TOKENS, **pen)
        assert [o.token_ids for o in ours] == [ids for ids, _ in oracle[name]], name
    assert [ids for ids, _ in oracle["logit_bias"]] != free
    for (ids, _), f in zip(oracle["logit_bias"], free, strict=True):
        assert f[1] not in ids and f[4] not in ids
    for (ids, _), f in zip(oracle["min_new_tokens"], free, strict=True):
        assert len(ids) >= MIN_NEW and f[2] not in ids[:MIN_NEW]
    for (ids, _), sp in zip(oracle["both"], cases["both"], strict=True):
        x, stop = (int(t) for t in sp["logit_bias"])
        assert ids == [x] * MIN_NEW + [stop]


@pytest.mark.parametrize("name", ["logit_bias", "min_new_tokens", "both", "min_p", *PENALTIES])
@pytest.mark.parametrize("mode", EXACT_MODES)
def test_greedy_equals_the_plain_ar_server(server, oracle, cases, mode, name):
    out = _generate(server, cases, name, mode)
    assert [(o["output_ids"], o["text"]) for o in out] == oracle[name]
    if mode != "ar" and name == "both":  # drafts were accepted across min_new_tokens
        assert any(max(o["meta_info"]["trimode_accept_lengths"]) > 1 for o in out)
    if mode.startswith("self_spec") and name in PENALTIES:  # verify rows counted drafts
        assert any(max(o["meta_info"]["trimode_accept_lengths"]) > 1 for o in out)


@pytest.mark.parametrize("mode", EXACT_MODES)
def test_logprobs_and_n_under_penalties_equal_the_plain_ar_server(server, oracle, cases, mode):
    """`return_logprob` (token and top-2 logprobs of the penalised rows) and `n = 2` (SGLang
    runs each copy as its own request) under frequency + presence penalties."""
    log_start = server["log"].stat().st_size
    for n, key in ((1, "logprobs"), (2, "n2")):
        got = _logprob_view(_logprobs(server, cases, mode, n))
        assert len(got) == len(oracle[key]) == n * len(prompts())
        _check_same(got, oracle[key])
    assert kv_pool_problems(server, log_start) == []


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
    # the penalties: a draft row counts the decided tokens before its position, so strong
    # penalties leave fewer repeats
    strong = cases | {"strong": [sp | STRONG for sp in cases["free"]]}
    strong = [o["output_ids"] for o in _generate(server, strong, "strong", "diffusion")]
    assert strong != free
    assert sum(len(t) - len(set(t)) for t in strong) < sum(len(t) - len(set(t)) for t in free)


def test_n_in_diffusion_and_sampled_self_spec(server, cases):
    """`n = 2` in diffusion (greedy, penalised): each copy is the single request's answer,
    logprobs too; `n = 4` sampled in quadratic self-speculation: four answers of their own."""
    log_start = server["log"].stat().st_size
    one = _logprob_view(_logprobs(server, cases, "diffusion"))
    two = _logprob_view(_logprobs(server, cases, "diffusion", n=2))
    _check_same(two, [v for v in one for _ in range(2)])
    sp = {"temperature": 1.0, "max_new_tokens": MAX_NEW_TOKENS, "n": 4, "ignore_eos": True}
    sp |= {"custom_params": {"trimode_mode": "self_spec_quadratic"}} | PENALTIES["additive_pair"]
    outs = post_ok(server["base"] + "/generate", {"input_ids": prompts()[0], "sampling_params": sp})
    assert len(outs) == 4 and all(len(o["output_ids"]) == MAX_NEW_TOKENS for o in outs)
    assert len({tuple(o["output_ids"]) for o in outs}) > 1
    assert kv_pool_problems(server, log_start) == []


def test_openai_completions_logit_bias_min_tokens_and_penalties(server, oracle, cases):
    log_start = server["log"].stat().st_size
    for mode in ("self_spec_linear", "auto"):
        for i, prompt in enumerate(prompts()):
            body = {
                "model": "default", "prompt": prompt, "max_tokens": MAX_NEW_TOKENS,
                "temperature": 0.0, "return_token_ids": True,
                "custom_params": {"trimode_mode": mode},
            } | PENALTIES["additive_pair"]  # fmt: skip
            (choice,) = post_ok(server["base"] + "/v1/completions", body)["choices"]
            assert (choice["token_ids"], choice["text"]) == oracle["additive_pair"][i]
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
