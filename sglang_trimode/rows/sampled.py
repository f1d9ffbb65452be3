"""`SampledRows`: what a sampled request reads from logits rows that stay on the device, and
the batched per-row filters and inverse-CDF draw behind it (see the package docstring)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import NamedTuple, Protocol

import torch


class _Params(Protocol):  # sampling.SamplingParams (not imported: sampling imports this module)
    temperature: float
    top_p: float
    top_k: int
    min_p: float

    @property
    def greedy(self) -> bool: ...


def processed_probs(
    logits: torch.Tensor,
    temperature: torch.Tensor,
    top_k: torch.Tensor,
    top_p: torch.Tensor,
    min_p: torch.Tensor | None = None,
) -> torch.Tensor:
    """``sampling.probs_from_logits`` for rows with their own settings: ``logits [N, V]`` on any
    device, ``temperature [N]`` (> 0), ``top_k [N]`` (0: off), ``top_p [N]`` (1: off),
    ``min_p [N]`` (0 or None: off) on the CPU -> float32 ``[N, V]`` on the logits' device. Same
    rule: top-k keeps the logits >= the k-th largest, top-p the smallest sorted prefix whose mass
    reaches ``top_p``, then renormalise; min-p then keeps the probabilities >= ``min_p`` times
    the row's largest and renormalises.
    Only the rows that use a filter pay for it (top-p sorts those rows only), and a row's result
    does not depend on the other rows."""
    dev = logits.device
    scaled = logits.float() / temperature.float().to(dev)[:, None]
    vocab = scaled.shape[-1]
    on = ((top_k > 0) & (top_k < vocab)).nonzero().squeeze(-1)
    if on.numel():
        k = top_k[on].long()
        sub = scaled[on.to(dev)]
        kth = sub.topk(int(k.max()), dim=-1).values.gather(-1, (k - 1).to(dev)[:, None])
        scaled = scaled.index_copy(0, on.to(dev), sub.masked_fill(sub < kth, float("-inf")))
    probs = torch.softmax(scaled, dim=-1)
    cut = (top_p < 1.0).nonzero().squeeze(-1)
    if cut.numel():
        sub = probs[cut.to(dev)]
        sorted_p, order = torch.sort(sub, dim=-1, descending=True)
        drop_sorted = (sorted_p.cumsum(-1) - sorted_p) >= top_p[cut].float().to(dev)[:, None]
        drop = torch.zeros_like(drop_sorted).scatter(-1, order, drop_sorted)
        kept = sub.masked_fill(drop, 0.0)
        probs = probs.index_copy(0, cut.to(dev), kept / kept.sum(-1, keepdim=True))
    low = torch.zeros(0, dtype=torch.long) if min_p is None else (min_p > 0).nonzero().squeeze(-1)
    if low.numel():
        sub = probs[low.to(dev)]
        floor = min_p[low].float().to(dev)[:, None] * sub.max(-1, keepdim=True).values
        kept = sub.masked_fill(sub < floor, 0.0)
        probs = probs.index_copy(0, low.to(dev), kept / kept.sum(-1, keepdim=True))
    return probs


def inverse_cdf(probs: torch.Tensor, uniform: torch.Tensor) -> torch.Tensor:
    """One token per row of ``probs [N, V]`` (any non-negative mass, not necessarily summing to
    1) for ``uniform [N]`` in [0, 1): the first token whose cumulative mass exceeds
    ``uniform * total``. A token of zero mass is never returned."""
    cdf = probs.float().cumsum(-1)
    total = cdf[:, -1:]
    # strictly below the total (rounding of u * total could reach it): the first cdf entry
    # above the target is then a token whose own mass makes the cdf step over it
    below = torch.nextafter(total, torch.zeros_like(total))
    target = torch.minimum(uniform.to(cdf.device, cdf.dtype)[:, None] * total, below)
    return torch.searchsorted(cdf, target, right=True).squeeze(-1)


class _Processed(NamedTuple):
    """Per row: the draw, its processed and raw probabilities, the processed probability of the
    segment's next token (CPU ``[n]``), and the processed rows (device ``[n, V]``)."""

    draw: torch.Tensor
    draw_prob: torch.Tensor
    draw_conf: torch.Tensor
    next_prob: torch.Tensor
    probs: torch.Tensor

    def at(self, key) -> _Processed:
        return _Processed(*(t[key] for t in self))


def _process(
    logits: torch.Tensor,
    params: Sequence[_Params],
    lens: Sequence[int],
    next_tokens: torch.Tensor,
    uniforms: torch.Tensor,
) -> _Processed:
    """All rows at once: ``logits [N, V]`` (device), row settings from ``params`` (request
    ``i`` owns ``lens[i]`` rows), ``next_tokens [N]`` (-1: none) and ``uniforms [N]`` (CPU).
    Each row's result depends on that row only (tests/test_sampled_rows.py)."""
    dev = logits.device
    if not logits.shape[0]:
        empty = torch.zeros(0)
        return _Processed(empty.long(), empty, empty, empty, logits.float())
    per_row = [
        (p.temperature, p.top_k, p.top_p, getattr(p, "min_p", 0.0))
        for p, m in zip(params, lens)
        for _ in range(m)
    ]
    temp, k, top_p, min_p = (torch.tensor(c, dtype=torch.float64) for c in zip(*per_row))
    probs = processed_probs(logits, temp, k.long(), top_p, min_p)
    draw = inverse_cdf(probs, uniforms.to(dev))
    nxt = next_tokens.to(dev)
    small = torch.stack(
        [
            probs.gather(-1, draw[:, None]).squeeze(-1),
            torch.softmax(logits.float(), -1).gather(-1, draw[:, None]).squeeze(-1),
            probs.gather(-1, nxt.clamp_min(0)[:, None]).squeeze(-1) * (nxt >= 0),
        ]
    ).cpu()
    return _Processed(draw.cpu(), small[0], small[1], small[2], probs)


class SampledRows:
    """A sampled request's view of its logits rows ``[n, V]``, which stay on the device.

    CPU ``[n]``: ``draw`` (a token drawn from each processed row with the row's ``uniform``),
    ``draw_prob`` (its processed probability: ``q_j(d_j)`` when the row drafted it),
    ``draw_conf`` (its softmax probability under the raw logits: the diffusion confidence),
    ``next_token`` / ``next_prob`` (the segment's next token, -1 after the last, and its processed
    probability: ``p_j(d_j)`` when row ``j`` verifies draft ``d_j``). Device ``[n, V]``:
    ``probs`` (processed) and ``logits`` (raw; None for a distribution from :meth:`as_probs`).
    Indexed like a tensor.

    Built processed (:meth:`batch`: many requests' rows in one pass) or lazy (:meth:`lazy`: the
    rows a policy reads are processed when it first reads them, e.g. the one mask group of a
    quadratic step that follows the accepted drafts); both give the same values, since a row's
    result depends on its logits, settings and uniform only."""

    def __init__(
        self,
        logits: torch.Tensor | None,
        params: _Params,
        next_token: torch.Tensor,
        uniform: torch.Tensor,
        processed: _Processed | None = None,
    ) -> None:
        if logits is None and processed is None:
            raise ValueError("SampledRows need logits or processed rows")
        self.logits, self.params = logits, params
        self.next_token, self.uniform = next_token, uniform
        self._processed = processed

    @classmethod
    def lazy(
        cls, logits: torch.Tensor, params: _Params, next_token: torch.Tensor, uniform: torch.Tensor
    ) -> SampledRows:
        """Rows processed only where and when a policy reads them."""
        return cls(logits, params, next_token, uniform)

    def _rows(self) -> _Processed:
        if self._processed is None and self.next_token.dim() == 0:  # one row, as rows[i]
            one = SampledRows(
                self.logits[None], self.params, self.next_token[None], self.uniform[None]
            )
            self._processed = one._rows().at(0)
        if self._processed is None:
            n = int(self.next_token.shape[0])
            self._processed = _process(
                self.logits, [self.params], [n], self.next_token, self.uniform
            )
        return self._processed

    draw = property(lambda self: self._rows().draw)
    draw_prob = property(lambda self: self._rows().draw_prob)
    draw_conf = property(lambda self: self._rows().draw_conf)
    next_prob = property(lambda self: self._rows().next_prob)
    probs = property(lambda self: self._rows().probs)

    def __getitem__(self, key) -> SampledRows:
        logits = None if self.logits is None else self.logits[key]
        done = None if self._processed is None else self._processed.at(key)
        return SampledRows(logits, self.params, self.next_token[key], self.uniform[key], done)

    @property
    def shape(self) -> tuple[int, ...]:
        rows = self.logits if self.logits is not None else self._processed.probs
        return tuple(rows.shape)

    def as_probs(self, params: _Params) -> SampledRows:
        """The processed distribution (``probs_from_logits``), copied off the forward's batch so
        a request keeping it as its draft distribution holds only its own rows."""
        if params != self.params:
            raise ValueError(
                f"SampledRows were processed with {self.params}, not {params}: build them with "
                "the request's own sampling parameters"
            )
        done = self._rows()
        done = done._replace(probs=done.probs.clone())
        return SampledRows(None, self.params, self.next_token, self.uniform, done)

    def check_draw(self, tokens: torch.Tensor) -> None:
        if not torch.equal(tokens.cpu().long(), self.draw):
            raise ValueError("SampledRows know the draw of each row only; sample() returns it")

    def token_logprobs(self, tokens: torch.Tensor, top_k: int, ids: Sequence[int]):
        """``log_softmax(logits / T)`` of ``tokens [n]``, each row's ``top_k`` best and its values
        at ``ids``, read from the device rows -> ``(own, tops | None, chosen | None)``."""
        from sglang_trimode.sampling import logprob_extras

        if self.logits is None:
            raise ValueError("SampledRows.as_probs() dropped the logits; read logprobs before")
        logp = torch.log_softmax(self.logits.float() / self.params.temperature, -1)
        own = logp.gather(-1, tokens.to(logp.device).long()[:, None]).squeeze(-1).tolist()
        return (own, *logprob_extras(logp, top_k, ids))

    def residual_draw(self, q: SampledRows, j: int, uniform: torch.Tensor) -> int:
        """Lossless speculative sampling after rejecting draft ``j``: a token from
        ``norm(max(0, p_j - q_j))`` (``p_j`` if that is empty), drawn on the device."""
        residual = (self.probs[j].float() - q.probs[j].to(self.probs.device).float()).clamp_min(0)
        if not bool(residual.sum() > 0):
            residual = self.probs[j].float()
        return int(inverse_cdf(residual[None], uniform.reshape(1))[0])

    @classmethod
    def batch(
        cls,
        logits: torch.Tensor,
        params: Sequence[_Params],
        lens: Sequence[int],
        next_tokens: torch.Tensor,
        uniforms: torch.Tensor,
    ) -> list[SampledRows]:
        """Rows of several sampled requests packed one after another: ``logits [N, V]`` on the
        device, request ``i`` owns ``lens[i]`` rows processed with ``params[i]``;
        ``next_tokens [N]`` (-1: none) and ``uniforms [N]`` on the CPU. One batched pass, a few
        small transfers -> one processed :class:`SampledRows` per request."""
        n = int(logits.shape[0])
        if sum(lens) != n or next_tokens.shape != (n,) or uniforms.shape != (n,):
            raise ValueError(f"SampledRows.batch: {n} rows, lens {list(lens)} do not match")
        done = _process(logits, params, lens, next_tokens, uniforms) if n else None
        out, start = [], 0
        for p, m in zip(params, lens, strict=True):
            sl = slice(start, start + m)
            part = None if done is None else done.at(sl)
            out.append(cls(logits[sl], p, next_tokens[sl], uniforms[sl], part))
            start += m
        return out
