"""Extend kernel vs its dense-mask reference, and the masks' degenerate equivalences."""

import random

import pytest
import torch
from kernel_cases import DEVICE, assert_close, dtype_params, extend_case, random_descs
from sglang_trimode.kernels import PageTable, SegmentBatch, extend_attention
from sglang_trimode.kernels import reference as ref

from sglang_trimode import masks
from sglang_trimode.masks import MaskDescriptor, MaskKind

# (dtype, (Hq, Hkv), head dim, page size, layout, splits, q_scale, fused q/k/v views)
CASES = [
    (torch.float32, (4, 4), 64, 1, "req_to_token", 1, False, False),
    (torch.float16, (4, 2), 80, 4, "indptr", 3, True, True),
    (torch.float32, (8, 2), 96, 16, "req_to_token", 2, True, False),
    (torch.float16, (2, 1), 128, 16, "indptr", 1, False, True),
    (torch.float32, (6, 2), 64, 1, "indptr", 4, False, True),
]


@pytest.mark.parametrize("dtype,heads,dim,page,layout,splits,qs,fused", CASES)
def test_extend_matches_reference_mixed_kinds(dtype, heads, dim, page, layout, splits, qs, fused):
    rng = random.Random(dim + page)
    descs = random_descs(rng, 5)
    prefix = [rng.choice([0, rng.randint(1, 40), rng.randint(60, 150)]) for _ in descs]
    shape = dict(dtype=dtype, heads=heads, head_dim=dim, page_size=page, layout=layout)
    case = extend_case(dim, descs, prefix, fused=fused, **shape)
    q_scale = torch.rand(case.q.shape[0], device=DEVICE) + 0.5 if qs else None
    out = extend_attention(*case.args(), sm_scale=0.3, q_scale=q_scale, num_splits=splits)
    assert_close(out, ref.extend_attention(*case.args(), sm_scale=0.3, q_scale=q_scale))


@pytest.mark.parametrize("seed", range(3))
def test_extend_random_shapes(seed):
    """Everything drawn at random: dtype, heads, head dim, page size, layout, splits, batch."""
    rng = random.Random(100 + seed)
    hkv = rng.choice([1, 2])
    descs = random_descs(rng, rng.randint(1, 6))
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
    out = extend_attention(*case.args(), num_splits=rng.randint(1, 3))
    assert_close(out, ref.extend_attention(*case.args()))


@pytest.mark.parametrize("dtype", dtype_params(torch.bfloat16))
def test_extend_bf16(dtype):
    descs = [masks.prefill(9), masks.quadratic(3, 4), masks.diffusion_draft(8)]
    case = extend_case(1, descs, [30, 0, 70], dtype=dtype, heads=(8, 2), head_dim=128, page_size=4)
    assert_close(extend_attention(*case.args()), ref.extend_attention(*case.args()))


@pytest.mark.parametrize("splits", [1, 2])
def test_extend_guessed_groups(splits):
    """Quadratic steps whose variants cover only the shortest acceptance lengths (bonus
    candidates for lengths ``0..G-1``): the kernel's group -> acceptance-length map and its key
    ranges agree with the dense reference, beside a step with variants everywhere."""
    descs = [
        masks.quadratic(4, 3, 3, 2),  # lengths 0, 1: 3 groups each; 2..4: one each
        masks.quadratic(3, 2, 2, 1),
        masks.quadratic(2, 4, 2),  # every length
        masks.prefill(6),
    ]
    assert [d.num_groups for d in descs[:3]] == [9, 5, 6]
    case = extend_case(3, descs, [17, 0, 40, 9], heads=(4, 2), head_dim=64, page_size=4)
    out = extend_attention(*case.args(), num_splits=splits)
    assert_close(out, ref.extend_attention(*case.args()))


def test_batch_members_are_independent():
    """Each request of a mixed batch gets what it gets alone (no leakage across requests)."""
    descs = [masks.quadratic(2, 3), masks.diffusion_draft(4, 3), masks.prefill(7)]
    case = extend_case(2, descs, [5, 0, 37], page_size=4)
    full = extend_attention(*case.args())
    starts, p = case.segments.qo_indptr.tolist(), case.pages
    for b, desc in enumerate(descs):
        s, e = starts[b], starts[b + 1]
        pages = PageTable(p.table, p.row_start[b : b + 1], p.lengths[b : b + 1], p.page_size)
        seg = SegmentBatch.from_descriptors([desc], DEVICE)
        kv = case.k[s:e], case.v[s:e], case.k_cache, case.v_cache
        alone = extend_attention(case.q[s:e], *kv, pages, seg)
        torch.testing.assert_close(alone, full[s:e], atol=1e-6, rtol=1e-6)


def _dense(case, b, seg_mask, sm_scale):
    """Attention of request ``b`` with an explicit segment mask (prefix fully visible), built
    without the mask module: the independent side of the equivalences."""
    s, e = case.segments.qo_indptr[b : b + 2].tolist()
    slots = case.pages.slots(b)
    keys = torch.cat([case.k_cache[slots], case.k[s:e]]).float()
    vals = torch.cat([case.v_cache[slots], case.v[s:e]]).float()
    mask = torch.cat([torch.ones(e - s, slots.numel(), dtype=torch.bool), seg_mask], 1)
    q = case.q[s:e].float().transpose(0, 1)
    g = q.shape[0] // keys.shape[1]
    k = keys.repeat_interleave(g, 1).transpose(0, 1)
    v = vals.repeat_interleave(g, 1).transpose(0, 1)
    m = mask.to(q.device)
    o = torch.nn.functional.scaled_dot_product_attention(q, k, v, attn_mask=m, scale=sm_scale)
    return o.transpose(0, 1)


def test_block_one_is_causal_and_one_block_is_bidirectional():
    descs = [MaskDescriptor(MaskKind.BLOCK, n, b) for n, b in ((13, 1), (9, 9), (6, 32), (1, 1))]
    case = extend_case(3, descs, [21, 0, 70, 5], heads=(4, 1), page_size=4, layout="indptr")
    out = extend_attention(*case.args(), sm_scale=0.2)
    starts = case.segments.qo_indptr.tolist()
    for b, d in enumerate(descs):
        n = d.length
        expect = torch.ones(n, n).tril().bool() if d.block == 1 else torch.ones(n, n).bool()
        assert_close(out[starts[b] : starts[b + 1]], _dense(case, b, expect, 0.2))


def test_quadratic_with_one_mask_per_group_is_a_set_of_causal_steps():
    """quadratic(k, 1): the draft rows are a causal step over the drafts, and group i's single
    mask token m_i is the last row of a causal step over ``[d_0..d_i, m_i]`` (same positions)."""
    k = 3
    quad = masks.quadratic(k, 1)
    case = extend_case(4, [quad], [19], heads=(4, 2), page_size=1)
    out = extend_attention(*case.args())
    n_c = quad.num_causal
    # the causal requests: [d_0..d_{k}] then, for each i, [d_0..d_i, m_i]
    rows = [list(range(n_c))] + [
        list(range(i + 1)) + [quad.group_slice(i).start] for i in range(n_c)
    ]
    idx = torch.tensor([r for row in rows for r in row], device=DEVICE)
    causal = SegmentBatch.from_descriptors([masks.prefill(len(r)) for r in rows], DEVICE)
    rep = torch.zeros(len(rows), dtype=torch.long, device=DEVICE)
    pages = PageTable(case.pages.table, case.pages.row_start[rep], case.pages.lengths[rep])
    kv = case.k[idx], case.v[idx], case.k_cache, case.v_cache
    steps = extend_attention(case.q[idx], *kv, pages, causal)
    assert_close(out[:n_c], steps[:n_c])
    ends = causal.qo_indptr[2:].long() - 1
    assert_close(out[n_c:], steps[ends])
    assert masks.positions(quad, 19)[n_c:].tolist() == [19 + i + 1 for i in range(n_c)]


def test_q_scale_equals_scaled_queries():
    descs = [masks.quadratic(1, 2), masks.prefill(5)]
    case = extend_case(5, descs, [12, 3])
    qs = torch.rand(case.q.shape[0], device=DEVICE) + 0.5
    scaled = extend_attention(*case.args(), q_scale=qs)
    case.q = case.q * qs[:, None, None]
    assert_close(scaled, extend_attention(*case.args()))


def test_split_counts_agree_on_decode_steps():
    """AR decode steps (one causal token over long ragged prefixes, empty splits included):
    every split-K count and the default heuristic give the one-split output."""
    descs = [masks.decode(), masks.decode(), masks.decode(), masks.linear_verify(2)]
    case = extend_case(5, descs, [200, 3, 1, 130], heads=(4, 2), page_size=4, layout="indptr")
    one = extend_attention(*case.args(), num_splits=1)
    assert_close(one, ref.extend_attention(*case.args()))
    for splits in (2, 5, 9):
        torch.testing.assert_close(extend_attention(*case.args(), num_splits=splits), one)
    torch.testing.assert_close(extend_attention(*case.args()), one)  # default heuristic
