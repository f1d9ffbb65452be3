"""What the policies read from a forward's logits rows when the rows stay on the device.

The reference engine hands each request its own ``[n, V]`` logits rows (sampled on the CPU with
the request's generator). A server must not move ``V`` floats per row to the CPU, so the SGLang
worker (and the reference engine with ``row_summary=True``) hands each request one of:

- :class:`GreedyRows` (temperature 0): each row's argmax and its softmax probability;
- :class:`SampledRows` (temperature > 0): the rows processed on the device in one batch for all
  sampled requests (per-row temperature, top-k, top-p), one draw per row by inverse CDF from a
  uniform of the request's own generator (so a request's tokens depend on its seed, not on the
  batch it shares), the draw's processed and raw probabilities, and the processed probability of
  the segment's next token (the ``p_j(d_j)`` of the acceptance ratio); the device rows stay
  referenced for the rare reads that need a whole row (the residual draw after a rejection,
  logprobs).

:func:`request_rows` builds both from one packed ``[T, V]`` logits tensor. The functions of
:mod:`sglang_trimode.sampling` take these in place of logits tensors. No sglang import here.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import NamedTuple, Protocol

import torch

from sglang_trimode.masks import MaskKind


class _Params(Protocol):  # sampling.SamplingParams (not imported: sampling imports this module)
    temperature: float
    top_p: float
    top_k: int

    @property
    def greedy(self) -> bool: ...


@dataclass(frozen=True)
class GreedyRows:
    """All that greedy decoding reads from logits rows ``[..., V]``: each row's argmax token
    ``top`` (int64) and that token's softmax probability ``prob`` (float32; the diffusion
    confidence). A device forward hands these two small tensors to the CPU instead of every row's
    ``V`` logits. Wherever a request is greedy, :func:`probs_from_logits`, :func:`sample`,
    :func:`confidence` and the acceptance rules take it in place of the logits tensor (rows are
    indexed like the tensor: ``rows[i]``, ``rows[1:]``, ``rows[idx]``) and give the same result
    (tests/test_greedy_rows.py). As a distribution (``probs_from_logits``) it is the one-hot of
    ``top``. With ``top_k`` (requests asking for top logprobs) each row's ``top_k`` best log
    probabilities and their ids come along (``topk_logprobs``, ``topk_ids`` ``[..., top_k]``)."""

    top: torch.Tensor
    prob: torch.Tensor
    vocab: int
    topk_logprobs: torch.Tensor | None = None
    topk_ids: torch.Tensor | None = None
    chosen_ids: tuple[int, ...] = ()
    chosen_logprobs: torch.Tensor | None = None  # [..., len(chosen_ids)]

    @classmethod
    def from_logits(
        cls, logits: torch.Tensor, top_k: int = 0, chosen_ids: Sequence[int] = ()
    ) -> GreedyRows:
        """``logits [..., V]`` on any device -> the summary on the CPU (one transfer each); with
        ``chosen_ids`` also each row's log probabilities at those ids (``token_ids_logprob``)."""
        top = logits.argmax(-1)
        prob = torch.softmax(logits.float(), -1).gather(-1, top[..., None]).squeeze(-1)
        vals = ids = chosen = None
        if top_k or chosen_ids:
            logp = torch.log_softmax(logits.float(), -1)
        if top_k:
            best = logp.topk(top_k, dim=-1)
            vals, ids = best.values.cpu(), best.indices.cpu()
        if chosen_ids:
            chosen = logp[..., torch.tensor(list(chosen_ids), device=logp.device)].cpu()
        vocab = int(logits.shape[-1])
        return cls(top.cpu(), prob.cpu(), vocab, vals, ids, tuple(chosen_ids), chosen)

    def __getitem__(self, key) -> GreedyRows:
        def at(t: torch.Tensor | None) -> torch.Tensor | None:
            return None if t is None else t[key]

        return GreedyRows(
            self.top[key],
            self.prob[key],
            self.vocab,
            at(self.topk_logprobs),
            at(self.topk_ids),
            self.chosen_ids,
            at(self.chosen_logprobs),
        )

    def best(self, top_k: int) -> list[tuple[list[float], list[int]]] | None:
        """Each row's ``top_k`` best log probabilities and ids (None for ``top_k`` 0)."""
        if not top_k:
            return None
        if self.topk_ids is None or self.topk_ids.shape[-1] < top_k:
            raise ValueError(f"GreedyRows carry no top-{top_k} logprobs; build them with top_k")
        vals, ids = self.topk_logprobs[:, :top_k].tolist(), self.topk_ids[:, :top_k].tolist()
        return list(zip(vals, ids, strict=True))

    def chosen(self, ids: Sequence[int]) -> list[list[float]] | None:
        """Each row's log probabilities at ``ids`` (None when ``ids`` is empty)."""
        if not ids:
            return None
        missing = sorted(set(ids) - set(self.chosen_ids))
        if missing or self.chosen_logprobs is None:
            raise ValueError(f"GreedyRows carry no logprobs of ids {missing}; build them with them")
        cols = torch.tensor([self.chosen_ids.index(i) for i in ids])
        return self.chosen_logprobs[:, cols].tolist()

    @property
    def shape(self) -> tuple[int, ...]:
        return (*self.top.shape, self.vocab)

    def prob_of(self, tokens: torch.Tensor) -> torch.Tensor:
        """Each row's softmax probability of `tokens`, which must be the rows' argmax."""
        if not torch.equal(tokens.cpu(), self.top):
            raise ValueError("GreedyRows know the probability of each row's argmax token only")
        return self.prob

    def argmax(self, dim: int = -1) -> torch.Tensor:
        if dim not in (-1, self.top.dim()):
            raise ValueError(f"GreedyRows: argmax over the vocabulary only (dim=-1), got {dim}")
        return self.top


def processed_probs(
    logits: torch.Tensor, temperature: torch.Tensor, top_k: torch.Tensor, top_p: torch.Tensor
) -> torch.Tensor:
    """``sampling.probs_from_logits`` for rows with their own settings: ``logits [N, V]`` on any
    device, ``temperature [N]`` (> 0), ``top_k [N]`` (0: off), ``top_p [N]`` (1: off) on the CPU
    -> float32 ``[N, V]`` on the logits' device. Same rule: top-k keeps the logits >= the k-th
    largest, top-p the smallest sorted prefix whose mass reaches ``top_p``, then renormalise.
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
    per_row = [(p.temperature, p.top_k, p.top_p) for p, m in zip(params, lens) for _ in range(m)]
    temp, k, top_p = (torch.tensor(c, dtype=torch.float64) for c in zip(*per_row))
    probs = processed_probs(logits, temp, k.long(), top_p)
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


#: What the policies read for one request: a logits tensor, or one of the summaries.
Rows = torch.Tensor | GreedyRows | SampledRows


def request_rows(
    logits: torch.Tensor,
    states: Sequence,
    segs: Sequence,
) -> list[Rows | None]:
    """Packed device logits ``[T, V]`` (each running request's segment rows one after another)
    -> what each request's policy reads: ``GreedyRows`` for greedy requests, ``SampledRows`` for
    sampled ones (one batched pass each, uniforms from each request's generator), None for a
    request without a segment (``segs[i]`` None). ``states[i]`` is a ``modes.RequestState``."""
    lens = [0 if s is None else s.desc.length for s in segs]
    if sum(lens) != logits.shape[0]:
        raise RuntimeError(f"TRIMODE: {logits.shape[0]} logits rows for {sum(lens)} tokens")
    greedy = [n > 0 and r.params.greedy for r, n in zip(states, lens, strict=True)]
    sampled = [n > 0 and not g for n, g in zip(lens, greedy)]
    starts = torch.tensor([0, *lens]).cumsum(0).tolist()
    out: list[Rows | None] = [None] * len(lens)
    if any(greedy):
        top_k = max((r.top_logprobs_num for r, g in zip(states, greedy) if g), default=0)
        chosen = sorted({i for r, g in zip(states, greedy) if g for i in r.chosen_ids})
        summary = GreedyRows.from_logits(logits, top_k, chosen)
        for i in (i for i, g in enumerate(greedy) if g):
            out[i] = summary[starts[i] : starts[i + 1]]
    if any(sampled):
        nxt, uni = {}, {}
        for i in (i for i, s in enumerate(sampled) if s):
            nxt[i] = torch.tensor([*segs[i].tokens[1:], -1], dtype=torch.long)
            uni[i] = torch.rand(lens[i], generator=states[i].generator)
        # a quadratic step reads its causal rows and ONE of its mask groups (the one after the
        # accepted drafts): its rows are processed when read; every other kind of segment is
        # read whole, so those are processed in one batch
        lazy = [i for i in nxt if segs[i].desc.kind == MaskKind.QUADRATIC]
        for i in lazy:
            rows_i = logits[starts[i] : starts[i + 1]]
            out[i] = SampledRows.lazy(rows_i, states[i].params, nxt[i], uni[i])
        eager = [i for i in nxt if i not in lazy]
        if eager:
            rows = torch.cat([torch.arange(starts[i], starts[i + 1]) for i in eager])
            views = SampledRows.batch(
                logits[rows.to(logits.device)], [states[i].params for i in eager],
                [lens[i] for i in eager], torch.cat([nxt[i] for i in eager]),
                torch.cat([uni[i] for i in eager]),
            )  # fmt: skip
            for i, v in zip(eager, views, strict=True):
                out[i] = v
    return out
