"""The reference engine: every decoding mode, batched with ragged prompts, in one block loop.

This is the oracle the SGLang path is tested against: dense masks from
:mod:`sglang_trimode.masks`, the transformers-backed model, a dense KV cache with explicit
commit, and the per-mode policies of :mod:`sglang_trimode.modes`.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from functools import partial
from pathlib import Path

import torch

from sglang_trimode import masks
from sglang_trimode.adapter import rows as drafter_rows_module
from sglang_trimode.adapter.files import adapter_folder
from sglang_trimode.adapter.lora import DrafterLoRA, load_drafter_for
from sglang_trimode.core import Running, one_forward, read_rows
from sglang_trimode.modes import (
    POLICIES,
    ModeConfig,
    RequestState,
    RequestStats,
    Segment,
)
from sglang_trimode.reference.grammar import grammar_field, grammar_states, matcher_factory
from sglang_trimode.reference.kv_cache import KVCache
from sglang_trimode.rows import eager_row_index
from sglang_trimode.rows.adjust import (
    LogitAdjust,
    adjust_rows_slow,
    decided_offsets,
    first_index,
)
from sglang_trimode.rows.grammar import grammar_rows_slow
from sglang_trimode.rows.penalty import row_histories_slow
from sglang_trimode.sampling import SamplingParams, get_accept_rule, probs_from_logits, sample
from sglang_trimode.scheduler.cost import CostModel
from sglang_trimode.scheduler.driver import ModeDriver, TraceRow
from sglang_trimode.scheduler.policy import AR, AutoPolicy
from sglang_trimode.scheduler.step import Budget, Policy
from sglang_trimode.validation import (
    per_request_penalty,
    validate_adjust,
    validate_logprobs,
    validate_request,
)


@dataclass
class GenerationOutput:
    token_ids: list[int]
    stats: RequestStats
    finish_reason: str
    mode: str
    #: one per token when ``generate(..., logprobs=True)`` (see ``RequestState.logprobs``)
    logprobs: list[float] | None = None
    #: per token, its row's best ``(logprobs, ids)`` when ``generate(..., top_logprobs=k)``
    top_logprobs: list[tuple[list[float], list[int]]] | None = None
    #: per token, its row's log probabilities at ``generate(..., token_ids_logprob=ids)``
    token_ids_logprobs: list[list[float]] | None = None


class TriModeEngine:
    """``TriModeEngine.from_pretrained(path).generate(prompts, mode=...)``."""

    def __init__(
        self,
        model: torch.nn.Module,
        cost: CostModel | None = None,
        drafter: DrafterLoRA | None = None,
        drafter_rows: str = drafter_rows_module.DEFAULT_SCOPE,
    ) -> None:
        self.model = model.eval()
        self.config = model.config
        self.cost = cost
        self.last_trace: list[TraceRow] = []
        #: draft-only adapter (``adapter/lora.py``) on the rows ``drafter_rows`` picks
        #: among every forward's non-committable rows (``sglang_trimode/adapter/rows.py``)
        self.drafter = None if drafter is None else drafter.attach(model)
        self.drafter_rows = drafter_rows_module.check_scope(drafter_rows)
        self.path: Path | None = None  # the checkpoint (its tokenizer compiles grammars)

    def cost_model(self) -> CostModel:
        """The forward-time model of mode ``auto``: the one given, else measured once here."""
        if self.cost is None:
            from sglang_trimode.scheduler.calibrate import calibrate

            self.cost = calibrate(self.time_forward)
        return self.cost

    @torch.no_grad()
    def time_forward(self, batch: int, tokens: int, context: int, repeats: int = 3) -> float:
        """Seconds of one forward: ``batch`` requests of ``tokens`` causal query tokens each over
        ``context`` cached tokens each (best of ``repeats``)."""
        import time

        cache = self._new_cache(batch, context + tokens)
        cache.lengths[:] = context
        rows = list(range(batch))
        segs = [Segment([0] * tokens, masks.prefill(tokens))] * batch
        times = []
        for _ in range(repeats + 1):  # the first one warms up
            if self.device.type == "cuda":
                torch.cuda.synchronize(self.device)
            t0 = time.perf_counter()
            self._forward(cache, rows, segs)
            if self.device.type == "cuda":
                torch.cuda.synchronize(self.device)
            times.append(time.perf_counter() - t0)
            cache.end()
        return min(times[1:])

    @classmethod
    def from_pretrained(
        cls,
        path: str | Path,
        device: str | torch.device = "cpu",
        dtype: torch.dtype = torch.float32,
        attn_implementation: str = "sdpa",
        drafter: bool | str = True,
        drafter_rows: str = drafter_rows_module.DEFAULT_SCOPE,
    ) -> TriModeEngine:
        """The checkpoint at ``path`` with the drafter adapter ``drafter`` picks, as the server's
        ``--trimode-drafter``: True / ``"on"`` (default) the checkpoint's ``linear_spec_lora/``
        (or older ``drafter_lora/``) when it has one, False / ``"off"`` none, any other string
        an adapter folder; ``drafter_rows`` as ``--trimode-drafter-rows``."""
        from sglang_trimode.reference.checkpoint import load_model

        model = load_model(
            path, device=device, dtype=dtype, attn_implementation=attn_implementation
        )
        folder = adapter_folder(path, drafter)
        lora = None if folder is None else load_drafter_for(model, folder)
        engine = cls(model, drafter=lora, drafter_rows=drafter_rows)
        engine.path = Path(path)
        return engine

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    @torch.no_grad()
    def generate(
        self,
        prompts: Sequence[Sequence[int]],
        mode: str | Sequence[str] = "ar",
        max_new_tokens: int = 64,
        block_size: int | None = None,
        threshold: float | None = 0.9,
        temperature: float = 0.0,
        top_p: float = 1.0,
        top_k: int = 0,
        min_p: float = 0.0,
        stop_token_ids: Sequence[int] | None = None,
        seed: int | Sequence[int] = 0,
        acceptance: str = "lossless",
        diffusion_steps: int | None = None,
        auto_policy: Policy | None = None,
        max_tokens_per_forward: int | None = None,
        logprobs: bool = False,
        top_logprobs: int = 0,
        token_ids_logprob: Sequence[int] | None = None,
        row_summary: bool = False,
        bonus_candidates: int = 0,
        bonus_lengths: int = 0,
        logit_bias: dict[int, float] | None = None,
        min_new_tokens: int = 0,
        frequency_penalty: float | Sequence[float] = 0.0,
        presence_penalty: float | Sequence[float] = 0.0,
        repetition_penalty: float | Sequence[float] = 1.0,
        json_schema: str | dict | None = None,
        regex: str | None = None,
        ebnf: str | None = None,
        tokenizer=None,
        grammar: Callable[[], object] | None = None,
    ) -> list[GenerationOutput]:
        """Generate for a batch of token-id prompts; ``mode`` is one name or one per prompt.

        ``mode="auto"``: the scheduler picks each request's mode and draft length every step
        (``auto_policy``, default :class:`AutoPolicy` on :meth:`cost_model`), changing them
        mid-request at switch points, within ``max_tokens_per_forward`` query tokens per forward
        when given (requests that do not fit wait a step). ``self.last_trace`` holds what ran.

        ``seed`` is one int (request ``i`` uses ``seed + i``) or one per prompt. Each output holds
        the generated tokens only and the request's stats (forwards after the prefill), and with
        ``logprobs=True`` each token's log probability under the distribution it was drawn from
        (AR rows for AR and self-speculation, draft rows for diffusion; ``log_softmax(logits /
        T)``, raw logits when greedy), with ``top_logprobs=k`` also each row's ``k`` best and with
        ``token_ids_logprob=ids`` each row's values at ``ids`` (SGLang's field of that name).

        ``row_summary=True`` hands the policies what the SGLang worker hands them
        (``rows.request_rows``: ``GreedyRows`` / ``SampledRows`` from one batched pass over the
        forward's rows) instead of each request's logits rows: greedy output is the same; sampled
        output draws by inverse CDF (same distributions, other random draws).

        ``bonus_candidates=C`` (quadratic self-speculation): ``C`` more mask groups per acceptance
        length, each guessing the bonus token (``modes.QuadraticSpecPolicy``); more rows per
        forward, the same output. ``bonus_lengths=G``: only acceptance lengths ``0..G-1`` get them
        (0: every one); a step's extra rows drop from ``C (k + 1) B`` to ``C G B``.

        ``logit_bias`` (token id -> value added to the raw logits) and ``min_new_tokens`` (the
        stop tokens and the config's EOS ids masked until that many tokens are out), SGLang's
        fields, apply to every row a policy reads (``rows.adjust``: a verify row at draft ``i``
        as if drafts ``0..i-1`` were accepted, so self-speculation stays lossless).

        ``frequency_penalty`` / ``presence_penalty`` / ``repetition_penalty`` (one value, or one
        per prompt), SGLang's penalties on the counts of the output tokens before each row's
        position (``rows.penalty``: a verify row at draft ``i`` counts drafts ``1..i`` as
        accepted; the prompt never counts), before ``logit_bias`` and temperature.

        ``json_schema`` / ``regex`` / ``ebnf`` (SGLang's fields, compiled with xgrammar over
        ``tokenizer``, default the checkpoint's) or ``grammar`` (a function returning a fresh
        xgrammar-like matcher) constrain every request: each row a policy reads is masked to the
        grammar state after the tokens before it (``rows.grammar``); greedy self-speculation
        equals greedy AR under the grammar, sampled keeps its distribution; diffusion fills
        blocks left to right with grammar-valid tokens; the grammar's end stops a request.
        """
        chosen = validate_logprobs(self.config, logprobs, top_logprobs, token_ids_logprob)
        cfg = self.config
        block_size = cfg.block_size if block_size is None else block_size
        modes = [mode] * len(prompts) if isinstance(mode, str) else list(mode)
        seeds = [seed + i for i in range(len(prompts))] if isinstance(seed, int) else list(seed)
        params = SamplingParams(temperature=temperature, top_p=top_p, top_k=top_k, min_p=min_p)
        stops = frozenset(cfg.eos_token_ids if stop_token_ids is None else stop_token_ids)
        validate_request(
            cfg, prompts, modes, seeds, max_new_tokens, block_size, threshold, diffusion_steps,
            bonus_candidates, bonus_lengths,
        )  # fmt: skip
        validate_adjust(cfg, logit_bias, min_new_tokens, max_new_tokens)
        penalties = zip(
            per_request_penalty("frequency_penalty", frequency_penalty, len(prompts)),
            per_request_penalty("presence_penalty", presence_penalty, len(prompts)),
            per_request_penalty("repetition_penalty", repetition_penalty, len(prompts)),
            strict=True,
        )
        min_new_stops = stops | set(cfg.eos_token_ids)
        adjusts = [
            LogitAdjust.make(logit_bias, min_new_tokens, min_new_stops, *pen, cfg.mask_token_id)
            for pen in penalties
        ]
        grammar = self._grammar(grammar, json_schema, regex, ebnf, tokenizer)
        matchers = grammar_states(grammar, len(prompts), cfg.vocab_size)
        mode_cfg = ModeConfig(
            mask_token_id=cfg.mask_token_id,
            block_size=block_size,
            threshold=threshold,
            diffusion_steps=diffusion_steps,
            accept_rule=get_accept_rule(acceptance),
            bonus_candidates=bonus_candidates,
            bonus_lengths=bonus_lengths,
        )
        if "auto" in modes and auto_policy is None:
            auto_policy = AutoPolicy(self.cost_model())
        budget = None
        if max_tokens_per_forward is not None:
            budget = Budget(max_tokens_per_forward=max_tokens_per_forward)
        driver = ModeDriver(modes, mode_cfg, auto_policy, budget)
        self.last_trace = driver.trace
        reqs = [
            RequestState(
                prompt=list(p),
                params=params,
                max_new_tokens=max_new_tokens,
                stop_token_ids=stops,
                generator=torch.Generator().manual_seed(s),
                logprobs=[] if logprobs else None,
                top_logprobs_num=top_logprobs,
                chosen_ids=chosen,
                adjust=adjust,
                grammar=g,
            )
            for p, s, adjust, g in zip(prompts, seeds, adjusts, matchers, strict=True)
        ]
        cache = self._new_cache(len(reqs), max(len(p) for p in prompts) + max_new_tokens)
        self._prefill(reqs, cache)
        # the driver holds requests 0..n-1 in order: request i is its index i
        entries = [Running(r, driver.policy(AR), planned=i) for i, r in enumerate(reqs)]
        forward = partial(self._rows, cache, reqs, grammar, row_summary)
        while not all(r.done for r in reqs):
            # the driver's plan: every unfinished request (fixed modes: its own policy) that fits
            runs = [not r.done for r in reqs]
            prefix = [int(n) for n in cache.lengths]
            segs, kept = one_forward(entries, runs, prefix, forward, driver)
            for j, i in enumerate(i for i, s in enumerate(segs) if s is not None):
                cache.commit(j, kept[i])  # the forward's row j is request i
            cache.end()
        return [
            GenerationOutput(
                r.out, r.stats, r.finish_reason, m, r.logprobs, r.top_logprobs, r.chosen_logprobs
            )
            for r, m in zip(reqs, modes)
        ]

    # ---- internals ------------------------------------------------------------------------

    def _grammar(self, grammar, json_schema, regex, ebnf, tokenizer):
        """The matcher factory of ``generate``'s grammar arguments, or None."""
        field = grammar_field(json_schema, regex, ebnf)
        if field is None:
            return grammar
        if grammar is not None:
            raise ValueError(f"{field[0]} and grammar: give one of them")
        if tokenizer is None:
            if self.path is None:
                raise ValueError(f"{field[0]}: pass tokenizer= (this engine has no checkpoint)")
            from transformers import AutoTokenizer

            tokenizer = AutoTokenizer.from_pretrained(self.path)
        return matcher_factory(tokenizer, self.config.vocab_size, self.config.eos_token_ids, *field)

    def _rows(self, cache, states, grammar, row_summary, segs, prefix) -> list:
        """The forward of ``segs`` (request ``i``: cache row ``i``, state ``states[i]``; None: it
        sits out) -> each request's rows as the policies read them (None for those)."""
        picked = [i for i, s in enumerate(segs) if s is not None]  # the forward's rows
        logits = self._forward(cache, picked, [segs[i] for i in picked])  # [b, Q, V]
        views = [logits[j, : segs[i].desc.length] for j, i in enumerate(picked)]
        if row_summary:  # the worker's reads: quadratic mask groups through a head
            return _summaries(views, states, segs, prefix, self.config.mask_token_id)
        rows = [None] * len(segs)
        for v, i in zip(views, picked, strict=True):  # the obviously-correct twins, row by row
            rows[i] = self._twins(v, states[i], prefix[i], segs[i], grammar)
        return rows

    def _twins(self, rows: torch.Tensor, r: RequestState, prefix: int, seg: Segment, grammar):
        """One request's full rows through the row-by-row twins of ``rows.adjust`` and
        ``rows.grammar``."""
        mask_id = self.config.mask_token_id
        if r.adjust is not None:  # each row's history (penalties) recounted from the output list
            first = first_index(r, prefix)
            history = None
            if r.adjust.penalised:
                history = row_histories_slow(r.out[:first], seg.tokens, seg.desc, mask_id)
            rows = adjust_rows_slow(rows, r.adjust, first + decided_offsets(seg.desc), history)
        if r.grammar is not None:
            rows = grammar_rows_slow(rows, r, seg, prefix, mask_id, grammar)
        return rows

    def _new_cache(self, batch: int, capacity: int) -> KVCache:
        cfg = self.config
        dtype = next(self.model.parameters()).dtype
        return KVCache(
            cfg.num_hidden_layers,
            batch,
            cfg.num_key_value_heads,
            cfg.head_dim,
            capacity,
            dtype,
            self.device,
        )

    def _prefill(self, reqs: list[RequestState], cache: KVCache) -> None:
        """Causal prefill of every prompt; samples and emits each request's first token."""
        rows = list(range(len(reqs)))
        segs = [Segment(r.prompt, masks.prefill(len(r.prompt))) for r in reqs]
        logits = self._forward(cache, rows, segs)
        for j, r in enumerate(reqs):
            n = len(r.prompt)
            cache.commit(j, n)
            last = adjust_rows_slow(logits[j, n - 1 : n], r.adjust, [0], [[]])  # output 0: none
            if r.grammar is not None:
                last = last.masked_fill(~r.grammar.allowed(), -math.inf)
            probs = probs_from_logits(last, r.params)
            r.seed = int(sample(probs, r.generator, r.params.greedy)[0])
            r.emit([r.seed], r.logprobs_of(last, [r.seed]))
        cache.end()

    def _forward(self, cache: KVCache, rows: list[int], segs: Sequence[Segment]) -> torch.Tensor:
        """One batched forward of ragged segments -> float32 logits ``[b, Q, V]``."""
        dev = self.device
        b, q = len(rows), max(s.desc.length for s in segs)
        width = cache.begin(torch.tensor(rows, dtype=torch.long))
        input_ids = torch.full((b, q), self.config.mask_token_id, dtype=torch.long)
        position_ids = torch.zeros((b, q), dtype=torch.long)
        allowed = torch.zeros((b, 1, q, width + q), dtype=torch.bool)
        allowed[:, 0, :, width:] = torch.eye(q, dtype=torch.bool)  # padding rows see themselves
        for j, (row, seg) in enumerate(zip(rows, segs)):
            n, prefix = seg.desc.length, int(cache.lengths[row])
            input_ids[j, :n] = torch.tensor(seg.tokens, dtype=torch.long)
            position_ids[j, :n] = masks.positions(seg.desc, prefix)
            dense = masks.dense_mask(seg.desc, prefix)
            allowed[j, 0, :n, :prefix] = dense[:, :prefix]
            allowed[j, 0, :n, width : width + n] = dense[:, prefix:]
        dtype = next(self.model.parameters()).dtype
        additive = self.model.additive_mask(allowed, dtype).to(dev)
        with self._drafting(segs, q):
            logits = self.model(
                input_ids.to(dev), position_ids.to(dev), additive, past_key_values=cache
            )
        return logits.float().cpu()

    def _drafting(self, segs: Sequence[Segment], q: int):
        """The drafter on the rows of each segment that ``self.drafter_rows`` picks (always past
        ``desc.committable``: rows that draft)."""
        if self.drafter is None:
            return contextlib.nullcontext()
        return self.drafter.rows(drafter_rows_module.padded_gate(segs, self.drafter_rows, q))


SUPPORTED_MODES = tuple(sorted(POLICIES))  # plus "auto" (the scheduler's choice per step)


def _summaries(
    views: list[torch.Tensor],
    states: list[RequestState],
    segs: list[Segment | None],
    prefix: list[int],
    mask_id: int,
):
    """What the SGLang worker hands the policies for these rows: ``core.read_rows`` over each
    segment's eager rows, with a quadratic step's mask groups read through a head (here a slice
    of the full logits; in the worker the LM head over the forward's hidden states); ``views``
    the running segments' rows in request order."""
    full = torch.cat(views)  # [T, V]
    eager = eager_row_index([None if s is None else s.desc for s in segs])
    return read_rows(full[eager], lambda idx: full[idx], states, segs, prefix, mask_id)
