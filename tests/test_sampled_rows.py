"""`rows.SampledRows` (what a sampled request reads from logits rows that stay on the device)
against the per-request reference functions of `sampling`: the batched per-row filters equal
`probs_from_logits`, the inverse-CDF draw hits each token with its probability, the acceptance
of drafts is distributed as lossless speculative sampling says (and a wrong residual is caught),
a batch equals its requests one by one, and near-zero temperature equals greedy end to end."""

from __future__ import annotations

import math

import pytest
import torch

from sglang_trimode import TriModeEngine
from sglang_trimode.reference.tiny import make_tiny_model
from sglang_trimode.rows import SampledRows, inverse_cdf, processed_probs, request_rows
from sglang_trimode.rows.sampled import _Processed
from sglang_trimode.sampling import SamplingParams, accept_lossless, probs_from_logits

V = 9
#: the device the logits live on: the CPU here; bench/gpu_check.sh runs the cuda cases on a GPU
DEVICES = [
    "cpu",
    pytest.param(
        "cuda",
        marks=pytest.mark.skipif(
            not torch.cuda.is_available(), reason="no CUDA device (bench/gpu_check.sh runs these)"
        ),
    ),
]
SETTINGS = [
    SamplingParams(temperature=1.0),
    SamplingParams(temperature=0.5, top_k=3),
    SamplingParams(temperature=1.3, top_p=0.7),
    SamplingParams(temperature=0.8, top_k=5, top_p=0.5),
    SamplingParams(temperature=2.0, top_k=1),
    SamplingParams(temperature=1.0, top_k=V, top_p=0.05),
    SamplingParams(temperature=1.0, min_p=0.2),
    SamplingParams(temperature=0.7, top_k=6, top_p=0.9, min_p=0.05),
]


def _logits(seed: int, n: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, V, generator=g) * (torch.rand(n, 1, generator=g) * 6)


def test_processed_probs_equal_the_per_request_filters():
    logits = _logits(0, 4 * len(SETTINGS))
    per_row = [p for p in SETTINGS for _ in range(4)]
    got = processed_probs(
        logits,
        torch.tensor([p.temperature for p in per_row]),
        torch.tensor([p.top_k for p in per_row]),
        torch.tensor([p.top_p for p in per_row]),
        torch.tensor([p.min_p for p in per_row]),
    )
    for i, p in enumerate(SETTINGS):
        want = probs_from_logits(logits[4 * i : 4 * i + 4], p)
        torch.testing.assert_close(got[4 * i : 4 * i + 4], want, rtol=1e-6, atol=1e-7)
        assert torch.equal(got[4 * i : 4 * i + 4] > 0, want > 0), p  # the same tokens survive


def test_inverse_cdf_hits_each_token_with_its_probability():
    probs = torch.tensor([[0.0, 0.1, 0.0, 0.6, 0.3, 0.0], [0.5, 0.0, 0.0, 0.0, 0.0, 0.5]])
    m = 10_000
    u = (torch.arange(m) + 0.5) / m  # an even grid: counts are m * p up to one per boundary
    for row in probs:
        tokens = inverse_cdf(row.expand(m, -1), u)
        counts = torch.bincount(tokens, minlength=row.numel()).float() / m
        assert torch.all((counts - row).abs() <= 2 / m), (counts, row)
    # zero-mass tokens are never drawn, even at the edges of [0, 1) or unnormalised mass
    edge = torch.tensor([0.0, 1e-12, 1 - 1e-9, 0.999999])
    got = inverse_cdf(probs[:1].expand(4, -1) * 3.0, edge)
    assert torch.all(probs[0, got] > 0), got


def _rows(params, lens, seed, device="cpu"):
    logits = _logits(seed, sum(lens))
    g = torch.Generator().manual_seed(seed)
    nxt = torch.randint(0, V, (sum(lens),), generator=g)
    return logits.to(device), nxt, torch.rand(sum(lens), generator=g)


@pytest.mark.parametrize("device", DEVICES)
def test_a_batch_equals_its_requests_one_by_one(device):
    lens = [3, 1, 5, 2, 4, 6, 2, 3]  # one request per setting
    logits, nxt, uni = _rows(SETTINGS, lens, 1, device)
    batch = SampledRows.batch(logits, SETTINGS, lens, nxt, uni)
    start = 0
    for p, n, got in zip(SETTINGS, lens, batch):
        sl = slice(start, start + n)
        (one,) = SampledRows.batch(logits[sl], [p], [n], nxt[sl], uni[sl])
        for name in ("draw", "draw_prob", "draw_conf", "next_token", "next_prob"):
            assert torch.equal(getattr(got, name), getattr(one, name)), name
        torch.testing.assert_close(got.probs, one.probs, rtol=0, atol=0)
        # the small tensors are what the device rows say
        want = probs_from_logits(logits[sl].cpu(), p)
        torch.testing.assert_close(got.draw_prob, want.gather(-1, got.draw[:, None])[:, 0])
        conf = torch.softmax(logits[sl].cpu(), -1).gather(-1, got.draw[:, None])[:, 0]
        torch.testing.assert_close(got.draw_conf, conf)
        torch.testing.assert_close(got.next_prob, want.gather(-1, nxt[sl][:, None])[:, 0])
        start += n


@pytest.mark.parametrize("device", DEVICES)
def test_lazy_rows_equal_the_batch_processed_ones(device):
    """`SampledRows.lazy` (a quadratic step's rows, processed where and when read) gives the
    values the batched pass gives, slice by slice."""
    lens = [12, 5]
    logits, nxt, uni = _rows(SETTINGS[:2], lens, 3, device)
    eager = SampledRows.batch(logits, SETTINGS[:2], lens, nxt, uni)[0]
    lazy = SampledRows.lazy(logits[:12], SETTINGS[0], nxt[:12], uni[:12])
    for key in (slice(0, 4), slice(4, 12), torch.tensor([1, 7, 9]), 5):
        a, b = eager[key], lazy[key]
        assert b._processed is None  # nothing processed before it is read
        for name in ("draw", "draw_prob", "draw_conf", "next_prob", "probs"):
            assert torch.equal(getattr(a, name), getattr(b, name)), (key, name)
    assert lazy._processed is None  # reading slices processes those slices only


def test_sampled_rows_refuse_other_params_and_other_tokens():
    logits, nxt, uni = _rows(SETTINGS[:1], [4], 2)
    (rows,) = SampledRows.batch(logits, SETTINGS[:1], [4], nxt, uni)
    with pytest.raises(ValueError, match="processed with"):
        probs_from_logits(rows, SamplingParams(temperature=0.5))
    from sglang_trimode.sampling import confidence

    with pytest.raises(ValueError, match="draw of each row only"):
        confidence(rows, (rows.draw + 1) % V)
    q = probs_from_logits(rows[:3], SETTINGS[0])
    with pytest.raises(ValueError, match="drafts must be q's draws"):
        accept_lossless((q.draw + 1) % V, q, rows, torch.Generator(), False)


def _acceptance_counts(k, p, q, drafts, trials, residual_from_p=False):
    """(accepted, next) of `accept_lossless` on SampledRows, fresh p rows (draws) per trial;
    the rows live on the device of `p` and `q`."""
    params = SamplingParams(temperature=1.0)
    logits_p = torch.log(p)  # processed at T=1 with no filter: probs == p
    q_draft = q.cpu().gather(-1, drafts[:, None])[:, 0]
    done = _Processed(drafts, q_draft, q_draft, torch.zeros(k), q)  # q's draws are the drafts
    q_rows = SampledRows(None, params, torch.full((k,), -1), torch.zeros(k), done)
    g = torch.Generator().manual_seed(3)
    nxt = torch.cat([drafts, torch.tensor([-1])])
    counts = torch.zeros(k + 1, V)
    p_rows = SampledRows.batch(
        logits_p.repeat(trials, 1), [params] * trials, [k + 1] * trials,
        nxt.repeat(trials), torch.rand(trials * (k + 1), generator=g),
    )  # fmt: skip
    for rows in p_rows:
        if residual_from_p:
            rows = _ResidualFromP(rows.logits, params, rows.next_token, rows.uniform, rows._rows())
        a, t = accept_lossless(drafts, q_rows, rows, g, False)
        counts[a, t] += 1
    return counts


class _ResidualFromP(SampledRows):
    """A wrong rule: after a rejection, draw from p_j instead of norm(max(0, p_j - q_j))."""

    def residual_draw(self, q, j, uniform):
        return int(inverse_cdf(self.probs[j][None], uniform.reshape(1))[0])


def _expected(k, p, q, drafts):
    """Leviathan et al. Alg. 1 with fixed drafts: P(a = m, next = v)."""
    out = torch.zeros(k + 1, V, dtype=torch.float64)
    p, q = p.double(), q.double()
    alive = 1.0
    for j in range(k):
        d = int(drafts[j])
        acc = min(1.0, float(p[j, d] / q[j, d]))
        res = (p[j] - q[j]).clamp_min(0)
        res = res / res.sum() if res.sum() > 0 else p[j]
        out[j] = alive * (1 - acc) * res
        alive *= acc
    out[k] = alive * p[k]
    return out


def _chi2_ratio(counts, expected, trials):
    e = expected.flatten() * trials
    o = counts.flatten().double()
    big = e >= 5
    stat = float(((o[big] - e[big]) ** 2 / e[big]).sum())
    rare_e, rare_o = float(e[~big].sum()), float(o[~big].sum())
    df = int(big.sum()) - 1
    if rare_e > 0:
        stat += (rare_o - rare_e) ** 2 / rare_e
        df += 1
    crit = df * (1 - 2 / (9 * df) + 3.29 * math.sqrt(2 / (9 * df))) ** 3
    return stat / crit


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("seed", [0, 1])
def test_lossless_acceptance_on_sampled_rows_has_the_exact_distribution(seed, device):
    k, trials = 3, 6000
    g = torch.Generator().manual_seed(seed)
    p = torch.softmax(torch.randn(k + 1, V, generator=g) * 1.5, -1)
    q = torch.softmax(torch.randn(k, V, generator=g) * 1.5, -1)
    drafts = torch.multinomial(q, 1, generator=g)[:, 0]
    expected = _expected(k, p, q, drafts)
    p, q = p.to(device), q.to(device)
    counts = _acceptance_counts(k, p, q, drafts, trials)
    assert counts.sum() == trials
    assert _chi2_ratio(counts, expected, trials) < 1.0
    wrong = _acceptance_counts(k, p, q, drafts, trials, residual_from_p=True)
    assert _chi2_ratio(wrong, expected, trials) > 1.0, "a wrong residual must be detected"


@pytest.fixture(scope="module", params=DEVICES)
def engine(request):
    model = make_tiny_model(seed=3, vocab_size=48, mask_token_id=47, head_std=1.0)
    return TriModeEngine(model.to(request.param))


PROMPTS = [[1, 4, 5], [1, 6, 7, 8, 9, 10], [1, 11]]
MODES = ["ar", "diffusion", "self_spec_linear", "self_spec_quadratic"]


@pytest.mark.parametrize("mode", MODES)
def test_sampled_rows_batch_of_n_equals_n_batches_of_one(engine, mode):
    kw = dict(mode=mode, max_new_tokens=14, block_size=4, stop_token_ids=[], temperature=1.0)
    kw |= dict(top_p=0.9, top_k=20, row_summary=True, logprobs=True, top_logprobs=2)
    batch = engine.generate(PROMPTS, seed=[5, 6, 7], **kw)
    for i, prompt in enumerate(PROMPTS):
        (one,) = engine.generate([prompt], seed=5 + i, **kw)
        assert one.token_ids == batch[i].token_ids
        assert one.stats == batch[i].stats
        # fp32 forwards of a ragged batch and of one request differ in the last bits
        lp_one, lp_batch = torch.tensor(one.logprobs), torch.tensor(batch[i].logprobs)
        torch.testing.assert_close(lp_one, lp_batch, rtol=1e-4, atol=1e-4)
        assert [ids for _, ids in one.top_logprobs] == [ids for _, ids in batch[i].top_logprobs]


@pytest.mark.parametrize("mode", MODES)
def test_sampled_rows_near_zero_temperature_equal_greedy(engine, mode):
    kw = dict(mode=mode, max_new_tokens=14, block_size=4, stop_token_ids=[])
    greedy = engine.generate(PROMPTS, **kw)
    cold = engine.generate(PROMPTS, temperature=1e-5, row_summary=True, **kw)
    assert [o.token_ids for o in cold] == [o.token_ids for o in greedy]
    assert [o.stats for o in cold] == [o.stats for o in greedy]


def test_request_rows_mixes_greedy_sampled_and_idle_requests(engine):
    """One packed forward: a greedy request gets `GreedyRows`, a sampled one `SampledRows` of
    its own rows, an idle one None; a mismatch of rows and segments is an error."""
    from sglang_trimode import masks
    from sglang_trimode.modes import RequestState, Segment

    def state(t):
        g = torch.Generator().manual_seed(0)
        return RequestState([1], SamplingParams(temperature=t), 8, frozenset(), g)

    segs = [Segment([1, 2, 3], masks.linear_verify(3)), None, Segment([4, 5], masks.commit(2))]
    logits = _logits(4, 5).to(engine.device)
    got = request_rows(logits, [state(0.0), state(1.0), state(0.7)], segs)
    assert torch.equal(got[0].top, logits[:3].argmax(-1).cpu())
    assert got[1] is None
    assert isinstance(got[2], SampledRows) and torch.equal(got[2].logits, logits[3:])
    assert got[2].next_token.tolist() == [5, -1]
    with pytest.raises(RuntimeError, match="4 logits rows for 5 tokens"):
        request_rows(logits[:4], [state(0.0), state(1.0), state(0.7)], segs)
