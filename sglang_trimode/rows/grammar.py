"""Grammar-constrained rows (``json_schema`` / ``regex`` / ``ebnf`` / ``structural_tag``).

A request under a grammar keeps one matcher (:class:`GrammarState`, an xgrammar
``GrammarMatcher``: ``accept_token`` / ``rollback`` / ``fill_next_token_bitmask`` /
``is_terminated``) at the state after its emitted tokens (``RequestState.emit`` accepts each).
Before any policy reads a forward's rows, :func:`grammar_logits` sets to ``-inf`` every token the
grammar forbids at the output position the row decides (``rows.adjust.decided_offsets``), as
SGLang's speculative workers do (``spec_utils.generate_token_bitmask``): accept the tokens before
the row, fill the row's mask, roll back. So

- a verify row (a causal row at draft ``i``) gets the mask of the grammar state after drafts
  ``0..i-1``: greedy self-speculation equals greedy AR under the grammar and sampled
  self-speculation keeps AR's masked, renormalised distribution (a draft the grammar forbids has
  target probability 0 and is always rejected; the rows after it are never read);
- a drafting row (a bidirectional row at a masked position: a linear draft, a diffusion block)
  gets the mask after the tokens before it, where a still-masked earlier position stands for
  the masked argmax of its own row (the *chain*): greedy drafts are grammar-valid, sampled drafts
  are drawn from the masked rows, which are what the acceptance rule reads as ``q``;
- rows past a draft the grammar rejects, or past the grammar's end, are left as they are.

:func:`grammar_rows_slow` is the obviously-correct twin for one request's rows: a fresh matcher
per row fed the whole prefix, each token of the vocabulary tried one by one. No sglang import.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import torch

from sglang_trimode import masks
from sglang_trimode.rows.adjust import Head, decided_offsets, first_index
from sglang_trimode.rows.deferred import eager_rows

_BITS = 32  # xgrammar's bitmask: int32 words, token 32 * w + b is bit b of word w


class GrammarError(RuntimeError):
    """A token the policies emitted was refused by the request's grammar (a bug, never input)."""


class GrammarState:
    """A request's grammar matcher at the state after its emitted tokens. ``pending``: tokens
    accepted since the last :meth:`settle` (a server's scheduler feeds the matcher the tokens a
    step committed itself, so the worker rolls its own back at the end of each step)."""

    def __init__(self, matcher, vocab_size: int) -> None:
        self.matcher = matcher
        self.vocab_size = int(vocab_size)
        self.pending = 0
        words = math.ceil(self.vocab_size / _BITS)
        self._bitmask = torch.full((1, words), -1, dtype=torch.int32)

    @property
    def terminated(self) -> bool:
        return bool(self.matcher.is_terminated())

    def accept(self, token: int) -> bool:
        """Advance over ``token``; False (state unchanged) when the grammar forbids it or ended."""
        if self.terminated or not self.matcher.accept_token(int(token)):
            return False
        self.pending += 1
        return True

    def rollback(self, k: int) -> None:
        """Undo the last ``k`` accepted tokens."""
        if k:
            self.matcher.rollback(k)
            self.pending -= k

    def settle(self) -> None:
        """Roll back every token accepted since the last settle."""
        self.rollback(self.pending)

    def allowed(self) -> torch.Tensor:
        """Bool ``[vocab_size]``: the tokens the grammar allows next."""
        self.matcher.fill_next_token_bitmask(self._bitmask, 0)
        bits = (self._bitmask[0, :, None] >> torch.arange(_BITS, dtype=torch.int32)) & 1
        return bits.bool().flatten()[: self.vocab_size]

    def valid_prefix(self, tokens: Sequence[int]) -> int:
        """How many leading ``tokens`` the grammar accepts in a row (state unchanged after)."""
        n = 0
        for t in tokens:
            if not self.accept(t):
                break
            n += 1
        self.rollback(n)
        return n


def known_tokens(state, seg, prefix: int, mask_id: int) -> dict[int, int]:
    """Output index -> token for the tokens of ``seg`` that are not masks (a quadratic step's
    causal tokens only: its mask groups restate positions of its drafts)."""
    first = first_index(state, prefix)
    own = masks.offsets(seg.desc)[: eager_rows(seg.desc)].tolist()
    return {first + o: int(t) for o, t in zip(own, seg.tokens, strict=False) if t != mask_id}


def decided_positions(state, seg, prefix: int) -> list[int]:
    """The output position each of ``seg``'s eager rows (``rows.deferred.eager_rows``) decides."""
    first = first_index(state, prefix)
    return (first + decided_offsets(seg.desc)[: eager_rows(seg.desc)]).tolist()


def _walk(
    g: GrammarState,
    known: dict[int, int],
    decided: Sequence[int],
    done: int,
    allowed_of: Callable[[], torch.Tensor],
    apply: Callable[[int, torch.Tensor], int],
) -> None:
    """The rule both implementations share: for each row deciding a position not yet emitted
    (``>= done``), in order of position, accept the tokens before that position (known ones,
    else the chain), mask the row (``apply(row, allowed) -> its masked argmax``); stop at a token
    the grammar refuses or at its end; roll back everything accepted here."""
    order = sorted((j for j, m in enumerate(decided) if m >= done), key=decided.__getitem__)
    chain: dict[int, int] = {}
    cur, accepted = done, 0
    try:
        for j in order:
            m = decided[j]
            while cur < m:
                t = known.get(cur, chain.get(cur))
                if t is None or not g.accept(t):
                    return
                cur, accepted = cur + 1, accepted + 1
            if g.terminated:
                return
            best = apply(j, allowed_of())
            if m not in known:
                chain[m] = best
    finally:
        g.rollback(accepted)


def masks_drafting_rows(seg) -> bool:
    """Whether a segment's rows are masked: always, except a linear self-speculation draft when
    draft masking is off (``MASK_DRAFTS``, which also leaves quadratic mask groups unmasked;
    ``bench/grammar_acceptance.py`` turns it off to measure what it buys: drafts are proposals
    only, so output is the same either way)."""
    return MASK_DRAFTS or seg.desc.is_causal or seg.mode != "self_spec_linear"


#: mask self-speculation's drafting rows (see :func:`masks_drafting_rows`)
MASK_DRAFTS = True


def _masked(row: torch.Tensor, allowed: torch.Tensor) -> torch.Tensor:
    return row.masked_fill(~allowed.to(row.device), -math.inf)


def grammar_logits(
    logits: torch.Tensor,
    head: Head | None,
    states: Sequence,
    segs: Sequence,
    prefix: Sequence[int],
    mask_id: int,
) -> tuple[torch.Tensor, Head | None]:
    """A forward's packed logits (each segment's eager rows when ``head`` is given) with every
    constrained request's rows masked (``state.grammar``; see the module doc) -> a new tensor, or
    ``logits`` itself when no running request has a grammar; ``head`` masks a quadratic step's
    mask groups as it reads them (``rows.grammar_groups``)."""
    picked = [
        i
        for i, (s, g) in enumerate(zip(states, segs, strict=True))
        if g is not None and getattr(s, "grammar", None) is not None and masks_drafting_rows(g)
    ]
    if not picked:
        return logits, head
    descs = [None if g is None else g.desc for g in segs]
    rows_of = [0 if d is None else (eager_rows(d) if head is not None else d.length) for d in descs]
    starts = torch.tensor([0, *rows_of]).cumsum(0).tolist()
    out = logits.clone()
    for i in picked:
        r, seg = states[i], segs[i]
        base = starts[i]

        def apply(j: int, allowed: torch.Tensor, base: int = base) -> int:
            out[base + j] = _masked(out[base + j], allowed)
            return int(out[base + j].argmax())

        known = known_tokens(r, seg, prefix[i], mask_id)
        decided = decided_positions(r, seg, prefix[i])
        _walk(r.grammar, known, decided, len(r.out), r.grammar.allowed, apply)
    if head is not None and MASK_DRAFTS:  # a quadratic step's mask groups: masked when read
        from sglang_trimode.rows.grammar_groups import group_head, quadratic_entries

        full = torch.tensor([0, *(0 if d is None else d.length for d in descs)]).cumsum(0)
        entries = quadratic_entries(states, segs, prefix, picked, full.tolist(), starts, out)
        head = group_head(head, entries, mask_id) if entries else head
    return out, head


def grammar_rows_slow(
    rows: torch.Tensor,
    state,
    seg,
    prefix: int,
    mask_id: int,
    new_matcher: Callable[[], object],
) -> torch.Tensor:
    """The twin of :func:`grammar_logits` for one request's full rows ``[n, V]``: a copy with
    each masked row's allowed set found by a fresh matcher (``new_matcher()``) fed the request's
    whole output and the tokens before the row, then every token of the vocabulary tried."""
    out = rows.clone()
    if not masks_drafting_rows(seg):
        return out
    vocab = int(rows.shape[-1])
    walked: list[int] = []  # the tokens the walk accepted so far (state.out's tail excluded)

    class _Tracking:  # the walk's matcher: remembers the accepted tokens, masks from scratch
        terminated = False

        def accept(self, t: int) -> bool:
            ok = state.grammar.accept(t)
            if ok:
                walked.append(int(t))
            self.terminated = state.grammar.terminated
            return ok

        def rollback(self, k: int) -> None:
            state.grammar.rollback(k)
            del walked[len(walked) - k :]

    def allowed() -> torch.Tensor:
        m = new_matcher()
        if not all(m.accept_token(h) for h in [*state.out, *walked]):
            raise GrammarError("the grammar refuses the request's own output")
        ok = torch.zeros(vocab, dtype=torch.bool)
        for t in range(vocab):
            if m.accept_token(t):
                ok[t] = True
                m.rollback(1)
        return ok

    def apply(j: int, allowed: torch.Tensor) -> int:
        out[j] = _masked(out[j], allowed)
        return int(out[j].argmax())

    tracking = _Tracking()
    tracking.terminated = state.grammar.terminated
    known = known_tokens(state, seg, prefix, mask_id)
    decided = decided_positions(state, seg, prefix)
    _walk(tracking, known, decided, len(state.out), allowed, apply)
    if seg.desc.kind == masks.MaskKind.QUADRATIC and MASK_DRAFTS:
        from sglang_trimode.rows.grammar_groups import groups_slow

        def walk_group(known: dict, decided: list[int], at: list[int]) -> None:
            def put(j: int, ok: torch.Tensor) -> int:
                return apply(at[j], ok)

            _walk(tracking, known, decided, len(state.out), allowed, put)

        groups_slow(out, seg, first_index(state, prefix), mask_id, walk_group)
    return out
