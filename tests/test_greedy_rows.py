"""`GreedyRows` (argmax + its probability per row: what a device forward hands the CPU for a
greedy request) against the full logits rows, and `accept_greedy` against the general
lossless / exact-match loops on one-hot distributions."""

from __future__ import annotations

import pytest
import torch

from sglang_trimode import modes
from sglang_trimode.sampling import (
    GreedyRows,
    SamplingParams,
    accept_exact_match,
    accept_greedy,
    accept_lossless,
    confidence,
    get_accept_rule,
    probs_from_logits,
)

V = 11
MASK = V - 1


def _one_hot(ids: torch.Tensor) -> torch.Tensor:
    return torch.nn.functional.one_hot(ids, V).float()


@pytest.mark.parametrize("seed", range(40))
def test_accept_greedy_equals_general_rules_on_one_hot(seed):
    g = torch.Generator().manual_seed(seed)
    k = int(torch.randint(0, 6, (), generator=g))
    target = torch.randint(0, 3, (k + 1,), generator=g)  # small range: many matches
    drafts = torch.randint(0, 3, (k,), generator=g)
    p, q = _one_hot(target), _one_hot(drafts)
    want = accept_greedy(drafts, p)
    # the general loops (greedy=False) on one-hot p, q are deterministic and must agree
    assert accept_lossless(drafts, q, p, torch.Generator().manual_seed(1), False) == want
    assert accept_exact_match(drafts, q, p, torch.Generator().manual_seed(1), False) == want
    assert accept_greedy(drafts, GreedyRows(target, torch.ones(k + 1), V)) == want
    j = next((i for i in range(k) if drafts[i] != target[i]), k)
    assert want == (j, int(target[j]))


def _logits(g: torch.Generator, n: int) -> torch.Tensor:
    """Rows with a spread of peakedness, so diffusion confidences fall on both sides of 0.9."""
    scale = torch.rand(n, 1, generator=g) * 12.0
    return torch.randn(n, V, generator=g) * scale


def _state(prompt_seed: int) -> modes.RequestState:
    return modes.RequestState(
        prompt=[1, 2, 3],
        params=SamplingParams(),
        max_new_tokens=40,
        stop_token_ids=frozenset({V - 2}),
        generator=torch.Generator().manual_seed(prompt_seed),
        seed=prompt_seed % (V - 2),
        logprobs=[],
        top_logprobs_num=2,
    )


def _policy(mode: str, block: int, rule) -> modes.ARPolicy:
    cfg = modes.ModeConfig(mask_token_id=MASK, block_size=block, threshold=0.9, accept_rule=rule)
    return modes.get_policy(mode, cfg)


@pytest.mark.parametrize("mode", ["ar", "diffusion", "self_spec_linear", "self_spec_quadratic"])
@pytest.mark.parametrize("block", [1, 4, 8])
@pytest.mark.parametrize("seed", range(3))
def test_policies_read_greedy_rows_like_full_logits(mode, block, seed):
    policy = _policy(mode, block, get_accept_rule("lossless"))
    full, summary = _state(seed), _state(seed)
    g = torch.Generator().manual_seed(100 + seed)
    for _ in range(60):
        if full.done:
            break
        seg = policy.segment(full)
        assert policy.segment(summary) == seg
        logits = _logits(g, seg.desc.length)
        keep_full = policy.consume(full, seg, logits)
        keep_summary = policy.consume(summary, seg, GreedyRows.from_logits(logits, top_k=3))
        assert keep_full == keep_summary
        assert (full.out, full.seed, full.block, full.masked, full.drafts) == (
            summary.out,
            summary.seed,
            summary.block,
            summary.masked,
            summary.drafts,
        )
        assert full.stats == summary.stats
        assert len(full.logprobs) == len(full.out)
        torch.testing.assert_close(torch.tensor(summary.logprobs), torch.tensor(full.logprobs))
        assert [i for _, i in summary.top_logprobs] == [i for _, i in full.top_logprobs]
        assert all(len(i) == 2 for _, i in full.top_logprobs)
        torch.testing.assert_close(
            torch.tensor([v for v, _ in summary.top_logprobs]),
            torch.tensor([v for v, _ in full.top_logprobs]),
        )
    assert full.done and full.out, "the run must reach its end (stop token or max_new_tokens)"


def test_greedy_rows_index_like_the_tensor():
    logits = torch.randn(3, 5, V)
    rows = GreedyRows.from_logits(logits)
    assert rows.shape == (3, 5, V)
    assert torch.equal(rows.top, logits.argmax(-1))
    assert torch.allclose(rows.prob, torch.softmax(logits, -1).amax(-1))
    sub = rows[1, 1:4]
    assert torch.equal(sub.top, logits[1, 1:4].argmax(-1))
    idx = torch.tensor([0, 2])
    assert torch.equal(rows[2][idx].top, logits[2][idx].argmax(-1))
    assert torch.equal(confidence(rows[0], rows[0].top), confidence(logits[0], rows[0].top))


def test_greedy_rows_refuse_sampling_and_other_tokens():
    rows = GreedyRows.from_logits(torch.randn(4, V))
    with pytest.raises(ValueError, match="full logits rows"):
        probs_from_logits(rows, SamplingParams(temperature=0.7))
    with pytest.raises(ValueError, match="argmax token only"):
        confidence(rows, (rows.top + 1) % V)
    with pytest.raises(ValueError, match="dim=-1"):
        rows.argmax(0)


def test_rows_without_probabilities_refuse_to_give_them():
    """`with_prob=False` (no diffusion confidence nor logprob reads in the forward) skips the
    softmax; a read of the probability is then a clear error, never a wrong value."""
    logits = torch.randn(4, V, generator=torch.Generator().manual_seed(3))
    rows = GreedyRows.from_logits(logits, with_prob=False)
    assert rows.prob is None and torch.equal(rows.top, logits.argmax(-1))
    assert torch.equal(rows[1:].top, logits[1:].argmax(-1))
    with pytest.raises(ValueError, match="built without probabilities"):
        confidence(rows, rows.top)
    one_hot = probs_from_logits(rows, SamplingParams())  # greedy reads need no probability
    assert torch.equal(one_hot.top, rows.top) and torch.equal(one_hot.prob, torch.ones(4))


@pytest.mark.parametrize("rule", ["lossless", "exact_match"])
@pytest.mark.parametrize("block", [1, 2, 4, 8])
@pytest.mark.parametrize("seed", range(4))
def test_linear_argmax_path_equals_the_tensor_path(rule, block, seed):
    """A greedy linear request without logprobs runs its step on Python ints
    (`LinearSpecPolicy._consume_argmax`); its tokens, seeds, drafts, kept counts and accept
    lengths equal the tensor path's (full logits) over whole runs with partial acceptances."""
    policy = _policy("self_spec_linear", block, get_accept_rule(rule))
    full, ints = _state(seed), _state(seed)
    full.logprobs = ints.logprobs = ints.top_logprobs = full.top_logprobs = None
    full.stop_token_ids = ints.stop_token_ids = frozenset()  # long runs: many verify steps
    g = torch.Generator().manual_seed(200 + seed)
    lengths = set()
    for _ in range(80):
        if full.done:
            break
        seg = policy.segment(full)
        assert policy.segment(ints) == seg
        logits = _logits(g, seg.desc.length)
        if full.q is not None:  # verify rows: the argmax before draft j is draft j 3 times in 4
            hit = torch.rand(len(full.drafts), generator=g) < 0.75
            for j in hit.nonzero().flatten().tolist():
                logits[j, full.drafts[j]] = 100.0
        rows = GreedyRows.from_logits(logits, with_prob=False)
        assert policy._argmax_only(ints, rows) and not policy._argmax_only(full, logits)
        assert policy.consume(full, seg, logits) == policy.consume(ints, seg, rows)
        assert (full.out, full.seed, full.drafts) == (ints.out, ints.seed, ints.drafts)
        assert (full.q is None) == (ints.q is None)
        assert full.stats == ints.stats
        lengths.update(full.stats.accept_lengths)
    assert full.done and len(full.out) == full.max_new_tokens
    if block > 2:
        assert len(lengths) > 1, "partial and full acceptances both occur"


def test_a_custom_accept_rule_keeps_the_tensor_path():
    """Only the built-in rules are known to read the argmax alone when greedy."""
    rule = lambda d, q, p, gen, greedy: accept_lossless(d, q, p, gen, greedy)  # noqa: E731
    policy = _policy("self_spec_linear", 4, rule)
    r = _state(0)
    r.logprobs = r.top_logprobs = None
    rows = GreedyRows.from_logits(torch.randn(4, V), with_prob=False)
    assert not policy._argmax_only(r, rows)
