"""Store (commit) kernel vs its reference; commit_slots and crop_kv semantics; commit then read."""

import random

import pytest
import torch
from kernel_cases import DEVICE, assert_close, extend_case, paged_pool
from sglang_trimode.kernels import (
    PageTable,
    commit_slots,
    crop_kv,
    decode_attention,
    extend_attention,
    store_kv,
)
from sglang_trimode.kernels import reference as ref

from sglang_trimode import masks


@pytest.mark.parametrize(
    "src,cache,heads,dim",
    [(torch.float32, torch.float32, 2, 64), (torch.float32, torch.float16, 3, 80)],
)
def test_store_matches_reference(src, cache, heads, dim):
    gen = torch.Generator().manual_seed(dim)
    qkv = torch.randn(9, 4 + 2 * heads, dim, generator=gen).to(DEVICE, src)
    k, v = qkv[:, 4 : 4 + heads], qkv[:, 4 + heads :]  # strided views, as after a QKV projection
    kc = torch.randn(40, heads, dim, generator=gen).to(DEVICE, cache)
    vc = torch.randn(40, heads, dim, generator=gen).to(DEVICE, cache)
    slots = torch.tensor([5, -1, 39, 0, -1, 17, 18, 2, -1], device=DEVICE)
    kc2, vc2 = kc.clone(), vc.clone()
    store_kv(k, v, kc, vc, slots)
    ref.store_kv(k, v, kc2, vc2, slots)
    assert torch.equal(kc, kc2) and torch.equal(vc, vc2)
    assert torch.equal(kc[39], k[2].to(cache)) and not torch.equal(kc[1], k[1].to(cache))


def test_commit_slots_keeps_each_segments_prefix():
    indptr = torch.tensor([0, 3, 3, 8, 10], dtype=torch.int32)
    keep = torch.tensor([2, 0, 5, 0])
    loc = torch.arange(100, 110)
    got = commit_slots(indptr, keep, loc).tolist()
    assert got == [100, 101, -1, 103, 104, 105, 106, 107, -1, -1]


def test_crop_frees_whole_pages_and_zeroes_dropped_tokens():
    rng = random.Random(0)
    pages, slots = paged_pool(rng, [10, 8, 5], 4, "req_to_token", DEVICE)
    kc = torch.ones(slots, 1, 16, device=DEVICE)
    before = {b: pages.slots(b).tolist() for b in range(3)}
    # req_to_token holds token slots (table page size 1): the pool's page size is passed
    free, cropped = crop_kv(pages, torch.tensor([5, 8, 0]), page_size=4, k_cache=kc)
    assert cropped.lengths.tolist() == [5, 8, 0]
    # request 0 keeps tokens 0..4: page [4..7] is partly kept, page [8, 9] is freed
    assert sorted(free.tolist()) == sorted(before[0][8:] + before[2])
    dropped = before[0][5:] + before[2]
    token_pool_free, _ = crop_kv(pages, torch.tensor([5, 8, 0]))
    assert sorted(token_pool_free.tolist()) == sorted(dropped)
    assert kc[dropped].abs().sum() == 0 and kc[before[0][:5]].min() == 1
    with pytest.raises(ValueError, match=r"new_lengths\[1\] = 9 outside \[0, 8\]"):
        crop_kv(pages, torch.tensor([5, 9, 0]))


def test_commit_then_attend():
    """A verify step's accepted prefix, committed with store_kv, reads back as cached prefix:
    decode over it equals the verify's causal rows."""
    descs = [masks.linear_verify(6), masks.linear_verify(4)]
    case = extend_case(11, descs, [9, 20], heads=(4, 2), page_size=1)
    verify = extend_attention(*case.args())
    accept = torch.tensor([4, 2], device=DEVICE)  # tokens kept per request
    p, T = case.pages, case.q.shape[0]
    loc = torch.arange(T, device=DEVICE) + case.k_cache.shape[0]
    k_cache = torch.cat([case.k_cache, torch.zeros_like(case.k)])
    v_cache = torch.cat([case.v_cache, torch.zeros_like(case.v)])
    store_kv(case.k, case.v, k_cache, v_cache, commit_slots(case.segments.qo_indptr, accept, loc))
    table = p.table.clone()
    rows = (p.row_start // table.stride(0)).long()
    starts = case.segments.qo_indptr.tolist()
    for b in range(2):
        n = int(accept[b])
        table[rows[b], p.lengths[b] : p.lengths[b] + n] = loc[starts[b] : starts[b] + n].int()
    committed = PageTable(table, p.row_start, p.lengths + accept.int(), 1)
    last = torch.tensor([starts[b] + int(accept[b]) - 1 for b in range(2)], device=DEVICE)
    dec = decode_attention(case.q[last], k_cache, v_cache, committed, num_splits=2)
    assert_close(dec, verify[last])
