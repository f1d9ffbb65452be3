"""`GreedyRows`: what a greedy request reads from logits rows that stay on the device."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch


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
    prob: torch.Tensor | None  # None: not computed (no reader in this forward: `with_prob`)
    vocab: int
    topk_logprobs: torch.Tensor | None = None
    topk_ids: torch.Tensor | None = None
    chosen_ids: tuple[int, ...] = ()
    chosen_logprobs: torch.Tensor | None = None  # [..., len(chosen_ids)]

    @classmethod
    def from_logits(
        cls,
        logits: torch.Tensor,
        top_k: int = 0,
        chosen_ids: Sequence[int] = (),
        with_prob: bool = True,
    ) -> GreedyRows:
        """``logits [..., V]`` on any device -> the summary on the CPU (one transfer each); with
        ``chosen_ids`` also each row's log probabilities at those ids (``token_ids_logprob``).
        ``with_prob=False`` skips the softmax (``[..., V]``) when no reader of these rows needs
        the argmax's probability (only diffusion confidences and logprobs read it)."""
        top = logits.argmax(-1)
        prob = None
        if with_prob:
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
        prob = None if prob is None else prob.cpu()
        return cls(top.cpu(), prob, vocab, vals, ids, tuple(chosen_ids), chosen)

    def __getitem__(self, key) -> GreedyRows:
        def at(t: torch.Tensor | None) -> torch.Tensor | None:
            return None if t is None else t[key]

        return GreedyRows(
            self.top[key],
            at(self.prob),
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
        if self.prob is None:
            raise ValueError("GreedyRows were built without probabilities (with_prob=False)")
        return self.prob

    def argmax(self, dim: int = -1) -> torch.Tensor:
        if dim not in (-1, self.top.dim()):
            raise ValueError(f"GreedyRows: argmax over the vocabulary only (dim=-1), got {dim}")
        return self.top
