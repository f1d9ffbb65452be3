"""`TriModeAttnBackend`'s TRIMODE attention without a server: fake layer, pool and batch objects.

One forward of mixed requests (a bidirectional diffusion draft, a causal verify, a quadratic
step, an AR step, a request that only rides along) over ragged committed prefixes, laid out as
the worker lays it (the running requests' segments packed one after another), is compared
with a dense-mask `scaled_dot_product_attention` per request in float64 whose mask is written
here from the mask definitions (not from `sglang_trimode.masks`), for every impl: `torch` (the
kernels' reference), `triton` (the kernel, under the interpreter on a CPU) and `sdpa` (one batched
SDPA call over a padded layout). Skipped without
sglang (the backend imports SGLang's `KVWriteLoc`).
"""

from __future__ import annotations

from types import SimpleNamespace

import pytest
from _deps import require

require(
    "sglang", reason="sglang is not installed (bash scripts/setup_sglang.sh installs it for CPU)"
)

import torch  # noqa: E402
from torch.nn.functional import scaled_dot_product_attention  # noqa: E402

from sglang_trimode import masks, packed  # noqa: E402
from sglang_trimode.layout import build  # noqa: E402
from sglang_trimode.masks import MaskKind  # noqa: E402
from sglang_trimode.modes import Segment  # noqa: E402
from sglang_trimode.srt import flags  # noqa: E402
from sglang_trimode.srt.attention import TriModeAttnBackend, TriModeForwardInput  # noqa: E402

HQ, HKV, D = 4, 2, 16
SLOTS, MAX_CTX = 512, 96


class FakePool:
    """`MHATokenToKVPool`'s surface the backend uses: one [S, Hkv, D] buffer per layer."""

    def __init__(self, dtype, gen):
        self.k = torch.randn(SLOTS, HKV, D, generator=gen).to(dtype)
        self.v = torch.randn(SLOTS, HKV, D, generator=gen).to(dtype)

    def set_kv_buffer(self, layer, loc, k, v):
        self.k[loc.loc] = k.reshape(-1, HKV, D).to(self.k.dtype)
        self.v[loc.loc] = v.reshape(-1, HKV, D).to(self.v.dtype)

    def get_key_buffer(self, layer_id):
        return self.k

    def get_value_buffer(self, layer_id):
        return self.v


class FakeInner:
    def __init__(self, pool, req_to_token):
        self.token_to_kv_pool = pool
        self.req_to_token_pool = SimpleNamespace(req_to_token=req_to_token)
        self.calls = 0

    def init_forward_metadata(self, forward_batch):
        self.calls += 1

    def forward(self, *args, **kwargs):
        self.calls += 1
        return "inner"


def layer(scaling=0.37):
    return SimpleNamespace(
        layer_id=0,
        tp_q_head_num=HQ,
        tp_k_head_num=HKV,
        qk_head_dim=D,
        v_head_dim=D,
        scaling=scaling,
        logit_cap=0.0,
        sliding_window_size=-1,
    )


def allowed(desc, prefix: int) -> torch.Tensor:
    """Bool [n, prefix + n], written from the definitions in the masks module's docstring."""
    n = desc.length
    out = torch.zeros(n, prefix + n, dtype=torch.bool)
    out[:, :prefix] = True
    for q in range(n):
        for k in range(n):
            if desc.kind == MaskKind.BLOCK:
                ok = k // desc.block <= q // desc.block
            else:
                c, g = desc.num_causal, desc.block
                q_group = None if q < c else (q - c) // g
                k_group = None if k < c else (k - c) // g
                if q_group is None:
                    ok = k_group is None and k <= q
                elif k_group is None:
                    ok = k <= q_group  # group i sees seed and drafts d_1..d_i
                else:
                    ok = k_group == q_group
            out[q, prefix + k] = ok
    return out


def case(descs, prefixes, *, q_dtype=torch.float32, pool_dtype=torch.float32, seed=0):
    """A packed forward like the worker's: returns (inner backend, inputs, expected, slots)."""
    gen = torch.Generator().manual_seed(seed)
    bs = len(descs)
    lens = [0 if d is None else d.length for d in descs]
    pool = FakePool(pool_dtype, gen)
    perm = torch.randperm(SLOTS - 1, generator=gen) + 1  # slot 0 is SGLang's padding slot
    req_to_token = torch.zeros(bs + 3, MAX_CTX, dtype=torch.int32)
    req_pool_indices = torch.randperm(bs + 3, generator=gen)[:bs]
    locs = []
    used = 0
    for i, (m, p) in enumerate(zip(lens, prefixes, strict=True)):
        row = perm[used : used + p + m]
        used += p + m
        req_to_token[req_pool_indices[i], : p + m] = row.to(torch.int32)
        locs.append(row[p:])
    locs = torch.cat(locs).to(torch.int64)
    T = sum(lens)
    q = torch.randn(T, HQ * D, generator=gen).to(q_dtype)
    k = torch.randn(T, HKV * D, generator=gen).to(q_dtype)
    v = torch.randn(T, HKV * D, generator=gen).to(q_dtype)
    before = (pool.k.clone(), pool.v.clone())
    segs = [None if d is None else Segment([0] * d.length, d) for d in descs]
    plan = TriModeForwardInput(build(segs, prefixes, req_to_token, req_pool_indices, "cpu"))
    fb = SimpleNamespace(spec_info=plan, out_cache_loc=locs, req_pool_indices=req_pool_indices)
    lay = layer()
    expected = torch.zeros(T, HQ, D, dtype=torch.float64)
    for i, (d, p) in enumerate(zip(descs, prefixes, strict=True)):
        if d is None:
            continue
        m, s = d.length, sum(lens[:i])
        slots = req_to_token[req_pool_indices[i], :p].long()
        # prefix from the pool as stored (its dtype), the segment as the model computed it
        keys = torch.cat([before[0][slots].double(), k[s : s + m].view(m, HKV, D).double()])
        values = torch.cat([before[1][slots].double(), v[s : s + m].view(m, HKV, D).double()])
        o = scaled_dot_product_attention(
            q[s : s + m].view(m, HQ, D).double().movedim(0, 1)[None],
            keys.movedim(0, 1)[None],
            values.movedim(0, 1)[None],
            attn_mask=allowed(d, p),
            scale=lay.scaling,
            enable_gqa=True,
        )
        expected[s : s + m] = o[0].movedim(1, 0)
    inner = FakeInner(pool, req_to_token)
    return inner, (q, k, v, lay, fb), expected, locs


MIXED = [
    masks.diffusion_draft(4),  # bidirectional block
    masks.linear_verify(3),  # causal
    masks.quadratic(2, 3),  # QUADRATIC, 12 tokens: the widest
    None,  # rides along
    masks.decode(),  # AR step
    masks.MaskDescriptor(MaskKind.BLOCK, 7, 2),  # several blocks, last one partial
]
PREFIXES = [5, 17, 9, 11, 33, 1]


def run(impl, inner, inputs, *, init=True):
    backend = TriModeAttnBackend(inner, impl)
    q, k, v, lay, fb = inputs
    if init:
        assert backend.init_forward_metadata(fb) is None
    return backend.forward(q, k, v, lay, fb)


@pytest.mark.parametrize("impl", ["torch", "triton", "sdpa"])
@pytest.mark.parametrize("init", [True, False])
def test_mixed_batch_equals_dense_sdpa(impl, init):
    inner, inputs, expected, locs = case(MIXED, PREFIXES)
    q, k, v, _, _ = inputs
    out = run(impl, inner, inputs, init=init)
    assert inner.calls == 0  # the wrapped backend never sees a TRIMODE forward
    assert out.shape == (q.shape[0], HQ * D) and out.dtype == q.dtype
    got = out.view(-1, HQ, D).double()
    torch.testing.assert_close(got, expected, atol=2e-5, rtol=1e-5)
    assert got.abs().sum(-1).min() > 0
    # the segment K/V went into the pool at out_cache_loc
    pool = inner.token_to_kv_pool
    assert torch.equal(pool.k[locs], k.view(-1, HKV, D))
    assert torch.equal(pool.v[locs], v.view(-1, HKV, D))


@pytest.mark.parametrize("impl", ["torch", "triton", "sdpa"])
def test_pool_dtype_differs_from_q(impl):
    """A bf16 pool under fp32 q: the prefix is read as stored (bf16 values) and cast."""
    descs = [masks.quadratic(1, 2), None, masks.diffusion_draft(4, 3)]
    inner, inputs, expected, locs = case(descs, [6, 2, 21], pool_dtype=torch.bfloat16, seed=1)
    got = run(impl, inner, inputs).view(-1, HQ, D).double()
    torch.testing.assert_close(got, expected, atol=2e-5, rtol=1e-5)


@pytest.mark.parametrize("impl", ["torch", "triton", "sdpa"])
def test_all_requests_ride_along_gives_no_rows(impl):
    inner, inputs, _, _ = case([None, None], [4, 7])
    out = run(impl, inner, inputs)
    assert out.shape == (0, HQ * D)


def test_plan_is_packed_and_impl_resolved_once_per_forward(monkeypatch):
    """Every layer of a forward shares one layout and one impl resolution."""
    calls = []
    real = flags.resolve_attention_impl
    monkeypatch.setattr(flags, "resolve_attention_impl", lambda *a: calls.append(a) or real(*a))
    inner, (q, k, v, lay, fb), expected, _ = case(MIXED, PREFIXES)
    backend = TriModeAttnBackend(inner, "auto")
    backend.init_forward_metadata(fb)
    metadata = fb.spec_info.layout
    for layer_id in range(3):
        lay.layer_id = layer_id
        out = backend.forward(q, k, v, lay, fb)
        assert fb.spec_info.layout is metadata
    assert calls == [("auto", "cpu")] and fb.spec_info.attn_impl == "sdpa"
    assert metadata.dense is metadata.dense  # sdpa's padded layout: built once, every layer
    torch.testing.assert_close(out.view(-1, HQ, D).double(), expected, atol=2e-5, rtol=1e-5)


def test_token_count_other_than_the_plan_is_a_clear_error():
    inner, (q, k, v, lay, fb), _, _ = case(MIXED, PREFIXES)
    backend = TriModeAttnBackend(inner, "torch")
    with pytest.raises(ValueError, match="packed in request order"):
        backend.forward(q[1:], k[1:], v[1:], lay, fb)


def test_other_forwards_go_to_the_wrapped_backend():
    inner, inputs, _, _ = case(MIXED, PREFIXES)
    q, k, v, lay, fb = inputs
    backend = TriModeAttnBackend(inner, "torch")
    plain = SimpleNamespace(spec_info=None)
    backend.init_forward_metadata(plain)
    assert backend.forward(q, k, v, lay, plain) == "inner"
    assert inner.calls == 2


def test_first_use_of_each_impl_is_logged(caplog):
    packed._announced.clear()
    with caplog.at_level("INFO", logger=packed.__name__):
        for _ in range(2):
            for impl in ("torch", "triton", "sdpa"):
                inner, inputs, _, _ = case(MIXED[:2], PREFIXES[:2])
                run(impl, inner, inputs)
    lines = [r.getMessage() for r in caplog.records if "TRIMODE attention" in r.getMessage()]
    assert lines == [
        "TRIMODE attention: impl=torch (sglang_trimode.kernels.reference.extend_attention)",
        "TRIMODE attention: impl=triton (sglang_trimode.kernels.attention.extend_attention)",
        "TRIMODE attention: impl=sdpa (sglang_trimode.dense_attention.extend_attention)",
    ]


def test_impl_resolution_and_errors():
    assert flags.resolve_attention_impl("auto", "cuda") == "triton"
    assert flags.resolve_attention_impl(None, "cpu") == "sdpa"
    assert flags.resolve_attention_impl("torch", "cuda") == "torch"
    with pytest.raises(ValueError, match="--trimode-attention-impl 'flash'"):
        flags.resolve_attention_impl("flash", "cpu")
    msg = flags.attention_impl_error("triton", "cpu", interpreted=False)
    assert "--trimode-attention-impl triton" in msg and "TRITON_INTERPRET=1" in msg
    assert flags.attention_impl_error("triton", "cpu", interpreted=True) is None
    assert flags.attention_impl_error("triton", "cuda", interpreted=False) is None
    assert flags.attention_impl_error("auto", "cpu", interpreted=False) is None
    assert flags.triton_interpret_env({"TRITON_INTERPRET": "1"})
    assert not flags.triton_interpret_env({})
    parsed = flags.parse_trimode_args(["--trimode-attention-impl", "triton"])
    assert parsed["trimode_attention_impl"] == "triton"
    assert flags.resolve(parsed, 4).attention_impl == "triton"
    assert flags.resolve({}, 4).attention_impl == "auto"
    with pytest.raises(SystemExit):
        flags.parse_trimode_args(["--trimode-attention-impl", "flash"])
    # like every --trimode-* flag, it needs the TRIMODE algorithm
    assert "--trimode-attention-impl" in flags.check_combination(parsed, None)
    backend = TriModeAttnBackend(FakeInner(None, None), "bogus")
    with pytest.raises(ValueError, match="expected one of auto, triton, sdpa, torch"):
        backend.resolved_impl(torch.device("cpu"))


def test_plan_is_its_own_spec_input():
    """A real `SpecInput` subclass (not NGRAM's type): SGLang's phase guards say verify, its
    class defaults (no custom mask, no ragged-verify layout, no DSA rails) are inherited."""
    from sglang.srt.speculative.spec_info import SpecInput, SpecInputType

    r2t = torch.arange(16, dtype=torch.int32).view(2, 8)
    seg = Segment([1, 2, 3], masks.commit(3))
    plan = TriModeForwardInput(build([seg], [5], r2t, torch.tensor([1]), "cpu"))
    assert isinstance(plan, SpecInput) and type(plan).__mro__[1] is SpecInput
    assert plan.spec_input_type is None
    assert plan.spec_input_type not in set(SpecInputType)
    assert plan.is_verify_input() and not plan.is_draft_input()
    assert plan.custom_mask is None and plan.ragged_verify_layout is None
    assert plan.dsa_topk_indices is None and plan.window_kv_indptr is None
    assert not plan.cuda_graph_compatible
    assert plan.num_tokens_per_req == plan.num_tokens_for_logprob_per_req == 3


def test_decode_route_takes_ar_only_forwards_to_the_wrapped_decode():
    """AR-only forwards (every request one causal token, none riding along) run as SGLang's own
    DECODE: always with a wrapped GPU impl, with `sdpa` (the CPU) only for one request; any other
    segment or a request riding along keeps the packed path."""
    from sglang_trimode.srt.worker import decode_route

    ar = Segment([5], masks.decode())
    verify = Segment([5, 6], masks.linear_verify(2))
    assert decode_route([ar], wrapped=False) and decode_route([ar], wrapped=True)
    assert decode_route([ar, ar, ar], wrapped=True)
    assert not decode_route([ar, ar, ar], wrapped=False)  # sdpa: one batched call beats a loop
    assert not decode_route([ar, verify], wrapped=True)
    assert not decode_route([ar, None], wrapped=True)  # a request riding along
    assert not decode_route([], wrapped=True)


def test_the_backend_interface_is_delegated_explicitly():
    """Every member of SGLang's `AttentionBackend` is the wrapper's own (`init_forward_metadata`,
    `forward`) or named in the delegation lists: an SGLang upgrade that adds one fails here."""
    from sglang.srt.layers.attention.base_attn_backend import AttentionBackend

    from sglang_trimode.srt import attention

    interface = {n for n in vars(AttentionBackend) if not n.startswith("__")} - {"_abc_impl"}
    ours = {"init_forward_metadata", "forward"}
    listed = set(attention.DELEGATED_METHODS) | set(attention.DELEGATED_STATE)
    assert interface - ours - listed == set(), "add these to the delegation lists"
    # beyond the class's members: the pools every backend holds (HybridAttnBackend sets them too)
    assert listed - interface == {"token_to_kv_pool", "req_to_token_pool"}
    assert not listed & ours
    assert all(n in vars(TriModeAttnBackend) for n in interface | listed)  # here, not inherited
    assert isinstance(TriModeAttnBackend(FakeInner(None, None)), AttentionBackend)


def test_delegated_calls_and_state_reach_the_wrapped_backend():
    inner = FakeInner(None, None)
    inner.forward_decode = lambda *a, **k: ("decode", a, k)
    inner.forward_metadata = "inner's"
    inner.kv_indptr = "a FlashInfer-only attribute"
    backend = TriModeAttnBackend(inner, "torch")
    assert backend.forward_decode(1, 2, save_kv_cache=False) == (
        "decode",
        (1, 2),
        {"save_kv_cache": False},
    )
    assert backend.forward_metadata == "inner's"
    backend.forward_metadata = None  # SGLang's idle forward drops stale metadata this way
    assert inner.forward_metadata is None and backend.forward_metadata is None
    assert backend.token_to_kv_pool is inner.token_to_kv_pool
    assert backend.kv_indptr == "a FlashInfer-only attribute"  # read through, not listed
    backend.impl = "sdpa"  # the wrapper's own setting stays on the wrapper
    assert backend.impl == "sdpa" and "impl" not in vars(inner)
