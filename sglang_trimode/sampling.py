"""Sampling: processed distributions, diffusion unmasking rules and speculative acceptance.

Everything works on one request at a time (the reference engine's unit) and draws randomness
only from the request's own ``torch.Generator``, so a batch of N equals N runs of 1.
Greedy decoding is temperature 0: every distribution becomes the one-hot of its argmax and the
same acceptance code reduces to exact matching.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import NamedTuple

import torch

from sglang_trimode.rows import GreedyRows, Rows, SampledRows


@dataclass(frozen=True)
class SamplingParams:
    """Per-request sampling settings. ``top_k = 0``, ``top_p = 1`` and ``min_p = 0`` disable
    the filters (``min_p``: keep the tokens whose probability is at least ``min_p`` times the
    row's largest, as SGLang's sampler)."""

    temperature: float = 0.0
    top_p: float = 1.0
    top_k: int = 0
    min_p: float = 0.0

    def __post_init__(self) -> None:
        if not (isinstance(self.temperature, (int, float)) and self.temperature >= 0):
            raise ValueError(f"temperature must be a number >= 0, got {self.temperature!r}")
        if not (0.0 < self.top_p <= 1.0):
            raise ValueError(f"top_p must be in (0, 1], got {self.top_p!r}")
        if not (isinstance(self.top_k, int) and self.top_k >= 0):
            raise ValueError(f"top_k must be an int >= 0 (0 disables it), got {self.top_k!r}")
        if not (isinstance(self.min_p, (int, float)) and 0.0 <= self.min_p <= 1.0):
            raise ValueError(f"min_p must be in [0, 1] (0 disables it), got {self.min_p!r}")

    @property
    def greedy(self) -> bool:
        return self.temperature == 0


def _greedy_only(rows: GreedyRows, params: SamplingParams) -> None:
    if not params.greedy:
        raise ValueError(
            f"GreedyRows carry only each row's argmax, but the request samples "
            f"(temperature={params.temperature}); pass its full logits rows"
        )


_ONE = torch.ones(())  # the one-hot's probability, expanded (no allocation per row)


def probs_from_logits(logits: Rows, params: SamplingParams) -> Rows:
    """float32 ``[..., V]`` distribution after temperature, top-k and top-p (one-hot if greedy;
    for :class:`GreedyRows`, the one-hot of ``top`` as ``GreedyRows``)."""
    if isinstance(logits, GreedyRows):
        _greedy_only(logits, params)
        return GreedyRows(logits.top, _ONE.expand(logits.top.shape), logits.vocab)  # a view
    if isinstance(logits, SampledRows):
        return logits.as_probs(params)
    logits = logits.float()
    if params.greedy:
        return torch.nn.functional.one_hot(logits.argmax(-1), logits.shape[-1]).float()
    logits = logits / params.temperature
    if params.top_k and params.top_k < logits.shape[-1]:
        kth = torch.topk(logits, params.top_k, dim=-1).values[..., -1:]
        logits = logits.masked_fill(logits < kth, float("-inf"))
    probs = torch.softmax(logits, dim=-1)
    if params.top_p < 1.0:
        sorted_p, order = torch.sort(probs, dim=-1, descending=True)
        # keep the smallest prefix whose mass reaches top_p (the first token always stays)
        drop_sorted = (sorted_p.cumsum(-1) - sorted_p) >= params.top_p
        drop = torch.zeros_like(drop_sorted).scatter(-1, order, drop_sorted)
        probs = probs.masked_fill(drop, 0.0)
        probs = probs / probs.sum(-1, keepdim=True)
    if params.min_p > 0:
        probs = probs.masked_fill(probs < params.min_p * probs.max(-1, keepdim=True).values, 0.0)
        probs = probs / probs.sum(-1, keepdim=True)
    return probs


class TokenLogprob(NamedTuple):
    """One emitted token's log probability; when asked for, its row's top ``(logprobs, ids)``
    and the log probabilities of the request's chosen ids (``token_ids_logprob``) in that row."""

    logprob: float
    top: tuple[list[float], list[int]] | None = None
    chosen: list[float] | None = None


def token_logprobs(
    logits: Rows,
    tokens: torch.Tensor,
    params: SamplingParams,
    top_k: int = 0,
    ids: Sequence[int] = (),
) -> list[TokenLogprob]:
    """Log probability of ``tokens [m]`` under the rows they were drawn from, ``logits [m, V]``:
    ``log_softmax(logits / T)`` (raw logits when greedy), what SGLang reports for AR decoding,
    with each row's ``top_k`` best when ``top_k > 0`` and each row's values at ``ids`` when
    given. For :class:`GreedyRows` the tokens must be each row's argmax (``log prob``), and its
    top-k and chosen ids must have been computed."""
    if isinstance(logits, GreedyRows):
        own = torch.log(logits.prob_of(tokens)).tolist()
        tops, chosen = logits.best(top_k), logits.chosen(ids)
    elif isinstance(logits, SampledRows):
        own, tops, chosen = logits.token_logprobs(tokens, top_k, ids)
    else:
        scaled = logits.float() if params.greedy else logits.float() / params.temperature
        logp = torch.log_softmax(scaled, -1)
        own = logp.gather(-1, tokens.to(logits.device)[:, None]).squeeze(-1).tolist()
        tops, chosen = logprob_extras(logp, top_k, ids)
    m = len(own)
    tops, chosen = tops or [None] * m, chosen or [None] * m
    return [TokenLogprob(*e) for e in zip(own, tops, chosen, strict=True)]


def logprob_extras(
    logp: torch.Tensor, top_k: int, ids: Sequence[int]
) -> tuple[list | None, list | None]:
    """Each row of log probabilities ``logp [m, V]``: its ``top_k`` best ``(values, ids)`` and
    its values at ``ids`` (None where not asked for)."""
    tops = chosen = None
    if top_k:
        best = logp.topk(top_k, dim=-1)
        tops = list(zip(best.values.tolist(), best.indices.tolist(), strict=True))
    if ids:
        chosen = logp[:, torch.tensor(list(ids), device=logp.device)].tolist()
    return tops, chosen


def sample(probs: Rows, generator: torch.Generator | None, greedy: bool) -> torch.Tensor:
    """Draw one token per row of ``probs [N, V]`` -> int64 ``[N]`` (argmax when greedy)."""
    if isinstance(probs, SampledRows):
        return probs.draw  # drawn with the request's uniforms when the rows were built
    if greedy:
        return probs.argmax(-1)
    if isinstance(probs, GreedyRows):
        raise ValueError("GreedyRows cannot be sampled from; pass the full distribution")
    return torch.multinomial(probs, 1, generator=generator).squeeze(-1)


def top_candidates(logits: Rows, drafts: torch.Tensor, count: int) -> list[list[int]]:
    """Each row's ``count`` most likely tokens under the raw logits ``[m, V]`` other than the
    row's draft ``drafts[j]``, best first -> ``m`` lists (the bonus candidates of a quadratic
    step: if draft ``j`` is rejected, the token emitted in its place is often one of these)."""
    if count < 1:
        return [[] for _ in range(int(drafts.numel()))]
    if isinstance(logits, GreedyRows):
        if logits.topk_ids is None or logits.topk_ids.shape[-1] < count + 1:
            raise ValueError(f"GreedyRows carry no top-{count + 1} ids; build them with top_k")
        ids = logits.topk_ids[:, : count + 1]
    else:
        raw = logits.logits if isinstance(logits, SampledRows) else logits
        if raw is None:
            raise ValueError("SampledRows.as_probs() dropped the logits; read candidates before")
        ids = raw.float().topk(count + 1, dim=-1).indices.cpu()
    drafts = drafts.cpu().tolist()
    return [[t for t in row if t != d][:count] for row, d in zip(ids.tolist(), drafts, strict=True)]


# ---- diffusion unmasking ----------------------------------------------------------------------


def confidence(logits: Rows, tokens: torch.Tensor) -> torch.Tensor:
    """Softmax probability of the chosen tokens under the raw logits ``[m, V]`` -> ``[m]``."""
    if isinstance(logits, GreedyRows):
        return logits.prob_of(tokens)
    if isinstance(logits, SampledRows):
        logits.check_draw(tokens)
        return logits.draw_conf
    return torch.softmax(logits.float(), -1).gather(-1, tokens[:, None]).squeeze(-1)


def select_unmask(conf: torch.Tensor, threshold: float | None, steps_left: int) -> torch.Tensor:
    """Which of the ``m`` still-masked positions to commit this step -> bool ``[m]``.

    With a threshold (Fast-dLLM v2 rule): the most confident position always, and every other
    position whose confidence reaches the threshold. Without one: an even top-k schedule that
    commits ``ceil(m / steps_left)`` positions, finishing the block in ``steps_left`` steps.
    """
    m = conf.shape[0]
    if threshold is not None:
        keep = conf >= threshold
        keep[conf.argmax()] = True
        return keep
    count = min(m, max(1, math.ceil(m / max(1, steps_left))))
    keep = torch.zeros(m, dtype=torch.bool)
    keep[torch.topk(conf, count).indices] = True
    return keep


# ---- speculative acceptance -------------------------------------------------------------------

AcceptRule = Callable[
    [torch.Tensor, torch.Tensor, torch.Tensor, torch.Generator | None, bool], tuple[int, int]
]


def accept_lossless(
    drafts: torch.Tensor,
    q: torch.Tensor,
    p: torch.Tensor,
    generator: torch.Generator | None,
    greedy: bool,
) -> tuple[int, int]:
    """Lossless speculative sampling (Leviathan et al. 2023, Alg. 1; Chen et al. 2023).

    ``drafts [k]`` were drawn from ``q [k, V]``; ``p [k+1, V]`` are the target (AR) distributions
    at the seed and each draft. Draft ``j`` is accepted with probability ``min(1, p_j/q_j)``;
    the first rejection resamples from ``norm(max(0, p_j - q_j))``; if all ``k`` are accepted the
    bonus token comes from ``p_k``. Returns ``(accepted, next_token)``; the output is distributed
    exactly as sampling from ``p``. Greedy (one-hot ``p``, ``q``) reduces to exact matching
    (:func:`accept_greedy`).
    """
    if greedy:
        return accept_greedy(drafts, p)
    if isinstance(p, SampledRows):
        return _accept_lossless_rows(drafts, q, p, generator)
    for j in range(drafts.shape[0]):
        d = int(drafts[j])
        ratio = float(p[j, d] / q[j, d]) if q[j, d] > 0 else 0.0
        u = 0.0 if greedy else float(torch.rand((), generator=generator))
        if (ratio >= 1.0) or (u < ratio):
            continue
        residual = (p[j] - q[j]).clamp_min(0.0)
        total = residual.sum()
        residual = residual / total if total > 0 else p[j]
        return j, int(sample(residual[None], generator, greedy)[0])
    return _bonus(drafts, p, generator, greedy)


def _accept_lossless_rows(
    drafts: torch.Tensor, q: SampledRows | torch.Tensor, p: SampledRows, generator
) -> tuple[int, int]:
    """:func:`accept_lossless` on rows kept on the device: the ratio ``p_j(d_j) / q_j(d_j)`` comes
    from the rows' small tensors (``p.next_prob``: the verify segment is ``[seed, d_1..d_k]``;
    ``q.draw_prob``: the drafts are ``q``'s draws, so ``q_j(d_j) > 0``), the residual draw reads
    the device rows of the rejected position only, the bonus is ``p``'s draw at row ``k``."""
    k = int(drafts.shape[0])
    if k and not (
        isinstance(q, SampledRows)
        and torch.equal(q.draw[:k], drafts.long())
        and torch.equal(p.next_token[:k], drafts.long())
    ):
        raise ValueError("SampledRows acceptance: the drafts must be q's draws and p's segment")
    ratios = (p.next_prob[:k] / q.draw_prob[:k]).tolist() if k else []
    for j, ratio in enumerate(ratios):
        u = float(torch.rand((), generator=generator))
        if ratio >= 1.0 or u < ratio:
            continue
        return j, p.residual_draw(q, j, torch.rand((), generator=generator))
    return k, int(p.draw[k])


def accept_exact_match(
    drafts: torch.Tensor,
    q: torch.Tensor,
    p: torch.Tensor,
    generator: torch.Generator | None,
    greedy: bool,
) -> tuple[int, int]:
    """The vendor's rule: sample the target token at each position, accept a draft that equals it.

    Also lossless, but accepts draft ``j`` with probability ``sum_v p_j(v) q_j(v)``, never more
    than the ``sum_v min(p_j(v), q_j(v))`` of :func:`accept_lossless`.
    """
    del q
    if greedy:
        return accept_greedy(drafts, p)
    for j in range(drafts.shape[0]):
        t = int(sample(p[j][None], generator, greedy)[0])
        if t != int(drafts[j]):
            return j, t
    return _bonus(drafts, p, generator, greedy)


def accept_greedy(drafts: torch.Tensor, p: Rows) -> tuple[int, int]:
    """Both rules at temperature 0: ``q`` and ``p`` are one-hot, so draft ``j`` is accepted iff it
    equals ``argmax p_j`` (ratio ``p_j(d) / q_j(d)`` is 1 or 0), the first mismatch is replaced by
    ``argmax p_j`` (the residual ``max(0, p_j - q_j)`` is its one-hot), and the bonus is
    ``argmax p_k``. Reads only ``p``'s argmax, so ``p`` may be :class:`GreedyRows`."""
    target = p.argmax(-1).tolist()  # [>= k + 1]
    k = drafts.shape[0]
    for j, d in enumerate(drafts.tolist()):
        if d != target[j]:
            return j, target[j]
    return k, target[k]


def _bonus(
    drafts: torch.Tensor, p: torch.Tensor, generator: torch.Generator | None, greedy: bool
) -> tuple[int, int]:
    """Every draft accepted: the bonus token comes from the target at the last draft."""
    k = drafts.shape[0]
    return k, int(sample(p[k][None], generator, greedy)[0])


ACCEPT_RULES: dict[str, AcceptRule] = {
    "lossless": accept_lossless,
    "exact_match": accept_exact_match,
}
#: the rules that reduce to :func:`accept_greedy` for a greedy request (read the argmax only)
ARGMAX_WHEN_GREEDY: tuple[AcceptRule, ...] = (accept_lossless, accept_exact_match)


def get_accept_rule(rule: str | AcceptRule) -> AcceptRule:
    if callable(rule):
        return rule
    if rule not in ACCEPT_RULES:
        raise ValueError(f"acceptance must be one of {sorted(ACCEPT_RULES)}, got {rule!r}")
    return ACCEPT_RULES[rule]
