"""`TriModeWorker`: the TRIMODE speculative worker inside SGLang's scheduler.

Prefill (EXTEND) is the target model's own forward and sampler. Every decode step runs, for each
request of the batch, one *cycle* of its mode with the reference engine's own policies
(`sglang_trimode.modes`) through the block loop's step that both engines drive (`core.run_cycles`
here, `core.one_forward` in the engine; `core.read_rows` on the device logits), so greedy outputs
equal the reference engine's token for token:

- `ar`: one causal forward of `[seed]`;
- `self_spec_linear`: a bidirectional draft forward over `[seed, MASK x (B-1)]` against the paged
  prefix, then a causal verify of `[seed, d_1..d_{B-1}]`; the longest greedy-matching prefix plus
  the bonus token is accepted;
- `diffusion`: draft forwards over the block until no mask is left, then a causal commit pass
  (writes the block's KV, samples the next seed);
- `self_spec_quadratic`: one forward verifies the pending drafts and pre-drafts the next block;
- `auto`: before each forward the scheduler's auto policy (`srt/auto.py`, the step's
  `core.ModePlanner`, through the reference engine's `ModeDriver`) picks the request's mode and
  draft length; it changes only at a switch point, so each step still ends on a complete cycle.

Requests of different modes share each forward: every sub-forward is one TARGET_VERIFY forward of
the running requests' segments packed one after another (no padding unless
`--trimode-pad-forwards on`: a 1-token AR step and a 72-token quadratic step cost 73 tokens of
linear layers and MLPs). A request whose cycle is complete rides along with no tokens, unless its
cycles take one forward (`ar`, quadratic): then it runs further cycles in the forwards the others'
longer cycles still take, while its tokens fit the step's slots (`--trimode-fill-in`,
`core.fills_in`). The plan (`TriModeForwardInput`) carries the forward's one layout
(`sglang_trimode.layout.ForwardLayout`: each request's `MaskDescriptor`, None when it rides along,
and committed prefix, no dense masks); the attention of these forwards is
`sglang_trimode.srt.attention.TriModeAttnBackend`, one `extend_attention` call per layer
(`--trimode-attention-impl`). Building a forward loops over requests only (tokens, positions), never
over tokens; the KV slots are one gather from `req_to_token`. Segment KV goes to the request's
reserved slots right after its committed prefix; only the tokens a policy commits advance the
request (`accept_lens`), the rest is overwritten by later forwards and freed with the request
(SGLang's spec-v2 over-allocation). A forward in which every request runs one causal token (an AR
step) and none rides along is SGLang's own DECODE forward instead, through the wrapped backend's
decode attention (`_forward_decode`; with `sdpa`, the CPU's impl, for one request only:
`decode_route`).

Per-request state (pending drafts, RNG, stats) lives in `self.states` keyed by request id and is
dropped when a request leaves the batch.
"""

from __future__ import annotations

import collections
import contextlib
import logging
import time
from dataclasses import dataclass, replace
from functools import partial

import torch
from sglang.srt.managers.schedule_batch import ScheduleBatch
from sglang.srt.managers.utils import GenerationBatchResult
from sglang.srt.model_executor.forward_batch_info import ForwardMode
from sglang.srt.speculative.base_spec_worker import BaseSpecWorker
from sglang.srt.speculative.ngram_info import NgramVerifyInput

from sglang_trimode import masks
from sglang_trimode.adapter.lora import load_drafter_for
from sglang_trimode.adapter.rows import packed_gate
from sglang_trimode.core import Running, read_rows, run_cycles
from sglang_trimode.layout import Bucket, Buckets
from sglang_trimode.layout import build as build_layout
from sglang_trimode.modes import ModeConfig, RequestState, Segment, get_policy
from sglang_trimode.packed import attention_calls
from sglang_trimode.rows import eager_row_index
from sglang_trimode.rows.adjust import LogitAdjust
from sglang_trimode.sampling import SamplingParams, get_accept_rule
from sglang_trimode.srt import flags, logprobs, stats, tp
from sglang_trimode.srt.attention import TriModeForwardInput, install
from sglang_trimode.srt.auto import AutoModes
from sglang_trimode.srt.grammar import GrammarBackendError, request_grammar, settle
from sglang_trimode.srt.spec import check_drafter, settings_from_server_args
from sglang_trimode.static_layout import StaticLayout
from sglang_trimode.validation import check_bonus_candidates, check_bonus_lengths

logger = logging.getLogger(__name__)

_DECODE = masks.decode()  # one causal token over the committed prefix (an AR step)


class RequestModeError(ValueError):
    """A request asked for a mode this server does not serve."""


def request_mode(req, settings: flags.TriModeSettings) -> str:
    """The request's mode: `custom_params["trimode_mode"]`, else the server default."""
    custom = getattr(req.sampling_params, "custom_params", None) or {}
    mode = custom.get(flags.REQUEST_MODE_KEY) if isinstance(custom, dict) else None
    if mode is None:
        mode = settings.mode
    if mode not in flags.MODES:
        raise RequestModeError(
            f"unknown {flags.REQUEST_MODE_KEY} {mode!r}; expected one of {', '.join(flags.MODES)}"
        )
    if mode not in settings.serve_modes:
        raise RequestModeError(
            f"{flags.REQUEST_MODE_KEY} {mode!r} is not served here (--trimode-serve-modes "
            f"{','.join(settings.serve_modes)})"
        )
    return mode


def min_new_stops(req) -> set[int]:
    """The tokens SGLang's `min_new_tokens` penalizer masks for `req`: its stop token ids, its
    EOS ids and the tokenizer's (also under `ignore_eos`)."""
    tok = getattr(req, "tokenizer", None)
    ids = set(req.sampling_params.stop_token_ids or ()) | set(req.eos_token_ids or ())
    ids |= set(getattr(tok, "additional_stop_token_ids", None) or ())
    ids.add(getattr(tok, "eos_token_id", None))
    return {int(t) for t in ids if t is not None}


def decode_route(segs: list, wrapped: bool) -> bool:
    """Whether a forward of `segs` runs as SGLang's own DECODE through the wrapped backend: every
    request runs one causal token over its prefix (`masks.decode()`) and none rides along; with
    `wrapped` (impls other than `sdpa`: FlashInfer / FA3 decode on a GPU) always, with `sdpa`
    (the CPU) only for one request: the wrapped `torch_native` decode loops over the requests in
    every layer, where the packed path makes one batched SDPA call, but with one request there is
    no loop to save and SGLang's decode forward skips the packed layout's set-up
    (docs/benchmarks.md)."""
    if not segs or any(s is None or s.desc != _DECODE for s in segs):
        return False
    return wrapped or len(segs) == 1


def _same_output(ours: list[int], theirs) -> bool:
    """O(1): `theirs` (SGLang's `req.output_ids`) holds the tokens of `ours`."""
    return len(ours) == len(theirs) and (not ours or ours[-1] == theirs[-1])


@dataclass
class _Req(Running):
    mode: str = "ar"  # the request's mode (`auto`: `planned` is its index in `AutoModes`)


class TriModeWorker(BaseSpecWorker):
    def __init__(self, server_args, gpu_id, nccl_port, target_worker):
        super().__init__()
        self.server_args = server_args
        self._target_worker = target_worker
        self.model_runner = target_worker.model_runner
        self.device = self.model_runner.device
        self.settings = settings_from_server_args(server_args)
        self.width = flags.verify_width(self.settings)
        msg = flags.attention_impl_error(
            self.settings.attention_impl,
            torch.device(self.device).type,
            flags.triton_interpret_env(),
        )
        if msg:
            raise ValueError(msg)
        # AR-only forwards: SGLang's own DECODE through the wrapped backend (FlashInfer, FA3 on a
        # GPU); with `sdpa` (the CPU) only for one request (`decode_route`)
        impl = flags.resolve_attention_impl(
            self.settings.attention_impl, torch.device(self.device).type
        )
        self.decode_wrapped = impl != "sdpa"
        hf = self.model_runner.model_config.hf_config
        self.mask_token_id = int(hf.mask_token_id)
        self.vocab_size = int(hf.vocab_size)
        check_bonus_candidates(
            self.settings.bonus_candidates, int(hf.vocab_size), "--trimode-bonus-candidates"
        )
        check_bonus_lengths(
            self.settings.bonus_lengths,
            self.settings.bonus_candidates,
            "--trimode-bonus-lengths",
            "--trimode-bonus-candidates",
        )
        self.mode_cfg = ModeConfig(
            mask_token_id=self.mask_token_id,
            block_size=self.settings.block_size,
            threshold=self.settings.threshold,
            accept_rule=get_accept_rule("lossless"),
            bonus_candidates=self.settings.bonus_candidates,
            bonus_lengths=self.settings.bonus_lengths,
        )
        self.policies = {m: get_policy(m, self.mode_cfg) for m in flags.REQUEST_MODES}
        self.buckets: Buckets | None = None  # --trimode-pad-forwards: set on first use
        self.statics: dict[Bucket, StaticLayout] = {}  # each bucket's buffers, once
        self._pad_announced: set[bool] = set()  # logged: a padded (False), unpadded (True)
        self.states: dict[str, _Req] = {}
        self._decode_announced = False  # logged the first AR-only forward (`_forward_decode`)
        #: forwards by path (`internal_state`): `decode` (SGLang's own DECODE), `packed`
        #: (structural masks over `TriModeAttnBackend`), `padded` / `padded_tokens` (packed and
        #: padded to a bucket: forwards, padding tokens), `unbucketed` (no bucket held it),
        #: `deferred_groups` (quadratic mask groups through the LM head when read)
        self.forwards: collections.Counter[str] = collections.Counter()
        self._head_announced = False  # logged the first forward with deferred mask groups
        self._drop_cuda_graphs()
        self.drafter = self._load_drafter(server_args)
        self.auto = None
        if "auto" in self.settings.serve_modes or self.settings.mode == "auto":
            # auto plans with quadratic steps of (k + 1)(L + 1) rows: no bonus candidates
            auto_cfg = replace(self.mode_cfg, bonus_candidates=0, bonus_lengths=0)
            self.auto = AutoModes(self.settings, auto_cfg, self.width)

    def _load_drafter(self, server_args):
        """The drafter adapter `--trimode-drafter` picks (the checkpoint's `linear_spec_lora/` or
        older `drafter_lora/`, or a folder), hooked into the model's `o_proj`s (this TP rank's
        share: `tp.shard_drafter`), or None (off, or the checkpoint has none). A malformed
        adapter raises, naming the file and field."""
        folder = check_drafter(server_args, fetch=True)
        if folder is None:
            return None
        model = self.model_runner.model
        drafter = load_drafter_for(model, folder)
        drafter = tp.shard_drafter(drafter, model.model.layers[0].self_attn.o_proj).attach(model)
        logger.info(
            "TRIMODE: drafter adapter %s (LoRA r=%d on o_proj) on the drafting rows (%s)",
            folder,
            drafter.cfg.rank,
            self.settings.drafter_rows,
        )
        return drafter

    # ---- BaseSpecWorker surface ------------------------------------------------------------

    @property
    def draft_worker(self):
        return None  # the target drafts for itself (bidirectional mask over its own weights)

    def alloc_memory_pool(self, **kwargs):
        self.req_to_token_pool, self.token_to_kv_pool_allocator = (
            self._target_worker.get_memory_pool()
        )

    def clear_cache_pool(self):
        for rid in list(self.states):
            self._forget(rid)

    def internal_state(self) -> dict:
        """What `GET /get_server_info` reports under `internal_states[i]["trimode"]` (the plugin's
        hook on SGLang's internal state): the settings, forwards by path and the attention calls
        (one per layer and forward) by impl in this process."""
        return {
            "mode": self.settings.mode,
            "block_size": self.settings.block_size,
            "attention_impl": flags.resolve_attention_impl(
                self.settings.attention_impl, torch.device(self.device).type
            ),
            "pad_forwards": self.settings.pad_forwards,
            "buckets": sorted([b.requests, b.tokens] for b in self.statics),  # buffers held
            "forwards": dict(self.forwards),
            "attention_calls": dict(attention_calls),
            "auto": None if self.auto is None else self.auto.internal_state(),
        }

    # ---- per-request state -------------------------------------------------------------------

    def _state(self, req) -> _Req:
        """The request's entry, (re)built when SGLang's output differs from ours (a new request,
        or one SGLang re-ran). Checked in O(1) per step: SGLang appends exactly the tokens this
        worker emitted, so equal lengths and equal last tokens mean equal outputs."""
        entry = self.states.get(req.rid)
        ids = req.output_ids
        if entry is not None and _same_output(entry.state.out, ids):
            return entry
        out = list(ids)
        try:
            mode = request_mode(req, self.settings)
        except RequestModeError as e:
            # Normally refused with HTTP 400 before it gets here (plugin hook); never let one
            # request take the scheduler down: abort it after one AR step.
            logprobs.abort_request(req, str(e))
            mode = "ar"
        sp = req.sampling_params
        greedy = sp.top_k == 1 or sp.temperature < 1e-6
        params = SamplingParams(
            temperature=0.0 if greedy else float(sp.temperature),
            top_p=float(sp.top_p),
            top_k=0 if greedy or sp.top_k < 0 else int(sp.top_k),
            min_p=0.0 if greedy else float(sp.min_p or 0.0),
        )
        stops = set(sp.stop_token_ids or ())
        if not sp.ignore_eos:
            stops |= set(req.eos_token_ids or ())
        seed = getattr(sp, "sampling_seed", None)
        seed = int(seed) if seed is not None else tp.request_seed(req.rid)  # same on each rank
        gen = torch.Generator().manual_seed(seed)
        try:
            grammar = request_grammar(req, self.vocab_size)
        except GrammarBackendError as e:
            logprobs.abort_request(req, str(e))
            grammar = None
        state = RequestState(
            prompt=list(req.origin_input_ids),
            params=params,
            max_new_tokens=int(sp.max_new_tokens),
            stop_token_ids=frozenset(stops),
            generator=gen,
            out=out,
            seed=out[-1],
            logprobs=[] if req.return_logprob else None,
            top_logprobs_num=logprobs.top_logprobs_num(req),
            chosen_ids=logprobs.chosen_ids(req),
            adjust=LogitAdjust.make(
                sp.logit_bias,
                sp.min_new_tokens or 0,
                min_new_stops(req),
                sp.frequency_penalty,
                sp.presence_penalty,
                sp.repetition_penalty,
                self.mask_token_id,
            ),
            grammar=grammar,
        )
        if entry is not None:
            self._forget(req.rid)
        entry = _Req(state, self.policies["ar" if mode == "auto" else mode], mode=mode)
        if mode == "auto":
            entry.planned = self.auto.add()
        self.states[req.rid] = entry
        return entry

    def _forget(self, rid) -> None:
        entry = self.states.pop(rid, None)
        if entry is not None and entry.planned is not None:
            self.auto.remove(entry.planned, rid)

    # ---- forwards ----------------------------------------------------------------------------

    def _forward(self, batch: ScheduleBatch, segs: list, prefix: list[int]):
        """One forward: `segs[i]` (a `modes.Segment`, or None for a request that only rides
        along) over `prefix[i]` committed tokens -> `(logits, head)`: logits `[T, V]` on the
        device, `T` the segments' tokens packed in request order (a request riding along has
        none), and head None; when a quadratic step is among them, logits of each segment's
        `rows.eager_rows` only (a quadratic step's causal rows) and `head(idx)` for the rest.

        When every request runs one causal token over its prefix (`masks.decode()`: an AR step,
        or a one-token verify/commit) and none rides along, this is exactly SGLang's own DECODE
        forward: `_forward_decode` runs it through the wrapped backend's decode attention
        (`decode_route`).
        Otherwise one TARGET_VERIFY forward of the packed segments over our attention (the plan
        carries each request's `MaskDescriptor`): linear layers, MLPs and logits see only the
        real tokens, whatever mix of segment lengths shares the forward."""
        if decode_route(segs, self.decode_wrapped):
            self.forwards["decode"] += 1
            return self._forward_decode(batch, [s.tokens[0] for s in segs], prefix), None
        layout = build_layout(
            segs,
            prefix,
            batch.req_to_token_pool.req_to_token,
            batch.req_pool_indices,
            self.device,
            bucket=self._bucket(batch, segs),
        )
        if layout.bucket is not None:  # the bucket's preallocated buffers (a graph's inputs)
            statics = self.statics.get(layout.bucket)
            if statics is None:
                statics = self.statics[layout.bucket] = StaticLayout(layout.bucket, self.device)
            layout = statics.load(layout)
        self.forwards["packed"] += 1
        if layout.padded_tokens > layout.num_tokens:
            self.forwards["padded"] += 1
            self.forwards["padded_tokens"] += layout.padded_tokens - layout.num_tokens
        batch.forward_mode = ForwardMode.TARGET_VERIFY
        batch.input_ids = layout.tokens
        batch.out_cache_loc = layout.out_cache_loc
        plan = TriModeForwardInput(layout)
        if any(d is not None and d.kind == masks.MaskKind.QUADRATIC for d in layout.descs):
            # logits for the causal rows only; a quadratic step's one mask group it reads comes
            # from the output's `head` (rows.DeferredGroups): 2L - 1 rows of L (L + 1) through it
            plan.logit_rows = eager_row_index(layout.descs).to(self.device)
        batch.spec_info = plan
        drafting = contextlib.nullcontext()
        if self.drafter is not None:  # on rows no step keeps that --trimode-drafter-rows picks
            gate = packed_gate(segs, self.settings.drafter_rows, layout.owner, layout.offset)
            drafting = self.drafter.rows(layout.pad_rows(gate, False))
        with drafting:
            result = self._target_worker.forward_batch_generation(batch, is_verify=True)
        output = result.logits_output  # srt/model.py `RowLogitsOutput` when logit_rows is set
        head = getattr(output, "head", None)
        if plan.logit_rows is not None and head is None:
            raise RuntimeError(
                "TRIMODE: the model returned no `head` for a forward with `logit_rows` (the model "
                f"class is {type(self.model_runner.model).__name__}, not srt/model.py's)"
            )
        self.forwards["deferred_groups"] += head is not None
        if head is not None and not self._head_announced:
            self._head_announced = True
            logger.info(
                "TRIMODE: quadratic steps: logits of the causal rows in the forward, the one "
                "mask group a step reads through the LM head when read"
            )
        logits = output.next_token_logits  # [N, V], or [logit_rows, V]
        if plan.logit_rows is None:
            logits = logits[: layout.num_tokens]  # the padding's rows go
        return logits, head

    def _widest_segment(self) -> int:
        """At most the tokens one request puts into a forward: a quadratic step over a block
        of `B` (`B` causal tokens, at most `B (1 + C)` mask groups of `B`, `C` bonus
        candidates), or a `width`-token commit."""
        b = self.settings.block_size
        return max(self.width, b + b * b * (1 + self.settings.bonus_candidates))

    def _bucket(self, batch: ScheduleBatch, segs: list):
        """`--trimode-pad-forwards`: the bucket the running segments pad to (None: off, or no
        bucket holds them: the forward runs unpadded). The first forward that gets padding and
        the first no bucket holds are logged."""
        if not self.settings.pad_forwards:
            return None
        if self.buckets is None:  # the pools exist once the server runs
            most = int(batch.req_to_token_pool.size)  # requests the server holds at once
            self.buckets = Buckets.up_to(most, most * self._widest_segment())
        running = [s for s in segs if s is not None]
        tokens = sum(s.desc.length for s in running)
        bucket = self.buckets.fit(len(running), tokens)
        exact = bucket is not None and bucket == Bucket(len(running), tokens)
        self.forwards["unbucketed"] += bucket is None
        if not exact and (bucket is None) not in self._pad_announced:
            self._pad_announced.add(bucket is None)
            logger.info(
                "TRIMODE: a forward of %d segments, %d tokens %s",
                len(running),
                tokens,
                "runs unpadded: no bucket holds it"
                if bucket is None
                else f"padded to {bucket.requests} segments, {bucket.tokens} tokens "
                "(--trimode-pad-forwards)",
            )
        return bucket

    def _drop_cuda_graphs(self) -> None:
        """Run every forward of this worker eager. SGLang captures its decode graphs for a spec
        algorithm as TARGET_VERIFY graphs with the wrapped backend's attention, and its
        `can_run` check looks at batch size and tokens per request only, so a TRIMODE forward of
        the captured width could replay a graph without our structural masks. Until graphs of
        our own forwards are captured and checked on a GPU, none is replayed."""
        runner = self.model_runner
        graphs = getattr(runner, "decode_cuda_graph_runner", None)
        if graphs is not None and graphs is not getattr(runner, "eager_runner", None):
            logger.warning(
                "TRIMODE: CUDA graphs are not used by the TRIMODE worker (its forwards carry "
                "per-request masks); pass --disable-cuda-graph to skip capturing them"
            )
            runner.decode_cuda_graph_runner = None

    def _forward_decode(self, batch: ScheduleBatch, seeds: list[int], prefix: list[int]):
        """Every request's one causal token `seeds[i]` at position `prefix[i]` as SGLang's own
        DECODE forward through the wrapped backend (`TriModeAttnBackend` delegates forwards
        without a `TriModeForwardInput`): K/V go to the request's reserved slot
        `req_to_token[row, prefix]`, attention reads `req_to_token[row, : prefix + 1]`. The
        batch's lengths are `prefix + 1` during the forward (what `prepare_for_decode` sets for
        plain AR serving) and restored after; no sampling (`is_verify`: logits only); eager
        (`_drop_cuda_graphs`)."""
        runner = self.model_runner
        if not self._decode_announced:
            self._decode_announced = True
            inner = getattr(runner.attn_backend, "inner", runner.attn_backend)
            logger.info(
                "TRIMODE: AR-only forward via the wrapped backend's decode (%s)",
                type(inner).__name__,
            )
        req_to_token = batch.req_to_token_pool.req_to_token
        rows = batch.req_pool_indices.to(req_to_token.device)
        cols = torch.tensor(prefix, dtype=torch.int64, device=req_to_token.device)
        locs = req_to_token[rows, cols].to(torch.int64)
        saved = {
            k: getattr(batch, k)
            for k in ("seq_lens", "seq_lens_cpu", "seq_lens_sum", "orig_seq_lens", "spec_info")
        }
        lens_cpu = torch.tensor(prefix, dtype=torch.int64) + 1
        try:
            batch.forward_mode = ForwardMode.DECODE
            batch.input_ids = torch.tensor(seeds, dtype=torch.int64).to(self.device)
            batch.out_cache_loc = locs.to(self.device)
            batch.seq_lens = lens_cpu.to(saved["seq_lens"].device, saved["seq_lens"].dtype)
            if saved["seq_lens_cpu"] is not None:
                batch.seq_lens_cpu = lens_cpu.to(saved["seq_lens_cpu"].dtype)
            if saved["orig_seq_lens"] is not None:
                batch.orig_seq_lens = lens_cpu.to(
                    saved["orig_seq_lens"].device, saved["orig_seq_lens"].dtype
                )
            batch.seq_lens_sum = int(lens_cpu.sum())
            batch.spec_info = None
            result = self._target_worker.forward_batch_generation(batch, is_verify=True)
        finally:
            for k, v in saved.items():
                setattr(batch, k, v)
        return result.logits_output.next_token_logits  # [bs, V]: one token per request

    def _rows(self, batch: ScheduleBatch, states: list[RequestState], segs: list, prefix: list):
        """`core.Forward` of the worker: the forward of `segs` (`_forward`) -> each request's
        rows (`core.read_rows`); with an online cost model, the forward's time feeds it."""
        t0 = time.perf_counter()
        logits, head = self._forward(batch, segs, prefix)  # [T', V] on the device
        rows = read_rows(logits, head, states, segs, prefix, self.mask_token_id)
        if self.auto is not None and self.auto.calibration is not None:  # online fit
            tokens = sum(s.desc.length for s in segs if s is not None)
            context = sum(p for p, s in zip(prefix, segs, strict=True) if s is not None)
            seconds = tp.agreed_seconds(time.perf_counter() - t0)  # every TP rank fits alike
            self.auto.timed(tokens, context, seconds)
        return rows

    def _decode(self, batch: ScheduleBatch) -> tuple[list[list[int]], list[int]]:
        """One decode step: every request's cycle of its mode (`core.run_cycles`) -> each
        request's new tokens and committed prefix."""
        install(self.model_runner, self.settings.attention_impl)
        entries = [self._state(req) for req in batch.reqs]
        forward = partial(self._rows, batch, [e.state for e in entries])
        fill = self.width if self.settings.fill_in else 0
        new_tokens, prefix = run_cycles(
            entries, batch.seq_lens.tolist(), forward, self.auto, fill_in_width=fill
        )
        for req, e in zip(batch.reqs, entries, strict=True):
            if e.state.done and e.planned is not None:
                self.auto.remove(e.planned, req.rid)  # logs its modes
        settle(e.state for e in entries)  # the scheduler advances the grammars itself
        return new_tokens, prefix

    def forward_batch_generation(
        self, batch: ScheduleBatch, on_publish=None, pp_proxy_tensors=None, **kwargs
    ) -> GenerationBatchResult:
        bs = len(batch.reqs)
        stride = self.width
        if not batch.forward_mode.is_decode():
            result = self._target_worker.forward_batch_generation(batch)
            for req in batch.reqs:  # meta_info stats: the prefill token, no forwards yet
                stats.record(req, self._mode_or_ar(req), 1)
            new_seq_lens = batch.seq_lens.clone()
            accept_tokens = torch.zeros(bs, stride, dtype=torch.int64, device=self.device)
            accept_tokens[:, 0] = result.next_token_ids
            accept_lens = torch.ones(bs, dtype=torch.int32, device=self.device)
            if on_publish is not None:
                on_publish(new_seq_lens)
            result.accept_lens = accept_lens
            result.new_seq_lens = new_seq_lens
            result.next_draft_input = NgramVerifyInput(
                draft_token_num=stride,
                new_seq_lens=new_seq_lens,
                accept_tokens=accept_tokens.flatten(),
                accept_lens=accept_lens,
            )
            result.speculative_num_draft_tokens = stride
            return result

        self._drop_departed(batch)
        new_tokens, prefix = self._decode(batch)
        tp.check_step_agrees(new_tokens, prefix)
        self._commit_kv(batch, new_tokens, prefix)
        for req, toks in zip(batch.reqs, new_tokens, strict=True):
            e = self.states[req.rid]
            stats.record(req, e.mode, len(toks), e.state.stats)
        accept_lens_l = [len(t) for t in new_tokens]
        flat = torch.tensor([t + [0] * (stride - len(t)) for t in new_tokens], dtype=torch.int64)
        accept_lens = torch.tensor(accept_lens_l, dtype=torch.int32)
        new_seq_lens = batch.seq_lens + accept_lens.to(batch.seq_lens.device, batch.seq_lens.dtype)
        batch.forward_mode = ForwardMode.DECODE
        if on_publish is not None:
            on_publish(new_seq_lens)
        next_draft_input = NgramVerifyInput(
            draft_token_num=stride,
            new_seq_lens=new_seq_lens,
            accept_tokens=flat.flatten().to(self.device),
            accept_lens=accept_lens.to(self.device),
        )
        return GenerationBatchResult(
            logits_output=logprobs.step_output(
                batch, [self.states[req.rid].state for req in batch.reqs], new_tokens, self.width
            )
            if batch.return_logprob
            else None,
            next_token_ids=flat.flatten(),
            can_run_cuda_graph=False,
            accept_lens=accept_lens,
            new_seq_lens=new_seq_lens,
            next_draft_input=next_draft_input,
            speculative_num_draft_tokens=stride,
        )

    def _drop_departed(self, batch: ScheduleBatch) -> None:
        """Forget the requests that left the batch; log those that left before their own end
        (aborted: `/abort_request`, a client disconnect; or finished by SGLang, e.g. a stop
        string), so an operator sees where a request stopped."""
        live = {req.rid for req in batch.reqs}
        for rid in [rid for rid in self.states if rid not in live]:
            r = self.states[rid].state
            if not r.done:
                logger.info(
                    "TRIMODE: request %s left the batch unfinished after %d of %d new tokens",
                    rid,
                    len(r.out),
                    r.max_new_tokens,
                )
            self._forget(rid)

    def _commit_kv(self, batch: ScheduleBatch, new_tokens: list, prefix: list[int]) -> None:
        """Causal KV for every token SGLang now counts as cached. A request that stops inside a
        diffusion draft (its last block emitted with no commit pass) holds bidirectional draft KV
        there, which the radix cache would hand to later requests sharing the prefix: one causal
        pass writes the true KV. Not a reference-engine forward: not in `trimode_forwards`."""
        segs = []
        for i, (req, seq_len) in enumerate(zip(batch.reqs, batch.seq_lens.tolist(), strict=True)):
            need = seq_len + len(new_tokens[i])  # the newest token is the next seed: no KV yet
            if prefix[i] >= need:
                segs.append(None)
                continue
            r = self.states[req.rid].state
            tokens = (r.prompt + r.out)[prefix[i] : need]
            segs.append(Segment(tokens, masks.commit(len(tokens))))
        if any(s is not None for s in segs):
            self._forward(batch, segs, prefix)

    def _mode_or_ar(self, req) -> str:
        try:
            return request_mode(req, self.settings)
        except RequestModeError:
            return "ar"
