"""Plain-torch stand-ins for the `sgl_kernel` names SGLang's CUDA layers call (any device).

On a CUDA machine without `sglang-kernel` (the GPU machine: bench/gpu_serve.sh), SGLang's CUDA
paths import these at module level: RMSNorm (`layers/layernorm.py`), SiLU/GELU-and-mul
(`layers/activation.py`), the probability renormalisers of the sampler (`layers/sampler.py`).
Same signatures and in-place semantics as sgl_kernel's (FlashInfer's) kernels: statistics in
fp32, results cast to the input's dtype; `enable_pdl` (a Hopper launch detail) is accepted and
ignored. Each has a test against plain torch / SGLang's `forward_native`
(tests/srt/test_cpu_stand_in.py).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def _rms(x: torch.Tensor, weight: torch.Tensor, eps: float, offset: float) -> torch.Tensor:
    """`x / sqrt(mean(x^2) + eps) * (offset + weight)` in fp32, cast to x's dtype."""
    xf = x.float()
    normed = xf * torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + eps)
    return (normed * (offset + weight.float())).to(x.dtype)


def _into(res: torch.Tensor, out: torch.Tensor | None) -> torch.Tensor:
    """`res`, or copied into the caller's `out` (sgl_kernel's optional output argument)."""
    if out is None:
        return res
    out.copy_(res)
    return out


def rmsnorm(input, weight, eps: float = 1e-6, out=None, enable_pdl=None) -> torch.Tensor:
    """out = RMSNorm(input) * weight."""
    return _into(_rms(input, weight, eps, 0.0), out)


def fused_add_rmsnorm(input, residual, weight, eps: float = 1e-6, enable_pdl=None) -> None:
    """In place: residual += input; input = RMSNorm(residual) * weight."""
    residual.add_(input)
    input.copy_(_rms(residual, weight, eps, 0.0))


def gemma_rmsnorm(input, weight, eps: float = 1e-6, out=None, enable_pdl=None) -> torch.Tensor:
    """out = RMSNorm(input) * (1 + weight) (Gemma's offset weight)."""
    return _into(_rms(input, weight, eps, 1.0), out)


def gemma_fused_add_rmsnorm(input, residual, weight, eps: float = 1e-6, enable_pdl=None) -> None:
    """In place: residual += input; input = RMSNorm(residual) * (1 + weight)."""
    residual.add_(input)
    input.copy_(_rms(residual, weight, eps, 1.0))


def _gated(act, input: torch.Tensor, out: torch.Tensor | None) -> torch.Tensor:
    """act(first half) * second half of the last dimension."""
    d = input.shape[-1] // 2
    return _into((act(input[..., :d].float()) * input[..., d:].float()).to(input.dtype), out)


def silu_and_mul(input, out=None, enable_pdl=None) -> torch.Tensor:
    return _gated(F.silu, input, out)


def gelu_and_mul(input, out=None, enable_pdl=None) -> torch.Tensor:
    return _gated(F.gelu, input, out)


def gelu_tanh_and_mul(input, out=None, enable_pdl=None) -> torch.Tensor:
    return _gated(lambda x: F.gelu(x, approximate="tanh"), input, out)


def gelu_quick(input, out=None, enable_pdl=None) -> torch.Tensor:
    """x * sigmoid(1.702 x)."""
    return _into((input.float() * torch.sigmoid(1.702 * input.float())).to(input.dtype), out)


def _per_row(value, probs: torch.Tensor, dtype) -> torch.Tensor:
    t = torch.as_tensor(value, device=probs.device, dtype=dtype)
    return t.expand(probs.shape[0]) if t.dim() == 0 else t


def top_k_renorm_prob(probs: torch.Tensor, top_k, *args, **kwargs) -> torch.Tensor:
    """Keep each row's `top_k` largest probabilities (ties at the k-th kept), renormalise."""
    k = _per_row(top_k, probs, torch.int64).clamp(1, probs.shape[-1])
    sorted_p = probs.sort(dim=-1, descending=True).values
    kth = sorted_p.gather(-1, (k - 1).unsqueeze(-1))
    kept = torch.where(probs >= kth, probs, torch.zeros_like(probs))
    return kept / kept.sum(-1, keepdim=True)


def top_p_renorm_prob(probs: torch.Tensor, top_p, *args, **kwargs) -> torch.Tensor:
    """Keep each row's smallest prefix (by descending probability) of mass >= `top_p`."""
    p = _per_row(top_p, probs, probs.dtype)
    sorted_p, idx = probs.sort(dim=-1, descending=True)
    before = sorted_p.cumsum(-1) - sorted_p  # mass strictly before each token
    keep_sorted = before < p.unsqueeze(-1)
    keep_sorted[..., 0] = True
    keep = torch.zeros_like(keep_sorted).scatter(-1, idx, keep_sorted)
    kept = torch.where(keep, probs, torch.zeros_like(probs))
    return kept / kept.sum(-1, keepdim=True)


def weak_ref_tensor(tensor: torch.Tensor) -> torch.Tensor:
    """sgl_kernel's returns a view that does not keep the storage alive (CUDA-graph outputs); a
    plain view keeps it alive: the same values, memory freed later."""
    return tensor.view(tensor.shape) if isinstance(tensor, torch.Tensor) else tensor
