"""Penalties (`rows.penalty`, applied by `rows.adjust`): the batched device pass equals its
row-by-row twin on every kind of segment; the counts kept incrementally equal a recount; the
formula equals SGLang's penalizers; in the reference engine greedy self-speculation and `auto`
under each penalty equal greedy AR (full rows and row summaries), a ragged batch mixing
penalised and plain requests of every mode equals each request alone; bad values are clear
errors."""

from types import SimpleNamespace

import pytest
import test_logit_adjust as shared
import torch
from _deps import require

from sglang_trimode import masks
from sglang_trimode.rows import penalty
from sglang_trimode.rows.adjust import LogitAdjust, adjust_rows_slow
from sglang_trimode.rows.penalty import (
    OutputCounts,
    decided_offsets,
    penalise,
    penalise_row_slow,
    row_histories_slow,
)

V, N, MASK = shared.V, shared.N, 3  # the tiny model's vocabulary, mask token; new tokens
engine, prompts, _gen = shared.engine, shared.prompts, shared._gen  # the same fixtures
MODES = ["self_spec_linear", "self_spec_quadratic", "auto"]
PENALTIES = {
    "frequency": {"frequency_penalty": 1.5},
    "presence": {"presence_penalty": 2.0},
    "repetition": {"repetition_penalty": 1.5},
    "repetition_below_1": {"repetition_penalty": 0.5},
    "all_three": {"frequency_penalty": 0.5, "presence_penalty": -0.25, "repetition_penalty": 1.25},
    # two tokens far above the rest and the frequency penalty alternating them: drafts are
    # accepted, and each verify row must count the accepted drafts before it
    "accepted_drafts": {"frequency_penalty": 0.5, "logit_bias": {9: 50.0, 10: 49.25}},
}


def _segs_and_states():
    """Every segment kind, with repeated tokens and mask tokens on the paths; requests with
    penalties, with the bias only, with nothing, and one riding along."""
    g = torch.Generator().manual_seed(3)

    def toks(n, masked=()):
        t = torch.randint(4, 12, (n,), generator=g).tolist()  # few ids: repeats
        for j in masked:
            t[j] = MASK
        return t

    quad = masks.quadratic(2, 3, variants=2, guessed=1)
    cases = [
        (masks.decode(), toks(1), dict(frequency=0.5, presence=0.25)),
        (masks.diffusion_draft(4), toks(4, [2]), dict(repetition=1.5)),
        (None, None, dict(frequency=1.0)),  # rides along
        (masks.commit(3), toks(3), dict(frequency=0.75, repetition=0.5)),
        (masks.linear_verify(4), toks(4), None),  # no adjust at all
        (quad, toks(quad.length, [3, 4, 5, 7, 8, 10, 11, 12]), dict(presence=-1.0, repetition=2.0)),
        (masks.linear_verify(5), toks(5), dict(bias_only=True)),
        (masks.decode(), toks(1), dict(frequency=-0.5)),
    ]
    segs, states, prefix = [], [], []
    for i, (desc, tokens, pen) in enumerate(cases):
        prompt = [0] * (3 + i)
        out = toks(6 + i)
        if pen is None:
            adjust = None
        elif pen.get("bias_only"):
            adjust = LogitAdjust.make({5: 1.0}, 0, ())
        else:
            adjust = LogitAdjust.make({7: 0.5}, 2 * i, {9}, **_named(pen), mask_id=MASK)
        segs.append(None if desc is None else SimpleNamespace(desc=desc, tokens=tokens))
        states.append(SimpleNamespace(prompt=prompt, out=out, adjust=adjust))
        prefix.append(len(prompt) + len(out) - 1)  # the last output token is the seed
    return segs, states, prefix


def _named(pen: dict) -> dict:
    return {"frequency": 0.0, "presence": 0.0, "repetition": 1.0} | pen


def _slow(logits, segs, states, prefix):
    out, at = [], 0
    for seg, st, p in zip(segs, states, prefix):
        if seg is None:
            continue
        n, first = seg.desc.length, p - len(st.prompt)
        decided = (first + decided_offsets(seg.desc)).tolist()
        history = row_histories_slow(st.out[:first], seg.tokens, seg.desc, MASK)
        out.append(adjust_rows_slow(logits[at : at + n], st.adjust, decided, history))
        at += n
    return torch.cat(out)


def test_batched_penalties_equal_the_row_by_row_twin():
    segs, states, prefix = _segs_and_states()
    total = sum(s.desc.length for s in segs if s is not None)
    full = torch.randn(total, V, generator=torch.Generator().manual_seed(0)) * 3
    want = _slow(full, segs, states, prefix)
    assert not torch.equal(want, full)
    # twice: the states hold their counts after the first, the second counts nothing again
    shared.check_batched(full, want, segs, states, prefix)


def test_a_verify_row_counts_the_drafts_before_it():
    desc = masks.linear_verify(3)
    assert row_histories_slow([5], [6, 7, 7], desc, MASK) == [[5, 6], [5, 6, 7], [5, 6, 7, 7]]
    # a diffusion row: the decided tokens before its own position, not the masks
    desc = masks.diffusion_draft(4)
    got = row_histories_slow([5], [6, MASK, 8, MASK], desc, MASK)
    assert got == [[5], [5, 6], [5, 6], [5, 6, 8]]
    # quadratic: group of acceptance 1 sees the seed and draft 1, then its own slots before
    desc = masks.quadratic(1, 2, variants=2)
    tokens = [6, 7, MASK, MASK, 9, MASK, MASK, MASK, 4, MASK]  # group 1: a bonus candidate 9
    got = row_histories_slow([], tokens, desc, MASK)
    assert got[:2] == [[6], [6, 7]]
    assert got[2:6] == [[6], [6], [6], [6, 9]]  # acceptance 0: variant 0, variant 1 (guess 9)
    assert got[6:] == [[6, 7], [6, 7], [6, 7], [6, 7, 4]]


def test_output_counts_advance_incrementally_and_equal_a_recount():
    g = torch.Generator().manual_seed(5)
    out = torch.randint(0, 10, (40,), generator=g).tolist()
    kept = OutputCounts(10, "cpu")
    for upto in [0, 1, 1, 7, 20, 40, 12]:  # the last: a shorter prefix recounts
        want = torch.bincount(torch.tensor(out[:upto], dtype=torch.long), minlength=10).float()
        assert torch.equal(kept.through(out, upto), want)


def test_the_formula_equals_sglangs_penalizers():
    """SGLang's own orchestrator (frequency, presence, repetition, as its overlap scheduler
    applies them: additive sum, then scaling) on the same outputs."""
    orch = require("sglang.srt.sampling.penaltylib", "sglang is not installed (setup_sglang.sh)")
    pens = [(1.5, 0.0, 1.0), (0.0, 2.0, 1.0), (0.0, 0.0, 1.5), (0.5, -0.25, 0.5)]
    reqs = [
        SimpleNamespace(
            sampling_params=SimpleNamespace(
                frequency_penalty=f, presence_penalty=p, repetition_penalty=r, min_new_tokens=0
            )
        )
        for f, p, r in pens
    ]

    class Batch:  # what the orchestrator reads
        device = "cpu"

    batch = Batch()
    batch.reqs = reqs
    kinds = {orch.BatchedFrequencyPenalizer, orch.BatchedPresencePenalizer}
    kinds.add(orch.BatchedRepetitionPenalizer)
    o = orch.BatchedPenalizerOrchestrator(V, batch, kinds)
    g = torch.Generator().manual_seed(2)
    outs = torch.randint(4, 20, (len(reqs), 9), generator=g)
    for step in range(outs.shape[1]):
        o.cumulate_output_tokens(outs[:, step])
    logits = torch.randn(len(reqs), V, generator=g) * 4
    theirs = logits.clone()
    additive = torch.zeros_like(theirs)
    o.accumulate_additive_penalties(additive)
    theirs += additive
    orch.repetition_penalty.apply_scaling_penalties(theirs, o.accumulate_scaling_penalties())
    counts = torch.stack([torch.bincount(r, minlength=V) for r in outs]).float()
    f, p, r = torch.tensor(pens).T
    assert torch.equal(penalise(logits, counts, f, p, r), theirs)
    for j, (fj, pj, rj) in enumerate(pens):
        row = penalise_row_slow(logits[j], outs[j].tolist(), fj, pj, rj)
        assert torch.equal(row, theirs[j])
    assert not torch.equal(theirs, logits)


@pytest.fixture(scope="module")
def ar(engine, prompts):
    """Greedy AR per penalty case; each case changes AR's output."""
    free = _gen(engine, prompts, "ar")
    got = {name: _gen(engine, prompts, "ar", **pen) for name, pen in PENALTIES.items()}
    for name, toks in got.items():
        assert toks != free, name
    return got


@pytest.mark.parametrize("summary", [False, True], ids=["full_rows", "row_summary"])
@pytest.mark.parametrize("name", list(PENALTIES))
@pytest.mark.parametrize("mode", MODES)
def test_greedy_self_spec_under_penalties_equals_ar(engine, prompts, ar, mode, name, summary):
    got = _gen(engine, prompts, mode, row_summary=summary, **PENALTIES[name])
    assert got == ar[name]


def test_a_rule_that_ignores_the_drafts_breaks_greedy_equality(engine, prompts, ar, monkeypatch):
    """Mutation check: verify rows counting the committed output and the seed only."""
    real = penalty.path_pairs

    def seed_only(desc):
        rows, cols, own = real(desc)
        keep = cols == 0
        return rows[keep], cols[keep], own[keep]

    kw = {"block_size": 4, "max_new_tokens": N, "stop_token_ids": []}
    outs = engine.generate(prompts, "self_spec_linear", **kw, **PENALTIES["accepted_drafts"])
    assert [o.token_ids for o in outs] == ar["accepted_drafts"]
    assert all(max(o.stats.accept_lengths) > 1 for o in outs)
    monkeypatch.setattr(penalty, "path_pairs", seed_only)
    got = _gen(
        engine, prompts, "self_spec_linear", row_summary=True, **PENALTIES["accepted_drafts"]
    )
    assert got != ar["accepted_drafts"]


def test_diffusion_honours_the_penalties(engine, prompts):
    """Strong penalties on every repeat: diffusion's output repeats fewer tokens (both paths)."""
    for summary in (False, True):
        free = _gen(engine, prompts, "diffusion", row_summary=summary)
        assert any(len(set(t)) < len(t) for t in free)
        strong = _gen(
            engine, prompts, "diffusion", row_summary=summary, frequency_penalty=2.0,
            presence_penalty=2.0, repetition_penalty=2.0,
        )  # fmt: skip
        assert strong != free
        assert sum(len(t) - len(set(t)) for t in strong) < sum(len(t) - len(set(t)) for t in free)


def test_a_ragged_batch_mixing_penalised_and_plain_requests_equals_each_alone(engine):
    """Every mode, penalties per request (some none), prompts of different lengths: the batch
    equals each request generated alone, through both paths."""
    g = torch.Generator().manual_seed(4)
    modes = ["ar", "diffusion", "self_spec_linear", "self_spec_quadratic", "auto", "ar", "auto"]
    ps = [torch.randint(4, V, (n,), generator=g).tolist() for n in (3, 7, 11, 4, 9, 6, 5)]
    freq = [1.5, 0.0, 0.5, 0.0, 1.0, 0.0, 0.0]
    pres = [0.0, 1.0, 0.0, 0.5, 0.0, 0.0, 0.0]
    rep = [1.0, 1.0, 1.5, 0.5, 1.25, 1.0, 1.0]
    for summary in (False, True):
        kw = {"row_summary": summary}
        batch = _gen(
            engine, ps, modes, frequency_penalty=freq, presence_penalty=pres,
            repetition_penalty=rep, **kw,
        )  # fmt: skip
        alone = [
            _gen(
                engine, [p], [m], frequency_penalty=f, presence_penalty=q, repetition_penalty=r,
                **kw,
            )[0]
            for p, m, f, q, r in zip(ps, modes, freq, pres, rep, strict=True)
        ]  # fmt: skip
        assert batch == alone, summary


@pytest.mark.parametrize(
    ("kw", "msg"),
    [
        ({"frequency_penalty": 2.5}, r"frequency_penalty must be a number in \[-2, 2\], got 2.5"),
        ({"presence_penalty": float("nan")}, r"presence_penalty must be a number in \[-2, 2\]"),
        ({"repetition_penalty": 0.0}, r"repetition_penalty must be a number in \(0, 2\], got 0"),
        ({"repetition_penalty": [1.0, 1.2]}, r"repetition_penalty: 2 values for 3 prompts"),
        ({"frequency_penalty": True}, r"frequency_penalty must be a number"),
    ],
)
def test_bad_values_are_clear_errors(engine, prompts, kw, msg):
    with pytest.raises(ValueError, match=msg):
        _gen(engine, prompts, "ar", **kw)
