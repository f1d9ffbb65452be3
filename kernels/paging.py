"""Page tables: where each request's cached tokens live in a SGLang-style KV pool.

The pool is one tensor per layer and per K/V of shape ``[num_slots, kv_heads, head_dim]`` (SGLang's
``MHATokenToKVPool`` buffers). A :class:`PageTable` maps token ``t`` of request ``b`` to a slot:

    slot(b, t) = table[row_start[b] + t // page_size] * page_size + t % page_size

for ``0 <= t < lengths[b]``. Two SGLang layouts map onto it without copies:

* ``req_to_token [max_reqs, max_ctx]`` (the req-to-token pool) holds *token* slots for any pool
  page size, so it is a table with ``page_size = 1`` and ``row_start = req_pool_indices * stride``;
* ``kv_indptr [B + 1]`` / ``kv_indices`` holds token slots (``page_size = 1``, SGLang's triton
  backend) or page ids (``page_size = P``, FlashInfer's paged layout, with ``last_page_len``).
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import torch

INDEX_DTYPES = (torch.int32, torch.int64)


@dataclass(frozen=True)
class PageTable:
    """Token-to-slot map of a batch of requests (see the module docstring for the formula).

    ``table``: int32/int64, 1-D, or 2-D with unit column stride (read flat from its first element).
    ``row_start``: int64 ``[B]``, flat offset of request ``b``'s first entry. ``lengths``: int32
    ``[B]``, cached tokens per request. ``page_size``: tokens per table entry.
    """

    table: torch.Tensor
    row_start: torch.Tensor
    lengths: torch.Tensor
    page_size: int = 1

    @classmethod
    def from_req_to_token(
        cls, req_to_token: torch.Tensor, req_pool_indices: torch.Tensor, lengths: torch.Tensor
    ) -> PageTable:
        """Rows ``req_pool_indices`` of SGLang's ``req_to_token [max_reqs, max_ctx]`` (slots)."""
        if req_to_token.dim() != 2:
            raise ValueError(
                f"req_to_token: expected 2-D [max_reqs, max_ctx], got {req_to_token.dim()}-D"
            )
        row_start = req_pool_indices.to(torch.int64) * req_to_token.stride(0)
        return cls(req_to_token, row_start, lengths.to(torch.int32), 1)

    @classmethod
    def from_indptr(
        cls,
        kv_indptr: torch.Tensor,
        kv_indices: torch.Tensor,
        page_size: int = 1,
        last_page_len: torch.Tensor | None = None,
    ) -> PageTable:
        """``kv_indptr [B + 1]`` entries per request into ``kv_indices``; entries are page ids.

        Lengths are ``(entries - 1) * page_size + last_page_len`` (FlashInfer); without
        ``last_page_len`` every page is full (with ``page_size = 1``: SGLang's token indices)."""
        entries = kv_indptr[1:] - kv_indptr[:-1]
        if last_page_len is None:
            lengths = entries * page_size
        else:
            lengths = torch.clamp(entries - 1, min=0) * page_size + last_page_len * (entries > 0)
        return cls(kv_indices, kv_indptr[:-1].to(torch.int64), lengths.to(torch.int32), page_size)

    @property
    def batch_size(self) -> int:
        return self.row_start.shape[0]

    def with_lengths(self, lengths: torch.Tensor) -> PageTable:
        """The same table with new per-request lengths (int32 ``[B]``)."""
        return replace(self, lengths=lengths.to(torch.int32))

    def flat(self) -> torch.Tensor:
        """The table as the 1-D view the kernels read (``table`` data from its first element)."""
        t = self.table
        if t.dim() == 1:
            return t
        extent = (t.shape[0] - 1) * t.stride(0) + t.shape[1] if t.numel() else 0
        return torch.as_strided(t, (extent,), (1,))

    def slots(self, b: int, start: int = 0, end: int | None = None) -> torch.Tensor:
        """Pool slots (int64) of tokens ``start..end`` (default: all cached) of request ``b``."""
        end = int(self.lengths[b]) if end is None else end
        t = torch.arange(start, end, device=self.table.device)
        entry = self.flat()[int(self.row_start[b]) + t // self.page_size].to(torch.int64)
        return entry * self.page_size + t % self.page_size

    def check(self, num_slots: int) -> None:
        """Value checks (host sync): every mapped slot lies in ``[0, num_slots)``."""
        if (self.lengths < 0).any():
            raise ValueError("page table: lengths must be >= 0")
        for b in range(self.batch_size):
            s = self.slots(b)
            if s.numel() and (int(s.min()) < 0 or int(s.max()) >= num_slots):
                raise ValueError(
                    f"page table: request {b} maps to slots outside the pool [0, {num_slots})"
                )
