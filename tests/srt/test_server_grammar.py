"""Structured output (`json_schema`, `regex`, `ebnf`, `structural_tag`; OpenAI
`response_format`) on a TRIMODE server (block size 4), against SGLang itself.

The oracle is a plain SGLang AR server (no TRIMODE) on the same default model, started first and
shut down before the TRIMODE server starts (two CPU schedulers would starve each other on 2
cores). Greedy under each grammar, `ar`, `self_spec_linear`, `self_spec_quadratic` and `auto`
must give exactly its tokens and text; `diffusion` gives tokens the grammar accepts in order (and
ends the grammar when it stops). A ragged batch mixing constrained and free requests of every
mode equals each request served alone, and every KV slot is free afterwards.

Through `/v1/chat/completions`: `response_format` json_object (self_spec_quadratic, auto) and
json_schema streamed (SSE) and not (self_spec_linear) give the plain server's answer, a JSON
value. A grammar that does not compile (invalid JSON schema, invalid regex, a schema xgrammar
cannot convert) gets the plain server's HTTP 400 and message, and the server serves on. Long
constrained streams of every mode, three aborted by rid (`/abort_request`) mid-flight: the others
equal the oracle and afterwards every KV slot is free. Skipped without sglang.
"""

from __future__ import annotations

import json
import re
from concurrent.futures import ThreadPoolExecutor

import pytest
from _deps import require

require("sglang", "sglang is not installed (bash scripts/setup_sglang.sh installs it for CPU)")

from _srt_server import (  # noqa: E402
    fixed_cost_file,
    kv_pool_problems,
    open_stream,
    post_ok,
    prompts,
    request,
    sse_events,
    start_server,
    stream_events,
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


#: Grammars under which greedy runs on for hundreds of tokens on every prompt (in the plain
#: server and every TRIMODE mode: it never picks the EOS they allow): the aborted streams
LONG_GRAMMARS = {
    "json_schema": json.dumps({"type": "array", "items": {"type": "integer"}, "minItems": 2}),
    "regex": r"([0-9]+, )*[0-9]+",
}
LONG_NEW_TOKENS, ABORTED_NEW_TOKENS = 300, 800
#: (mode, grammar, prompt, aborted) of the long constrained streams: three aborted by rid after
#: their first event, two run to their end
LONG_STREAMS = (
    ("ar", "regex", 0, True),
    ("self_spec_quadratic", "json_schema", 2, True),
    ("diffusion", "regex", 3, True),
    ("self_spec_linear", "json_schema", 1, False),
    ("auto", "regex", 2, False),
)
#: Grammars that do not compile (each through the native API, with a TRIMODE mode)
BAD_GRAMMARS = {"json_schema": "{not json", "regex": "("}
#: A chat whose greedy answer under `response_format` ends (finish reason stop) within
#: MAX_NEW_TOKENS
CHAT = [{"role": "user", "content": "Reply with a JSON object about a user:\n"}]
RESPONSE_FORMATS = {
    "json_object": {"type": "json_object"},
    "json_schema": {"type": "json_schema", "json_schema": {"name": "r", "schema": SCHEMA}},
    "bad_schema": {"type": "json_schema", "json_schema": {"name": "r", "schema": {"type": "?"}}},
}


def _params(
    grammar: str | None,
    mode: str | None = None,
    max_new_tokens: int = MAX_NEW_TOKENS,
    grammars: dict[str, str] = GRAMMARS,
) -> dict:
    sp = {"temperature": 0.0, "max_new_tokens": max_new_tokens}
    if grammar == "structural_tag":
        sp[grammar] = STRUCTURAL_TAG
    elif grammar is not None:
        sp[grammar] = grammars[grammar]
    if mode is not None:
        sp["custom_params"] = {"trimode_mode": mode}
    return sp


def _generate(server: dict, grammar: str | None, mode: str | None = None, **kw) -> list[tuple]:
    """(output ids, text) per prompt of one batch; `kw`: `_params`' keywords."""
    body = {"input_ids": prompts(), "sampling_params": _params(grammar, mode, **kw)}
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


def _chat_body(response_format: str, mode: str | None) -> dict:
    body = {
        "model": "default", "messages": CHAT, "max_tokens": MAX_NEW_TOKENS, "temperature": 0.0,
        "response_format": RESPONSE_FORMATS[response_format],
    }  # fmt: skip
    if mode is not None:
        body["custom_params"] = {"trimode_mode": mode}
    return body


def _chat(server: dict, response_format: str, mode: str | None = None) -> dict:
    """`/v1/chat/completions` (not streamed) under `RESPONSE_FORMATS[response_format]`: the
    answer's content, token ids and finish reason."""
    body = _chat_body(response_format, mode) | {"return_token_ids": True}
    (choice,) = post_ok(server["base"] + "/v1/chat/completions", body)["choices"]
    ids, finish = choice["response_token_ids"], choice["finish_reason"]
    return {"content": choice["message"]["content"], "ids": ids, "finish": finish}


def _bad(server: dict, url: str, body: dict) -> tuple[int, str]:
    """(HTTP status, error message) of a request SGLang refuses; the clock time xgrammar writes
    into its messages ("[13:52:18] /project/cpp/...") taken out."""
    status, out = request(server["base"] + url, body)
    msg = out["error"]["message"] if "error" in out else out["message"]
    return status, re.sub(r"\[\d\d:\d\d:\d\d\] ", "", msg)


def _bad_requests(mode: str | None) -> dict[str, tuple[str, dict]]:
    """Per case, (url, body) of a request whose grammar does not compile."""
    p = prompts()[0]
    cases = {
        g: (
            "/generate",
            {"input_ids": p, "sampling_params": _params(g, mode, grammars=BAD_GRAMMARS)},
        )
        for g in BAD_GRAMMARS
    }
    cases["chat"] = ("/v1/chat/completions", _chat_body("bad_schema", mode))
    return cases


@pytest.fixture(scope="module")
def oracle(tmp_path_factory) -> dict:
    """Per grammar (and None: free), (output ids, text) per prompt from a plain SGLang AR server;
    "openai": the `response_format` completion of the first prompt; "long": per long grammar,
    (output ids, text) per prompt of LONG_NEW_TOKENS; "chat": per response format, `_chat`'s
    answer; "bad": per `_bad_requests` case, `_bad`'s (status, message)."""
    with start_server(tmp_path_factory.mktemp("sglang_plain_grammar"), []) as plain:
        got = {g: _generate(plain, g) for g in (None, *GRAMMARS, "structural_tag")}
        got["openai"] = _oai(plain, prompts()[0])
        got["long"] = {
            g: _generate(plain, g, max_new_tokens=LONG_NEW_TOKENS, grammars=LONG_GRAMMARS)
            for g in LONG_GRAMMARS
        }
        got["chat"] = {f: _chat(plain, f) for f in ("json_object", "json_schema")}
        got["bad"] = {k: _bad(plain, *case) for k, case in _bad_requests(None).items()}
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


@pytest.mark.parametrize("mode", ["self_spec_quadratic", "auto"])
def test_chat_json_object_equals_the_plain_server(server, oracle, mode):
    """`response_format: {"type": "json_object"}` through `/v1/chat/completions`: the plain
    server's tokens and content; the answer ends (stop) within MAX_NEW_TOKENS and is a JSON
    object."""
    got = _chat(server, "json_object", mode)
    assert got == oracle["chat"]["json_object"]
    assert got["finish"] == "stop"
    assert isinstance(json.loads(got["content"]), dict)


def test_streamed_chat_json_schema_equals_the_unstreamed_answer(server, oracle):
    """`response_format` json_schema through `/v1/chat/completions`, streamed (SSE) and not:
    the streamed deltas add up to the unstreamed content, which is the plain server's."""
    mode = "self_spec_linear"
    whole = _chat(server, "json_schema", mode)
    assert whole == oracle["chat"]["json_schema"]
    events = sse_events(
        server["base"] + "/v1/chat/completions", _chat_body("json_schema", mode) | {"stream": True}
    )
    deltas = [c["delta"] for e in events for c in e["choices"]]
    assert "".join(d.get("content") or "" for d in deltas) == whole["content"]
    finish = [c["finish_reason"] for e in events for c in e["choices"] if c["finish_reason"]]
    assert finish == [whole["finish"]]
    if whole["finish"] == "stop":
        assert set(json.loads(whole["content"])) == {"name", "ok"}


def test_a_grammar_that_does_not_compile_is_a_400_and_the_server_keeps_serving(server, oracle):
    """An invalid JSON schema and an invalid regex (native `/generate`) and a schema xgrammar
    cannot convert (`response_format` of `/v1/chat/completions`), with a TRIMODE mode: SGLang's
    HTTP 400 and message, as the plain server answers them, the first time (compiled) and again
    (SGLang's cache of grammars that failed); afterwards no KV slot is held and a free request
    gets the oracle's tokens."""
    log_start = server["log"].stat().st_size
    for case, (url, body) in _bad_requests("self_spec_quadratic").items():
        status, msg = oracle["bad"][case]
        assert status == 400 and "Failed to compile" in msg, (case, status, msg)
        for _ in range(2):
            assert _bad(server, url, body) == (status, msg), case
    assert kv_pool_problems(server, log_start) == []
    assert _generate(server, None, "self_spec_quadratic") == oracle[None]


def _last_event(resp) -> dict:
    """The last event of an open SSE response, read to its end (then closed)."""
    with resp:
        *_, last = stream_events(resp)
    return last


def test_constrained_streams_aborted_mid_flight_free_every_kv_slot(server, oracle):
    """Long grammar-constrained streams of every mode (`LONG_STREAMS`); three aborted by rid
    (`/abort_request`) once their first event arrived, two run to their end beside them. The
    aborted ones end with finish reason abort, fewer tokens than asked, and the worker logs them
    leaving the batch unfinished (exact modes: a prefix of the oracle's tokens); the others equal
    the oracle. Afterwards every KV slot is free and a constrained batch equals the oracle."""
    base, log_start = server["base"], server["log"].stat().st_size
    ps, streams = prompts(), {}
    for mode, g, i, aborted in LONG_STREAMS:
        n = ABORTED_NEW_TOKENS if aborted else LONG_NEW_TOKENS
        body = {"input_ids": ps[i], "sampling_params": _params(g, mode, n, LONG_GRAMMARS)}
        streams[f"grammar-{mode}"] = open_stream(
            base + "/generate", body | {"rid": f"grammar-{mode}"}
        )
    for mode, *_, aborted in LONG_STREAMS:
        if aborted:
            status, out = request(base + "/abort_request", {"rid": f"grammar-{mode}"})
            assert status == 200, out
    with ThreadPoolExecutor(max_workers=len(streams)) as pool:
        ends = dict(zip(streams, pool.map(_last_event, streams.values()), strict=True))

    for mode, g, i, aborted in LONG_STREAMS:
        end, want = ends[f"grammar-{mode}"], oracle["long"][g][i]
        ids, finish = end["output_ids"], end["meta_info"]["finish_reason"]
        if not aborted:
            assert (ids, end["text"]) == want, mode
            assert finish["type"] == "length", (mode, finish)
            continue
        assert finish["type"] == "abort", (mode, finish)
        assert 0 < len(ids) < ABORTED_NEW_TOKENS, mode
        if mode != "diffusion":
            assert ids[: len(want[0])] == want[0][: len(ids)], mode
    assert kv_pool_problems(server, log_start) == []
    log = server["log"].read_bytes()[log_start:].decode(errors="replace")
    left = dict(re.findall(r"request (grammar-\S+) left the batch unfinished after (\d+) of", log))
    assert set(left) == {f"grammar-{m}" for m, *_, aborted in LONG_STREAMS if aborted}, left
    assert all(0 < int(n) < ABORTED_NEW_TOKENS for n in left.values()), left
    assert _generate(server, "regex", "self_spec_quadratic") == oracle["regex"]
