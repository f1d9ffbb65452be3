"""The plain-torch `sgl_kernel` CPU stand-in (`sglang_trimode/srt/cpu_platform/sgl_kernel`) against
plain torch references. It is loaded from its file (no sglang needed, nothing installed)."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import pytest
import torch
from _deps import require

from sglang_trimode.srt.cpu_platform import PYTHONPATH_ENTRY


@pytest.fixture(scope="module")
def stand_in():
    path = Path(PYTHONPATH_ENTRY) / "sgl_kernel" / "__init__.py"
    name = "_trimode_sgl_kernel_stand_in"
    spec = importlib.util.spec_from_file_location(
        name, path, submodule_search_locations=[str(path.parent)]
    )
    mod = importlib.util.module_from_spec(spec)
    sys.modules[name] = mod  # a package: its `elementwise` submodule imports relatively
    spec.loader.exec_module(mod)
    return mod


def _buffers(n_rows: int, seed: int) -> list[torch.Tensor]:
    """Per-layer K/V-like buffers of different dtypes and row widths, as SGLang's pools hold."""
    g = torch.Generator().manual_seed(seed)
    return [
        torch.randn(n_rows, 2, 8, generator=g),  # fp32 [slots, heads, dim]
        torch.randn(n_rows, 3, 4, generator=g).to(torch.bfloat16),
        torch.randn(n_rows, 5, generator=g).to(torch.float16),
        torch.randint(0, 255, (n_rows, 7), generator=g, dtype=torch.uint8),  # odd row bytes
    ]


def _run(stand_in, bufs, tgt, src) -> None:
    ptrs = torch.tensor([b.data_ptr() for b in bufs], dtype=torch.uint64)
    strides = torch.tensor([b.stride(0) * b.element_size() for b in bufs], dtype=torch.int64)
    stand_in.copy_all_layer_kv_cache_cpu(
        ptrs, strides, torch.tensor(tgt, dtype=torch.int64), torch.tensor(src, dtype=torch.int64)
    )


@pytest.mark.parametrize(
    ("tgt", "src"),
    [
        ([5, 6, 7], [1, 2, 3]),  # disjoint
        ([2, 1], [1, 2]),  # swap: every source read before any target is written
        ([3, 4, 5], [2, 3, 4]),  # shifted chain, overlapping
        ([0], [0]),  # self copy
        ([], []),  # nothing
        ([9, 0, 4, 8], [0, 9, 9, 4]),  # a source copied twice, a target that is also a source
    ],
)
def test_copy_all_layer_kv_cache_cpu_equals_torch(stand_in, tgt, src):
    bufs = _buffers(10, seed=len(tgt))
    want = [b.clone() for b in bufs]
    for w in want:  # plain torch: index_select reads every source row first
        if tgt:
            w[torch.tensor(tgt)] = w[torch.tensor(src)].clone()
    _run(stand_in, bufs, tgt, src)
    for got, ref in zip(bufs, want, strict=True):
        assert torch.equal(got, ref)


def test_copy_all_layer_kv_cache_cpu_random_permutation(stand_in):
    g = torch.Generator().manual_seed(0)
    bufs = _buffers(64, seed=1)
    want = [b.clone() for b in bufs]
    tgt = torch.randperm(64, generator=g)[:40]
    src = torch.randint(0, 64, (40,), generator=g)
    for w in want:
        w[tgt] = w[src].clone()
    _run(stand_in, bufs, tgt.tolist(), src.tolist())
    for got, ref in zip(bufs, want, strict=True):
        assert torch.equal(got, ref)


def test_assign_req_to_token_pool_cpu_equals_torch(stand_in):
    req_to_token = torch.zeros(4, 16, dtype=torch.int32)
    want = req_to_token.clone()
    rows, starts, ends = [2, 0, 3], [0, 5, 3], [4, 7, 3]
    locs = torch.arange(100, 106, dtype=torch.int64)
    off = 0
    for r, s, e in zip(rows, starts, ends, strict=True):
        want[r, s:e] = locs[off : off + e - s].to(torch.int32)
        off += e - s
    stand_in.assign_req_to_token_pool_cpu(
        torch.tensor(rows), req_to_token, torch.tensor(starts), torch.tensor(ends), locs, 16
    )
    assert torch.equal(req_to_token, want)


def test_unimplemented_names_raise(stand_in):
    for name in stand_in.NOT_IMPLEMENTED + stand_in.CUDA_IMPORT_ONLY:
        with pytest.raises(NotImplementedError, match=name):
            getattr(stand_in, name)()
    for sub, names in stand_in.CUDA_IMPORT_ONLY_SUBMODULES.items():
        for name in names:
            with pytest.raises(NotImplementedError, match=f"{sub}.{name}"):
                getattr(getattr(stand_in, sub), name)()
    assert not hasattr(stand_in, "some_other_kernel")


DTYPES = [(torch.float32, 1e-5), (torch.float16, 2e-3), (torch.bfloat16, 2e-2)]


def _x(shape, dtype, seed=0):
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed)).to(dtype)


@pytest.mark.parametrize("dtype,tol", DTYPES)
@pytest.mark.parametrize("hidden", [64, 257])
def test_rmsnorms_equal_torch(stand_in, dtype, tol, hidden):
    x, w, r = _x((5, hidden), dtype), _x((hidden,), dtype, 1), _x((5, hidden), dtype, 2)
    eps = 1e-5
    ref = torch.nn.functional.rms_norm(x.float(), (hidden,), eps=eps)
    torch.testing.assert_close(
        stand_in.rmsnorm(x, w, eps), (ref * w.float()).to(dtype), atol=tol, rtol=tol
    )
    out = torch.empty_like(x)
    assert stand_in.gemma_rmsnorm(x, w, eps, out=out) is out
    torch.testing.assert_close(out, (ref * (1 + w.float())).to(dtype), atol=tol, rtol=tol)
    xi, ri = x.clone(), r.clone()  # in place: residual += x; x = norm(residual) * w
    stand_in.fused_add_rmsnorm(xi, ri, w, eps)
    torch.testing.assert_close(ri, r + x)
    ref_r = torch.nn.functional.rms_norm((r + x).float(), (hidden,), eps=eps)
    torch.testing.assert_close(xi, (ref_r * w.float()).to(dtype), atol=tol, rtol=tol)
    xi, ri = x.clone(), r.clone()
    stand_in.gemma_fused_add_rmsnorm(xi, ri, w, eps)
    torch.testing.assert_close(xi, (ref_r * (1 + w.float())).to(dtype), atol=tol, rtol=tol)


@pytest.mark.parametrize("dtype,tol", DTYPES)
def test_gated_activations_equal_torch(stand_in, dtype, tol):
    x = _x((3, 4, 2 * 48), dtype)
    a, b = x[..., :48].float(), x[..., 48:].float()
    F = torch.nn.functional
    for name, act in [
        ("silu_and_mul", F.silu),
        ("gelu_and_mul", F.gelu),
        ("gelu_tanh_and_mul", lambda t: F.gelu(t, approximate="tanh")),
    ]:
        out = torch.empty(3, 4, 48, dtype=dtype)
        assert getattr(stand_in, name)(x, out) is out, name
        torch.testing.assert_close(out, (act(a) * b).to(dtype), atol=tol, rtol=tol)
    ref = (x.float() * torch.sigmoid(1.702 * x.float())).to(dtype)
    torch.testing.assert_close(stand_in.gelu_quick(x), ref, atol=tol, rtol=tol)


def test_renorm_probs_keep_top_k_and_top_p(stand_in):
    probs = torch.tensor([[0.5, 0.2, 0.2, 0.1], [0.05, 0.6, 0.3, 0.05]])
    k = stand_in.top_k_renorm_prob(probs, torch.tensor([1, 2]))
    torch.testing.assert_close(k, torch.tensor([[1.0, 0, 0, 0], [0, 2 / 3, 1 / 3, 0]]))
    # ties at the k-th probability are kept (as FlashInfer's pivot keeps them)
    tie = stand_in.top_k_renorm_prob(probs, 2)
    torch.testing.assert_close(tie[0], torch.tensor([5 / 9, 2 / 9, 2 / 9, 0]))
    p = stand_in.top_p_renorm_prob(probs, torch.tensor([0.6, 0.85]))
    torch.testing.assert_close(p, torch.tensor([[5 / 7, 2 / 7, 0, 0], [0, 2 / 3, 1 / 3, 0]]))


def test_sglang_cuda_layers_equal_their_native_forward(stand_in, monkeypatch):
    """SGLang's own RMSNorm / SiluAndMul `forward_cuda` bodies, run on CPU tensors with the
    stand-in's kernels in place of sgl_kernel's, equal their `forward_native`."""
    require("sglang", reason="SGLang's layers need sglang (scripts/setup_sglang.sh)")
    from sglang.srt.layers import activation, layernorm

    for mod, names in (
        (layernorm, ("rmsnorm", "fused_add_rmsnorm")),
        (activation, ("silu_and_mul",)),
    ):
        for n in names:
            monkeypatch.setattr(mod, n, getattr(stand_in, n), raising=False)
    norm = layernorm.RMSNorm(64, eps=1e-6)
    norm.weight.data = _x((64,), torch.float32, 3)
    x, r = _x((6, 64), torch.float32), _x((6, 64), torch.float32, 4)
    torch.testing.assert_close(norm.forward_cuda(x.clone()), norm.forward_native(x.clone()))
    got = norm.forward_cuda(x.clone(), r.clone())
    want = norm.forward_native(x.clone(), r.clone())
    torch.testing.assert_close(got[0], want[0])
    torch.testing.assert_close(got[1], want[1])
    act, y = activation.SiluAndMul(), _x((6, 128), torch.float32, 5)
    torch.testing.assert_close(act.forward_cuda(y), act.forward_native(y))


def test_utils_has_no_pdl(stand_in):
    import importlib

    utils = importlib.import_module("_trimode_sgl_kernel_stand_in.utils")
    assert utils.is_arch_support_pdl() is False
