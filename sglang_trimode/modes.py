"""Per-mode step policies for the one block loop.

Every decoding mode is a small state machine over a :class:`RequestState`: ``segment`` says which
tokens the request puts into the next (batched) forward and under which mask; ``consume`` reads
that forward's logits, emits tokens and returns how many leading segment tokens' KV to commit.
The loop in :mod:`sglang_trimode.reference.engine` and the SGLang worker is the same for all.

Token convention (the vendor's): causal logits at position ``i`` predict token ``i + 1``;
bidirectional (diffusion) logits at a masked position predict the token *at* that position. The
*seed* is the newest token: sampled, emitted, its KV not yet written.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from sglang_trimode import masks
from sglang_trimode.rows.adjust import LogitAdjust
from sglang_trimode.rows.grammar import GrammarError, GrammarState
from sglang_trimode.rows.greedy import GreedyRows
from sglang_trimode.sampling import (
    ARGMAX_WHEN_GREEDY,
    AcceptRule,
    SamplingParams,
    TokenLogprob,
    confidence,
    probs_from_logits,
    sample,
    select_unmask,
    token_logprobs,
    top_candidates,
)


@dataclass
class RequestStats:
    """``forwards``: model forwards after the prefill that this request took part in (draft,
    verify and commit passes count one each). ``accept_lengths``: tokens emitted per verify or
    commit step (the bonus token included). ``step_modes``: the mode that ran each of those
    steps (aligned with ``accept_lengths``; varies only under ``auto``). ``denoise_steps``: the
    denoising forwards of each diffusion block (one entry per diffusion cycle; its commit pass is
    not counted)."""

    forwards: int = 0
    accept_lengths: list[int] = field(default_factory=list)
    num_tokens: int = 0
    step_modes: list[str] = field(default_factory=list)
    denoise_steps: list[int] = field(default_factory=list)

    def step(self, accepted: int, mode: str) -> None:
        """One verify / commit step of ``mode`` emitted ``accepted`` tokens."""
        self.accept_lengths.append(accepted)
        self.step_modes.append(mode)

    @property
    def tokens_per_forward(self) -> float:
        return self.num_tokens / self.forwards if self.forwards else float(self.num_tokens)

    @property
    def acceptance_length(self) -> float:
        n = len(self.accept_lengths)
        return sum(self.accept_lengths) / n if n else 0.0

    def histogram(self, max_len: int) -> list[int]:
        """Counts of accepted lengths 1..max_len."""
        hist = [0] * max_len
        for a in self.accept_lengths:
            hist[min(a, max_len) - 1] += 1
        return hist

    def denoise_histogram(self, max_steps: int) -> list[int]:
        """Counts of diffusion blocks by denoising forwards 0..max_steps - 1."""
        hist = [0] * max_steps
        for n in self.denoise_steps:
            hist[min(n, max_steps - 1)] += 1
        return hist


@dataclass
class RequestState:
    prompt: list[int]
    params: SamplingParams
    max_new_tokens: int
    stop_token_ids: frozenset[int]
    generator: torch.Generator | None
    out: list[int] = field(default_factory=list)
    seed: int = -1
    done: bool = False
    finish_reason: str | None = None
    stats: RequestStats = field(default_factory=RequestStats)
    #: None: not tracked; else one log probability per token in ``out`` emitted since tracking
    #: began: under the distribution the token was drawn from (``sampling.token_logprobs``: the
    #: AR rows for AR and self-speculation, the draft rows for diffusion)
    logprobs: list[float] | None = None
    #: with ``logprobs`` tracked and ``top_logprobs_num > 0``: per token, its row's best
    #: ``(logprobs, ids)``
    top_logprobs_num: int = 0
    top_logprobs: list[tuple[list[float], list[int]]] | None = None
    #: with ``logprobs`` tracked: ids whose log probabilities each token's row reports
    #: (``token_ids_logprob``), and per token those values (``chosen_logprobs``)
    chosen_ids: tuple[int, ...] = ()
    chosen_logprobs: list[list[float]] | None = None
    #: ``logit_bias`` / ``min_new_tokens`` / penalties on every row the request's forwards read
    #: (``rows.adjust``); None: none of them
    adjust: LogitAdjust | None = None
    #: with penalties: the committed output's token counts, kept incrementally on the device
    #: by ``rows.adjust.adjust_logits`` (``rows.penalty.OutputCounts``)
    counts: object | None = None
    #: ``json_schema`` / ``regex`` / ``ebnf`` / ``structural_tag``: the matcher at the state after
    #: ``out`` (``emit`` advances it; ``rows.grammar`` masks every row the request's forwards
    #: read); None: unconstrained
    grammar: GrammarState | None = None
    # per-mode scratch
    block: list[int] | None = None  # diffusion: current block tokens
    masked: list[bool] | None = None  # diffusion: which block positions are still masks
    block_logprobs: list[TokenLogprob | None] | None = None  # diffusion: per block position
    block_steps: int = 0  # diffusion: draft steps spent on the current block
    drafts: list[int] = field(default_factory=list)  # self-spec: drafts awaiting verify
    q: torch.Tensor | None = None  # self-spec: draft distributions [k, V]
    cands: list[list[int]] = field(default_factory=list)  # quadratic: bonus candidates per draft

    @property
    def remaining(self) -> int:
        return self.max_new_tokens - len(self.out)

    def __post_init__(self) -> None:
        if self.logprobs is not None and self.top_logprobs_num and self.top_logprobs is None:
            self.top_logprobs = []
        if self.logprobs is None:
            self.chosen_ids = ()
        elif self.chosen_ids and self.chosen_logprobs is None:
            self.chosen_logprobs = []

    def emit(self, tokens: list[int], logprobs: list[TokenLogprob] | None = None) -> None:
        """Append tokens (and, when tracked, their ``logprobs`` entries), stopping at a stop token
        or at ``max_new_tokens``."""
        if self.logprobs is not None and (logprobs is None or len(logprobs) != len(tokens)):
            raise RuntimeError("RequestState.emit: logprobs are tracked, one per token needed")
        for k, t in enumerate(tokens):
            if self.done:
                return
            if self.grammar is not None and not self.grammar.accept(t):
                raise GrammarError(f"token {int(t)} breaks the request's grammar after {self.out}")
            self.out.append(int(t))
            if self.logprobs is not None:
                self.logprobs.append(float(logprobs[k].logprob))
                if self.top_logprobs is not None:
                    self.top_logprobs.append(logprobs[k].top)
                if self.chosen_logprobs is not None:
                    self.chosen_logprobs.append(logprobs[k].chosen)
            if t in self.stop_token_ids or (self.grammar is not None and self.grammar.terminated):
                self.done, self.finish_reason = True, "stop"
            elif len(self.out) >= self.max_new_tokens:
                self.done, self.finish_reason = True, "length"
        self.stats.num_tokens = len(self.out)

    @property
    def progress(self) -> tuple[int, bool, int]:
        """Grows (lexicographically) with every forward the request takes part in: tokens out,
        drafts pending, diffusion positions still masked (negated)."""
        return len(self.out), self.q is not None, -sum(self.masked or [])

    def logprobs_of(self, rows, tokens: list[int] | torch.Tensor) -> list[TokenLogprob] | None:
        """``sampling.token_logprobs`` of ``tokens`` under ``rows`` when tracked, else None."""
        if self.logprobs is None:
            return None
        ids = torch.as_tensor(tokens, dtype=torch.long)
        top_k = self.top_logprobs_num if self.top_logprobs is not None else 0
        return token_logprobs(rows, ids, self.params, top_k, self.chosen_ids)

    def sample_next(self, logits: torch.Tensor) -> int:
        """Sample one token from one row of logits ``[V]``."""
        if self.params.greedy and isinstance(logits, GreedyRows):  # the row's argmax (hot path)
            return int(logits.top)
        probs = probs_from_logits(logits[None], self.params)
        return int(sample(probs, self.generator, self.params.greedy)[0])


@dataclass(frozen=True)
class Segment:
    """One request's tokens of a forward, their mask, and the mode whose policy made them
    (``""``: a prefill or a commit pass of an engine; ``drafter_rows`` reads it)."""

    tokens: list[int]
    desc: masks.MaskDescriptor
    mode: str = ""


@dataclass(frozen=True)
class ModeConfig:
    """Settings shared by the policies; ``mask_token_id`` comes from the model config.
    ``bonus_candidates`` (quadratic self-speculation): extra mask groups per acceptance length,
    each with a guess of the bonus token in its first slot (0: plain TiDAR); ``bonus_lengths``:
    only the that many shortest acceptance lengths get them (0: every one)."""

    mask_token_id: int
    block_size: int
    threshold: float | None = 0.9
    diffusion_steps: int | None = None
    accept_rule: AcceptRule | None = None
    bonus_candidates: int = 0
    bonus_lengths: int = 0


_NO_DRAFTS = torch.zeros(0, dtype=torch.long)
_NO_Q = torch.zeros(0)  # a greedy draft's q: set (the draft phase is over), never read


def kept_prefix(seg: Segment, kept: int) -> int:
    """``kept`` (what a policy's ``consume`` returned: the leading tokens of ``seg`` whose KV the
    step keeps), checked: at most ``seg.desc.committable`` (servers store only those tokens' KV)."""
    if not 0 <= kept <= seg.desc.committable:
        raise RuntimeError(
            f"a step kept {kept} segment tokens: only a prefix of at most "
            f"{seg.desc.committable} (the committable tokens of {seg.desc}) may be kept"
        )
    return kept


class ARPolicy:
    """Causal decoding, one token per forward."""

    name = "ar"

    def __init__(self, cfg: ModeConfig) -> None:
        self.cfg = cfg

    def segment(self, r: RequestState) -> Segment:
        return Segment([r.seed], masks.decode(), self.name)

    def switchable(self, r: RequestState) -> bool:
        """Whether another policy may take ``r`` over before its next forward (no cycle open)."""
        return True

    def one_forward_tokens(self) -> int:
        """For a policy whose every cycle is one forward (AR, quadratic): the most tokens one
        cycle emits; 0 for policies whose cycles span several forwards. A batched server fills
        the forwards other requests' longer cycles take with further cycles of these."""
        return 1

    def take_over(self, r: RequestState, previous: ARPolicy) -> None:
        """Start running ``r``, left by ``previous`` at a switch point (``previous.switchable``):
        pending drafts are dropped (they were only proposals, so output is unchanged)."""
        r.drafts, r.q, r.cands = [], None, []

    def consume(self, r: RequestState, seg: Segment, logits: torch.Tensor) -> int:
        self._next_seed(r, logits)
        r.stats.step(1, self.name)
        return seg.desc.length

    @staticmethod
    def _next_seed(r: RequestState, logits: torch.Tensor) -> None:
        r.seed = r.sample_next(logits[-1])
        r.emit([r.seed], None if r.logprobs is None else r.logprobs_of(logits[-1:], [r.seed]))


class DiffusionPolicy(ARPolicy):
    """Block diffusion: denoise ``[seed, MASK x (B-1)]`` bidirectionally, then a causal commit pass
    writes the block's KV and samples the next seed. Block size 1 is exactly AR."""

    name = "diffusion"

    def switchable(self, r: RequestState) -> bool:
        return r.block is None

    def one_forward_tokens(self) -> int:
        return 0  # draft forwards until no mask is left, then a commit pass

    def segment(self, r: RequestState) -> Segment:
        if r.block is None:
            n_masks = min(self.cfg.block_size - 1, r.remaining)
            r.block = [r.seed] + [self.cfg.mask_token_id] * n_masks
            r.masked = [False] + [True] * n_masks
            r.block_logprobs = None if r.logprobs is None else [None] * len(r.block)
            r.block_steps = 0
        if any(r.masked):
            desc = masks.diffusion_draft(self.cfg.block_size, len(r.block))
            return Segment(list(r.block), desc, self.name)
        return Segment(list(r.block), masks.commit(len(r.block)), self.name)

    def consume(self, r: RequestState, seg: Segment, logits: torch.Tensor) -> int:
        if seg.desc.is_causal:  # commit pass: keep the block's causal KV, sample the next seed
            self._next_seed(r, logits)
            self._end_cycle(r, len(r.block))  # B-1 diffused tokens + this one
            r.block = r.masked = r.block_logprobs = None
            return seg.desc.length
        idx = torch.tensor([i for i, m in enumerate(r.masked) if m])
        probs = probs_from_logits(logits[idx], r.params)
        tokens = sample(probs, r.generator, r.params.greedy)
        n_masks = len(r.block) - 1
        steps = self.cfg.diffusion_steps or n_masks
        steps_left = steps - r.block_steps
        if steps_left <= 1:
            keep = torch.ones(idx.numel(), dtype=torch.bool)
        else:
            keep = select_unmask(confidence(logits[idx], tokens), self.cfg.threshold, steps_left)
        if r.grammar is not None:
            keep = self._grammar_keep(r, idx, tokens, keep)
        lps = r.logprobs_of(logits[idx[keep]], tokens[keep])
        for k, (i, t) in enumerate(zip(idx[keep].tolist(), tokens[keep].tolist())):
            r.block[i], r.masked[i] = t, False
            if lps is not None:
                r.block_logprobs[i] = lps[k]
        r.block_steps += 1
        self._emit_if_ready(r)
        return 0

    @staticmethod
    def _grammar_keep(
        r: RequestState, idx: torch.Tensor, tokens: torch.Tensor, keep: torch.Tensor
    ) -> torch.Tensor:
        """Under a grammar a block fills left to right: the leftmost masked position always (its
        row carries the grammar's exact mask), then the next ones while the unmasking rule picked
        them and the grammar accepts them in order after the block's tokens before them."""
        first = int(idx[0])
        run = 1
        while run < len(keep) and bool(keep[run]) and int(idx[run]) == first + run:
            run += 1
        filled = r.block[1:first]
        valid = r.grammar.valid_prefix([*filled, *tokens[:run].tolist()]) - len(filled)
        out = torch.zeros_like(keep)
        out[: max(1, valid)] = True
        return out

    def _emit_if_ready(self, r: RequestState) -> None:
        """Emit the block once it is full, or early up to a stop token with no mask before it."""
        before = len(r.out)
        for i in range(1, len(r.block)):
            if r.masked[i]:
                return
            if r.block[i] in r.stop_token_ids:
                r.emit(r.block[1 : i + 1], self._block_logprobs(r, i + 1))
                break
        else:
            r.emit(r.block[1:], self._block_logprobs(r, len(r.block)))
        if r.done:  # no commit pass follows: record the partial cycle here
            self._end_cycle(r, len(r.out) - before)

    def _end_cycle(self, r: RequestState, emitted: int) -> None:
        """Record a finished diffusion cycle: its tokens and its denoising forwards."""
        r.stats.step(emitted, self.name)
        r.stats.denoise_steps.append(r.block_steps)

    @staticmethod
    def _block_logprobs(r: RequestState, end: int) -> list[TokenLogprob] | None:
        return None if r.block_logprobs is None else r.block_logprobs[1:end]


class LinearSpecPolicy(ARPolicy):
    """Linear self-speculation: a bidirectional draft forward over ``[seed, MASK x (L-1)]``, then a
    causal verify of ``[seed, d_1..d_{L-1}]`` (two forwards per step)."""

    name = "self_spec_linear"

    def switchable(self, r: RequestState) -> bool:
        return r.q is None

    def one_forward_tokens(self) -> int:
        return 0  # a draft forward, then a verify forward

    def segment(self, r: RequestState) -> Segment:
        if r.q is None:  # draft phase
            n = min(self.cfg.block_size, r.remaining)
            if n > 1:
                tokens = [r.seed] + [self.cfg.mask_token_id] * (n - 1)
                return Segment(tokens, masks.diffusion_draft(n), self.name)
            r.drafts, r.q = [], _NO_Q
        return Segment([r.seed, *r.drafts], masks.linear_verify(1 + len(r.drafts)), self.name)

    def consume(self, r: RequestState, seg: Segment, logits: torch.Tensor) -> int:
        if self._argmax_only(r, logits):
            return self._consume_argmax(r, logits.top.tolist())
        if r.q is None:  # draft forward: no KV is written
            r.q = probs_from_logits(logits[1:], r.params)
            r.drafts = sample(r.q, r.generator, r.params.greedy).tolist()
            return 0
        p = probs_from_logits(logits, r.params)
        accepted = self._verify(r, p, logits)
        r.drafts, r.q = [], None
        return accepted + 1

    def _argmax_only(self, r: RequestState, rows) -> bool:
        """Greedy, no logprobs, a rule that is :func:`sampling.accept_greedy` when greedy: the
        step reads only its rows' argmax ids, so it runs on Python ints (greedy serving's hot
        path; the same tokens as the tensor path below, tests/test_greedy_rows.py)."""
        return (
            r.params.greedy
            and r.logprobs is None
            and isinstance(rows, GreedyRows)
            and self.cfg.accept_rule in ARGMAX_WHEN_GREEDY
        )

    def _consume_argmax(self, r: RequestState, top: list[int]) -> int:
        """consume() from the rows' argmax ``top``: drafts are ``top[1:]``; the verify accepts
        the drafts that equal the argmax before them, then emits the argmax after the last."""
        if r.q is None:  # draft forward; greedy acceptance never reads q
            r.drafts, r.q = top[1:], _NO_Q
            return 0
        a = next((j for j, d in enumerate(r.drafts) if d != top[j]), len(r.drafts))
        r.emit(r.drafts[:a] + [top[a]])
        r.stats.step(a + 1, self.name)
        r.seed = top[a]
        r.drafts, r.q = [], None
        return a + 1

    def _verify(self, r: RequestState, p: torch.Tensor, logits) -> int:
        """Accept drafts against the target distributions ``p`` (from ``logits``, rows seed and
        drafts); the emitted tokens' logprobs are those of the AR rows they stand on."""
        drafts = torch.tensor(r.drafts, dtype=torch.long)
        a, bonus = self.cfg.accept_rule(drafts, r.q, p, r.generator, r.params.greedy)
        emitted = r.drafts[:a] + [bonus]
        r.emit(emitted, r.logprobs_of(logits[: a + 1], emitted))
        r.stats.step(a + 1, self.name)
        r.seed = bonus
        return a


class QuadraticSpecPolicy(LinearSpecPolicy):
    """TiDAR-style self-speculation: one forward verifies the previous drafts and, through one
    mask group per acceptance length, pre-drafts the next block.

    Bonus candidates (``cfg.bonus_candidates = C > 0``): a group's first slot stands at the bonus
    position, whose token the same forward decides, so TiDAR's group drafts the next block one
    position further from known text than a linear draft after its seed. Each acceptance length
    ``i`` below the draft count then gets ``C`` more groups whose first slot holds a guess of the
    bonus: the ``C`` tokens the drafter found likeliest at draft ``i + 1`` after the draft itself
    (if that draft is rejected, the emitted bonus is often one of them). After verifying, the
    step reads the group whose guess equals the bonus (its drafts are conditioned on the true
    token, as a linear draft is), else the all-mask group. With ``cfg.bonus_lengths = G`` only
    acceptance lengths ``0..G-1`` get guesses (most steps accept few drafts), which keeps a step's
    rows near plain TiDAR's. Verification is unchanged, so greedy
    output still equals AR's and sampled output keeps AR's distribution (the drafts a step uses
    depend only on tokens already emitted)."""

    name = "self_spec_quadratic"

    def switchable(self, r: RequestState) -> bool:
        return True

    def one_forward_tokens(self) -> int:
        return self.cfg.block_size  # the accepted pre-drafts (<= B - 1) and the bonus token

    def take_over(self, r: RequestState, previous: ARPolicy) -> None:
        """From another quadratic policy, keep the pre-drafts that fit this block size."""
        if not isinstance(previous, QuadraticSpecPolicy) or r.q is None:
            return super().take_over(r, previous)
        keep = min(len(r.drafts), self.cfg.block_size - 1)
        r.drafts, r.q = r.drafts[:keep], r.q[:keep]
        r.cands = r.cands[:keep] if self.cfg.bonus_candidates else []

    def segment(self, r: RequestState) -> Segment:
        nv = 1 + self.cfg.bonus_candidates  # groups without a guess hold masks only
        desc = masks.quadratic(len(r.drafts), self.cfg.block_size, nv, self.cfg.bonus_lengths)
        mask = self.cfg.mask_token_id
        groups: list[int] = []
        for i in range(desc.num_causal):  # acceptance length i: variant 0, then the guesses
            guesses = r.cands[i] if i < len(r.cands) else []
            for v in range(desc.variants_of(i)):
                first = guesses[v - 1] if 0 < v <= len(guesses) else mask
                groups += [first] + [mask] * (self.cfg.block_size - 1)
        return Segment([r.seed, *r.drafts, *groups], desc, self.name)

    def consume(self, r: RequestState, seg: Segment, logits: torch.Tensor) -> int:
        desc = seg.desc
        p = probs_from_logits(logits[: desc.num_causal], r.params)
        if r.q is None:
            r.q = torch.zeros(0, p.shape[-1])
        accepted = self._verify(r, p, logits[: desc.num_causal])
        variant = 0  # the group whose first slot holds the emitted bonus token, if any
        n_guess = desc.variants_of(accepted) - 1
        guesses = r.cands[accepted][:n_guess] if accepted < len(r.cands) else []
        if r.seed in guesses:
            variant = 1 + guesses.index(r.seed)
        # the group stands at the bonus position and the next L-1 positions
        n_next = max(0, min(self.cfg.block_size - 1, r.remaining - 1))
        group = logits[desc.group_slice(accepted, variant)][1 : 1 + n_next]
        r.q = probs_from_logits(group, r.params)
        drafts = sample(r.q, r.generator, r.params.greedy) if n_next else _NO_DRAFTS
        count = self.cfg.bonus_candidates if n_next else 0
        r.cands = top_candidates(group, drafts, count) if count else []  # from the raw logits
        r.drafts = drafts.tolist()
        return accepted + 1


POLICIES: dict[str, type[ARPolicy]] = {
    "ar": ARPolicy,
    "diffusion": DiffusionPolicy,
    "self_spec_linear": LinearSpecPolicy,
    "self_spec_quadratic": QuadraticSpecPolicy,
}


assert all(cls.name == mode for mode, cls in POLICIES.items())


def get_policy(mode: str, cfg: ModeConfig) -> ARPolicy:
    if mode not in POLICIES:
        raise ValueError(f"mode must be one of {sorted(POLICIES)}, got {mode!r}")
    return POLICIES[mode](cfg)
