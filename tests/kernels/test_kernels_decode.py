"""Decode (split-K) kernel vs its reference, and vs the extend kernel on a one-token step."""

import random

import pytest
import torch
from kernel_cases import DEVICE, assert_close, dtype_params, extend_case, paged_pool
from sglang_trimode.kernels import PageTable, decode_attention, extend_attention
from sglang_trimode.kernels import reference as ref

from sglang_trimode import masks

# (dtype, (Hq, Hkv), head dim, page size, layout, splits)
CASES = [
    (torch.float32, (4, 1), 64, 1, "req_to_token", 1),
    (torch.float16, (8, 2), 128, 16, "indptr", 4),
    (torch.float32, (2, 2), 80, 4, "indptr", 9),
    (torch.float16, (6, 2), 96, 4, "req_to_token", 2),
]


def _decode_inputs(seed, dtype, heads, dim, page, layout, lengths):
    rng = random.Random(seed)
    gen = torch.Generator().manual_seed(seed)
    pages, slots = paged_pool(rng, lengths, page, layout, DEVICE)
    hq, hkv = heads

    def randn(*shape):
        return torch.randn(*shape, generator=gen).to(DEVICE, dtype)

    return randn(len(lengths), hq, dim), randn(slots, hkv, dim), randn(slots, hkv, dim), pages


@pytest.mark.parametrize("dtype,heads,dim,page,layout,splits", CASES)
def test_decode_matches_reference(dtype, heads, dim, page, layout, splits):
    """Ragged contexts, including 1 token and more splits than tiles (empty splits)."""
    lengths = [1, 37, 130, 64, 5]
    q, kc, vc, pages = _decode_inputs(dim, dtype, heads, dim, page, layout, lengths)
    q_scale = torch.linspace(0.5, 1.5, len(lengths), device=DEVICE)
    out = decode_attention(q, kc, vc, pages, q_scale=q_scale, num_splits=splits)
    assert_close(out, ref.decode_attention(q, kc, vc, pages, q_scale=q_scale))


@pytest.mark.parametrize("dtype", dtype_params(torch.bfloat16))
def test_decode_bf16(dtype):
    q, kc, vc, pages = _decode_inputs(7, dtype, (8, 2), 128, 16, "indptr", [300, 1, 77])
    out = decode_attention(q, kc, vc, pages, num_splits=3)
    assert_close(out, ref.decode_attention(q, kc, vc, pages))


def test_split_counts_agree():
    q, kc, vc, pages = _decode_inputs(3, torch.float32, (4, 2), 64, 4, "indptr", [200, 3])
    one = decode_attention(q, kc, vc, pages, num_splits=1)
    for splits in (2, 5):
        torch.testing.assert_close(decode_attention(q, kc, vc, pages, num_splits=splits), one)
    torch.testing.assert_close(decode_attention(q, kc, vc, pages), one)  # default heuristic


def test_decode_equals_a_one_token_extend_step():
    """Decode over L cached tokens == extend of a causal 1-token segment (its own K/V packed)
    over the first L - 1: the two kernels agree on SGLang's decode convention."""
    descs = [masks.decode(), masks.decode(), masks.decode()]
    case = extend_case(8, descs, [40, 0, 9], heads=(4, 2), page_size=1, layout="req_to_token")
    p = case.pages
    # store each request's segment token right after its prefix, then decode over L = prefix + 1
    table = p.table.clone()
    fresh = torch.arange(3, device=DEVICE) + case.k_cache.shape[0]
    rows = (p.row_start // table.stride(0)).long()
    table[rows, p.lengths.long()] = fresh.int()
    k_cache = torch.cat([case.k_cache, case.k])
    v_cache = torch.cat([case.v_cache, case.v])
    longer = PageTable(table, p.row_start, p.lengths + 1, 1)
    dec = decode_attention(case.q, k_cache, v_cache, longer)
    ext = extend_attention(*case.args(), num_splits=2)
    assert_close(dec, ext)
