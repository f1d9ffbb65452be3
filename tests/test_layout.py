"""`sglang_trimode.layout`: one forward's layout, built for the whole batch at once, against a
request-by-request twin written from the definitions; buckets and padding."""

from __future__ import annotations

import pytest
import torch

from sglang_trimode import masks
from sglang_trimode.layout import Bucket, Buckets, build, padding_segments, powers_of_two
from sglang_trimode.masks import MaskDescriptor, MaskKind
from sglang_trimode.modes import Segment

DESCS = [
    masks.diffusion_draft(4),  # bidirectional: no KV kept
    None,  # rides along
    masks.linear_verify(3),  # causal: every token's KV kept
    masks.quadratic(2, 3),  # the causal tokens' KV kept, mask groups' not
    masks.decode(),
    MaskDescriptor(MaskKind.BLOCK, 5, 2),  # several blocks: no KV kept
]
PREFIX = [7, 3, 12, 5, 9, 2]


def segments(descs):
    """Segments with distinct tokens (request i's token t is 100 i + t)."""
    return [
        None if d is None else Segment([100 * i + t for t in range(d.length)], d)
        for i, d in enumerate(descs)
    ]


def pool(batch: int):
    """`req_to_token` whose rows are shuffled and whose slots are all distinct and non-zero."""
    rows = torch.tensor([4, 0, 6, 2, 1, 5][:batch])
    r2t = (torch.arange(8 * 64, dtype=torch.int32) + 1).view(8, 64)
    return r2t, rows


def twin(segs, prefix, r2t, rows):
    """Tokens, positions and KV slots request by request, from the definitions."""
    tokens, positions, slots = [], [], []
    for i, (s, p) in enumerate(zip(segs, prefix, strict=True)):
        if s is None:
            continue
        tokens += s.tokens
        positions += masks.positions(s.desc, p).tolist()
        for t in range(s.desc.length):
            keep = t < s.desc.committable
            slots.append(int(r2t[rows[i], p + t]) if keep else 0)
    return tokens, positions, slots


def test_layout_equals_the_request_by_request_twin():
    r2t, rows = pool(len(DESCS))
    segs = segments(DESCS)
    lay = build(segs, PREFIX, r2t, rows, "cpu")
    tokens, positions, slots = twin(segs, PREFIX, r2t, rows)
    assert lay.tokens.tolist() == tokens
    assert lay.positions.tolist() == positions
    assert lay.out_cache_loc.tolist() == slots
    assert lay.num_tokens == lay.padded_tokens == len(tokens)
    assert lay.width == masks.quadratic(2, 3).length
    running = [i for i, d in enumerate(DESCS) if d is not None]
    assert lay.launched == tuple(DESCS[i] for i in running)
    assert lay.pages.lengths.tolist() == [PREFIX[i] for i in running]
    assert lay.segments.descriptors() == list(lay.launched)
    owners = [i for i in running for _ in range(DESCS[i].length)]
    assert lay.owner.tolist() == owners
    assert lay.offset.tolist() == [t for i in running for t in range(DESCS[i].length)]


def test_padded_layout_keeps_the_real_rows_and_pads_harmlessly():
    r2t, rows = pool(len(DESCS))
    segs = segments(DESCS)
    plain = build(segs, PREFIX, r2t, rows, "cpu")
    bucket = Buckets.up_to(8, 64).fit(5, plain.num_tokens)
    lay = build(segs, PREFIX, r2t, rows, "cpu", bucket=bucket, pad_token=9)
    t, n = plain.num_tokens, bucket.tokens
    assert (lay.num_tokens, lay.padded_tokens, lay.bucket) == (t, n, bucket)
    for name in ("tokens", "positions", "out_cache_loc"):
        assert torch.equal(getattr(lay, name)[:t], getattr(plain, name)), name
    pad = padding_segments(bucket.requests - 5, n - t)
    assert lay.launched == plain.launched + tuple(pad)
    assert lay.tokens[t:].tolist() == [9] * (n - t)
    assert lay.out_cache_loc[t:].tolist() == [0] * (n - t)  # SGLang's padding slot
    assert lay.positions[t:].tolist() == torch.cat([masks.positions(d, 0) for d in pad]).tolist()
    assert lay.pages.lengths.tolist()[5:] == [0] * len(pad)  # read no prefix
    gate = torch.ones(t, dtype=torch.bool)
    assert lay.pad_rows(gate, False).tolist() == [True] * t + [False] * (n - t)
    assert plain.pad_rows(gate, False) is gate


def test_buckets_pick_the_smallest_shape_that_holds_the_forward():
    buckets = Buckets.up_to(8, 64)
    assert buckets.request_tiers == (1, 2, 4, 8, 16) and buckets.token_tiers[-1] == 128
    assert buckets.fit(1, 1) == Bucket(1, 1)  # one AR step: no padding
    assert buckets.fit(1, 8) == Bucket(1, 8)
    assert buckets.fit(3, 17) == Bucket(4, 32)
    assert buckets.fit(2, 16) == Bucket(2, 16)
    assert buckets.fit(4, 8) == Bucket(4, 8)
    # 4 segments of 7 tokens: 4 padding segments need 4 tokens (each holds at least one)
    assert buckets.fit(4, 7) == Bucket(8, 16)
    assert buckets.fit(3, 200) is None  # no tier holds it: the forward runs unpadded
    for requests in range(1, 9):
        for tokens in range(requests, 60):
            b = buckets.fit(requests, tokens)
            assert b.holds(requests, tokens)
            assert b.requests >= requests and b.tokens >= tokens
            pad = padding_segments(b.requests - requests, b.tokens - tokens)
            assert len(pad) == b.requests - requests
            assert sum(d.length for d in pad) == b.tokens - tokens


def test_bucket_holds_only_what_its_padding_can_fill():
    assert Bucket(4, 16).holds(4, 16) and not Bucket(4, 16).holds(4, 15)  # no segment for 1
    assert Bucket(4, 16).holds(3, 15) and not Bucket(4, 16).holds(2, 15)  # 2 segments, 1 token
    assert powers_of_two(1) == (1,) and powers_of_two(5) == (1, 2, 4, 8)


def test_build_refuses_what_it_cannot_lay_out():
    r2t, rows = pool(2)
    segs = segments([masks.decode(), masks.linear_verify(3)])
    with pytest.raises(ValueError, match=r"segments \(2\) and prefix lengths \(1\) differ"):
        build(segs, [3], r2t, rows, "cpu")
    with pytest.raises(ValueError, match="does not hold 2 segments of 4 tokens"):
        build(segs, [3, 4], r2t, rows, "cpu", bucket=Bucket(2, 8))


def test_nothing_runs_gives_an_empty_layout():
    r2t, rows = pool(2)
    lay = build([None, None], [3, 4], r2t, rows, "cpu")
    assert lay.segments is None and lay.pages is None
    assert lay.num_tokens == lay.padded_tokens == lay.width == 0
