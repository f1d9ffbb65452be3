"""Statistical tests of sampled self-speculation: its output distribution equals AR sampling.

A tiny-vocabulary model makes the exact AR distribution of a short continuation enumerable. The
test would fail for a wrong acceptance rule (shown with one that resamples from p instead of the
residual), and lossless acceptance accepts at least as many drafts as exact matching.
"""

import itertools
import math

import pytest
import torch

from sglang_trimode import TriModeEngine
from sglang_trimode.reference.tiny import make_tiny_model
from sglang_trimode.rows import SampledRows, inverse_cdf, penalty
from sglang_trimode.sampling import SamplingParams, probs_from_logits, sample

pytestmark = pytest.mark.slow  # chi-square tests over thousands of sampled requests: minutes

VOCAB, PROMPT, NEW, N, TEMP = 6, [1, 4, 5], 4, 4000, 2.0


@pytest.fixture(scope="module")
def engine():
    model = make_tiny_model(
        seed=7, vocab_size=VOCAB, mask_token_id=3, eos_token_id=2, bos_token_id=1, head_std=1.0
    )
    return TriModeEngine(model)


def exact_distribution(
    engine, min_p: float = 0.0, bias: dict[int, float] | None = None, penalties=(0.0, 0.0, 1.0)
):
    """Exact probability of every NEW-token continuation under AR sampling at TEMP (after
    `penalties` (frequency, presence, repetition) on the counts of the output tokens before each
    position, then `bias` on the logits and the `min_p` filter, as SGLang's sampler)."""
    seqs = torch.tensor(list(itertools.product(range(VOCAB), repeat=NEW)))
    ids = torch.cat([torch.tensor(PROMPT).expand(len(seqs), -1), seqs], 1)
    pos = torch.arange(ids.shape[1]).expand_as(ids)
    with torch.no_grad():
        logits = engine.model(ids, pos, None)
    start = len(PROMPT) - 1
    logits = logits[:, start : start + NEW].double()
    freq, pres, rep = penalties
    before = torch.nn.functional.one_hot(seqs, VOCAB).cumsum(1) - torch.nn.functional.one_hot(
        seqs, VOCAB
    )  # [S, NEW, V]: counts of the output tokens before each position (never the prompt)
    logits = logits - freq * before - pres * (before > 0)
    scaled = torch.where(logits < 0, logits * rep, logits / rep)
    logits = torch.where(before > 0, scaled, logits)
    for t, v in (bias or {}).items():
        logits[..., t] += v
    probs = torch.softmax(logits / TEMP, -1)
    if min_p:
        probs = probs * (probs >= min_p * probs.max(-1, keepdim=True).values)
        probs = probs / probs.sum(-1, keepdim=True)
    p = probs.gather(-1, seqs[..., None]).squeeze(-1).prod(-1)
    assert abs(p.sum().item() - 1) < 1e-9
    return {tuple(s.tolist()): float(v) for s, v in zip(seqs, p)}


@pytest.fixture(scope="module")
def exact_ar(engine):
    return exact_distribution(engine)


def chi_square_rejects(samples, exact, alpha_z=3.29):
    """Chi-square goodness of fit on the joint of consecutive token pairs and the marginals."""
    worst = 0.0
    for idx in [(0, 1), (1, 2), (2, 3), (0,), (3,)]:
        expected, observed = {}, {}
        for seq, p in exact.items():
            key = tuple(seq[i] for i in idx)
            expected[key] = expected.get(key, 0.0) + p * len(samples)
        for s in samples:
            key = tuple(s[i] for i in idx)
            observed[key] = observed.get(key, 0) + 1
        # pool the rare cells so that every expected count is >= 5
        big = [k for k, e in expected.items() if e >= 5]
        rare_e = sum(e for k, e in expected.items() if e < 5)
        rare_o = sum(o for k, o in observed.items() if expected.get(k, 0) < 5)
        stat = sum((observed.get(k, 0) - expected[k]) ** 2 / expected[k] for k in big)
        cells = len(big)
        if rare_e > 0:
            stat += (rare_o - rare_e) ** 2 / rare_e
            cells += 1
        df = cells - 1
        # Wilson-Hilferty upper quantile of chi2(df) at z (alpha ~ 5e-4 one-sided)
        crit = df * (1 - 2 / (9 * df) + alpha_z * math.sqrt(2 / (9 * df))) ** 3
        worst = max(worst, stat / crit)
    return worst > 1.0, worst


def run(engine, mode, acceptance, row_summary=False, bonus_candidates=0, **kw):
    outs = engine.generate(
        [PROMPT] * N,
        mode=mode,
        max_new_tokens=NEW,
        block_size=4,
        temperature=TEMP,
        stop_token_ids=[],
        seed=0,
        acceptance=acceptance,
        row_summary=row_summary,
        bonus_candidates=bonus_candidates,
        **kw,
    )
    assert all(len(o.token_ids) == NEW for o in outs)
    return outs


@pytest.mark.parametrize("row_summary", [False, True], ids=["full_rows", "sampled_rows"])
@pytest.mark.parametrize("mode", ["self_spec_linear", "self_spec_quadratic", "ar"])
def test_sampled_self_spec_matches_ar_distribution(engine, exact_ar, mode, row_summary):
    """`row_summary=True`: the SGLang worker's path (`rows.SampledRows`: rows processed in one
    batch, inverse-CDF draws, acceptance from the rows' small tensors, residual on the device)."""
    outs = run(engine, mode, "lossless", row_summary)
    rejects, ratio = chi_square_rejects([tuple(o.token_ids) for o in outs], exact_ar)
    assert not rejects, f"{mode}: chi-square / critical = {ratio:.2f}"


@pytest.mark.parametrize("row_summary", [False, True], ids=["full_rows", "sampled_rows"])
def test_sampled_quadratic_with_bonus_candidates_matches_ar_distribution(
    engine, exact_ar, row_summary
):
    """The drafts a step uses depend on the emitted bonus (the group that guessed it): still a
    proposal from the past only, so lossless acceptance keeps AR's distribution."""
    outs = run(engine, "self_spec_quadratic", "lossless", row_summary, bonus_candidates=2)
    rejects, ratio = chi_square_rejects([tuple(o.token_ids) for o in outs], exact_ar)
    assert not rejects, f"bonus candidates: chi-square / critical = {ratio:.2f}"


FILTERED = {"min_p": 0.3, "logit_bias": {4: 1.0}}


@pytest.mark.parametrize(
    ("mode", "row_summary"),
    [("self_spec_linear", True), ("self_spec_quadratic", False), ("self_spec_quadratic", True)],
)
def test_sampled_self_spec_under_min_p_and_logit_bias_matches_ar(engine, mode, row_summary):
    """min_p and logit_bias on every row that verifies or drafts: lossless acceptance keeps the
    filtered AR distribution; the plain AR distribution is rejected (the filters show)."""
    exact = exact_distribution(engine, FILTERED["min_p"], FILTERED["logit_bias"])
    samples = [tuple(o.token_ids) for o in run(engine, mode, "lossless", row_summary, **FILTERED)]
    rejects, ratio = chi_square_rejects(samples, exact)
    assert not rejects, f"{mode}: chi-square / critical = {ratio:.2f}"
    assert chi_square_rejects(samples, exact_distribution(engine))[0]


PENALISED = {"frequency_penalty": 1.0, "presence_penalty": 0.5, "repetition_penalty": 2.0}


@pytest.fixture(scope="module")
def exact_penalised(engine):
    return exact_distribution(engine, penalties=tuple(PENALISED.values()))


@pytest.mark.parametrize(
    ("mode", "row_summary"),
    [("self_spec_linear", True), ("self_spec_quadratic", True)],
)
def test_sampled_self_spec_under_penalties_matches_penalised_ar(
    engine, exact_penalised, mode, row_summary
):
    """Penalties on every verify row with the counts as if the drafts before it were accepted:
    lossless acceptance keeps the penalised AR distribution, which the plain one is not."""
    outs = run(engine, mode, "lossless", row_summary, **PENALISED)
    samples = [tuple(o.token_ids) for o in outs]
    rejects, ratio = chi_square_rejects(samples, exact_penalised)
    assert not rejects, f"{mode}: chi-square / critical = {ratio:.2f}"
    assert chi_square_rejects(samples, exact_distribution(engine))[0]
    assert sum(a > 1 for o in outs for a in o.stats.accept_lengths) > N // 10  # drafts accepted


def test_the_distribution_test_catches_verify_rows_that_ignore_the_drafts(
    engine, exact_penalised, monkeypatch
):
    """Mutation check: each row counts the committed output and the seed, not the drafts."""
    real = penalty.path_pairs

    def seed_only(desc):
        rows, cols, own = real(desc)
        keep = cols == 0
        return rows[keep], cols[keep], own[keep]

    monkeypatch.setattr(penalty, "path_pairs", seed_only)
    outs = run(engine, "self_spec_linear", "lossless", row_summary=True, **PENALISED)
    rejects, ratio = chi_square_rejects([tuple(o.token_ids) for o in outs], exact_penalised)
    assert rejects, f"drafts' counts ignored, not detected: chi-square / critical = {ratio:.2f}"


def test_the_distribution_test_catches_a_wrong_residual_on_sampled_rows(
    engine, exact_ar, monkeypatch
):
    """Mutation check of the `SampledRows` path: a residual draw from p instead of
    norm(max(0, p - q)) must be detected."""

    def from_p(self, q, j, uniform):
        return int(inverse_cdf(self.probs[j][None].float(), uniform.reshape(1))[0])

    monkeypatch.setattr(SampledRows, "residual_draw", from_p)
    outs = run(engine, "self_spec_linear", "lossless", row_summary=True)
    rejects, ratio = chi_square_rejects([tuple(o.token_ids) for o in outs], exact_ar)
    assert rejects, f"wrong residual not detected: chi-square / critical = {ratio:.2f}"


def accept_resample_from_p(drafts, q, p, generator, greedy):
    """A wrong rule: min(1, p/q) acceptance but resampling from p instead of the residual."""
    for j in range(drafts.shape[0]):
        d = int(drafts[j])
        if float(torch.rand((), generator=generator)) >= min(1.0, float(p[j, d] / q[j, d])):
            return j, int(sample(p[j][None], generator, greedy)[0])
    return drafts.shape[0], int(sample(p[-1][None], generator, greedy)[0])


def test_the_distribution_test_catches_a_wrong_acceptance_rule(engine, exact_ar):
    outs = run(engine, "self_spec_linear", accept_resample_from_p)
    rejects, ratio = chi_square_rejects([tuple(o.token_ids) for o in outs], exact_ar)
    assert rejects, f"wrong rule not detected: chi-square / critical = {ratio:.2f}"


def test_lossless_accepts_at_least_as_much_as_exact_matching(engine):
    def accepted(acceptance):
        outs = run(engine, "self_spec_linear", acceptance)
        return torch.tensor([a - 1.0 for o in outs for a in o.stats.accept_lengths])

    lossless, exact = accepted("lossless"), accepted("exact_match")
    se = math.sqrt(lossless.var() / len(lossless) + exact.var() / len(exact))
    assert lossless.mean() >= exact.mean() - 4 * se
    assert lossless.mean() > 0.05  # drafts are accepted at all


def test_greedy_probs_are_one_hot_and_filters_renormalise():
    logits = torch.tensor([[1.0, 3.0, 2.0, -1.0]])
    assert probs_from_logits(logits, SamplingParams()).tolist() == [[0.0, 1.0, 0.0, 0.0]]
    p = probs_from_logits(logits, SamplingParams(temperature=1.0, top_k=2))
    assert p[0, 0] == 0 and p[0, 3] == 0 and abs(p.sum() - 1) < 1e-6
    p = probs_from_logits(logits, SamplingParams(temperature=1.0, top_p=0.5))
    assert p[0].tolist() == [0.0, 1.0, 0.0, 0.0]  # the top token alone holds >= 0.5
    p = probs_from_logits(
        torch.log(torch.tensor([[0.1, 0.5, 0.3, 0.1]])), SamplingParams(1.0, min_p=0.5)
    )
    torch.testing.assert_close(p, torch.tensor([[0.0, 0.625, 0.375, 0.0]]))  # >= 0.5 x 0.5 stay


@pytest.mark.parametrize(
    "kwargs, field",
    [
        (dict(temperature=-1), "temperature"),
        (dict(top_p=0), "top_p"),
        (dict(top_k=-2), "top_k"),
        (dict(min_p=1.5), "min_p"),
    ],
)
def test_sampling_params_reject_bad_values(kwargs, field):
    with pytest.raises(ValueError, match=field):
        SamplingParams(**kwargs)
