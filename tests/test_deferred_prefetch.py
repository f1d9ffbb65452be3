"""Greedy quadratic steps read their mask group from ONE head call for the whole batch
(`rows._greedy_groups`): the group each request will read is predicted from the causal rows'
argmax, computed for all requests together, and the policies then read exactly the tokens they
read from full logits rows, without a further head call. A wrong prediction would still be
correct (the group is computed when read); the counter shows the prediction is right."""

from __future__ import annotations

import pytest
import torch

from sglang_trimode import modes
from sglang_trimode.rows import eager_row_index, request_rows
from sglang_trimode.sampling import SamplingParams, get_accept_rule

V, MASK, BLOCK = 13, 12, 4


def _state(seed: int, greedy: bool) -> modes.RequestState:
    params = SamplingParams() if greedy else SamplingParams(temperature=0.8)
    return modes.RequestState(
        prompt=[1, 2],
        params=params,
        max_new_tokens=30,
        stop_token_ids=frozenset(),
        generator=torch.Generator().manual_seed(seed),
        seed=seed % 5,
    )


def _logits(g: torch.Generator, seg) -> torch.Tensor:
    """Random rows whose causal argmax often repeats the drafts (so steps accept some)."""
    out = torch.randn(seg.desc.length, V, generator=g)
    for j, d in enumerate(seg.tokens[1 : seg.desc.num_causal]):
        if torch.rand((), generator=g) < 0.7:
            out[j, d] += 8.0
    return out


@pytest.mark.parametrize("candidates", [0, 2])
@pytest.mark.parametrize("seed", range(4))
def test_one_head_call_per_step_and_the_same_tokens(candidates, seed):
    cfg = modes.ModeConfig(
        mask_token_id=MASK,
        block_size=BLOCK,
        accept_rule=get_accept_rule("lossless"),
        bonus_candidates=candidates,
    )
    policy = modes.get_policy("self_spec_quadratic", cfg)
    greedy = [True, True, False, True]  # a sampled request beside: computed when read
    ours = [_state(seed * 10 + i, gr) for i, gr in enumerate(greedy)]
    twin = [_state(seed * 10 + i, gr) for i, gr in enumerate(greedy)]
    g = torch.Generator().manual_seed(seed)
    accepted = 0
    for _ in range(12):
        segs = [policy.segment(r) for r in ours]
        assert segs == [policy.segment(r) for r in twin]
        rows_of = [_logits(g, s) for s in segs]
        full = torch.cat(rows_of)
        calls = []

        def head(idx, full=full, calls=calls):
            calls.append(idx.numel())
            return full[idx]

        eager = eager_row_index([s.desc for s in segs])
        rows = request_rows(full[eager], ours, segs, head)
        assert len(calls) == 1  # every greedy request's group, in one call
        for r, t, seg, rr, lo in zip(ours, twin, segs, rows, rows_of, strict=True):
            before = len(r.out)
            keep = policy.consume(r, seg, rr)
            if not r.params.greedy:  # its draws come from request_rows' uniforms: not the twin's
                t.out, t.drafts, t.seed, t.q, t.cands = r.out[:], r.drafts, r.seed, r.q, r.cands
                continue
            assert keep == policy.consume(t, seg, lo)
            accepted += len(r.out) - before - 1
            assert (r.out, r.drafts, r.seed, r.cands) == (t.out, t.drafts, t.seed, t.cands)
        assert len(calls) == 2  # + the sampled request's group, read when its policy asked
    assert accepted > 0, "the steps must accept drafts for the prediction to matter"
