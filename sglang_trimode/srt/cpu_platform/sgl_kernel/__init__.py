"""Plain-torch stand-in for the CUDA-only `sgl_kernel` package: SGLang's CPU engine in tests, and
SGLang's CUDA path on a GPU machine without `sglang-kernel` (bench/gpu_serve.sh).

NOT the real `sgl_kernel`: it implements exactly the names that our CPU test paths (plain AR
serving through `python -m sglang.launch_server --device cpu` with SGLANG_USE_CPU_ENGINE=1 and
`--attention-backend torch_native`) were found to need, in slow plain torch:

- `assign_req_to_token_pool_cpu`: writes each request's newly allocated KV slots into the
  `req_to_token` table (same semantics as SGLang's Triton `assign_req_to_token_pool`).
- `copy_all_layer_kv_cache_cpu`: copies whole KV rows (`src_loc` -> `tgt_loc`) in every layer
  buffer given by raw data pointers and row strides in bytes (SGLang's MHA pool warms it up at
  start-up whenever speculative decoding is on; same semantics as its Triton
  `copy_all_layer_kv_cache_tiled`: all source rows are read before any target row is written).

and, device-agnostic, the names SGLang's CUDA layers import at module level for a dense model
(`elementwise.py`: `rmsnorm`, `fused_add_rmsnorm`, `gemma_rmsnorm`, `gemma_fused_add_rmsnorm`,
`silu_and_mul`, `gelu_and_mul`, `gelu_tanh_and_mul`, `gelu_quick`, `top_k_renorm_prob`,
`top_p_renorm_prob`; `utils.is_arch_support_pdl`). Found by reading SGLang 0.5.23's CUDA imports,
not yet by running on a GPU: SGLang's own JIT kernels (`sglang.kernels`, compiled with nvcc at
first use) serve rotary embeddings and KV stores there.

Names that SGLang imports at module level but that these paths never call are defined and raise
`NotImplementedError` when called (the speculative-decoding helpers
`build_tree_kernel_efficient_cpu`,
`verify_tree_greedy_cpu`, `fill_accept_out_cache_loc_cpu`, `fill_bonus_tokens_cpu`,
`rotate_input_ids_cpu`, `assign_draft_cache_locs_contiguous_cpu`, `assign_extend_cache_locs_cpu`,
`build_draft_decode_metadata_cpu`, imported by SGLang's scheduler modules; and `CUDA_IMPORT_ONLY`
plus the stub submodules `CUDA_IMPORT_ONLY_SUBMODULES`, which SGLang's CUDA paths import at module
level for quantization, MoE and KV transfer: tests/srt/test_cuda_import_surface.py imports the
server's modules with CUDA claimed and finds none missing). Every other attribute is
absent (`AttributeError`, so a `from sgl_kernel import x` fails loudly with an ImportError naming
`x`). No `torch.ops.sgl_kernel.*` operators are registered: SGLang code paths that call those (CPU
quantization, MoE, mamba, AMX layers) fail.
"""

from __future__ import annotations

import ctypes
import sys
import types

import torch

__version__ = "0.0.0+trimode.cpu.stand-in"

from .elementwise import (  # noqa: F401  (re-exported: `from sgl_kernel import rmsnorm`)
    fused_add_rmsnorm,
    gelu_and_mul,
    gelu_quick,
    gelu_tanh_and_mul,
    gemma_fused_add_rmsnorm,
    gemma_rmsnorm,
    rmsnorm,
    silu_and_mul,
    top_k_renorm_prob,
    top_p_renorm_prob,
    weak_ref_tensor,
)

IMPLEMENTED = (
    "assign_req_to_token_pool_cpu",
    "copy_all_layer_kv_cache_cpu",
    "rmsnorm",
    "fused_add_rmsnorm",
    "gemma_rmsnorm",
    "gemma_fused_add_rmsnorm",
    "silu_and_mul",
    "gelu_and_mul",
    "gelu_tanh_and_mul",
    "gelu_quick",
    "top_k_renorm_prob",
    "top_p_renorm_prob",
    "weak_ref_tensor",
)
NOT_IMPLEMENTED = (
    "build_tree_kernel_efficient_cpu",
    "verify_tree_greedy_cpu",
    "fill_accept_out_cache_loc_cpu",
    "fill_bonus_tokens_cpu",
    "rotate_input_ids_cpu",
    "assign_draft_cache_locs_contiguous_cpu",
    "assign_extend_cache_locs_cpu",
    "build_draft_decode_metadata_cpu",
)
#: Imported at module level by SGLang's CUDA paths (quantization, MoE, cascade attention, ...),
#: never called for a dense bf16/fp32 model; found by importing the server's modules with
#: `is_cuda()` forced on (tests/srt/test_cuda_import_surface.py).
CUDA_IMPORT_ONLY = (
    "int8_scaled_mm",
    "merge_state_v2",
    "moe_sum_reduce",
    "moe_sum",
)  #: The same for names imported from submodules (`from sgl_kernel.quantization import ...`).
CUDA_IMPORT_ONLY_SUBMODULES: dict[str, tuple[str, ...]] = {
    "quantization": ("ggml_dequantize", "ggml_moe_a8", "ggml_mul_mat_a8", "ggml_mul_mat_vec_a8"),
    "kvcacheio": (
        "transfer_kv_all_layer",
        "transfer_kv_all_layer_direct_lf_pf",
        "transfer_kv_all_layer_lf_pf",
        "transfer_kv_all_layer_lf_ph",
        "transfer_kv_all_layer_mla_lf_pf",
        "transfer_kv_direct",
        "transfer_kv_per_layer",
        "transfer_kv_per_layer_direct_pf_lf",
        "transfer_kv_per_layer_mla",
        "transfer_kv_per_layer_mla_pf_lf",
        "transfer_kv_per_layer_pf_lf",
        "transfer_kv_per_layer_ph_lf",
        "transfer_kv_all_layer_mla",
    ),
}


def assign_req_to_token_pool_cpu(
    req_pool_indices: torch.Tensor,
    req_to_token: torch.Tensor,
    start_offset: torch.Tensor,
    end_offset: torch.Tensor,
    out_cache_loc: torch.Tensor,
    pool_len: int,
) -> None:
    """Set `req_to_token[req_pool_indices[i], start[i]:end[i]]` from `out_cache_loc`.

    Request i takes the next `end[i] - start[i]` slots of `out_cache_loc`, in batch order.
    """
    del pool_len  # the row length of req_to_token; implied by the tensor here
    starts = start_offset.tolist()
    ends = end_offset.tolist()
    rows = req_pool_indices.tolist()
    offset = 0
    for row, start, end in zip(rows, starts, ends, strict=True):
        n = end - start
        if n > 0:
            req_to_token[row, start:end] = out_cache_loc[offset : offset + n].to(req_to_token.dtype)
        offset += n


def copy_all_layer_kv_cache_cpu(
    data_ptrs: torch.Tensor,
    strides: torch.Tensor,
    tgt_loc: torch.Tensor,
    src_loc: torch.Tensor,
) -> None:
    """For every buffer `b`: row `tgt_loc[i]` := row `src_loc[i]` (rows of `strides[b]` bytes at
    address `data_ptrs[b]`); all sources are read before any target is written."""
    ptrs = data_ptrs.tolist()
    row_bytes = strides.tolist()
    tgt = tgt_loc.tolist()
    src = src_loc.tolist()
    for base, stride in zip(ptrs, row_bytes, strict=True):
        rows = [ctypes.string_at(base + s * stride, stride) for s in src]
        for t, data in zip(tgt, rows, strict=True):
            ctypes.memmove(base + t * stride, data, stride)


def _not_implemented(name: str):
    def fn(*args, **kwargs):
        raise NotImplementedError(
            f"sgl_kernel.{name} is not implemented by sglang-trimode's CPU stand-in "
            "(sglang_trimode/srt/cpu_platform/sgl_kernel); it only serves the CPU test paths"
        )

    fn.__name__ = name
    return fn


for _name in NOT_IMPLEMENTED + CUDA_IMPORT_ONLY:
    globals()[_name] = _not_implemented(_name)
for _sub, _names in CUDA_IMPORT_ONLY_SUBMODULES.items():
    _mod = types.ModuleType(f"{__name__}.{_sub}", "sglang-trimode stand-in: raising stubs only")
    for _name in _names:
        setattr(_mod, _name, _not_implemented(f"{_sub}.{_name}"))
    sys.modules[_mod.__name__] = _mod
    globals()[_sub] = _mod
del _name

from . import absent  # noqa: E402  (SGLang CUDA modules needing packages we lack: absent.py)

absent.install()
