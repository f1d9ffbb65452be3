"""Attention for the TRIMODE worker's forwards: structural masks over SGLang's paged KV pool.

`TriModeAttnBackend` is an `AttentionBackend` around the server's own (`torch_native` on a CPU,
any backend on a GPU), to which it hands the rest of the interface by name (`DELEGATED_METHODS`,
`DELEGATED_STATE`). Forwards whose `spec_info` is a `TriModeForwardInput` (the worker's
decode-phase forwards: diffusion drafts, commits, linear verifies, quadratic steps, AR steps mixed
with them) are computed here; everything else (prefill, plain AR serving, the worker's AR-only
forwards, which it runs as SGLang DECODE forwards) goes to the wrapped backend unchanged.

The worker lays such a forward out packed, once (`sglang_trimode.layout.ForwardLayout`, carried
by the plan): the segments of the requests that run, one after another (a request with no segment
rides along with no tokens), so the model's linear layers, MLPs and logits see only real tokens
(and any padding to a bucket, `--trimode-pad-forwards`). The layout holds each running request's
`MaskDescriptor` as a `SegmentBatch` and its committed prefix as a `PageTable` over SGLang's
`req_to_token`. The backend resolves the attention impl once per forward; per layer it

1. writes every token's K/V to `out_cache_loc` (the request's reserved slots after its prefix);
2. runs ONE attention call for the whole batch: each segment token attends to its request's
   whole prefix (read through the page table) and to its segment (passed as k/v) under the
   descriptor's mask.

The call (`--trimode-attention-impl`, `srt/flags.py`) is `sglang_trimode.kernels.extend_attention`
(`triton`: compiled on a CUDA device, or the Triton interpreter on a CPU with
`TRITON_INTERPRET=1`), its pure-torch reference `sglang_trimode.kernels.reference` (`torch`: a
loop over requests in every layer) or `sglang_trimode.dense_attention` (`sdpa`, the CPU default:
one batched SDPA call per layer over a padded layout built once per forward); one signature.
The kernels need q, k, v and the cache in one dtype: when the pool stores another dtype than q (e.g.
an fp8 or bf16 KV cache), the prefix slots are gathered and cast to q's dtype into a packed buffer
(page table over it), as the plain-torch path did before. Scaling: `sm_scale = layer.scaling`; no
`q_scale`: SGLang's `Ministral3Attention` multiplies q by the Llama-4 per-position factor before
calling attention (the reference engine does the same in transformers' model), so the kernels must
not scale again.

Not run yet: the compiled-GPU path inside a server (the GPU machine lacks sglang); the kernels
themselves are tested compiled on a GPU by `bench/gpu_check.sh`, and this backend with the
interpreted kernel on a CPU (`tests/srt/test_attention_backend.py`,
`tests/srt/test_server_trimode_triton.py`).
"""

from __future__ import annotations

import logging

import torch
from sglang.srt.layers.attention.base_attn_backend import AttentionBackend
from sglang.srt.mem_cache.memory_pool import KVWriteLoc
from sglang.srt.speculative.spec_info import SpecInput

from sglang_trimode import packed as packing
from sglang_trimode.layout import ForwardLayout
from sglang_trimode.srt import flags

logger = logging.getLogger(__name__)


class TriModeForwardInput(SpecInput):
    """Per-forward plan of the TRIMODE worker, riding on `ForwardBatch.spec_info`.

    `layout`: the forward's one `sglang_trimode.layout.ForwardLayout` (tokens, positions, KV
    slots, per-request descriptors and prefixes, the attention's `SegmentBatch` / `PageTable`);
    `positions` is its `positions` (SGLang reads a verify forward's positions here); `width` the
    widest segment (SGLang's `num_tokens_per_req`, read only by its LoRA / Mamba / NPU paths,
    which a TRIMODE server does not run).

    Its own type: SGLang's `SpecInputType` is a closed enum with no member for a plugin, so
    `spec_input_type` is None and the phase guards below answer for it (a verify-phase input);
    `TriModeAttnBackend` takes every forward carrying one, so no backend's per-algorithm branch
    sees it. SpecInput's other fields keep their class defaults (no custom mask, no ragged-verify
    layout, no DSA or sliding-window rails).
    """

    cuda_graph_compatible = False  # the worker's forwards run eager

    def __init__(self, layout: ForwardLayout) -> None:
        super().__init__(spec_input_type=None)
        self.layout = layout
        self.positions = layout.positions
        width = layout.width
        self.num_tokens_per_req = width
        self.num_tokens_for_logprob_per_req = width
        self.draft_token_num = width
        self.attn_impl: str | None = None  # `triton`, `torch` or `sdpa`, once per forward
        #: rows whose logits the forward returns (None: all); the model's output then carries
        #: `head(rows)` for any other rows (`srt/model.py` `RowLogitsOutput`)
        self.logit_rows: torch.Tensor | None = None

    def is_draft_input(self) -> bool:
        return False

    def is_verify_input(self) -> bool:
        return True


#: `AttentionBackend`'s interface (SGLang 0.5.23) that the wrapper hands to the wrapped backend
#: unchanged: its methods, and the state SGLang reads or writes on any backend (instance state
#: of the wrapped one, so both read one value). `init_forward_metadata` and `forward` are the
#: wrapper's own. tests/srt/test_attention_backend.py checks this against SGLang's class.
DELEGATED_METHODS = (
    "_snapshot_prefill_shared_reads",
    "draft_extend_metadata_captured_in_graph",
    "forward_decode",
    "forward_extend",
    "forward_mixed",
    "get_cuda_graph_seq_len_fill_value",
    "get_fused_kv_write_buffers",
    "get_indexer_metadata",
    "glue_draft_metadata",
    "glue_target_verify_metadata",
    "init_cuda_graph_state",
    "init_forward_metadata_for_breakable_cuda_graph_capture",
    "init_forward_metadata_in_graph",
    "init_forward_metadata_out_graph",
    "late_layer_num_tokens",
    "on_after_cuda_graph_warmup",
    "prepare_forward_metadata_for_breakable_cuda_graph_replay",
    "prepare_full_cuda_graph_chunked_prefix",
    "resolve_prefill_shared_read_ends",
    "shared_read_ends",
    "support_triton",
    "update_verify_buffers_to_fill_after_draft",
    "validate_elastic_cuda_graph_recapture",
)
DELEGATED_STATE = (
    "attn_backend_list",
    "data_type",
    "decode_attention_backend_str",
    "dllm_attention",
    "extend_dummy_seqs_capped_by_req_pool",
    "folds_encoder_swa_replay",
    "forward_metadata",
    "kv_cache_dtype",
    "kv_index_translator",
    "needs_cpu_seq_lens",
    "prefer_eager_mixed_prefill_under_dp_attention",
    "prefill_attention_backend_str",
    "prefill_cuda_graph_default_max_seq_len",
    "prefill_cuda_graph_max_batch_size",
    "req_to_token_pool",
    "skips_prefill_metadata_on_idle_dp_rank",
    "supports_draft_extend_metadata_staging",
    "supports_full_cuda_graph_chunked_prefix",
    "supports_prefill_cuda_graph_max_context_size",
    "supports_ragged_verify_graph",
    "token_to_kv_pool",
    "use_captured_forward_metadata_for_breakable_cuda_graph",
    "verify_mask",
)


def _method(name: str):
    def call(self, *args, **kwargs):
        return getattr(self.inner, name)(*args, **kwargs)

    call.__name__ = name
    call.__doc__ = f"The wrapped backend's `{name}`."
    return call


def _state(name: str) -> property:
    return property(
        lambda self: getattr(self.inner, name),
        lambda self, value: setattr(self.inner, name, value),
        doc=f"The wrapped backend's `{name}`.",
    )


class TriModeAttnBackend(AttentionBackend):
    """An `AttentionBackend` over the server's own (`inner`): forwards carrying a
    `TriModeForwardInput` are this class's (`init_forward_metadata`, `forward`); the rest of the
    interface goes to `inner` explicitly (`DELEGATED_METHODS`, `DELEGATED_STATE`), as SGLang's
    `HybridAttnBackend` hands it to its children. Other attributes of one backend kind (e.g.
    FlashInfer's `kv_indptr`, read by SGLang code specific to that backend) are read from `inner`
    (`__getattr__`, read-only: only for names the class does not define).

    `impl`: `auto`, `triton`, `sdpa` or `torch` (`--trimode-attention-impl`); `auto` resolves on the
    first TRIMODE forward from the device of its tensors."""

    def __init__(self, inner: AttentionBackend, impl: str = flags.DEFAULT_ATTENTION_IMPL) -> None:
        self.inner = inner
        self.impl = impl

    def __getattr__(self, name: str):
        if name == "inner":  # not set yet (copy, unpickling): no recursion
            raise AttributeError(name)
        return getattr(self.inner, name)

    def init_forward_metadata(self, forward_batch):
        plan = forward_batch.spec_info
        if isinstance(plan, TriModeForwardInput):
            self._prepare(plan, forward_batch.out_cache_loc.device)
            return None
        return self.inner.init_forward_metadata(forward_batch)

    def forward(self, q, k, v, layer, forward_batch, save_kv_cache=True, **kwargs):
        plan = forward_batch.spec_info
        if not isinstance(plan, TriModeForwardInput):
            return self.inner.forward(q, k, v, layer, forward_batch, save_kv_cache, **kwargs)
        return self._forward_trimode(q, k, v, layer, forward_batch, plan)

    def resolved_impl(self, device: torch.device) -> str:
        """`triton` or `torch` for tensors on `device` (clear error for an impossible pair)."""
        impl = flags.resolve_attention_impl(self.impl, device.type)
        if impl == "triton" and device.type == "cpu":
            from sglang_trimode.kernels.attention import INTERPRETED

            msg = flags.attention_impl_error(impl, device.type, INTERPRETED)
            if msg:
                raise ValueError(msg)
        return impl

    def _prepare(self, plan: TriModeForwardInput, device: torch.device) -> None:
        """Resolve the impl once per forward (every layer shares it and the plan's layout)."""
        if plan.attn_impl is None:
            plan.attn_impl = self.resolved_impl(device)
            _announce(plan.attn_impl, device, self.inner)

    def _forward_trimode(self, q, k, v, layer, forward_batch, plan: TriModeForwardInput):
        pool = self.inner.token_to_kv_pool
        hq, hkv = layer.tp_q_head_num, layer.tp_k_head_num
        dq, dv = layer.qk_head_dim, layer.v_head_dim
        if k is None or v is None:
            raise ValueError("TRIMODE forwards need the segment's k and v (got None)")
        if dq != dv:
            raise ValueError(
                f"TRIMODE attention needs one head dim for q/k and v, got {dq} and {dv}"
            )
        if getattr(layer, "logit_cap", 0.0) or getattr(layer, "sliding_window_size", -1) > 0:
            raise ValueError("TRIMODE attention supports no logit cap and no sliding window")
        self._prepare(plan, q.device)
        q = q.reshape(-1, hq, dq)
        plan.layout.check_tokens(q.shape[0])
        pool.set_kv_buffer(layer, KVWriteLoc(forward_batch.out_cache_loc, None), k, v)
        out = packing.attend(
            q,
            k.reshape(-1, hkv, dq),
            v.reshape(-1, hkv, dv),
            pool.get_key_buffer(layer.layer_id),
            pool.get_value_buffer(layer.layer_id),
            plan.layout,
            layer.scaling,
            plan.attn_impl,
        )
        return out.reshape(-1, hq * dv)


for _name in DELEGATED_METHODS:
    setattr(TriModeAttnBackend, _name, _method(_name))
for _name in DELEGATED_STATE:
    setattr(TriModeAttnBackend, _name, _state(_name))
del _name

_ANNOUNCED: set[tuple[str, str]] = set()


def _announce(impl: str, device: torch.device, inner) -> None:
    """Log once per (impl, device) which attention path the TRIMODE forwards take."""
    if (impl, device.type) in _ANNOUNCED:
        return
    _ANNOUNCED.add((impl, device.type))
    path = {
        "sdpa": "sglang_trimode.dense_attention (batched SDPA)",
        "torch": "the pure-torch reference sglang_trimode.kernels.reference",
    }.get(impl)
    if path is None:
        from sglang_trimode.kernels.attention import INTERPRETED

        kind = "interpreted (TRITON_INTERPRET=1)" if INTERPRETED else "compiled"
        path = f"{kind} Triton kernel sglang_trimode.kernels.extend_attention"
    logger.info(
        "TRIMODE: attention impl %s on %s: %s; other forwards via the wrapped %s",
        impl,
        device,
        path,
        type(inner).__name__,
    )


def install(model_runner, impl: str = flags.DEFAULT_ATTENTION_IMPL) -> TriModeAttnBackend:
    """Wrap `model_runner.attn_backend` once (idempotent; sets `impl`); returns the wrapper."""
    backend = model_runner.attn_backend
    if not isinstance(backend, TriModeAttnBackend):
        backend = TriModeAttnBackend(backend, impl)
        model_runner.attn_backend = backend
    backend.impl = impl
    return backend
