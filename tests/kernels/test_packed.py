"""`sglang_trimode.packed`: a TRIMODE forward's packed segments -> one attention call.

The worker's layout (the running requests' segments one after another, requests that only ride
along with no tokens, ragged committed prefixes in a shuffled `req_to_token` pool) goes through
`layout.build` + `packed.attend` and is compared token by token with float64 dense-mask
attention per request (`masks.dense_mask`); so is the same forward padded to a bucket. Every
impl: `triton` (compiled on a GPU, interpreted on a CPU), `torch` (the kernels' reference) and
`sdpa`. bench/gpu_check.sh runs this file on the GPU with bf16 and a KV pool of
another dtype than q (SGLang's fp8/bf16 KV caches), with Ministral-3-like head shapes.
"""

from __future__ import annotations

import random

import pytest
import torch
from kernel_cases import DEVICE, INTERPRET, dtype_params, tolerance
from torch.nn.functional import scaled_dot_product_attention

from sglang_trimode import masks, packed
from sglang_trimode.layout import Bucket, Buckets, build, ragged_offsets, segment_positions
from sglang_trimode.masks import MaskDescriptor, MaskKind
from sglang_trimode.modes import Segment
from sglang_trimode.static_layout import StaticLayout

MIXED = [
    masks.diffusion_draft(8),  # bidirectional block
    masks.linear_verify(5),  # causal verify
    masks.quadratic(3, 4),  # TiDAR step: 4 causal + 4 groups of 4 = 20 tokens, the widest
    None,  # rides along (its cycle is complete)
    masks.decode(),  # AR step
    MaskDescriptor(MaskKind.BLOCK, 7, 2),  # several blocks, last one partial
    masks.commit(3),  # causal commit pass
]


def segments(descs):
    """Segments of the descriptors `descs` (None: rides along), their tokens all 0."""
    return [None if d is None else Segment([0] * d.length, d) for d in descs]


def layout(seed, descs, prefixes, *, dtype, pool_dtype, heads, head_dim):
    """Random q/k/v of the packed segments and a shuffled pool; returns the inputs and the
    float64 expectation."""
    gen = torch.Generator().manual_seed(seed)
    rng = random.Random(seed)
    hq, hkv = heads
    bs = len(descs)
    lens = [0 if d is None else d.length for d in descs]
    total = sum(lens)
    slots = sum(prefixes) + 9
    perm = rng.sample(range(1, slots), slots - 1)  # slot 0: SGLang's padding slot
    rows_of = rng.sample(range(bs + 3), bs)  # pool rows, not in batch order
    r2t = torch.zeros(bs + 3, max(prefixes) + 4, dtype=torch.int32)
    at = 0
    for i, p in enumerate(prefixes):
        r2t[rows_of[i], :p] = torch.tensor(perm[at : at + p], dtype=torch.int32)
        at += p

    def randn(*shape):
        return torch.randn(*shape, generator=gen)

    q, k = randn(total, hq, head_dim), randn(total, hkv, head_dim)
    v = randn(total, hkv, head_dim)
    kc, vc = randn(slots, hkv, head_dim), randn(slots, hkv, head_dim)
    kc, vc = kc.to(pool_dtype), vc.to(pool_dtype)  # what the pool stores
    q, k, v = q.to(dtype), k.to(dtype), v.to(dtype)
    scale = 0.7 * head_dim**-0.5  # not the kernels' default: a dropped sm_scale fails
    want = torch.zeros(total, hq, head_dim, dtype=torch.float64)
    for i, (d, p) in enumerate(zip(descs, prefixes, strict=True)):
        if d is None:
            continue
        s, n, pre = sum(lens[:i]), d.length, r2t[rows_of[i], :p].long()
        keys = torch.cat([kc[pre].double(), k[s : s + n].double()])
        values = torch.cat([vc[pre].double(), v[s : s + n].double()])
        o = scaled_dot_product_attention(
            q[s : s + n].double().movedim(0, 1)[None],
            keys.movedim(0, 1)[None],
            values.movedim(0, 1)[None],
            attn_mask=masks.dense_mask(d, p),
            scale=scale,
            enable_gqa=True,
        )
        want[s : s + n] = o[0].movedim(1, 0)
    dev = DEVICE
    args = (q.to(dev), k.to(dev), v.to(dev), kc.to(dev), vc.to(dev))
    pool = (r2t.to(dev), torch.tensor(rows_of, device=dev))
    return args, pool, scale, want


@pytest.mark.parametrize("impl", ["triton", "torch", "sdpa"])
@pytest.mark.parametrize("dtype", dtype_params(torch.float32, torch.float16, torch.bfloat16))
@pytest.mark.parametrize("pool_dtype", ["same", "other"])
@pytest.mark.parametrize(("heads", "head_dim"), [((4, 2), 32), ((8, 2), 64), ((32, 8), 128)])
def test_packed_attention_equals_dense_per_request(impl, dtype, pool_dtype, heads, head_dim):
    if INTERPRET and head_dim == 128 and impl == "triton":
        pytest.skip("Ministral-3 head shapes only compiled on a GPU (the interpreter is slow)")
    other = torch.bfloat16 if dtype == torch.float32 else torch.float32
    pdt = dtype if pool_dtype == "same" else other  # cast to q's dtype before the kernel
    prefixes = [5, 17, 9, 11, 40, 1, 23]
    args, (r2t, rows), scale, want = layout(
        3, MIXED, prefixes, dtype=dtype, pool_dtype=pdt, heads=heads, head_dim=head_dim
    )
    p = build(segments(MIXED), prefixes, r2t, rows, DEVICE)
    assert p.num_tokens == sum(d.length for d in MIXED if d is not None)
    out = packed.attend(*args, p, scale, impl)
    assert out.shape == args[0].shape and out.dtype == dtype
    # the expectation reads q/k/v/pool as stored; the only rounding is the kernel's own
    tol = tolerance(dtype)
    torch.testing.assert_close(out.double().cpu(), want, atol=tol, rtol=tol)
    if pdt != dtype:  # the gathered prefix is built once per forward, shared by every layer
        assert p.gathered_prefix is p.gathered_prefix


def test_nothing_to_attend_gives_no_rows():
    r2t = torch.zeros(3, 8, dtype=torch.int32, device=DEVICE)
    p = build([None, None], [3, 4], r2t, torch.tensor([2, 0], device=DEVICE), DEVICE)
    assert p.segments is None and p.num_tokens == 0
    q = torch.ones(0, 4, 16, device=DEVICE)
    kv = torch.ones(0, 2, 16, device=DEVICE)
    cache = torch.ones(8, 2, 16, device=DEVICE)
    out = packed.attend(q, kv, kv, cache, cache, p, 0.25, "triton")
    assert out.shape == (0, 4, 16)


def test_pack_rejects_inconsistent_plans():
    r2t = torch.zeros(2, 8, dtype=torch.int32)
    rows = torch.tensor([0, 1])
    with pytest.raises(ValueError, match="segments .2. and prefix lengths .1. differ"):
        build(segments([masks.decode(), None]), [3], r2t, rows, "cpu")
    p = build(segments([masks.diffusion_draft(4), None]), [3, 1], r2t, rows, "cpu")
    q, kv = torch.ones(5, 4, 16), torch.ones(5, 2, 16)
    with pytest.raises(ValueError, match="holds 5 tokens but the packed plan 4"):
        packed.attend(q, kv, kv, torch.ones(8, 2, 16), torch.ones(8, 2, 16), p, 0.25, "torch")
    with pytest.raises(ValueError, match="attention impl must be one of triton, torch, sdpa"):
        packed.attention_fn("flash")


@pytest.mark.parametrize(
    "descs",
    [
        MIXED,
        [masks.decode(), None, masks.decode()],  # AR steps only: the positions are the columns
        [masks.quadratic(2, 3, variants=2, guessed=1), masks.quadratic(0, 4), None],
    ],
)
def test_segment_positions_equal_each_requests_positions(descs):
    """The worker's batched positions == `masks.positions` of each running request, in order."""
    prefix = [5 + 3 * i for i in range(len(descs))]
    lens = torch.tensor([0 if d is None else d.length for d in descs])
    owner, offset = ragged_offsets(lens)
    cols = torch.tensor(prefix)[owner] + offset
    want = torch.cat([masks.positions(d, p) for d, p in zip(descs, prefix) if d is not None])
    assert torch.equal(segment_positions(cols, descs, prefix), want)


@pytest.mark.parametrize("impl", ["triton", "torch", "sdpa"])
@pytest.mark.parametrize("dtype", dtype_params(torch.float32, torch.float16, torch.bfloat16))
def test_padded_forward_equals_unpadded(impl, dtype):
    """A forward padded to a bucket (the shapes CUDA graphs replay): the real rows' outputs are
    the unpadded forward's, within the dtype's tolerance of the float64 expectation; the padding
    rows (whatever their q/k/v) are finite and read nothing of the pool."""
    prefixes = [5, 17, 9, 11, 40, 1, 23]
    args, (r2t, rows), scale, want = layout(
        7, MIXED, prefixes, dtype=dtype, pool_dtype=dtype, heads=(8, 2), head_dim=32
    )
    plain = build(segments(MIXED), prefixes, r2t, rows, DEVICE)
    running = sum(d is not None for d in MIXED)
    bucket = Buckets.up_to(8, 64).fit(running, plain.num_tokens)
    assert bucket == Bucket(8, 64)  # 6 segments, 44 tokens: 2 padding segments of 20 tokens
    padded = build(segments(MIXED), prefixes, r2t, rows, DEVICE, bucket=bucket)
    assert padded.segments.batch_size == 8 and padded.padded_tokens == 64
    assert padded.launched[6:] == (masks.commit(1), masks.commit(19))
    q, k, v, kc, vc = args
    t = plain.num_tokens
    gen = torch.Generator().manual_seed(1)
    extra = [100 * torch.randn(64 - t, *x.shape[1:], generator=gen).to(x) for x in (q, k, v)]
    padded_args = [torch.cat([x, e]) for x, e in zip((q, k, v), extra, strict=True)]
    out = packed.attend(*padded_args, kc, vc, padded, scale, impl)
    assert out.shape == (64, *q.shape[1:])
    tol = tolerance(dtype)
    torch.testing.assert_close(out[:t].double().cpu(), want, atol=tol, rtol=tol)
    unpadded = packed.attend(*args, plain, scale, impl)
    torch.testing.assert_close(out[:t], unpadded, atol=tol, rtol=tol)
    assert torch.isfinite(out[t:]).all()


OTHER = [  # another forward of the same bucket (8 segments, 64 tokens once padded)
    masks.quadratic(1, 3),
    masks.decode(),
    masks.diffusion_draft(8),
    None,
    masks.linear_verify(8),
    masks.commit(5),
]


@pytest.mark.parametrize("impl", ["triton", "torch", "sdpa"])
def test_static_buffers_replay_any_forward_of_their_bucket(impl):
    """Two forwards padded to one bucket, loaded in turn into that bucket's preallocated
    buffers (what a CUDA graph records: the same addresses every time, the launch's `max_len`
    the bucket's): each gives its own attention."""
    statics, addresses = None, None
    cases = ((3, MIXED, [5, 17, 9, 11, 40, 1, 23]), (4, OTHER, [2, 30, 7, 4, 19, 12]))
    for seed, descs, prefixes in cases:
        args, (r2t, rows), scale, want = layout(
            seed, descs, prefixes, dtype=torch.float32, pool_dtype=torch.float32, heads=(4, 2),
            head_dim=32,
        )  # fmt: skip
        plain = build(segments(descs), prefixes, r2t, rows, DEVICE)
        bucket = Buckets.up_to(8, 64).fit(sum(d is not None for d in descs), plain.num_tokens)
        assert bucket == Bucket(8, 64)
        padded = build(segments(descs), prefixes, r2t, rows, DEVICE, bucket=bucket)
        if statics is None:
            statics = StaticLayout(bucket, DEVICE)
            addresses = [b.data_ptr() for b in statics.buffers()]
        loaded = statics.load(padded)
        assert [b.data_ptr() for b in statics.buffers()] == addresses  # nothing reallocated
        assert loaded.segments.max_len == 64 and loaded.tokens is statics.tokens
        t = plain.num_tokens
        pad = [torch.zeros(64 - t, *x.shape[1:], dtype=x.dtype, device=x.device) for x in args[:3]]
        q, k, v = (torch.cat([x, p]) for x, p in zip(args[:3], pad, strict=True))
        out = packed.attend(q, k, v, *args[3:], loaded, scale, impl)
        tol = tolerance(torch.float32)
        torch.testing.assert_close(out[:t].double().cpu(), want, atol=tol, rtol=tol)
    with pytest.raises(ValueError, match="cannot replay the buffers of Bucket"):
        statics.load(build(segments(OTHER), prefixes, r2t, rows, DEVICE))
