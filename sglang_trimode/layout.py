"""One forward's layout, from the policies' segments to the attention launch (no SGLang import).

A TRIMODE forward is laid out packed: the segments of the requests that run (request `i`: a
`modes.Segment`, None when it only rides along with no tokens), one after another, each over its
committed prefix of `prefix[i]` tokens in a SGLang-style KV pool (`req_to_token` rows). The
worker builds ONE `ForwardLayout` per forward (`build`); SGLang's model reads its tokens,
positions and KV slots, every attention layer its `SegmentBatch` + `PageTable` (the kernels'
arguments) or its `DenseLayout` (impl `sdpa`), the worker its rows.

Padding (`Bucket`): a CUDA graph replays a fixed shape, so a forward can be padded to a bucket of
`requests` segments and `tokens` packed tokens. Padding segments are causal (`masks.commit`)
over an empty prefix, their tokens `pad_token`, their K/V written to slot 0 (SGLang's padding
slot, never read): no real row attends to them, so the real rows' outputs are those of the
unpadded forward (tests/test_layout.py, tests/srt/test_server_trimode.py with
`--trimode-pad-forwards`).
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from dataclasses import dataclass
from functools import cached_property

import torch

from sglang_trimode import masks
from sglang_trimode.dense_attention import DenseLayout
from sglang_trimode.kernels import PageTable, SegmentBatch
from sglang_trimode.masks import MaskDescriptor, MaskKind
from sglang_trimode.modes import Segment


@dataclass(frozen=True)
class Bucket:
    """A padded forward's shape: `requests` launched segments holding `tokens` packed tokens."""

    requests: int
    tokens: int

    def holds(self, requests: int, tokens: int) -> bool:
        """Whether `requests` real segments of `tokens` tokens pad to exactly this shape: no
        padding, or 1 <= padding segments <= padding tokens (each holds at least one)."""
        pad_requests, pad_tokens = self.requests - requests, self.tokens - tokens
        if pad_requests == 0:
            return pad_tokens == 0
        return 1 <= pad_requests <= pad_tokens


def powers_of_two(limit: int) -> tuple[int, ...]:
    """1, 2, 4, ... up to the first power of two >= `limit`."""
    out = [1]
    while out[-1] < limit:
        out.append(out[-1] * 2)
    return tuple(out)


@dataclass(frozen=True)
class Buckets:
    """The shapes forwards pad to (a CUDA graph each, on a GPU): every pair of tiers."""

    request_tiers: tuple[int, ...]
    token_tiers: tuple[int, ...]

    @classmethod
    def up_to(cls, requests: int, tokens: int) -> Buckets:
        """Powers of two up to `requests` + 1 launched segments and `tokens` + 1 tokens (room
        for a padding segment)."""
        return cls(powers_of_two(requests + 1), powers_of_two(tokens + 1))

    def fit(self, requests: int, tokens: int) -> Bucket | None:
        """The smallest bucket (fewest tokens, then fewest segments) that `requests` segments of
        `tokens` tokens pad to; None when none does (the forward runs unpadded)."""
        for n in self.token_tiers:
            for r in self.request_tiers:
                if Bucket(r, n).holds(requests, tokens):
                    return Bucket(r, n)
        return None


def ragged_offsets(lengths: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Runs of `lengths [B]` (int64) packed one after another -> for each of their `T` elements
    its run `owner [T]` and its offset within that run `[T]`."""
    dev = lengths.device
    owner = torch.repeat_interleave(torch.arange(lengths.numel(), device=dev), lengths)
    start = torch.cumsum(lengths, 0) - lengths
    return owner, torch.arange(owner.numel(), device=dev) - start[owner]


@functools.lru_cache(maxsize=256)
def _offsets(desc: MaskDescriptor) -> torch.Tensor:
    """`masks.offsets` of a quadratic step's descriptor (a few recur every step: cached)."""
    return masks.offsets(desc)


def segment_positions(
    cols: torch.Tensor, descs: Sequence[MaskDescriptor | None], prefix: Sequence[int]
) -> torch.Tensor:
    """Every packed token's position (`masks.positions` of its request's segment), for the whole
    batch at once: `cols [T]` holds each token's `prefix[owner] + offset in its segment` (the
    segments of the requests whose `descs[i]` is not None, one after another), which is the
    position itself except in quadratic steps' mask groups (positions repeat per group)."""
    if all(d is None or d.kind == MaskKind.BLOCK for d in descs):
        return cols
    pos, start = cols.clone(), 0
    for i, d in enumerate(descs):
        if d is not None and d.kind != MaskKind.BLOCK:
            pos[start : start + d.length] = prefix[i] + _offsets(d).to(pos.device)
        start += 0 if d is None else d.length
    return pos


def packed_prefix(pages: PageTable) -> tuple[torch.Tensor, PageTable]:
    """The pool slots of every prefix token of `pages` (page size 1), in request order, and a
    page table over a buffer holding them contiguously (for a pool of another dtype than q: the
    kernels read one dtype, so the prefix is gathered and cast)."""
    lengths = pages.lengths.to(torch.int64)
    dev = lengths.device
    indptr = torch.zeros(lengths.numel() + 1, dtype=torch.int64, device=dev)
    indptr[1:] = torch.cumsum(lengths, 0)
    # token t of request b lives at table[row_start[b] + t] (page size 1: req_to_token)
    owner, t = ragged_offsets(lengths)
    slots = pages.flat()[pages.row_start[owner] + t].to(torch.int64)
    return slots, PageTable.from_indptr(indptr, torch.arange(owner.numel(), device=dev))


def padding_segments(pad_requests: int, pad_tokens: int) -> list[MaskDescriptor]:
    """`pad_requests` causal segments of `pad_tokens` tokens in all: one token each, the rest
    in the last."""
    if pad_requests == 0:
        return []
    return [masks.commit(1)] * (pad_requests - 1) + [masks.commit(pad_tokens - pad_requests + 1)]


@dataclass(frozen=True)
class ForwardLayout:
    """One forward, packed (`N` tokens: the `T` real ones, then any padding).

    Per batch request: `descs` (None: rides along) and `prefix`. Per packed token, on the
    device: `tokens`, `positions`, `out_cache_loc` `[N]` (int64; K/V of tokens no step keeps
    and of padding go to slot 0). On the host, per real token: `owner` (batch index) and
    `offset` (in its segment) `[T]`. For attention: `launched` (the running requests'
    descriptors, then the padding segments'), their `segments` and `pages` (None: nothing
    runs); `dense` / `dense_gathered` (impl `sdpa`) and `gathered_prefix` (a pool of another
    dtype) are built on first use, once per forward."""

    descs: tuple[MaskDescriptor | None, ...]
    prefix: tuple[int, ...]
    tokens: torch.Tensor
    positions: torch.Tensor
    out_cache_loc: torch.Tensor
    owner: torch.Tensor
    offset: torch.Tensor
    launched: tuple[MaskDescriptor, ...]
    segments: SegmentBatch | None
    pages: PageTable | None
    bucket: Bucket | None = None

    @property
    def num_tokens(self) -> int:
        """`T`: the real tokens (the running requests' segments)."""
        return self.owner.numel()

    @property
    def padded_tokens(self) -> int:
        """`N`: the forward's tokens, padding included."""
        return self.tokens.numel()

    @property
    def width(self) -> int:
        """The longest real segment (0 when none runs)."""
        return max((d.length for d in self.descs if d is not None), default=0)

    def pad_rows(self, x: torch.Tensor, fill) -> torch.Tensor:
        """`x [T, ...]` (one entry per real token) -> `[N, ...]`, padding rows `fill`."""
        extra = self.padded_tokens - self.num_tokens
        if extra == 0:
            return x
        return torch.cat([x, x.new_full((extra, *x.shape[1:]), fill)])

    def check_tokens(self, num_tokens: int) -> None:
        """Clear error unless a forward of `num_tokens` tokens is this layout's."""
        if num_tokens != self.padded_tokens:
            raise ValueError(
                f"the forward holds {num_tokens} tokens but the packed plan "
                f"{self.padded_tokens}: its tokens must be the running requests' segments, "
                "packed in request order"
            )

    @cached_property
    def gathered_prefix(self) -> tuple[torch.Tensor, PageTable]:
        """`packed_prefix(pages)`, once per forward (a pool of another dtype than q)."""
        return packed_prefix(self.pages)

    @cached_property
    def dense(self) -> DenseLayout:
        """Impl `sdpa`'s padded layout over the pool, once per forward."""
        return DenseLayout.build(list(self.launched), self.pages, self.pages.table.device)

    @cached_property
    def dense_gathered(self) -> DenseLayout:
        """Impl `sdpa`'s padded layout over `gathered_prefix` (a pool of another dtype)."""
        return DenseLayout.build(
            list(self.launched), self.gathered_prefix[1], self.pages.table.device
        )


def build(
    segs: Sequence[Segment | None],
    prefix: Sequence[int],
    req_to_token: torch.Tensor,
    req_pool_indices: torch.Tensor,
    device: torch.device | str,
    bucket: Bucket | None = None,
    pad_token: int = 0,
) -> ForwardLayout:
    """`segs[i]` over `prefix[i]` committed tokens of request `i` (pool row `req_pool_indices[i]`
    of `req_to_token [max_reqs, max_ctx]`) -> the forward's layout, padded to `bucket` if given.

    Request `i`'s token `t` goes to slot `req_to_token[row_i, prefix_i + t]` when a step may keep
    its KV (`t < desc.committable`); every other token's K/V to slot 0 (never read), so a
    request needs slots for its committable tokens only. Loops over requests, never tokens."""
    if len(segs) != len(prefix):
        raise ValueError(f"segments ({len(segs)}) and prefix lengths ({len(prefix)}) differ")
    descs = tuple(None if s is None else s.desc for s in segs)
    active = [i for i, d in enumerate(descs) if d is not None]
    lens = torch.tensor([0 if d is None else d.length for d in descs], dtype=torch.int64)
    tokens = [t for i in active for t in segs[i].tokens]
    owner, offset = ragged_offsets(lens)  # [T] each
    keepable = torch.tensor([0 if d is None else d.committable for d in descs], dtype=torch.int64)
    stored = offset < keepable[owner]  # [T]
    cols = torch.tensor(list(prefix), dtype=torch.int64)[owner] + offset
    pos = segment_positions(cols, descs, prefix)  # [T]
    rows = req_pool_indices.to(req_to_token.device)
    locs = torch.zeros(len(tokens), dtype=torch.int64, device=req_to_token.device)
    dev_stored = stored.to(rows.device)
    locs[dev_stored] = req_to_token[rows[owner.to(rows.device)[dev_stored]], cols[stored]].to(
        torch.int64
    )
    launched = [descs[i] for i in active]
    page_rows = rows.index_select(0, torch.tensor(active, dtype=torch.int64, device=rows.device))
    page_lens = [prefix[i] for i in active]
    if bucket is not None:
        if not bucket.holds(len(active), len(tokens)):
            raise ValueError(
                f"bucket {bucket} does not hold {len(active)} segments of {len(tokens)} tokens "
                "(Buckets.fit picks one that does)"
            )
        pad = padding_segments(bucket.requests - len(active), bucket.tokens - len(tokens))
        launched += pad
        tokens += [pad_token] * (bucket.tokens - len(tokens))
        pad_pos = [masks.positions(d, 0) for d in pad]
        pos = torch.cat([pos, *pad_pos])
        locs = torch.cat([locs, locs.new_zeros(bucket.tokens - locs.numel())])
        page_rows = torch.cat([page_rows, page_rows.new_zeros(len(pad))])  # prefix 0: any row
        page_lens += [0] * len(pad)
    segments = pages = None
    if launched:
        segments = SegmentBatch.from_descriptors(launched, device=device)
        lengths = torch.tensor(page_lens, dtype=torch.int32).to(device)
        pages = PageTable.from_req_to_token(req_to_token, page_rows.to(device), lengths)
    return ForwardLayout(
        descs=descs,
        prefix=tuple(prefix),
        tokens=torch.tensor(tokens, dtype=torch.int64).to(device),
        positions=pos.to(device),
        out_cache_loc=locs.to(device),
        owner=owner,
        offset=offset,
        launched=tuple(launched),
        segments=segments,
        pages=pages,
        bucket=bucket,
    )
