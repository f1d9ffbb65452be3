"""Property tests of the mask algebra (hypothesis) and its degenerate cases."""

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from sglang_trimode import masks
from sglang_trimode.masks import MaskKind


@settings(max_examples=60, deadline=None)
@given(k=st.integers(0, 9), g=st.integers(1, 9))
def test_quadratic_drafts_are_causal(k, g):
    desc = masks.quadratic(k, g)
    m = masks.segment_mask(desc)
    n_causal = desc.num_causal
    assert torch.equal(m[:n_causal, :n_causal], torch.ones(n_causal, n_causal).tril().bool())
    # drafts never see mask groups
    assert not m[:n_causal, n_causal:].any()


@settings(max_examples=80, deadline=None)
@given(k=st.integers(0, 9), g=st.integers(1, 9), nv=st.integers(1, 3), guessed=st.integers(0, 11))
def test_quadratic_group_sees_exactly_drafts_upto_i_and_itself(k, g, nv, guessed):
    desc = masks.quadratic(k, g, nv, guessed)
    n_guessed = k + 1 if guessed == 0 else min(guessed, k + 1)  # 0 or too many: every length
    assert desc.guessed == n_guessed
    # groups in segment order: acceptance length, then variant; nv for the shortest lengths
    order = [(i, v) for i in range(k + 1) for v in range(nv if i < n_guessed else 1)]
    assert desc.length == (k + 1) + len(order) * g == desc.num_causal + desc.num_groups * g
    m = masks.segment_mask(desc)
    n_causal = desc.num_causal
    for j, (i, v) in enumerate(order):
        assert desc.acceptance_of(j) == i and desc.group_index(i, v) == j
        rows = m[desc.group_slice(i, v)]
        expected_causal = torch.arange(n_causal) <= i
        assert torch.equal(rows[:, :n_causal], expected_causal.expand(g, -1))
        expected_masks = torch.zeros(desc.length - n_causal, dtype=torch.bool)
        expected_masks[j * g : (j + 1) * g] = True
        assert torch.equal(rows[:, n_causal:], expected_masks.expand(g, -1))
    if n_guessed <= k:  # the first length without guesses has one group
        with pytest.raises(IndexError, match="variant 1"):
            desc.group_slice(n_guessed, 1)


@settings(max_examples=60, deadline=None)
@given(k=st.integers(0, 9), g=st.integers(1, 9), nv=st.integers(1, 3), guessed=st.integers(0, 4))
def test_quadratic_positions(k, g, nv, guessed):
    desc = masks.quadratic(k, g, nv, guessed)
    off = masks.offsets(desc)
    assert off.numel() == desc.length
    assert off[: desc.num_causal].tolist() == list(range(k + 1))
    for i in range(desc.num_causal):
        for v in range(desc.variants_of(i)):
            assert off[desc.group_slice(i, v)].tolist() == list(range(i + 1, i + 1 + g))


def test_variants_are_validated():
    with pytest.raises(ValueError, match="variants"):
        masks.MaskDescriptor(MaskKind.BLOCK, 4, 4, 0, 2)
    with pytest.raises(ValueError, match="variants"):
        masks.quadratic(2, 4, 0)
    with pytest.raises(IndexError, match="variant 2"):
        masks.quadratic(2, 4, 2).group_slice(0, 2)
    with pytest.raises(ValueError, match="guessed must be 0 for BLOCK"):
        masks.MaskDescriptor(MaskKind.BLOCK, 4, 4, 0, 1, 2)
    with pytest.raises(ValueError, match="guessed must be 0 .all. or 1..num_causal=3"):
        masks.MaskDescriptor(MaskKind.QUADRATIC, 3 + 3 * 4, 4, 3, 1, 4)
    with pytest.raises(ValueError, match="QUADRATIC length"):  # guessed 1 of 3: 4 groups, not 6
        masks.MaskDescriptor(MaskKind.QUADRATIC, 3 + 6 * 4, 4, 3, 2, 1)


@settings(max_examples=80, deadline=None)
@given(n=st.integers(1, 40), b=st.integers(1, 12), prefix=st.integers(0, 20))
def test_block_mask_never_sees_a_later_block(n, b, prefix):
    desc = masks.MaskDescriptor(MaskKind.BLOCK, n, b)
    m = masks.dense_mask(desc, prefix)
    assert m.shape == (n, prefix + n)
    assert m[:, :prefix].all()  # the cached prefix is always visible
    blk = torch.arange(n) // b
    seg = m[:, prefix:]
    assert not (seg & (blk[None, :] > blk[:, None])).any()
    assert (seg == (blk[None, :] <= blk[:, None])).all()
    assert torch.equal(masks.positions(desc, prefix), prefix + torch.arange(n))


@pytest.mark.parametrize("n", [1, 5, 17])
def test_degenerate_block_sizes(n):
    causal = torch.ones(n, n).tril().bool()
    assert torch.equal(masks.segment_mask(masks.MaskDescriptor(MaskKind.BLOCK, n, 1)), causal)
    assert masks.segment_mask(masks.diffusion_draft(n)).all()  # one block = bidirectional
    for d in (masks.prefill(n), masks.commit(n), masks.linear_verify(n)):
        assert d.is_causal and torch.equal(masks.segment_mask(d), causal)


def test_quadratic_with_one_group_member_and_no_drafts():
    d = masks.quadratic(0, 1)
    assert d.length == 2 and masks.offsets(d).tolist() == [0, 1]
    assert masks.segment_mask(d).tolist() == [[True, False], [True, True]]


@pytest.mark.parametrize(
    "kwargs, field",
    [
        (dict(kind=MaskKind.BLOCK, length=0, block=1), "length"),
        (dict(kind=MaskKind.BLOCK, length=3, block=0), "block"),
        (dict(kind=MaskKind.QUADRATIC, length=5, block=2, num_causal=2), "QUADRATIC length"),
    ],
)
def test_descriptor_rejects_bad_values(kwargs, field):
    with pytest.raises(ValueError, match=field):
        masks.MaskDescriptor(**kwargs)


@given(k=st.integers(0, 7), g=st.integers(1, 8), n=st.integers(1, 16))
@settings(max_examples=40, deadline=None)
def test_committable_tokens_see_only_causal_context(k, g, n):
    """`committable`: the leading tokens whose KV a step may keep (a server stores only those):
    every real token of a causal segment, a quadratic step's causal tokens (not its mask groups),
    nothing of a bidirectional draft. Each committable token's dense mask row is the causal row
    (it sees the tokens before it and itself, nothing after), so its KV is what a causal pass
    writes."""
    cases = [
        (masks.quadratic(k, g), k + 1),
        (masks.decode(), 1),
        (masks.commit(n), n),
        (masks.linear_verify(n), n),
        (masks.diffusion_draft(max(n, 2), n), 0),
    ]
    for desc, want in cases:
        assert desc.committable == want, desc
        m = masks.dense_mask(desc, prefix_len=0)  # [n, n] bool, True = may attend
        causal = torch.ones(desc.length, desc.length, dtype=torch.bool).tril()
        assert torch.equal(m[:want], causal[:want]), desc


def test_kept_prefix_refuses_keeping_more_than_the_committable_tokens():
    from sglang_trimode.modes import Segment, kept_prefix

    quad = Segment([0] * 15, masks.quadratic(2, 4))  # 3 causal tokens, 3 groups of 4
    assert kept_prefix(quad, 3) == 3
    with pytest.raises(RuntimeError, match="at most 3"):
        kept_prefix(quad, 4)
    with pytest.raises(RuntimeError, match="at most 3"):
        kept_prefix(quad, -1)
    draft = Segment([0] * 4, masks.diffusion_draft(4))
    assert kept_prefix(draft, 0) == 0
    with pytest.raises(RuntimeError):
        kept_prefix(draft, 1)
