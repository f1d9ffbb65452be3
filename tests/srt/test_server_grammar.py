"""Structured output (`json_schema`, `regex`, `ebnf`, `structural_tag`; OpenAI
`response_format`) on a TRIMODE server (block size 4), against SGLang itself.

The oracle is a plain SGLang AR server (no TRIMODE) on the same default model, started first and
shut down before the TRIMODE server starts (two CPU schedulers would starve each other on 2
cores). Greedy under each grammar, `ar`, `self_spec_linear`, `self_spec_quadratic` and `auto`
must give exactly its tokens and text; `diffusion` gives tokens the grammar accepts in order (and
ends the grammar when it stops). A ragged batch mixing constrained and free requests of every
mode equals each request served alone, and every KV slot is free afterwards. Skipped without
sglang.
"""

from __future__ import annotations

import json

import pytest
from _deps import require

require("sglang", "sglang is not installed (bash scripts/setup_sglang.sh installs it for CPU)")

from _srt_server import (  # noqa: E402
    fixed_cost_file,
    kv_pool_problems,
    post_ok,
    prompts,
    start_server,
    trimode_server,
)

from sglang_trimode import default_model_path  # noqa: E402

pytestmark = pytest.mark.server  # a real SGLang server (or engine) on the CPU: minutes

BLOCK, MAX_NEW_TOKENS = 4, 40
EXACT_MODES = ("ar", "self_spec_linear", "self_spec_quadratic", "auto")
MODES = (*EXACT_MODES, "diffusion")
SCHEMA = {
    "type": "object",
    "properties": {"name": {"type": "string", "maxLength": 8}, "ok": {"type": "boolean"}},
    "required": ["name", "ok"],
}
GRAMMARS = {
    "json_schema": json.dumps(SCHEMA),
    "regex": r"(yes|no), [a-z]+ [0-9]{2}",
    "ebnf": 'root ::= "The answer is " ("yes" | "no") ", " [a-z]+ "."',
}

#: SGLang's legacy structural tag: free text until the trigger, then `begin`, the schema, `end`
STRUCTURAL_TAG = json.dumps(
    {
        "structures": [{"begin": "(", "schema": {"type": "integer"}, "end": ")"}],
        "triggers": ["("],
    }
)


def _params(grammar: str | None, mode: str | None = None) -> dict:
    sp = {"temperature": 0.0, "max_new_tokens": MAX_NEW_TOKENS}
    if grammar == "structural_tag":
        sp[grammar] = STRUCTURAL_TAG
    elif grammar is not None:
        sp[grammar] = GRAMMARS[grammar]
    if mode is not None:
        sp["custom_params"] = {"trimode_mode": mode}
    return sp


def _generate(server: dict, grammar: str | None, mode: str | None = None) -> list[tuple]:
    body = {"input_ids": prompts(), "sampling_params": _params(grammar, mode)}
    out = post_ok(server["base"] + "/generate", body)
    return [(o["output_ids"], o["text"]) for o in out]


def _oai(server: dict, prompt: list[int], mode: str | None = None) -> tuple[list[int], str]:
    body = {
        "model": "default", "prompt": prompt, "max_tokens": MAX_NEW_TOKENS, "temperature": 0.0,
        "return_token_ids": True,
        "response_format": {"type": "json_schema", "json_schema": {"name": "r", "schema": SCHEMA}},
    }  # fmt: skip
    if mode is not None:
        body["custom_params"] = {"trimode_mode": mode}
    (choice,) = post_ok(server["base"] + "/v1/completions", body)["choices"]
    return choice["token_ids"], choice["text"]


@pytest.fixture(scope="module")
def oracle(tmp_path_factory) -> dict:
    """Per grammar (and None: free), (output ids, text) per prompt from a plain SGLang AR server;
    "openai": the `response_format` completion of the first prompt."""
    with start_server(tmp_path_factory.mktemp("sglang_plain_grammar"), []) as plain:
        got = {g: _generate(plain, g) for g in (None, *GRAMMARS, "structural_tag")}
        got["openai"] = _oai(plain, prompts()[0])
    return got


@pytest.fixture(scope="module")
def server(tmp_path_factory, oracle):
    cost = fixed_cost_file(tmp_path_factory, "grammar_cost")
    extra = ["--trimode-cost-file", str(cost)]
    with trimode_server(tmp_path_factory, "sglang_trimode_grammar", BLOCK, extra) as srv:
        yield srv


@pytest.fixture(scope="module")
def matchers():
    """A fresh matcher per grammar, compiled as SGLang compiles it (checks diffusion's output)."""
    from transformers import AutoTokenizer

    from sglang_trimode.reference.grammar import matcher_factory

    tok = AutoTokenizer.from_pretrained(default_model_path())
    return {g: matcher_factory(tok, 2048, [tok.eos_token_id], g, t) for g, t in GRAMMARS.items()}


def _follows(new_matcher, ids: list[int]) -> bool:
    """Whether the grammar accepts `ids` in order; when they end it, that they stop there."""
    m = new_matcher()
    for k, t in enumerate(ids):
        if not m.accept_token(t):
            return False
        if m.is_terminated():
            return k == len(ids) - 1
    return True


def test_the_oracle_follows_each_grammar(oracle, matchers):
    assert oracle["structural_tag"] != oracle[None]  # the trigger "(" comes: its integer follows
    for g, new_matcher in matchers.items():
        assert oracle[g] != oracle[None]
        for ids, _ in oracle[g]:
            assert _follows(new_matcher, ids), (g, ids)
    for _, text in oracle["json_schema"]:
        if text.endswith("}"):
            assert set(json.loads(text)) == {"name", "ok"}


@pytest.mark.parametrize("grammar", [*GRAMMARS, "structural_tag"])
@pytest.mark.parametrize("mode", EXACT_MODES)
def test_greedy_equals_the_plain_ar_server(server, oracle, mode, grammar):
    out = _generate(server, grammar, mode)
    assert out == oracle[grammar]


@pytest.mark.parametrize("grammar", list(GRAMMARS))
def test_diffusion_commits_only_what_the_grammar_accepts(server, matchers, grammar):
    for ids, _ in _generate(server, grammar, "diffusion"):
        assert _follows(matchers[grammar], ids), ids


@pytest.mark.parametrize("mode", ["self_spec_quadratic", "auto"])
def test_openai_response_format(server, oracle, mode):
    assert _oai(server, prompts()[0], mode) == oracle["openai"]


def test_a_ragged_batch_of_constrained_and_free_requests_equals_each_alone(server, oracle):
    """Every prompt x mode x (free, each grammar) in one batch = the same request alone; the
    exact modes also = the oracle. No KV slot is held afterwards."""
    log_start = server["log"].stat().st_size
    ps = prompts()
    kinds = [None, *GRAMMARS]
    cases = [
        (i, m, kinds[(i + k) % len(kinds)]) for i in range(len(ps)) for k, m in enumerate(MODES)
    ]
    body = {
        "input_ids": [ps[i] for i, _, _ in cases],
        "sampling_params": [_params(g, m) for _, m, g in cases],
    }
    together = [o["output_ids"] for o in post_ok(server["base"] + "/generate", body)]
    for (i, m, g), ids in zip(cases, together, strict=True):
        alone = post_ok(
            server["base"] + "/generate", {"input_ids": ps[i], "sampling_params": _params(g, m)}
        )
        assert ids == alone["output_ids"], (i, m, g)
        if m in EXACT_MODES:
            assert ids == oracle[g][i][0], (i, m, g)
    assert kv_pool_problems(server, log_start) == []
