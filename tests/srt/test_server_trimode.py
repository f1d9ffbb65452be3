"""`--speculative-algorithm TRIMODE` through a real `python -m sglang.launch_server` on a CPU.

One server per module (block size 4, default mode self_spec_linear); every mode is exercised on
it through the per-request `custom_params: {"trimode_mode": ...}`. Greedy tokens through the
native `/generate` API, a ragged batch of 4 and a single request, must equal the reference
engine's (`TriModeEngine.generate(..., mode=...)`) token for token. Skipped without sglang.
"""

from __future__ import annotations

import json
import re
from concurrent.futures import ThreadPoolExecutor

import pytest
from _deps import require

require(
    "sglang", reason="sglang is not installed (bash scripts/setup_sglang.sh installs it for CPU)"
)

pytestmark = pytest.mark.server  # a real SGLang server (or engine) on the CPU: minutes

import torch  # noqa: E402
from _srt_server import (  # noqa: E402
    FILL_IN_MODES,
    LEAK_MARKERS,
    kv_pool_problems,
    leak_lines,
    open_stream,
    post_ok,
    prompts,
    request,
    sse_events,
    trimode_server,
    trimode_state,
)

from sglang_trimode import TriModeEngine, default_model_path  # noqa: E402
from sglang_trimode.srt.flags import REQUEST_MODES  # noqa: E402

BLOCK = 4
MAX_NEW_TOKENS = 24


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    # custom logit processors enabled, so that SGLang lets them through to the plugin's refusal
    extra = ["--enable-custom-logit-processor"]
    with trimode_server(tmp_path_factory, "sglang_trimode_server", BLOCK, extra) as srv:
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
                "trimode_step_modes": list(o.stats.step_modes),
            }
            for o in outs
        ]
        # a fixed mode runs every step itself (only `auto` varies: tests/srt/test_server_auto.py)
        assert all(
            s["trimode_step_modes"] == [mode] * steps[mode][i] for i, s in enumerate(stats[mode])
        )
        assert all(len(t) == MAX_NEW_TOKENS for t in expected[mode])
    return ps, expected, steps, stats


def _stats(out: dict) -> dict:
    keys = ("trimode_mode", "trimode_forwards", "trimode_accept_lengths", "trimode_step_modes")
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


@pytest.mark.parametrize("mode", REQUEST_MODES)
def test_sampled_and_greedy_requests_share_forwards(server, reference, engine, mode):
    """Greedy requests read the device's argmax summary (`GreedyRows`), sampled ones their rows
    processed on the device (`SampledRows`: uniforms from the request's generator), in the same
    forwards. Requests 0 and 2 are greedy
    and must equal the reference; request 1 samples at temperature 1e-4 (the sampled path on an
    all but one-hot distribution) and must equal the greedy reference too; request 3 samples at
    temperature 0.8 with top-p/top-k: `max_new_tokens` tokens of the vocabulary, every token
    accounted for in its stats, and their logprobs and top-2 are the AR rows' at T (self-spec
    and AR: one causal scoring forward)."""
    ps, expected, _, stats = reference
    greedy = _body(ps[0], mode)["sampling_params"]
    cold = greedy | {"temperature": 1e-4}
    warm = greedy | {"temperature": 0.8, "top_p": 0.9, "top_k": 20}
    body = {"input_ids": ps, "sampling_params": [greedy, cold, greedy, warm]}
    body |= {"return_logprob": [False, False, False, True], "top_logprobs_num": [0, 0, 0, 2]}
    out = post_ok(server["base"] + "/generate", body)
    ids = [o["output_ids"] for o in out]
    assert ids[:3] == expected[mode][:3]
    assert len(ids[3]) == MAX_NEW_TOKENS
    assert all(0 <= t < engine.config.vocab_size for t in ids[3])
    meta = out[3]["meta_info"]
    assert meta["trimode_mode"] == mode
    # the same token count as a greedy request of this length: prefill token + accepted ones
    assert sum(meta["trimode_accept_lengths"]) == sum(stats[mode][3]["trimode_accept_lengths"])
    assert meta["trimode_forwards"] >= len(meta["trimode_accept_lengths"])
    # logprobs of the sampled tokens: log_softmax(logits / T) of the rows they were drawn from
    got = meta["output_token_logprobs"]
    assert [t for _, t, _ in got] == ids[3]
    tops = meta["output_top_logprobs"]
    assert [len(t) for t in tops] == [2] * MAX_NEW_TOKENS
    if mode == "diffusion":  # drawn from draft rows: not one causal forward's scores
        assert all(lp <= 0 for lp, _, _ in got)
        return
    n = len(ps[3]) + MAX_NEW_TOKENS
    with torch.no_grad():
        logits = engine.model(
            torch.tensor([ps[3] + ids[3]]), torch.arange(n)[None], engine.model.causal_mask(n)
        )[0, len(ps[3]) - 1 : -1]
    logp = torch.log_softmax(logits.float() / warm["temperature"], -1)
    want = logp.gather(-1, torch.tensor(ids[3])[:, None])[:, 0]
    close = dict(atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(torch.tensor([lp for lp, _, _ in got]), want, **close)
    assert [[tid for _, tid, _ in t] for t in tops] == logp.topk(2, -1).indices.tolist()


def test_ar_only_forwards_equal_the_reference_on_both_routes(server, reference):
    """With `sdpa` (the CPU default) a forward whose every request runs an AR step goes through
    the packed path's one batched SDPA call per layer while the ragged batch holds several
    requests, and through the wrapped `torch_native` decode once one is left (`decode_route`,
    tested in tests/srt/test_attention_backend.py): tokens and stats equal the reference's."""
    _batch_equals_reference(server, reference, "ar")
    # one request alone: the wrapped decode route on this server
    ps, expected, _, stats = reference
    out = post_ok(server["base"] + "/generate", _body(ps[0], "ar"))
    assert out["output_ids"] == expected["ar"][0]
    assert _stats(out) == stats["ar"][0]


def _batch_equals_reference(server, reference, mode: str) -> str:
    """The ragged batch in `mode` equals the reference (tokens, stats); the server log after it."""
    ps, expected, _, stats = reference
    out = post_ok(server["base"] + "/generate", _body(ps, mode))
    assert [o["output_ids"] for o in out] == expected[mode]
    assert [_stats(o) for o in out] == stats[mode]
    return server["log"].read_text(errors="replace")


def test_fill_in_runs_one_forward_cycles_while_others_are_mid_cycle(server, reference):
    """`--trimode-fill-in` (default on), one ragged batch of four modes: the ar and quadratic
    requests, whose cycles take one forward, run further cycles in the forwards the diffusion
    blocks and linear draft + verify cycles take, so they need fewer SGLang steps
    (`spec_verify_ct`) than cycles, while the multi-forward modes keep one step per cycle; every
    request's tokens and stats still equal the reference engine's. The control without fill-in
    (one step per cycle for all) is tests/srt/test_server_fill_in_off.py."""
    ps, expected, steps, stats = reference
    params = [_body(ps[i], m)["sampling_params"] for i, m in enumerate(FILL_IN_MODES)]
    out = post_ok(server["base"] + "/generate", {"input_ids": ps, "sampling_params": params})
    for i, (o, mode) in enumerate(zip(out, FILL_IN_MODES, strict=True)):
        assert o["output_ids"] == expected[mode][i], mode
        assert _stats(o) == stats[mode][i], mode
    verify = [o["meta_info"]["spec_verify_ct"] for o in out]
    cycles = [steps[mode][i] for i, mode in enumerate(FILL_IN_MODES)]
    for i, mode in enumerate(FILL_IN_MODES):
        if mode in ("ar", "self_spec_quadratic"):
            assert verify[i] < cycles[i], (mode, verify, cycles)
        else:
            assert verify[i] == cycles[i], (mode, verify, cycles)


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
    # a step's tokens per request (SGLang reserves twice this many KV slots per request): 2 B
    # with fill-in, though the quadratic steps served here put B (B + 1) = 20 tokens in a forward
    assert "fill_in=on (8 tokens/step) drafter=on" in log
    # the shipped model has no drafter adapter (linear_spec_lora/): nothing is hooked (a server with
    # one: tests/srt/test_server_fill_in_off.py)
    assert "TRIMODE: drafter adapter" not in log


def test_quadratic_mask_groups_go_through_the_head_when_read(server, reference):
    """A quadratic step's forward returns logits for its causal rows only; its one mask group
    is computed through the LM head when the policy reads it (`srt/model.py`'s
    `RowLogitsOutput.head`, `rows.DeferredGroups`): the worker counts those forwards, and tokens
    and stats (accept lengths, which depend on the drafts read from the group) equal the
    reference."""
    before = trimode_state(server["base"])["forwards"]
    _batch_equals_reference(server, reference, "self_spec_quadratic")
    after = trimode_state(server["base"])["forwards"]
    steps = sum(len(s["trimode_accept_lengths"]) for s in reference[3]["self_spec_quadratic"])
    grew = after.get("deferred_groups", 0) - before.get("deferred_groups", 0)
    assert 0 < grew <= steps  # forwards with quadratic steps (several requests share one)
    assert after["packed"] - before.get("packed", 0) >= grew


def test_unknown_mode_is_a_clear_400_and_server_keeps_serving(server, reference):
    ps, expected, _, _ = reference
    status, out = request(server["base"] + "/generate", _body(ps[0], "turbo"))
    assert status == 400, out
    assert "unknown trimode_mode 'turbo'" in json.dumps(out)
    one = post_ok(server["base"] + "/generate", _body(ps[0], "diffusion"))
    assert one["output_ids"] == expected["diffusion"][0]


@pytest.mark.parametrize("mode", REQUEST_MODES)
def test_generated_token_logprobs_equal_reference(server, engine, reference, mode):
    """`return_logprob` (+ `top_logprobs_num`): each generated token's logprob under the
    distribution it was drawn from, and that row's best (`TriModeEngine.generate(...,
    logprobs=True, top_logprobs=k)`: AR rows for AR and self-speculation, draft rows for
    diffusion), in a ragged batch where one request asks for none and one for no top-k."""
    ps, expected, _, _ = reference
    k = 2
    want = engine.generate(
        ps, mode=mode, block_size=BLOCK, max_new_tokens=MAX_NEW_TOKENS, stop_token_ids=[],
        logprobs=True, top_logprobs=k,
    )  # fmt: skip
    body = _body(ps, mode) | {
        "return_logprob": [True, True, False, True],
        "top_logprobs_num": [k, 0, 0, k],
    }
    out = post_ok(server["base"] + "/generate", body)
    assert [o["output_ids"] for o in out] == expected[mode]
    for i, o in enumerate(out):
        meta = o["meta_info"]
        got = meta.get("output_token_logprobs")
        if i == 2:
            assert not got
            continue
        assert [t for _, t, _ in got] == expected[mode][i]
        close = dict(atol=1e-4, rtol=1e-4)
        lps = torch.tensor([lp for lp, _, _ in got])
        torch.testing.assert_close(lps, torch.tensor(want[i].logprobs), **close)
        tops = meta.get("output_top_logprobs")
        if i == 1:
            assert not tops or all(not t for t in tops)
            continue
        assert len(tops) == MAX_NEW_TOKENS
        # the first token's top-k is SGLang's prefill's, the rest the worker's: all the same rows
        assert [[tid for _, tid, _ in t] for t in tops] == [ids for _, ids in want[i].top_logprobs]
        vals = torch.tensor([[v for v, _, _ in t] for t in tops])
        torch.testing.assert_close(
            vals, torch.tensor([v for v, _ in want[i].top_logprobs]), **close
        )


@pytest.mark.parametrize("mode", REQUEST_MODES)
def test_token_ids_logprob_equal_reference(server, engine, reference, mode):
    """`token_ids_logprob`: for each generated token, its row's logprobs at the given ids
    (`TriModeEngine.generate(..., token_ids_logprob=ids)`), in a ragged batch where requests ask
    for different ids (the greedy summary computes their union), one asks for none."""
    ps, expected, _, _ = reference
    ids = [[5, 9, 5], [0], [], [engine.config.vocab_size - 1, 7]]
    body = _body(ps, mode) | {"return_logprob": True, "token_ids_logprob": ids}
    out = post_ok(server["base"] + "/generate", body)
    assert [o["output_ids"] for o in out] == expected[mode]
    for i, o in enumerate(out):
        got = o["meta_info"].get("output_token_ids_logprobs")
        if not ids[i]:
            assert not got or all(not g for g in got)
            continue
        (want,) = engine.generate(
            [ps[i]], mode=mode, block_size=BLOCK, max_new_tokens=MAX_NEW_TOKENS,
            stop_token_ids=[], logprobs=True, token_ids_logprob=ids[i],
        )  # fmt: skip
        assert len(got) == MAX_NEW_TOKENS
        assert [[e[1] for e in row] for row in got] == [ids[i]] * MAX_NEW_TOKENS
        vals = torch.tensor([[e[0] for e in row] for row in got])
        torch.testing.assert_close(
            vals, torch.tensor(want.token_ids_logprobs), atol=1e-4, rtol=1e-4
        )


def test_openai_logprob_requests_are_served(server, reference):
    """OpenAI `logprobs: N` / chat `top_logprobs` are served (a request for logprobs used to
    stop the scheduler); the server keeps serving."""
    ps, expected, _, _ = reference
    base = server["base"]
    oai = {"model": "default", "prompt": ps[1], "max_tokens": 4, "temperature": 0.0}
    choice = post_ok(base + "/v1/completions", oai | {"logprobs": 2})["choices"][0]
    assert len(choice["logprobs"]["top_logprobs"]) == 4
    chat = {"model": "default", "messages": [{"role": "user", "content": "def f():"}]}
    chat |= {"max_tokens": 6, "temperature": 0.0, "ignore_eos": True}
    served = post_ok(base + "/v1/chat/completions", chat | {"logprobs": True, "top_logprobs": 2})
    content = served["choices"][0]["logprobs"]["content"]
    assert len(content) == 6 and all(len(c["top_logprobs"]) == 2 for c in content)
    one = post_ok(base + "/generate", _body(ps[2], "self_spec_quadratic"))
    assert one["output_ids"] == expected["self_spec_quadratic"][2]
    assert "Scheduler hit an exception" not in server["log"].read_text(errors="replace")


def test_prompt_scoring_logprobs_equal_the_reference_model(server, engine, reference):
    """Prompt scoring (`max_new_tokens` 1: SGLang's own prefill) is served with logprobs on a
    TRIMODE server: every prompt token's and the first new token's logprob equal the reference
    model's causal log-softmax (fp32), natively and through OpenAI `echo`."""
    ps, expected, _, _ = reference
    ids = ps[3]
    n = len(ids)
    with torch.no_grad():
        logits = engine.model(
            torch.tensor([ids]),
            torch.arange(n)[None],
            engine.model.causal_mask(n, dtype=torch.float32),
        )[0]
    logp = torch.log_softmax(logits.double(), -1)
    first = expected["ar"][3][0]
    want = [logp[t - 1, ids[t]].item() for t in range(1, n)] + [logp[n - 1, first].item()]
    body = _body(ids, "diffusion") | {"return_logprob": True, "logprob_start_len": 0}
    body["sampling_params"]["max_new_tokens"] = 1
    meta = post_ok(server["base"] + "/generate", body)["meta_info"]
    assert [t for _, t, _ in meta["input_token_logprobs"]] == ids
    assert meta["input_token_logprobs"][0][0] is None
    got = [lp for lp, _, _ in meta["input_token_logprobs"][1:]]
    got += [lp for lp, _, _ in meta["output_token_logprobs"]]
    assert [t for _, t, _ in meta["output_token_logprobs"]] == [first]
    torch.testing.assert_close(torch.tensor(got), torch.tensor(want), atol=1e-4, rtol=1e-4)
    oai = {"model": "default", "prompt": ids, "max_tokens": 1, "echo": True, "logprobs": 1}
    choice = post_ok(server["base"] + "/v1/completions", oai | {"temperature": 0.0})["choices"][0]
    scored = choice["logprobs"]["token_logprobs"]
    assert scored[0] is None and len(scored) == n + 1
    torch.testing.assert_close(torch.tensor(scored[1:]), torch.tensor(want), atol=1e-4, rtol=1e-4)


def test_sampling_fields_the_worker_ignores_are_a_clear_400(server, reference):
    """What the worker does not apply (a custom logit processor) would give an answer that
    silently ignores it: 400 naming the field, while neutral sampling values (what OpenAI clients
    send by default) are served."""
    ps, expected, _, _ = reference
    body = _body(ps[0], "diffusion") | {"custom_logit_processor": "{}"}
    status, out = request(server["base"] + "/generate", body)
    assert status == 400, out
    assert "custom_logit_processor: not applied with --speculative-algorithm TRIMODE" in str(out)
    neutral = _body(ps[0], "diffusion")
    neutral["sampling_params"] |= {"repetition_penalty": 1.0, "min_p": 0.0, "logit_bias": {}}
    assert post_ok(server["base"] + "/generate", neutral)["output_ids"] == expected["diffusion"][0]


def test_openai_penalized_and_constrained_requests_are_served(server, reference):
    """OpenAI penalties and `response_format` reach the worker (their exact output is checked in
    test_server_sampling.py / test_server_grammar.py); the server keeps serving."""
    ps, expected, _, _ = reference
    base = server["base"]
    oai = {"model": "default", "prompt": ps[1], "max_tokens": 4, "temperature": 0.0}
    served = post_ok(base + "/v1/completions", oai | {"presence_penalty": 0.5})
    assert served["choices"][0]["finish_reason"] == "length"
    chat = {"model": "default", "messages": [{"role": "user", "content": "def f():"}]}
    chat |= {"max_tokens": 4, "temperature": 0.0}
    for field in (
        {"frequency_penalty": 0.5},
        {"response_format": {"type": "json_schema", "json_schema": {"name": "x", "schema": {}}}},
    ):
        choice = post_ok(base + "/v1/chat/completions", chat | field)["choices"][0]
        assert choice["finish_reason"] in ("length", "stop"), (field, choice)
    one = post_ok(base + "/generate", _body(ps[2], "self_spec_quadratic"))
    assert one["output_ids"] == expected["self_spec_quadratic"][2]


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


@pytest.mark.parametrize("mode", REQUEST_MODES)
def test_streaming_and_openai_completions_equal_reference(server, reference, mode):
    """Per-request mode through the OpenAI API's extra body (`custom_params`) and native
    `custom_params`, streamed and not: every text equals the reference engine's greedy text; the
    last native stream event carries the reference stats. (/v1/chat/completions:
    test_chat_completions_equal_reference.)"""
    from transformers import AutoTokenizer

    ps, expected, _, stats = reference
    i = 1
    want_text = AutoTokenizer.from_pretrained(str(default_model_path())).decode(
        expected[mode][i], skip_special_tokens=True
    )
    native = post_ok(server["base"] + "/generate", _body(ps[i], mode))
    assert native["output_ids"] == expected[mode][i]
    assert native["text"] == want_text

    body = _body(ps[i], mode) | {"stream": True}
    events = sse_events(server["base"] + "/generate", body)
    assert len(events) > 1
    texts = [e["text"] for e in events]  # cumulative text per event
    assert all(b.startswith(a) for a, b in zip(texts, texts[1:], strict=False))
    assert texts[-1] == want_text
    assert _stats(events[-1]) == stats[mode][i]

    oai = {
        "model": "default",
        "prompt": ps[i],
        "max_tokens": MAX_NEW_TOKENS,
        "temperature": 0.0,
        "ignore_eos": True,
        "custom_params": {"trimode_mode": mode},  # what `extra_body=` of the openai client sends
    }
    out = post_ok(server["base"] + "/v1/completions", oai | {"return_token_ids": True})
    (choice,) = out["choices"]
    assert choice["token_ids"] == expected[mode][i]
    assert choice["text"] == want_text
    deltas = sse_events(server["base"] + "/v1/completions", oai | {"stream": True})
    assert "".join(c["text"] for e in deltas for c in e["choices"]) == want_text


def test_openai_client_extra_body_selects_mode(server, reference):
    """The official openai client's `extra_body` reaches SGLang's custom_params."""
    openai = require("openai", "the OpenAI client (requirements/sglang-cpu.txt)")
    ps, expected, _, _ = reference
    # a prompt whose diffusion output differs from the server default's (self_spec_linear): an
    # ignored extra_body would show
    diff, linear = expected["diffusion"], expected["self_spec_linear"]
    i = next(i for i in range(len(ps)) if diff[i] != linear[i])
    client = openai.OpenAI(base_url=server["base"] + "/v1", api_key="none")
    out = client.completions.create(
        model="default",
        prompt=ps[i],
        max_tokens=MAX_NEW_TOKENS,
        temperature=0.0,
        extra_body={"ignore_eos": True, "custom_params": {"trimode_mode": "diffusion"}},
    )
    native = post_ok(server["base"] + "/generate", _body(ps[i], "diffusion"))
    assert out.choices[0].text == native["text"]
    assert native["output_ids"] == expected["diffusion"][i]
    stream = client.completions.create(
        model="default",
        prompt=ps[i],
        max_tokens=MAX_NEW_TOKENS,
        temperature=0.0,
        stream=True,
        extra_body={"ignore_eos": True, "custom_params": {"trimode_mode": "diffusion"}},
    )
    assert "".join(c.choices[0].text for c in stream if c.choices) == native["text"]


def test_mixed_batch_with_aborts_and_bad_input_frees_every_kv_slot(server, reference):
    """Concurrent requests of every mode and ragged lengths, two long ones aborted mid-flight
    (`/abort_request`, client disconnect) and three bad ones (mask token in the prompt,
    max_new_tokens beyond the context, unknown mode): the bad ones get a clear 400 naming the
    field, the good ones equal the reference, and afterwards every KV slot is free
    (`kv_pool_problems`: no KV slot in use after the flush, nothing from SGLang's own idle pool
    check; its negative controls are the two tests below)."""
    ps, expected, _, stats = reference
    base = server["base"]
    log_start = server["log"].stat().st_size
    mask = json.loads((default_model_path() / "config.json").read_text())["mask_token_id"]
    victims = []
    for k, mode in enumerate(("diffusion", "self_spec_quadratic")):
        body = _body(ps[k], mode) | {"rid": f"victim-{k}"}
        # long enough to be aborted mid-flight, short enough that both fit the 4096-token pool
        body["sampling_params"]["max_new_tokens"] = 500
        victims.append(open_stream(base + "/generate", body))

    bad_mask = _body(ps[0][:2] + [mask] + ps[0][2:], "self_spec_linear")
    bad_len = _body(ps[1], "diffusion")
    bad_len["sampling_params"]["max_new_tokens"] = 100_000
    jobs = [("good", m, i) for m in REQUEST_MODES for i in range(len(ps))]
    with ThreadPoolExecutor(max_workers=8) as pool:
        good = {
            (m, i): pool.submit(request, base + "/generate", _body(ps[i], m)) for _, m, i in jobs
        }
        bad = [pool.submit(request, base + "/generate", b) for b in (bad_mask, bad_len)]
        bad.append(pool.submit(request, base + "/generate", _body(ps[2], "warp")))
        status, out = request(base + "/abort_request", {"rid": "victim-0"})
        assert status == 200, out
        victims[1].close()  # client disconnect: SGLang aborts the request
        results = {key: f.result() for key, f in good.items()}
        bad_results = [f.result() for f in bad]

    for (mode, i), (status, out) in results.items():
        assert status == 200, (mode, i, out)
        assert out["output_ids"] == expected[mode][i], (mode, i)
        assert _stats(out) == stats[mode][i]
    (s_mask, o_mask), (s_len, o_len), (s_mode, o_mode) = bad_results
    assert s_mask == 400 and "mask token id" in json.dumps(o_mask), o_mask
    assert "input_ids" in json.dumps(o_mask) and "position 2" in json.dumps(o_mask), o_mask
    assert s_len == 400 and "context length" in json.dumps(o_len), o_len
    assert s_mode == 400 and "unknown trimode_mode 'warp'" in json.dumps(o_mode), o_mode
    tail = b"".join(victims[0])  # the aborted stream ends, finish reason abort
    assert b'"abort"' in tail, tail[-500:]
    victims[0].close()

    # every request (aborted ones included) has left, every KV slot is free, no leak reported
    assert kv_pool_problems(server, log_start) == []
    # the server still serves correctly
    one = post_ok(base + "/generate", _body(ps[3], "self_spec_quadratic"))
    assert one["output_ids"] == expected["self_spec_quadratic"][3]


def _long_body(input_ids, mode: str, n: int = 3000) -> dict:
    body = _body(input_ids, mode)
    body["sampling_params"]["max_new_tokens"] = n
    return body


def test_kv_pool_check_reports_slots_held_by_a_running_request(server, reference):
    """Negative control of `kv_pool_problems` on the real server: a request that still runs (a
    3000-token stream, about 40 s on 2 cores) holds KV slots, and the check must report them (and
    that the cache flush was refused: a request is still in the scheduler); once the client
    closes the stream the same check finds every slot free."""
    ps = reference[0]
    log_start = server["log"].stat().st_size
    stream = open_stream(server["base"] + "/generate", _long_body(ps[2], "ar"))
    try:
        problems = kv_pool_problems(server, log_start, timeout_s=2)
    finally:
        stream.close()
    assert any(p.startswith("/flush_cache refused") for p in problems), problems
    used = [p for p in problems if "KV slots in use" in p]
    assert used and int(used[0].split()[0]) > len(ps[2]), problems
    assert kv_pool_problems(server, log_start) == []


def test_kv_pool_check_reports_sglang_leak_lines(server, tmp_path):
    """Negative control of the log half of `kv_pool_problems`: a log holding the lines SGLang's
    idle pool check writes on a leak (the markers are checked against the installed SGLang's
    source, so a reworded message would fail here) is reported, line for line."""
    import sglang.srt.managers.scheduler_components.invariant_checker as checker

    source = open(checker.__file__).read()
    assert all(m in source for m in LEAK_MARKERS), LEAK_MARKERS
    leaks = [
        "[2026-01-01 00:00:00] token_to_kv_pool_allocator memory leak detected! "
        "self.max_total_num_tokens=4096, available_size=4000, evictable_size=0, protected_size=0",
        "[2026-01-01 00:00:01] req_to_token_pool memory leak detected!available_size=2047",
        "[2026-01-01 00:00:02] KV double free: sub-pool 0 has 3 duplicate pages.",
        "[2026-01-01 00:00:03] KV page use-after-free: 2 owner page refs are in the free pool",
    ]
    log = tmp_path / "leaky.log"
    log.write_text("\n".join(["Decode batch. #running-req: 1", *leaks, "Cache flushed"]) + "\n")
    assert leak_lines(log.read_text()) == leaks
    # the whole check on the live server's counters (all free) but the leaky log
    assert kv_pool_problems({"base": server["base"], "log": log}, timeout_s=5) == leaks


def test_client_disconnect_mid_stream_aborts_request_and_frees_every_kv_slot(server, reference):
    """Two long greedy streams, one native `/generate` and one OpenAI `/v1/completions`, whose
    clients close the connection mid-stream while requests of every mode run beside them: the
    server aborts both (the worker logs each leaving the batch unfinished, with fewer tokens than
    asked: a logical check, no timing), the other requests equal the reference engine, and
    afterwards every KV slot is free (`kv_pool_problems`)."""
    ps, expected, _, stats = reference
    base = server["base"]
    log_start = server["log"].stat().st_size
    native_n, oai_n = 2000, 1000  # both fit the 4096-token pool next to the other requests
    rids = {"disconnect-native": native_n, "disconnect-openai": oai_n}
    native = open_stream(
        base + "/generate", _long_body(ps[0], "ar", native_n) | {"rid": "disconnect-native"}
    )
    oai_body = {"model": "default", "prompt": ps[1], "max_tokens": oai_n, "temperature": 0.0,
                "ignore_eos": True, "custom_params": {"trimode_mode": "ar"},
                "rid": "disconnect-openai"}  # fmt: skip
    oai = open_stream(base + "/v1/completions", oai_body)
    with ThreadPoolExecutor(max_workers=8) as pool:
        good = {
            (m, i): pool.submit(request, base + "/generate", _body(ps[i], m))
            for m in REQUEST_MODES
            for i in range(len(ps))
        }
        native.close()  # client disconnects: SGLang must abort both requests
        oai.close()
        results = {key: f.result() for key, f in good.items()}
    for (mode, i), (status, out) in results.items():
        assert status == 200, (mode, i, out)
        assert out["output_ids"] == expected[mode][i], (mode, i)
        assert _stats(out) == stats[mode][i]
    assert kv_pool_problems(server, log_start) == []  # waits until the scheduler is idle
    # the server still serves correctly (and its decode step drops the departed requests)
    one = post_ok(base + "/generate", _body(ps[2], "self_spec_linear"))
    assert one["output_ids"] == expected["self_spec_linear"][2]
    with open(server["log"], "rb") as f:
        f.seek(log_start)
        log = f.read().decode(errors="replace")
    left = dict(re.findall(r"request (\S+) left the batch unfinished after (\d+) of", log))
    assert set(left) == set(rids), left  # requests that ran to their end are not listed
    for rid, n in rids.items():
        assert 0 < int(left[rid]) < n, (rid, left[rid], n)


CHAT = [
    {"role": "system", "content": "# Helpers for reading configuration files."},
    {"role": "user", "content": "def read_lines(path):\n"},
]


@pytest.mark.parametrize("mode", REQUEST_MODES)
def test_chat_completions_equal_reference(server, engine, mode):
    """`/v1/chat/completions` with the per-request mode in the extra body (`custom_params`),
    streamed and not. The shipped model's minimal chat template (the messages' contents, one
    per line; `tokenizer_config.json`) renders the prompt ids; the server must use exactly those
    (`return_prompt_token_ids`) and answer the reference engine's greedy tokens and text on
    them, with `usage` counting them and `meta_info` carrying the reference stats."""
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(str(default_model_path()))
    rendered = tok.apply_chat_template(CHAT, add_generation_prompt=True, tokenize=True)
    ids = list(rendered["input_ids"])
    assert tok.decode(ids) == CHAT[0]["content"] + "\n" + CHAT[1]["content"]
    (want,) = engine.generate(
        [ids], mode=mode, block_size=BLOCK, max_new_tokens=MAX_NEW_TOKENS, stop_token_ids=[]
    )
    want_text = tok.decode(want.token_ids, skip_special_tokens=True)
    body = {
        "model": "default",
        "messages": CHAT,
        "max_tokens": MAX_NEW_TOKENS,
        "temperature": 0.0,
        "ignore_eos": True,
        "custom_params": {"trimode_mode": mode},  # what `extra_body=` of the openai client sends
    }
    url = server["base"] + "/v1/chat/completions"
    extra = {"return_prompt_token_ids": True, "return_token_ids": True, "return_meta_info": True}
    out = post_ok(url, body | extra)
    (choice,) = out["choices"]
    assert choice["prompt_token_ids"] == ids
    assert choice["response_token_ids"] == list(want.token_ids)
    assert choice["message"]["role"] == "assistant"
    assert choice["message"]["content"] == want_text
    assert choice["finish_reason"] == "length"
    assert out["usage"]["prompt_tokens"] == len(ids)
    assert out["usage"]["completion_tokens"] == MAX_NEW_TOKENS
    assert out["usage"]["total_tokens"] == len(ids) + MAX_NEW_TOKENS
    meta = choice["meta_info"]
    assert meta["trimode_mode"] == mode
    assert meta["trimode_forwards"] == want.stats.forwards
    assert meta["trimode_accept_lengths"] == list(want.stats.accept_lengths)
    assert meta["trimode_step_modes"] == [mode] * len(want.stats.accept_lengths)
    assert meta["spec_verify_ct"] == len(want.stats.accept_lengths)

    stream = body | {"stream": True, "stream_options": {"include_usage": True}}
    events = sse_events(url, stream)
    deltas = [c["delta"] for e in events for c in e["choices"]]
    assert deltas[0].get("role") == "assistant"
    assert "".join(d.get("content") or "" for d in deltas) == want_text
    finish = [c["finish_reason"] for e in events for c in e["choices"] if c["finish_reason"]]
    assert finish == ["length"]
    usage = [e["usage"] for e in events if e.get("usage")]
    assert usage[-1]["prompt_tokens"] == len(ids)
    assert usage[-1]["completion_tokens"] == MAX_NEW_TOKENS
