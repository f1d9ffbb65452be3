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


@settings(max_examples=60, deadline=None)
@given(k=st.integers(0, 9), g=st.integers(1, 9))
def test_quadratic_group_sees_exactly_drafts_upto_i_and_itself(k, g):
    desc = masks.quadratic(k, g)
    m = masks.segment_mask(desc)
    n_causal = desc.num_causal
    for i in range(n_causal):
        rows = m[desc.group_slice(i)]
        expected_causal = torch.arange(n_causal) <= i
        assert torch.equal(rows[:, :n_causal], expected_causal.expand(g, -1))
        expected_masks = torch.zeros(desc.length - n_causal, dtype=torch.bool)
        expected_masks[i * g : (i + 1) * g] = True
        assert torch.equal(rows[:, n_causal:], expected_masks.expand(g, -1))


@settings(max_examples=60, deadline=None)
@given(k=st.integers(0, 9), g=st.integers(1, 9))
def test_quadratic_positions(k, g):
    desc = masks.quadratic(k, g)
    off = masks.offsets(desc)
    assert off[: desc.num_causal].tolist() == list(range(k + 1))
    for i in range(desc.num_causal):
        assert off[desc.group_slice(i)].tolist() == list(range(i + 1, i + 1 + g))


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
