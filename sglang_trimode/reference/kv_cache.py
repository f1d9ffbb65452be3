"""A dense per-request KV cache with explicit commit and crop (the reference engine's cache).

A forward never writes the cache by itself: the attention layers call :meth:`KVCache.update`,
which returns ``[cached prefix | new segment]`` and keeps the new K/V as *pending*. After the
forward each request commits the segment tokens it keeps (all of a prefill or commit pass, the
accepted prefix of a verify, none of a diffusion draft), so rejected tokens never touch the
cache. Layout per layer: ``[batch, kv_heads, capacity, head_dim]`` plus ``lengths [batch]``.
"""

from __future__ import annotations

import torch


class KVCache:
    def __init__(
        self,
        num_layers: int,
        batch: int,
        num_kv_heads: int,
        head_dim: int,
        capacity: int,
        dtype: torch.dtype,
        device: torch.device | str = "cpu",
    ) -> None:
        shape = (batch, num_kv_heads, capacity, head_dim)
        self.k = [torch.zeros(shape, dtype=dtype, device=device) for _ in range(num_layers)]
        self.v = [torch.zeros(shape, dtype=dtype, device=device) for _ in range(num_layers)]
        self.lengths = torch.zeros(batch, dtype=torch.long)
        self.capacity = capacity
        self.pending: list[tuple[torch.Tensor, torch.Tensor] | None] = [None] * num_layers
        self.rows: torch.Tensor | None = None  # batch rows of the running forward
        self.window = 0  # cached columns visible to the running forward

    # -- forward side -----------------------------------------------------------------------

    def begin(self, rows: torch.Tensor) -> int:
        """Start a forward over cache rows ``rows [b]``; returns the visible prefix width."""
        self.rows = rows
        self.window = int(self.lengths[rows].max()) if rows.numel() else 0
        self.pending = [None] * len(self.k)
        return self.window

    def update(
        self, key: torch.Tensor, value: torch.Tensor, layer_idx: int, *args: object
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Called by each attention layer with the segment's ``[b, H, Q, D]`` K/V."""
        assert self.rows is not None, "KVCache.begin() must be called before a forward"
        self.pending[layer_idx] = (key, value)
        k_prev = self.k[layer_idx][self.rows, :, : self.window]
        v_prev = self.v[layer_idx][self.rows, :, : self.window]
        return torch.cat([k_prev, key], dim=2), torch.cat([v_prev, value], dim=2)

    # -- after the forward ------------------------------------------------------------------

    def commit(self, i: int, n: int) -> None:
        """Append the pending K/V of the first ``n`` segment tokens of forward row ``i`` after
        the row's committed tokens."""
        assert self.rows is not None
        row = int(self.rows[i])
        start = int(self.lengths[row])
        if start + n > self.capacity:
            raise RuntimeError(f"KV cache row {row} is full ({self.capacity} slots)")
        for layer, pend in enumerate(self.pending):
            assert pend is not None, "commit() before a forward ran"
            k_new, v_new = pend
            self.k[layer][row, :, start : start + n] = k_new[i][:, :n]
            self.v[layer][row, :, start : start + n] = v_new[i][:, :n]
        self.lengths[row] = start + n

    def crop(self, row: int, length: int) -> None:
        """Forget everything of cache row ``row`` past ``length`` tokens."""
        if not 0 <= length <= int(self.lengths[row]):
            raise ValueError(f"crop length {length} outside [0, {int(self.lengths[row])}]")
        self.lengths[row] = length

    def end(self) -> None:
        self.pending = [None] * len(self.k)
        self.rows = None
