"""Greedy equivalences of the reference engine: every mode's degenerate case equals AR."""

import pytest
import torch

from sglang_trimode import TriModeEngine
from sglang_trimode.reference.tiny import make_tiny_model

MODES = ["ar", "diffusion", "self_spec_linear", "self_spec_quadratic"]


@pytest.fixture(scope="module")
def engine():
    return TriModeEngine(make_tiny_model(seed=0))


def ragged_prompts(n, vocab, mask_id, seed=0):
    g = torch.Generator().manual_seed(seed)
    prompts = []
    for i in range(n):
        length = 3 + (7 * i) % 11
        p = torch.randint(4, vocab, (length,), generator=g).tolist()
        prompts.append([t for t in p if t != mask_id] or [5])
    return prompts


@pytest.fixture(scope="module")
def prompts(engine):
    return ragged_prompts(5, engine.config.vocab_size, engine.config.mask_token_id)


@pytest.fixture(scope="module")
def ar_out(engine, prompts):
    return engine.generate(prompts, mode="ar", max_new_tokens=40, stop_token_ids=[])


@pytest.mark.parametrize("mode", ["self_spec_linear", "self_spec_quadratic"])
@pytest.mark.parametrize("block_size", [4, 8, 32])
@pytest.mark.parametrize("batch", [1, 5])
def test_greedy_self_spec_equals_ar(engine, prompts, ar_out, mode, block_size, batch):
    outs = engine.generate(
        prompts[:batch], mode=mode, max_new_tokens=40, block_size=block_size, stop_token_ids=[]
    )
    for o, ref in zip(outs, ar_out[:batch]):
        assert o.token_ids == ref.token_ids
        assert len(o.token_ids) == 40 and o.finish_reason == "length"
        assert sum(o.stats.accept_lengths) == 40 - 1  # the first token comes from the prefill


def test_self_spec_test_exercises_partial_acceptance(engine, prompts):
    """Guard for the test above: drafts must be accepted sometimes, and rejected sometimes."""
    for mode in ("self_spec_linear", "self_spec_quadratic"):
        outs = engine.generate(prompts, mode=mode, max_new_tokens=40, block_size=8)
        lengths = [a for o in outs for a in o.stats.accept_lengths]
        assert any(a > 1 for a in lengths), f"{mode}: no draft was ever accepted"
        assert any(a == 1 for a in lengths), f"{mode}: every draft was accepted"


def test_diffusion_block_size_one_equals_ar(engine, prompts, ar_out):
    outs = engine.generate(
        prompts, mode="diffusion", max_new_tokens=40, block_size=1, stop_token_ids=[]
    )
    for o, ref in zip(outs, ar_out):
        assert o.token_ids == ref.token_ids
        assert o.stats.forwards == ref.stats.forwards == 39


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("temperature", [0.0, 0.9])
def test_batch_of_n_equals_n_runs_of_one(engine, prompts, mode, temperature):
    kw = dict(mode=mode, max_new_tokens=24, block_size=4, temperature=temperature, top_k=20)
    batched = engine.generate(prompts, seed=[100 + i for i in range(len(prompts))], **kw)
    for i, p in enumerate(prompts):
        (single,) = engine.generate([p], seed=100 + i, **kw)
        assert single.token_ids == batched[i].token_ids
        assert single.stats.forwards == batched[i].stats.forwards


def test_mixed_modes_in_one_batch_equal_their_own_runs(engine, prompts):
    modes = [MODES[i % 4] for i in range(len(prompts))]
    mixed = engine.generate(prompts, mode=modes, max_new_tokens=20, block_size=4)
    for p, m, o in zip(prompts, modes, mixed):
        (single,) = engine.generate([p], mode=m, max_new_tokens=20, block_size=4)
        assert o.token_ids == single.token_ids and o.mode == m


def test_threshold_that_fills_a_block_in_one_step_takes_one_draft_forward(engine, prompts):
    # a threshold below every confidence unmasks the whole block in its first draft forward
    (o,) = engine.generate(
        prompts[:1],
        mode="diffusion",
        max_new_tokens=25,
        block_size=8,
        threshold=1e-9,
        stop_token_ids=[],
    )
    # blocks: 8+8+8 tokens (+1 seed from the prefill); each block = 1 draft + 1 commit forward,
    # and the last block ends at max_new_tokens without a commit pass.
    assert len(o.token_ids) == 25
    assert o.stats.forwards == 2 + 2 + 2 + 1 - 1
    assert o.stats.accept_lengths == [8, 8, 8]


@pytest.mark.parametrize("steps", [1, 2, 7])
def test_even_topk_schedule_takes_exactly_steps_draft_forwards(engine, prompts, steps):
    (o,) = engine.generate(
        prompts[:1],
        mode="diffusion",
        max_new_tokens=8,
        block_size=8,
        threshold=None,
        diffusion_steps=steps,
        stop_token_ids=[],
    )
    assert len(o.token_ids) == 8
    assert o.stats.forwards == steps  # one block of 7 masks, no commit pass at the end


@pytest.mark.parametrize("mode", MODES)
def test_stop_token_truncates_at_its_first_occurrence(engine, prompts, mode):
    kw = dict(mode=mode, max_new_tokens=30, block_size=8)
    (free,) = engine.generate(prompts[2:3], stop_token_ids=[], **kw)
    stop = free.token_ids[12]
    first = free.token_ids.index(stop)
    (o,) = engine.generate(prompts[2:3], stop_token_ids=[stop], **kw)
    assert o.token_ids == free.token_ids[: first + 1]
    assert o.finish_reason == "stop"
    assert o.stats.forwards <= free.stats.forwards


def test_bf16_runs_every_mode(prompts):
    eng = TriModeEngine(make_tiny_model(seed=0).to(torch.bfloat16))
    for mode in MODES:
        (o,) = eng.generate(prompts[:1], mode=mode, max_new_tokens=12, block_size=4)
        assert 1 <= len(o.token_ids) <= 12
