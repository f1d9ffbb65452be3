"""Attention for the TRIMODE worker's forwards: structural masks over SGLang's paged KV pool.

`TriModeAttnBackend` wraps the server's own attention backend (`torch_native` on a CPU, any
backend on a GPU). Forwards whose `spec_info` is a `TriModeForwardInput` (every decode-phase
forward of the worker: diffusion drafts, commits, linear verifies, quadratic steps, AR steps) are
computed here; everything else (prefill, plain AR serving) goes to the wrapped backend unchanged.

Each request of such a forward has a segment of `n` query tokens (padded to the forward's
uniform width) over its committed prefix of `seq_lens[i]` tokens: the segment's K/V are written
to `out_cache_loc` (padding tokens write to the pool's padding slot 0), then every real segment
token attends to the whole prefix and to the segment under the mask of
`sglang_trimode.masks.segment_mask` (BLOCK / QUADRATIC). The math is plain
`scaled_dot_product_attention` per request with a boolean mask, the same call SGLang's
`torch_native` backend makes, so the causal rows reproduce plain AR serving.

Not here yet: dispatch to the Triton kernels of `sglang_trimode.kernels` on a GPU (this path is
the CPU / correctness path; it loops over requests in Python).
"""

from __future__ import annotations

import torch
from sglang.srt.mem_cache.memory_pool import KVWriteLoc
from torch.nn.functional import scaled_dot_product_attention


class TriModeForwardInput:
    """Per-forward plan, riding on `ForwardBatch.spec_info` (duck-typed SpecInput).

    `positions` [bs * n]; `seg_masks` bool [bs, n, n] (rows of padding tokens see themselves
    only); `prefix_lens` list[int] (committed KV per request).
    """

    def __init__(self, positions, seg_masks, prefix_lens, width):
        from sglang.srt.speculative.spec_info import SpecInputType

        self.spec_input_type = SpecInputType.NGRAM_VERIFY
        self.positions = positions
        self.seg_masks = seg_masks
        self.prefix_lens = prefix_lens
        self.num_tokens_per_req = width
        self.num_tokens_for_logprob_per_req = width
        self.draft_token_num = width
        self.custom_mask = None
        self.cuda_graph_compatible = False
        self.ragged_verify_layout = None
        self.dsa_topk_indices = None
        self.future_dsa_topk_indices_available = False
        self.dsa_seed_topk_capture = None
        self.window_kv_indptr = None
        self.window_kv_indices = None

    def is_draft_input(self) -> bool:
        return False

    def is_verify_input(self) -> bool:
        return True

    def pad_batch(self, pad_tensor_to_size, batch_size) -> None:
        return None


class TriModeAttnBackend:
    """Delegates to `inner` except for forwards carrying a `TriModeForwardInput`."""

    def __init__(self, inner) -> None:
        object.__setattr__(self, "inner", inner)

    def __getattr__(self, name):
        return getattr(object.__getattribute__(self, "inner"), name)

    def __setattr__(self, name, value):
        setattr(self.inner, name, value)

    def init_forward_metadata(self, forward_batch):
        if isinstance(forward_batch.spec_info, TriModeForwardInput):
            return None
        return self.inner.init_forward_metadata(forward_batch)

    def forward(self, q, k, v, layer, forward_batch, save_kv_cache=True, **kwargs):
        plan = forward_batch.spec_info
        if not isinstance(plan, TriModeForwardInput):
            return self.inner.forward(q, k, v, layer, forward_batch, save_kv_cache, **kwargs)
        return self._forward_trimode(q, k, v, layer, forward_batch, plan)

    def _forward_trimode(self, q, k, v, layer, forward_batch, plan: TriModeForwardInput):
        pool = self.inner.token_to_kv_pool
        req_to_token = self.inner.req_to_token_pool.req_to_token
        loc = forward_batch.out_cache_loc
        if k is not None and v is not None:
            pool.set_kv_buffer(layer, KVWriteLoc(loc, None), k, v)
        k_cache = pool.get_key_buffer(layer.layer_id)
        v_cache = pool.get_value_buffer(layer.layer_id)
        hq, hkv = layer.tp_q_head_num, layer.tp_k_head_num
        q_ = q.reshape(-1, hq, layer.qk_head_dim)
        out = q.new_empty((q_.shape[0], hq, layer.v_head_dim))
        n = plan.num_tokens_per_req
        rows = forward_batch.req_pool_indices.tolist()
        for i, (row, prefix) in enumerate(zip(rows, plan.prefix_lens, strict=True)):
            s = i * n
            slots = torch.cat([req_to_token[row, :prefix].to(loc.dtype), loc[s : s + n]])
            keys = k_cache[slots].movedim(0, 1).to(q_.dtype)  # [Hkv, L, D]
            values = v_cache[slots].movedim(0, 1).to(q_.dtype)
            mask = torch.cat(
                [
                    torch.ones(n, prefix, dtype=torch.bool, device=q.device),
                    plan.seg_masks[i].to(q.device),
                ],
                dim=1,
            )
            o = scaled_dot_product_attention(
                q_[s : s + n].movedim(0, 1).unsqueeze(0),
                keys.unsqueeze(0),
                values.unsqueeze(0),
                attn_mask=mask,
                scale=layer.scaling,
                enable_gqa=hq != hkv,
            )
            out[s : s + n] = o.squeeze(0).movedim(1, 0)
        return out.reshape(q_.shape[0], hq * layer.v_head_dim)


def install(model_runner) -> TriModeAttnBackend:
    """Wrap `model_runner.attn_backend` once (idempotent); returns the wrapper."""
    backend = model_runner.attn_backend
    if not isinstance(backend, TriModeAttnBackend):
        backend = TriModeAttnBackend(backend)
        model_runner.attn_backend = backend
    return backend
