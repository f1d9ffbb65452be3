"""Quadratic self-speculation with bonus candidates (``bonus_candidates=C``): extra mask groups
whose first slot guesses the bonus token. Output must not change: greedy equals AR, batching
changes nothing; the step reads the group whose guess is the emitted bonus."""

import pytest
import torch

from sglang_trimode import TriModeEngine, masks
from sglang_trimode.modes import ModeConfig, QuadraticSpecPolicy, RequestState
from sglang_trimode.reference.tiny import make_tiny_model
from sglang_trimode.rows import GreedyRows, SampledRows
from sglang_trimode.sampling import SamplingParams, get_accept_rule, top_candidates

NEW = 40


@pytest.fixture(scope="module")
def engine():
    return TriModeEngine(make_tiny_model(seed=0))


@pytest.fixture(scope="module")
def prompts(engine):
    g = torch.Generator().manual_seed(3)
    cfg = engine.config
    out = []
    for i in range(5):
        p = torch.randint(4, cfg.vocab_size, (3 + 5 * i,), generator=g).tolist()
        out.append([t for t in p if t != cfg.mask_token_id])
    return out


@pytest.fixture(scope="module")
def ar_out(engine, prompts):
    return engine.generate(prompts, mode="ar", max_new_tokens=NEW, stop_token_ids=[])


@pytest.mark.parametrize("row_summary", [False, True], ids=["full_rows", "row_summary"])
@pytest.mark.parametrize("block_size", [4, 8])
@pytest.mark.parametrize("count", [1, 3])
def test_greedy_quadratic_with_bonus_candidates_equals_ar(
    engine, prompts, ar_out, count, block_size, row_summary
):
    outs = engine.generate(
        prompts,
        mode="self_spec_quadratic",
        max_new_tokens=NEW,
        block_size=block_size,
        stop_token_ids=[],
        bonus_candidates=count,
        row_summary=row_summary,
    )
    for o, ref in zip(outs, ar_out, strict=True):
        assert o.token_ids == ref.token_ids
        assert sum(o.stats.accept_lengths) == NEW - 1


def test_bonus_candidates_are_used_and_pay_on_the_tiny_model(engine, prompts, monkeypatch):
    """Guard for the test above: some step reads a guessing group (variant > 0)."""
    picked = []
    real = masks.MaskDescriptor.group_slice

    def spy(self, i, variant=0):
        picked.append(variant)
        return real(self, i, variant)

    monkeypatch.setattr(masks.MaskDescriptor, "group_slice", spy)
    engine.generate(prompts, mode="self_spec_quadratic", max_new_tokens=NEW, bonus_candidates=3)
    assert any(v > 0 for v in picked), "no step read a group whose guess was the bonus"
    assert any(v == 0 for v in picked)


@pytest.mark.parametrize("temperature", [0.0, 0.9])
def test_batch_of_n_equals_n_runs_of_one(engine, prompts, temperature):
    kw = dict(
        mode="self_spec_quadratic",
        max_new_tokens=24,
        block_size=4,
        temperature=temperature,
        top_k=20,
        bonus_candidates=2,
    )
    batched = engine.generate(prompts, seed=[100 + i for i in range(len(prompts))], **kw)
    for i, p in enumerate(prompts):
        (single,) = engine.generate([p], seed=100 + i, **kw)
        assert single.token_ids == batched[i].token_ids
        assert single.stats.forwards == batched[i].stats.forwards


def _state(drafts, cands, vocab):
    r = RequestState(
        prompt=[5, 6],
        params=SamplingParams(temperature=0.0),
        max_new_tokens=100,
        stop_token_ids=frozenset(),
        generator=torch.Generator().manual_seed(0),
    )
    r.seed, r.drafts, r.cands = 10, list(drafts), [list(c) for c in cands]
    r.q = torch.nn.functional.one_hot(torch.tensor(drafts), vocab).float()
    return r


def test_step_lays_out_the_guesses_and_reads_the_group_of_the_bonus():
    vocab, mask = 64, 3
    cfg = ModeConfig(mask, 3, accept_rule=get_accept_rule("lossless"), bonus_candidates=2)
    policy = QuadraticSpecPolicy(cfg)
    r = _state([11, 12], [[20, 21], [22, 23]], vocab)
    seg = policy.segment(r)
    assert seg.desc == masks.quadratic(2, 3, 3)
    groups = [
        [3, 3, 3], [20, 3, 3], [21, 3, 3],  # acceptance length 0: masks, then each guess
        [3, 3, 3], [22, 3, 3], [23, 3, 3],  # acceptance length 1
        [3, 3, 3], [3, 3, 3], [3, 3, 3],  # all accepted: no guess for the bonus
    ]  # fmt: skip
    assert seg.tokens == [10, 11, 12] + [t for g in groups for t in g]
    logits = torch.zeros(seg.desc.length, vocab)
    logits[0, 11] = 5.0  # accepts d_1 = 11
    logits[1, 23] = 5.0  # rejects d_2 = 12: the bonus is 23, the second guess at position 2
    for j, row in enumerate(range(*seg.desc.group_slice(1, 2).indices(seg.desc.length))):
        logits[row, 30 + j], logits[row, 40 + j], logits[row, 50 + j] = 9.0, 8.0, 7.0
    keep = policy.consume(r, seg, logits)
    assert keep == 2  # seed and d_1 keep their KV
    assert r.out == [11, 23] and r.seed == 23
    assert r.drafts == [31, 32]  # the group's rows after its first slot
    assert r.cands == [[41, 51], [42, 52]]


def test_a_bonus_no_group_guessed_reads_the_mask_group():
    vocab = 64
    cfg = ModeConfig(3, 3, accept_rule=get_accept_rule("lossless"), bonus_candidates=1)
    policy = QuadraticSpecPolicy(cfg)
    r = _state([11, 12], [[20], [22]], vocab)
    seg = policy.segment(r)
    logits = torch.zeros(seg.desc.length, vocab)
    logits[0, 33] = 5.0  # rejects d_1; bonus 33 was not guessed
    mask_group = range(*seg.desc.group_slice(0, 0).indices(seg.desc.length))
    for j, row in enumerate(mask_group):
        logits[row, 44 + j] = 9.0
    policy.consume(r, seg, logits)
    assert r.out == [33] and r.drafts == [45, 46]


def test_top_candidates_agree_across_row_kinds_and_skip_the_draft():
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(4, 50, generator=g)
    drafts = logits.argmax(-1)
    drafts[2] = logits[2].topk(3).indices[1]  # a draft that is not the row's best
    want = top_candidates(logits, drafts, 2)
    assert all(len(c) == 2 and d not in c for c, d in zip(want, drafts.tolist()))
    assert want[2] == [logits[2].topk(3).indices[0].item(), logits[2].topk(3).indices[2].item()]
    assert top_candidates(GreedyRows.from_logits(logits, 3), drafts, 2) == want
    params = SamplingParams(temperature=0.7)
    rows = SampledRows.lazy(logits, params, torch.full((4,), -1), torch.rand(4, generator=g))
    assert top_candidates(rows, drafts, 2) == want
    with pytest.raises(ValueError, match="top-3"):
        top_candidates(GreedyRows.from_logits(logits), drafts, 2)


@pytest.mark.parametrize("bad", [-1, 1.5, True, 65])
def test_bad_bonus_candidates_name_the_field(engine, prompts, bad):
    with pytest.raises(ValueError, match="bonus_candidates must be an int in"):
        engine.generate(prompts[:1], mode="self_spec_quadratic", bonus_candidates=bad)


def test_bonus_candidates_with_auto_are_refused(engine, prompts):
    with pytest.raises(ValueError, match="bonus_candidates: the auto scheduler"):
        engine.generate(prompts[:1], mode="auto", bonus_candidates=2)


@pytest.mark.parametrize("row_summary", [False, True], ids=["full_rows", "row_summary"])
@pytest.mark.parametrize("lengths", [1, 2])
def test_guesses_for_the_shortest_lengths_only_keep_greedy_equal_to_ar(
    engine, prompts, ar_out, lengths, row_summary
):
    """``bonus_lengths=G``: guessing groups for acceptance lengths ``0..G-1`` only."""
    kw = dict(mode="self_spec_quadratic", max_new_tokens=NEW, stop_token_ids=[], block_size=8)
    outs = engine.generate(
        prompts, bonus_candidates=3, bonus_lengths=lengths, row_summary=row_summary, **kw
    )
    for o, ref in zip(outs, ar_out, strict=True):
        assert o.token_ids == ref.token_ids
        assert sum(o.stats.accept_lengths) == NEW - 1


def test_guesses_for_the_shortest_lengths_are_used(engine, prompts, monkeypatch):
    """Guard for the test above: steps read guessing groups of length 0 and, with
    ``bonus_lengths=1``, never ask for a variant of a longer acceptance length."""
    picked = []
    real = masks.MaskDescriptor.group_slice

    def spy(self, i, variant=0):
        picked.append((i, variant))
        return real(self, i, variant)

    monkeypatch.setattr(masks.MaskDescriptor, "group_slice", spy)
    kw = dict(mode="self_spec_quadratic", max_new_tokens=NEW, stop_token_ids=[])
    engine.generate(prompts, bonus_candidates=3, bonus_lengths=1, **kw)
    assert any(v > 0 for i, v in picked) and all(i == 0 for i, v in picked if v > 0)
    assert any(i > 0 for i, v in picked)


@pytest.mark.parametrize("temperature", [0.0, 0.9])
def test_batch_of_n_equals_n_runs_of_one_with_guessed_lengths(engine, prompts, temperature):
    kw = dict(mode="self_spec_quadratic", max_new_tokens=24, block_size=4, top_k=20)
    kw |= dict(temperature=temperature, bonus_candidates=2, bonus_lengths=1)
    batched = engine.generate(prompts, seed=[100 + i for i in range(len(prompts))], **kw)
    for i, p in enumerate(prompts):
        (single,) = engine.generate([p], seed=100 + i, **kw)
        assert single.token_ids == batched[i].token_ids
        assert single.stats.forwards == batched[i].stats.forwards


def test_step_guesses_only_for_the_shortest_lengths():
    vocab, mask = 64, 3
    cfg = ModeConfig(
        mask, 3, accept_rule=get_accept_rule("lossless"), bonus_candidates=2, bonus_lengths=1
    )
    policy = QuadraticSpecPolicy(cfg)
    r = _state([11, 12], [[20, 21], [22, 23]], vocab)
    seg = policy.segment(r)
    assert seg.desc == masks.quadratic(2, 3, 3, 1)
    groups = [
        [3, 3, 3], [20, 3, 3], [21, 3, 3],  # acceptance length 0: masks, then each guess
        [3, 3, 3],  # acceptance length 1: masks only (its guesses 22, 23 are not laid out)
        [3, 3, 3],  # all accepted
    ]  # fmt: skip
    assert seg.tokens == [10, 11, 12] + [t for g in groups for t in g]
    logits = torch.zeros(seg.desc.length, vocab)
    logits[0, 11] = 5.0  # accepts d_1 = 11
    logits[1, 23] = 5.0  # rejects d_2 = 12: bonus 23, guessed but with no group at length 1
    rows = range(*seg.desc.group_slice(1).indices(seg.desc.length))
    assert list(rows) == [3 + 3 * 3 + j for j in range(3)]  # the fourth group
    for j, row in enumerate(rows):
        logits[row, 30 + j] = 9.0
    policy.consume(r, seg, logits)
    assert r.out == [11, 23] and r.drafts == [31, 32]


@pytest.mark.parametrize(
    "bad,candidates,match",
    [
        (-1, 2, "bonus_lengths must be an int >= 0"),
        (1.5, 2, "bonus_lengths must be an int >= 0"),
        (True, 2, "bonus_lengths must be an int >= 0"),
        (2, 0, "bonus_lengths=2 needs bonus_candidates > 0"),
    ],
)
def test_bad_bonus_lengths_name_the_field(engine, prompts, bad, candidates, match):
    with pytest.raises(ValueError, match=match):
        engine.generate(
            prompts[:1],
            mode="self_spec_quadratic",
            bonus_candidates=candidates,
            bonus_lengths=bad,
        )
