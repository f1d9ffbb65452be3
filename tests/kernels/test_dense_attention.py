"""Impl `sdpa` (`sglang_trimode.dense_attention`: one batched SDPA call over a padded layout) vs the
kernels' torch reference, through the launchers' signature: mixed mask kinds, GQA ratios, head
dims, page sizes, both page-table layouts, `q_scale`, empty prefixes."""

import random

import pytest
import torch
from kernel_cases import assert_close, extend_case, random_descs
from sglang_trimode.kernels import reference as ref

from sglang_trimode import dense_attention, masks

# (dtype, (Hq, Hkv), head dim, page size, layout, q_scale)
CASES = [
    (torch.float32, (4, 4), 64, 1, "req_to_token", False),
    (torch.float16, (4, 2), 80, 4, "indptr", True),
    (torch.float32, (8, 2), 96, 16, "req_to_token", True),
    (torch.float32, (32, 8), 128, 1, "indptr", False),
    (torch.float32, (6, 2), 64, 1, "indptr", False),
]


@pytest.mark.parametrize("dtype,heads,dim,page,layout,qs", CASES)
def test_sdpa_matches_reference_mixed_kinds(dtype, heads, dim, page, layout, qs):
    rng = random.Random(dim + page)
    descs = random_descs(rng, 6)
    prefix = [rng.choice([0, rng.randint(1, 40), rng.randint(60, 150)]) for _ in descs]
    shape = dict(dtype=dtype, heads=heads, head_dim=dim, page_size=page, layout=layout)
    case = extend_case(dim, descs, prefix, **shape)
    q_scale = torch.rand(case.q.shape[0]) + 0.5 if qs else None
    out = dense_attention.extend_attention(*case.args(), sm_scale=0.3, q_scale=q_scale)
    assert out.dtype == dtype and out.shape == case.q.shape
    assert_close(out, ref.extend_attention(*case.args(), sm_scale=0.3, q_scale=q_scale))


@pytest.mark.parametrize("seed", range(4))
def test_sdpa_random_shapes(seed):
    rng = random.Random(200 + seed)
    hkv = rng.choice([1, 2])
    descs = random_descs(rng, rng.randint(1, 7))
    case = extend_case(
        seed,
        descs,
        [rng.randint(0, 90) for _ in descs],
        dtype=rng.choice([torch.float32, torch.float16]),
        heads=(hkv * rng.choice([1, 2, 4]), hkv),
        head_dim=rng.choice([64, 80, 96, 128, 40]),
        page_size=rng.choice([1, 4, 16]),
        layout=rng.choice(["req_to_token", "indptr"]),
    )
    out = torch.full_like(case.q, float("nan"))
    dense_attention.extend_attention(*case.args(), out=out)
    assert_close(out, ref.extend_attention(*case.args()))


def test_no_prefix_at_all_and_one_token_segments():
    """Every prefix empty (no prefix columns) and decode-like one-token segments beside a
    quadratic step: padding rows must not turn into NaN nor leak into real rows."""
    descs = [masks.decode(), masks.quadratic(3, 4), masks.commit(1), masks.diffusion_draft(8)]
    for prefix in ([0, 0, 0, 0], [1, 0, 7, 0]):
        case = extend_case(5, descs, prefix)
        out = dense_attention.extend_attention(*case.args())
        assert torch.isfinite(out).all()
        assert_close(out, ref.extend_attention(*case.args()))


def test_layout_rows_are_the_packed_order():
    descs = [masks.decode(), masks.diffusion_draft(4), masks.linear_verify(2)]
    case = extend_case(3, descs, [5, 2, 9])
    layout = dense_attention.DenseLayout.build(descs, case.pages, "cpu")
    assert layout.q_index.shape == (3, 4) and layout.mask.shape == (3, 1, 4, 9 + 4)
    # packed row r sits at padded slot rows[r], which points back at r
    assert torch.equal(layout.q_index.flatten()[layout.rows], torch.arange(7))
    assert layout.mask[0, 0, 0, :5].all() and not layout.mask[0, 0, 0, 5:9].any()


def test_requests_sharing_a_segment_shape_among_others():
    """The layout writes each distinct segment's mask once for all its requests (a batch of
    linear drafts, verifies of two lengths, quadratic steps): equal to the reference."""
    rng = random.Random(7)
    draft, verify, quad = masks.diffusion_draft(4), masks.linear_verify(3), masks.quadratic(2, 4)
    descs = [draft, verify, draft, quad, verify, masks.linear_verify(4), draft, quad]
    case = extend_case(
        11, descs, [rng.randint(0, 50) for _ in descs], dtype=torch.float32, heads=(4, 2),
        head_dim=64, page_size=1, layout="req_to_token",
    )  # fmt: skip
    out = dense_attention.extend_attention(*case.args())
    assert_close(out, ref.extend_attention(*case.args()))
