"""Grammar-constrained decoding (`rows.grammar`) in the reference engine.

The batched masks equal their row-by-row twin on every kind of segment; greedy self-speculation
and `auto` equal greedy AR under a regex and an EBNF grammar (full rows and the worker's row
summaries), diffusion commits only what the grammar accepts, the grammar's end stops a request;
sampled self-speculation keeps the exact constrained AR distribution (tiny vocabulary), and the
test catches a rule that leaves verify rows unmasked. Skipped without xgrammar.
"""

from __future__ import annotations

import itertools
import math

import pytest
import torch
from _deps import require  # noqa: E402

xgr = require("xgrammar", "xgrammar is not installed (requirements/sglang-cpu)")

from test_sampling_stats import chi_square_rejects  # noqa: E402

from sglang_trimode import TriModeEngine, default_model_path, masks  # noqa: E402
from sglang_trimode.modes import RequestState, Segment  # noqa: E402
from sglang_trimode.reference.grammar import matcher_factory  # noqa: E402
from sglang_trimode.reference.tiny import make_tiny_model  # noqa: E402
from sglang_trimode.rows import grammar as rows_grammar  # noqa: E402
from sglang_trimode.rows.grammar import GrammarError, GrammarState  # noqa: E402
from sglang_trimode.sampling import SamplingParams  # noqa: E402
from sglang_trimode.scheduler.cost import CostModel  # noqa: E402
from sglang_trimode.scheduler.policy import AutoPolicy  # noqa: E402

GRAMMARS = {
    "regex": r"(yes|no), [a-z]+ [0-9]{2}",
    "ebnf": 'root ::= "The answer is " ("yes" | "no") ", " [a-z]+ "."',
}
JSON = '{"type": "object", "properties": {"name": {"type": "string"}}, "required": ["name"]}'


@pytest.fixture(scope="module")
def engine():
    eng = TriModeEngine.from_pretrained(default_model_path(), device="cpu", dtype=torch.float32)
    eng.cost = CostModel(fixed_s=1e-2, per_token_s=1e-4, source="test: fixed cost dominates")
    return eng


@pytest.fixture(scope="module")
def tokenizer():
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(default_model_path())


def _prompt(tokenizer) -> list[int]:
    return tokenizer.encode("def main():\n", add_special_tokens=False)


def _follows(new_matcher, ids: list[int]) -> bool:
    m = new_matcher()
    return all(m.accept_token(t) for t in ids)


# ---- the batched masks and their twin ----------------------------------------------------------


def _state(new_matcher, vocab: int, out: list[int]) -> RequestState:
    r = RequestState(
        prompt=[5, 6, 7], params=SamplingParams(), max_new_tokens=64,
        stop_token_ids=frozenset(), generator=None, grammar=GrammarState(new_matcher(), vocab),
    )  # fmt: skip
    r.emit(out)
    r.seed = out[-1]
    return r


def _valid_run(new_matcher, vocab: int, prefix: list[int], n: int, gen) -> list[int]:
    """`n` random tokens the grammar allows after `prefix`."""
    g = GrammarState(new_matcher(), vocab)
    for t in prefix:
        assert g.accept(t)
    run = []
    for _ in range(n):
        ok = g.allowed().nonzero().flatten()
        run.append(int(ok[torch.randint(len(ok), (1,), generator=gen)]))
        assert g.accept(run[-1])
    return run


def test_batched_masks_equal_the_row_by_row_twin(tokenizer):
    """Every kind of segment in one packed forward, random logits: `grammar_logits` = the twin
    per request; verify rows masked after the drafts before them (none after a refused draft),
    drafting rows along the chain, committed rows untouched; the matchers end where they began."""
    vocab, mask = 2048, 3
    new_matcher = matcher_factory(tokenizer, vocab, [2], "json_schema", JSON)
    gen = torch.Generator().manual_seed(0)
    out = _valid_run(new_matcher, vocab, [], 4, gen)
    d = _valid_run(new_matcher, vocab, out, 3, gen)
    bad = [d[0], tokenizer.encode("}", add_special_tokens=False)[0], d[2]]  # refused at 2
    cases = [
        Segment([out[-1]], masks.decode()),
        Segment([out[-1]] + [mask] * 3, masks.diffusion_draft(4)),
        Segment([out[-1], *d], masks.linear_verify(4)),
        Segment([out[-1], *bad], masks.linear_verify(4)),
        Segment([out[-1], d[0], mask, mask], masks.diffusion_draft(4)),
        Segment([out[-1], *d], masks.commit(4)),
    ]
    states = [_state(new_matcher, vocab, out + (d if i == 5 else [])) for i in range(len(cases))]
    prefix = [3 + len(r.out) - 1 - (3 if i == 5 else 0) for i, r in enumerate(states)]
    logits = torch.randn(sum(s.desc.length for s in cases), vocab, generator=gen)
    got, _ = rows_grammar.grammar_logits(logits, None, states, cases, prefix, mask)
    at = 0
    masked_rows = []
    for r, seg, n in zip(states, cases, prefix, strict=True):
        rows = logits[at : at + seg.desc.length]
        twin = rows_grammar.grammar_rows_slow(rows, r, seg, n, mask, new_matcher)
        assert torch.equal(got[at : at + seg.desc.length], twin)
        masked_rows.append([not torch.equal(a, b) for a, b in zip(twin, rows, strict=True)])
        assert r.grammar.pending == len(r.out)  # rolled back to the state after `out`
        at += seg.desc.length
    assert masked_rows == [
        [True], [False, True, True, True], [True] * 4, [True, True, False, False],
        [False, True, True, True], [False, False, False, True],
    ]  # fmt: skip


@pytest.mark.parametrize("guesses", [0, 2], ids=["tidar", "bonus_guesses"])
def test_quadratic_mask_groups_through_the_head_equal_the_twin(tokenizer, guesses):
    """A quadratic step (2 drafts, block 4): causal rows masked in the forward's logits, every
    mask group masked as the head reads it (tokens before it: the drafts it follows, then its
    first-slot guess or the masked argmax of the causal row before it) = the twin on full rows."""
    vocab, mask = 2048, 3
    new_matcher = matcher_factory(tokenizer, vocab, [2], "json_schema", JSON)
    gen = torch.Generator().manual_seed(1)
    out = _valid_run(new_matcher, vocab, [], 4, gen)
    d = _valid_run(new_matcher, vocab, out, 3, gen)
    desc = masks.quadratic(2, 4, 1 + guesses, 0)
    groups = []
    for i in range(desc.num_causal):
        for v in range(desc.variants_of(i)):
            groups += [d[i] if v else mask] + [mask] * 3  # a guess: the valid next token
    seg = Segment([out[-1], *d[:2], *groups], desc)
    r = _state(new_matcher, vocab, out)
    prefix = 3 + len(out) - 1
    logits = torch.randn(desc.length, vocab, generator=gen)
    eager = torch.arange(desc.num_causal)
    causal, head = rows_grammar.grammar_logits(
        logits[eager], lambda idx: logits[idx], [r], [seg], [prefix], mask
    )
    got = torch.cat([causal, head(torch.arange(desc.num_causal, desc.length))])
    twin = rows_grammar.grammar_rows_slow(logits, r, seg, prefix, mask, new_matcher)
    assert torch.equal(got, twin)
    masked = [not torch.equal(a, b) for a, b in zip(twin, logits, strict=True)]
    assert all(masked[desc.num_causal :])  # every group row (first slots included, pre-verify)
    assert r.grammar.pending == len(r.out)


# ---- the reference engine ----------------------------------------------------------------------


@pytest.mark.parametrize("summary", [False, True], ids=["full_rows", "row_summary"])
@pytest.mark.parametrize("name", list(GRAMMARS))
def test_greedy_self_spec_and_auto_equal_ar_under_a_grammar(engine, tokenizer, name, summary):
    kw = {name: GRAMMARS[name], "max_new_tokens": 24, "block_size": 4, "row_summary": summary}
    ps = [_prompt(tokenizer)]
    (free,) = engine.generate(ps, mode="ar", max_new_tokens=24, block_size=4)
    (ar,) = engine.generate(ps, mode="ar", **kw)
    new_matcher = matcher_factory(tokenizer, 2048, [2], name, GRAMMARS[name])
    assert ar.token_ids != free.token_ids and _follows(new_matcher, ar.token_ids)
    assert ar.finish_reason == "stop" and ar.token_ids[-1] == 2
    for mode in ("self_spec_linear", "self_spec_quadratic", "auto"):
        policy = {"auto_policy": AutoPolicy(engine.cost)} if mode == "auto" else {}
        (o,) = engine.generate(ps, mode=mode, **kw, **policy)
        assert o.token_ids == ar.token_ids, mode
    (diff,) = engine.generate(ps, mode="diffusion", **kw)
    assert _follows(new_matcher, diff.token_ids)


@pytest.mark.parametrize("summary", [False, True], ids=["full_rows", "row_summary"])
def test_grammar_and_penalties_together_keep_self_spec_equal_to_ar(engine, tokenizer, summary):
    """Penalties (rows.adjust) then the grammar mask (rows.grammar) on the same rows: greedy
    self-speculation and auto still equal AR, and the penalties change what the grammar allows
    (the penalised text differs from the grammar alone)."""
    name = "ebnf"
    kw = {name: GRAMMARS[name], "max_new_tokens": 24, "block_size": 4, "row_summary": summary}
    pen = {"frequency_penalty": 1.5, "repetition_penalty": 1.3}
    ps = [_prompt(tokenizer)]
    (plain,) = engine.generate(ps, mode="ar", **kw)
    (ar,) = engine.generate(ps, mode="ar", **kw, **pen)
    new_matcher = matcher_factory(tokenizer, 2048, [2], name, GRAMMARS[name])
    assert _follows(new_matcher, ar.token_ids) and ar.token_ids != plain.token_ids
    for mode in ("self_spec_linear", "self_spec_quadratic", "auto"):
        policy = {"auto_policy": AutoPolicy(engine.cost)} if mode == "auto" else {}
        (o,) = engine.generate(ps, mode=mode, **kw, **pen, **policy)
        assert o.token_ids == ar.token_ids, mode


def test_the_grammar_end_stops_a_request_like_a_stop_token(engine, tokenizer):
    """No stop tokens at all: the grammar's end (it accepts EOS only once complete) stops it."""
    for mode in ("ar", "self_spec_linear", "diffusion"):
        (o,) = engine.generate(
            [_prompt(tokenizer)], mode=mode, ebnf='root ::= "yes"', stop_token_ids=[],
            max_new_tokens=16, block_size=4,
        )  # fmt: skip
        assert tokenizer.decode(o.token_ids) == "yes<eos>" and o.finish_reason == "stop", mode


@pytest.mark.parametrize(
    ("kw", "msg"),
    [
        ({"regex": "a", "ebnf": 'root ::= "a"'}, "regex, ebnf: give at most one grammar field"),
        ({"regex": "(a"}, "regex does not compile"),
        ({"json_schema": 5}, "json_schema must be a non-empty string"),
    ],
)
def test_bad_grammars_are_clear_errors(engine, tokenizer, kw, msg):
    with pytest.raises(ValueError, match=msg.replace("(", r"\(")):
        engine.generate([_prompt(tokenizer)], max_new_tokens=2, **kw)


# ---- sampled: the exact constrained distribution (tiny vocabulary) -----------------------------

# a high temperature: every continuation the grammar allows keeps an expected count the
# chi-square approximation holds for (at 2.0 some pooled rare cells expect < 0.1 of 4000 draws)
VOCAB, PROMPT, NEW, N, TEMP = 6, [1, 4, 5], 4, 4000, 4.0
PIECES = ["a", "b", "</s>", "<mask>", "c", "d"]  # ids 2 (EOS) and 3 (mask) never match
TINY_REGEX = "(a[bc]|c[bd])[ad][abcd]+"  # what may come next depends on what came before


def _tiny_allowed(prefix: tuple[int, ...]) -> list[int]:
    a, b, c, d = 0, 1, 4, 5
    return [[a, c], [b, c] if prefix and prefix[0] == a else [b, d], [a, d], [a, b, c, d]][
        len(prefix)
    ]


@pytest.fixture(scope="module")
def tiny():
    model = make_tiny_model(
        seed=7, vocab_size=VOCAB, mask_token_id=3, eos_token_id=2, bos_token_id=1, head_std=1.0
    )
    info = xgr.TokenizerInfo(PIECES, xgr.VocabType.RAW, vocab_size=VOCAB, stop_token_ids=[2])
    compiled = xgr.GrammarCompiler(info).compile_regex(TINY_REGEX)
    return TriModeEngine(model), lambda: xgr.GrammarMatcher(compiled)


def _constrained_exact(engine) -> dict[tuple[int, ...], float]:
    """Exact probability of every NEW-token continuation under AR sampling at TEMP with each
    position's logits masked to what the grammar allows after the tokens before it."""
    seqs = [s for s in itertools.product(range(VOCAB), repeat=NEW)
            if all(s[i] in _tiny_allowed(s[:i]) for i in range(NEW))]  # fmt: skip
    ids = torch.cat([torch.tensor(PROMPT).expand(len(seqs), -1), torch.tensor(seqs)], 1)
    with torch.no_grad():
        logits = engine.model(ids, torch.arange(ids.shape[1]).expand_as(ids), None).double()
    exact = {}
    for k, s in enumerate(seqs):
        p = 1.0
        for i in range(NEW):
            row = logits[k, len(PROMPT) - 1 + i] / TEMP
            allowed = torch.tensor(_tiny_allowed(s[:i]))
            p *= math.exp(row[s[i]] - torch.logsumexp(row[allowed], 0))
        exact[s] = p
    assert abs(sum(exact.values()) - 1) < 1e-9
    return exact


def _sample(engine, new_matcher, mode: str, summary: bool) -> list[tuple[int, ...]]:
    outs = engine.generate(
        [PROMPT] * N, mode=mode, max_new_tokens=NEW, block_size=4, temperature=TEMP,
        stop_token_ids=[], seed=0, row_summary=summary, grammar=new_matcher,
    )  # fmt: skip
    assert all(len(o.token_ids) == NEW for o in outs)
    return [tuple(o.token_ids) for o in outs]


@pytest.mark.slow  # 4000 sampled requests each
@pytest.mark.parametrize(
    ("mode", "summary"),
    [("self_spec_linear", False), ("self_spec_linear", True), ("self_spec_quadratic", True)],
)
def test_sampled_self_spec_under_a_grammar_matches_constrained_ar(tiny, mode, summary):
    engine, new_matcher = tiny
    exact = _constrained_exact(engine)
    rejects, ratio = chi_square_rejects(_sample(engine, new_matcher, mode, summary), exact)
    assert not rejects, f"{mode}: chi-square / critical = {ratio:.2f}"


@pytest.mark.slow
def test_the_distribution_test_catches_unmasked_verify_rows(tiny, monkeypatch):
    """Masks on the drafting rows only (a causal row decides nothing here): the output leaves
    the grammar (a refused token) or its distribution is rejected."""
    engine, new_matcher = tiny
    exact = _constrained_exact(engine)
    real = rows_grammar.decided_positions

    def drafting_rows_only(state, seg, prefix):
        return [-1 if seg.desc.is_causal else m for m in real(state, seg, prefix)]

    monkeypatch.setattr(rows_grammar, "decided_positions", drafting_rows_only)
    try:
        samples = _sample(engine, new_matcher, "self_spec_linear", True)
    except GrammarError:
        return
    caught = chi_square_rejects(samples, exact)[0] or any(s not in exact for s in samples)
    assert caught
