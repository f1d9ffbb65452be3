"""Diffusion's per-block denoising forwards (``RequestStats.denoise_steps``), the figure that
bounds diffusion TPF: a block of ``B`` costs its denoising forwards plus one commit pass."""

import pytest

from sglang_trimode import TriModeEngine
from sglang_trimode.reference.tiny import make_tiny_model
from sglang_trimode.report import summarize

# three prompts of 3, 7 and 12 tokens, none of them the tiny model's mask token (3)
PROMPTS = [[5, 9, 14], [7, 30, 22, 41, 8, 12, 30], list(range(10, 22))]


@pytest.fixture(scope="module")
def engine():
    eng = TriModeEngine(make_tiny_model(seed=0))
    assert all(eng.config.mask_token_id not in p for p in PROMPTS)
    return eng


def run(engine, block, threshold, new=30):
    return engine.generate(
        PROMPTS,
        mode="diffusion",
        max_new_tokens=new,
        block_size=block,
        threshold=threshold,
        stop_token_ids=[],
    )


def masks_per_block(new: int, block: int) -> list[int]:
    """The masks of each block of a request of ``new`` tokens: the prefill gives the first token,
    each block its masks, and each commit pass but the last the next block's seed."""
    left, out = new - 1, []
    while left > 0:
        out.append(min(block - 1, left))
        left -= out[-1]
        left -= 1 if left > 0 else 0  # the commit pass's seed
    return out


@pytest.mark.parametrize("block", [2, 4, 8])
def test_forwards_are_denoising_plus_one_commit_per_finished_block(engine, block):
    for o in run(engine, block, 0.9):
        d = o.stats.denoise_steps
        assert len(d) == len(o.stats.accept_lengths) == len(masks_per_block(30, block))
        assert all(1 <= n <= m for n, m in zip(d, masks_per_block(30, block)))
        # the last block ends the request: no commit pass after it
        assert o.stats.forwards == sum(d) + len(d) - 1


@pytest.mark.parametrize("block", [4, 8])
def test_even_schedule_takes_one_forward_per_mask_and_tiny_threshold_takes_one(engine, block):
    for o in run(engine, block, None):  # no threshold: one token per forward
        assert o.stats.denoise_steps == masks_per_block(30, block)
    for o in run(engine, block, 1e-6):  # every confidence passes: one forward a block
        assert o.stats.denoise_steps == [1] * len(masks_per_block(30, block))


def test_block_size_one_has_no_denoising(engine):
    for o in run(engine, 1, 0.9):
        assert o.stats.denoise_steps == [0] * 29


def test_summary_histogram_counts_blocks_by_denoising_forwards(engine):
    outs = run(engine, 4, None)
    row = summarize(outs, "diffusion", 4, 1.0)
    per_request = masks_per_block(30, 4)  # 29 tokens: 7 blocks of 3 masks + 7 seeds, then 1
    assert per_request == [3] * 7 + [1]
    assert row.denoise_histogram == [0, 1 * 3, 0, 7 * 3]
    assert sum(row.denoise_histogram) == row.steps == len(per_request) * 3
    ar = summarize(engine.generate(PROMPTS, mode="ar", max_new_tokens=5), "ar", 1, 1.0)
    assert ar.denoise_histogram == []
