"""Time the tri-mode attention kernels against dense-mask and block-mask baselines.

    python bench/kernels.py [--contexts 1024,4096,16384,32768] [--batches 1,8,64]
                            [--steps block32,quad8,quad16,decode] [--methods ...] [--out DIR]
    python bench/kernels.py --quick        # tiny CPU smoke run (Triton interpreter, fp32)

Steps: ``blockB`` (one bidirectional diffusion block of B), ``causalN`` (verify/commit of N),
``quadL`` (TiDAR step, L drafts each followed by L masks, L(L+1) tokens), ``decode``. Every
request of a config has ``context`` cached tokens in scattered pages and the same step. Methods:
``ours`` (the paged Triton kernels), ``sdpa_dense`` (torch SDPA with a dense boolean mask over
pre-gathered contiguous K/V), ``flex`` (FlexAttention, block mask), ``flashinfer`` (paged prefill,
custom mask, segment K/V stored first), ``sglang`` (``extend_attention_fwd``, dense custom mask),
``flash_ref`` (SDPA with no mask over the same shapes: the speed-of-light reference). Gathers and
stores that a baseline needs are not timed. Prints a table (ms, TFLOP/s over the visible pairs,
baseline time / ours, max |diff| to ours) and writes ``DIR/kernels.json``.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
import time
from pathlib import Path

import torch

if not torch.cuda.is_available():
    os.environ["TRITON_INTERPRET"] = "1"  # before the kernels are decorated

from sglang_trimode.kernels import (  # noqa: E402
    PageTable,
    SegmentBatch,
    extend_attention,
)

from sglang_trimode import masks  # noqa: E402

METHODS = ["ours", "sdpa_dense", "flex", "flashinfer", "sglang", "flash_ref"]
SGLANG_MODULES = ("sglang.kernels.ops.attention", "sglang.srt.layers.attention.triton_ops")


class Skip(Exception):
    """A method that cannot run here; the message is the printed reason."""


def step_desc(name: str) -> masks.MaskDescriptor:
    if name == "decode":
        return masks.decode()
    for prefix, make in (
        ("block", lambda n: masks.diffusion_draft(n)),
        ("causal", masks.commit),
        ("quad", lambda n: masks.quadratic(n - 1, n)),
    ):
        if name.startswith(prefix) and name[len(prefix) :].isdigit():
            return make(int(name[len(prefix) :]))
    raise SystemExit(f"unknown step {name!r} (blockB, causalN, quadL, decode)")


def make_data(desc, context, batch, args, device, dtype):
    """Requests of ``context`` cached tokens in scattered pages (room left for the segment)."""
    n, page, hkv, d = desc.length, args.page_size, args.kv_heads, args.head_dim
    per_req = -(-(context + n) // page)
    perm = torch.randperm(per_req * batch, device=device).view(batch, per_req).int()
    row_start = torch.arange(batch, device=device) * per_req
    lengths = torch.full((batch,), context, device=device, dtype=torch.int32)

    def randn(*shape):
        return torch.randn(*shape, device=device, dtype=dtype)

    return dict(desc=desc, context=context, batch=batch, perm=perm,
                pages=PageTable(perm.view(-1), row_start, lengths, page),
                segs=SegmentBatch.from_descriptors([desc] * batch, device),
                q=randn(n * batch, args.q_heads, d), k=randn(n * batch, hkv, d),
                v=randn(n * batch, hkv, d), k_cache=randn(per_req * batch * page, hkv, d),
                v_cache=randn(per_req * batch * page, hkv, d))  # fmt: skip


def dense_kv(data):
    """Contiguous ``[B, Hkv, context + n, D]`` K/V (prefix gathered through the table + segment)."""
    b, ctx, n = data["batch"], data["context"], data["desc"].length
    slots = torch.stack([data["pages"].slots(i) for i in range(b)]) if ctx else None
    out = []
    for cache, seg in ((data["k_cache"], data["k"]), (data["v_cache"], data["v"])):
        seg = seg.view(b, n, *seg.shape[1:])
        full = torch.cat([cache[slots], seg], 1) if ctx else seg
        out.append(full.transpose(1, 2).contiguous())
    return out


def run_ours(data):
    """The extend kernel (a ``decode`` step is its one-token causal segment)."""
    args = [data[x] for x in ("q", "k", "v", "k_cache", "v_cache", "pages", "segs")]
    return lambda: extend_attention(*args)


def run_sdpa(data, with_mask=True):
    """Dense boolean mask, K/V expanded to the query heads (the efficient kernel takes masks but
    not GQA); without a mask: the flash backend, GQA native (``flash_ref``)."""
    F = torch.nn.functional
    k, v = dense_kv(data)
    b, n, hq = data["batch"], data["desc"].length, data["q"].shape[1]
    q = data["q"].view(b, n, hq, -1).transpose(1, 2)
    shape = data["q"].shape
    if with_mask:
        k, v = (x.repeat_interleave(hq // x.shape[1], 1) for x in (k, v))
        mask = masks.dense_mask(data["desc"], data["context"]).to(q.device)
        return lambda: F.scaled_dot_product_attention(q, k, v, mask).transpose(1, 2).reshape(shape)
    if q.is_cuda and q.dtype == torch.float32:
        raise Skip("the flash SDPA backend takes fp16/bf16 only (use --dtype bfloat16)")
    backend = getattr(torch.nn.attention.SDPBackend, "FLASH_ATTENTION" if q.is_cuda else "MATH")

    def run():
        with torch.nn.attention.sdpa_kernel(backend):
            return F.scaled_dot_product_attention(q, k, v, enable_gqa=True)

    return lambda: run().transpose(1, 2).reshape(shape)


def run_flex(data):
    """FlexAttention, compiled on a GPU (one compile per shape, not timed), eager on a CPU."""
    from torch.nn.attention.flex_attention import create_block_mask, flex_attention

    torch._dynamo.config.cache_size_limit = 256  # a recompile per configuration

    k, v = dense_kv(data)
    b, n, ctx = data["batch"], data["desc"].length, data["context"]
    q = data["q"].view(b, n, *data["q"].shape[1:]).transpose(1, 2).contiguous()
    seg = masks.segment_mask(data["desc"]).to(q.device)

    def mask_mod(bi, h, qi, ki):
        return (ki < ctx) | seg[qi, (ki - ctx).clamp(min=0)]

    block = create_block_mask(mask_mod, None, None, n, ctx + n, device=q.device)
    fn = torch.compile(flex_attention) if q.is_cuda else flex_attention
    shape = data["q"].shape
    return lambda: fn(q, k, v, block_mask=block, enable_gqa=True).transpose(1, 2).reshape(shape)


def run_flashinfer(data):
    try:
        import flashinfer
    except ImportError as e:
        raise Skip(f"flashinfer does not import ({e})") from None
    if not data["q"].is_cuda:
        raise Skip("flashinfer kernels need a GPU")
    b, ctx, n, page = data["batch"], data["context"], data["desc"].length, data["pages"].page_size
    used = -(-(ctx + n) // page)
    longer = data["pages"].with_lengths(data["pages"].lengths + n)
    slots = torch.stack([longer.slots(i) for i in range(b)])
    k_cache, v_cache = data["k_cache"].clone(), data["v_cache"].clone()
    k_cache[slots[:, ctx:]] = data["k"].view(b, n, *data["k"].shape[1:])
    v_cache[slots[:, ctx:]] = data["v"].view(b, n, *data["v"].shape[1:])
    dev = data["q"].device
    kv_indices = data["perm"][:, :used].reshape(-1)
    kv_indptr = torch.arange(b + 1, device=dev, dtype=torch.int32) * used
    last = torch.full((b,), ctx + n - (used - 1) * page, device=dev, dtype=torch.int32)
    mask = masks.dense_mask(data["desc"], ctx).reshape(-1).repeat(b).to(dev)
    wrapper = flashinfer.BatchPrefillWithPagedKVCacheWrapper(
        torch.empty(256 << 20, dtype=torch.uint8, device=dev), "NHD"
    )
    hq, hkv, d = data["q"].shape[1], k_cache.shape[1], k_cache.shape[2]
    plan = (data["segs"].qo_indptr, kv_indptr, kv_indices, last, hq, hkv, d, page)
    wrapper.plan(*plan, custom_mask=mask, q_data_type=data["q"].dtype)
    paged = (k_cache.view(-1, page, hkv, d), v_cache.view(-1, page, hkv, d))
    return lambda: wrapper.run(data["q"], paged)


def sglang_extend(q, k, v, k_cache, v_cache, pages, segs, sm_scale=None):
    """SGLang's ``extend_attention_fwd`` with the equivalent dense custom mask (token indices)."""
    import importlib

    for name in SGLANG_MODULES:
        try:
            fwd = importlib.import_module(name + ".extend_attention").extend_attention_fwd
            break
        except ImportError as e:
            reason = f"sglang does not import ({e})"
    else:
        raise Skip(reason)
    descs, lens = segs.descriptors(), pages.lengths.tolist()
    kv_indices = torch.cat([pages.slots(i) for i in range(len(descs))]).to(q.device)
    kv_indptr = torch.tensor([0, *lens], device=q.device).cumsum(0).int()
    mask = torch.cat([masks.dense_mask(d, p).reshape(-1) for d, p in zip(descs, lens)])
    sizes = [d.length * (d.length + p) for d, p in zip(descs, lens)]
    mask_indptr = torch.tensor([0, *sizes], device=q.device).cumsum(0).long()
    out = torch.empty_like(q)
    sm_scale = 1.0 / math.sqrt(q.shape[-1]) if sm_scale is None else sm_scale
    index = (segs.qo_indptr, kv_indptr, kv_indices, mask.to(q.device), False, mask_indptr)
    # sglang 0.5.23: (..., max_len_extend, k_scale, v_scale, sm_scale=...); scales 1.0: no fp8
    args = (q, k, v, out, k_cache, v_cache, *index, segs.max_len, 1.0, 1.0)

    def run():
        fwd(*args, sm_scale=sm_scale, skip_prefix_custom_mask=False)
        return out

    return run


RUNNERS = {
    "ours": run_ours,
    "sdpa_dense": run_sdpa,
    "flex": run_flex,
    "flashinfer": run_flashinfer,
    "sglang": lambda d: sglang_extend(
        *(d[x] for x in ("q", "k", "v", "k_cache", "v_cache", "pages", "segs"))
    ),  # fmt: skip
    "flash_ref": lambda data: run_sdpa(data, with_mask=False),
}


def timed(fn, device, args):
    """Median milliseconds: ``triton.testing.do_bench`` on a GPU (L2 flushed between calls),
    ``--iters`` wall-clock calls on a CPU."""
    if device.type == "cuda":
        from triton.testing import do_bench

        return do_bench(fn, warmup=args.warmup_ms, rep=args.rep_ms, return_mode="median")
    times = []
    for _ in range(args.iters):
        t0 = time.perf_counter()
        fn()
        times.append((time.perf_counter() - t0) * 1e3)
    return sorted(times)[len(times) // 2]


def bench_config(step, ctx, batch, args, device, dtype, deadline):
    """Rows (one per method) of one (step, context, batch) configuration."""
    torch.manual_seed(0)
    desc = step_desc(step)
    data = make_data(desc, ctx, batch, args, device, dtype)
    pairs = int(masks.dense_mask(desc, ctx).sum())
    full_pairs = desc.length * (ctx + desc.length)
    rows, ours = [], None
    for method in args.methods:
        row = dict(step=step, context=ctx, batch=batch, method=method, status="ok")
        try:
            if time.monotonic() > deadline:
                raise Skip("the --max-seconds budget is spent")
            fn = RUNNERS[method](data)
            out = fn().float()
            row["ms"] = timed(fn, device, args)
            used = full_pairs if method == "flash_ref" else pairs
            row["tflops"] = 4 * args.head_dim * args.q_heads * batch * used / row["ms"] / 1e9
            if ours is None and method == "ours":
                ours = (row, out)
            elif ours is not None:
                row["vs_ours"] = row["ms"] / ours[0]["ms"]
                if method == "flash_ref":  # no mask: a speed reference, not the same result
                    ours[0]["tflops_vs_flash"] = ours[0]["tflops"] / row["tflops"]
                else:
                    row["max_diff"] = (out - ours[1]).abs().max().item()
        except Skip as e:
            row["status"] = f"skipped: {e}"
        except Exception as e:  # a baseline that fails (OOM, API drift) must not stop the run
            row["status"] = f"error: {type(e).__name__}: {str(e).splitlines()[0][:120]}"
        rows.append(row)
        if device.type == "cuda":
            torch.cuda.empty_cache()
    return rows


def _cell(row, key, fmt):
    return format(row[key], fmt) if key in row else "-"


def format_table(rows):
    """Every measurement: ``x ours`` = method time / our time (> 1: ours is faster)."""
    lines = [f"{'step':<8}{'ctx':>7}{'batch':>6}  {'method':<11}{'ms':>10}{'TFLOP/s':>9}"
             f"{'x ours':>8}{'max|diff|':>11}  status"]  # fmt: skip
    for r in rows:
        lines.append(
            f"{r['step']:<8}{r['context']:>7}{r['batch']:>6}  {r['method']:<11}"
            f"{_cell(r, 'ms', '.3f'):>10}{_cell(r, 'tflops', '.2f'):>9}"
            f"{_cell(r, 'vs_ours', '.2f'):>8}{_cell(r, 'max_diff', '.1e'):>11}  {r['status']}"
        )
    return "\n".join(lines)


def format_summary(rows):
    """Per configuration: our TFLOP/s, speedups over each baseline, TFLOP/s ratio to flash_ref."""
    base = [m for m in METHODS[1:-1] if any(r["method"] == m and "ms" in r for r in rows)]
    lines = [f"{'step':<8}{'ctx':>7}{'batch':>6}{'ours TF/s':>11}"
             + "".join(f"{'x ' + m:>14}" for m in base) + f"{'vs flash':>10}"]  # fmt: skip
    for r in rows:
        if r["method"] != "ours" or "ms" not in r:
            continue
        same = {x["method"]: x for x in rows if x["step"] == r["step"]
                and x["context"] == r["context"] and x["batch"] == r["batch"]}  # fmt: skip
        lines.append(
            f"{r['step']:<8}{r['context']:>7}{r['batch']:>6}{r['tflops']:>11.2f}"
            + "".join(f"{_cell(same.get(m, {}), 'vs_ours', '.2f'):>14}" for m in base)
            + f"{_cell(r, 'tflops_vs_flash', '.2f'):>10}"
        )
    return "\n".join(lines)


def csv(kind):
    return lambda s: [kind(x) for x in s.split(",") if x]


def main(argv: list[str] | None = None) -> list[dict]:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--contexts", type=csv(int), default=[1024, 4096, 16384, 32768])
    ap.add_argument("--batches", type=csv(int), default=[1, 8, 64])
    ap.add_argument("--steps", type=csv(str), default=["block32", "quad8", "quad16", "decode"])
    ap.add_argument("--methods", type=csv(str), default=METHODS)
    ap.add_argument("--q-heads", type=int, default=32)
    ap.add_argument("--kv-heads", type=int, default=8)
    ap.add_argument("--head-dim", type=int, default=128)
    ap.add_argument("--page-size", type=int, default=16)
    ap.add_argument("--dtype", default="bfloat16", choices=["bfloat16", "float16", "float32"])
    ap.add_argument("--warmup-ms", type=int, default=25, help="GPU: do_bench warm-up")
    ap.add_argument("--rep-ms", type=int, default=100, help="GPU: do_bench timing window")
    ap.add_argument("--iters", type=int, default=3, help="CPU: timed calls")
    ap.add_argument("--max-seconds", type=float, default=600.0, help="skip what is left after")
    ap.add_argument("--out", type=Path, default=Path("out/kernels"))
    ap.add_argument("--quick", action="store_true", help="tiny fp32 CPU smoke configuration")
    args = ap.parse_args(argv)
    if args.quick:
        quick = dict(contexts=[40], batches=[2], steps=["block8", "quad3", "causal5", "decode"])
        quick.update(q_heads=4, kv_heads=2, head_dim=64, page_size=4, dtype="float32", iters=1)
        vars(args).update({k: v for k, v in quick.items() if getattr(args, k) == ap.get_default(k)})
    if unknown := set(args.methods) - set(METHODS):
        sys.exit(f"unknown methods {sorted(unknown)}; choose from {METHODS}")
    if "ours" in args.methods:
        args.methods = ["ours"] + [m for m in args.methods if m != "ours"]
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    dtype = getattr(torch, args.dtype)
    deadline = time.monotonic() + args.max_seconds
    rows = []
    print(format_table([]))
    for step in args.steps:
        for ctx in args.contexts:
            for batch in args.batches:
                rows += bench_config(step, ctx, batch, args, device, dtype, deadline)
                print(format_table(rows[-len(args.methods) :]).split("\n", 1)[1], flush=True)
    print("\nsummary (x M: M's time / ours; vs flash: our TFLOP/s / unmasked flash TFLOP/s)")
    print(format_summary(rows))
    import triton

    env = dict(device=torch.cuda.get_device_name() if device.type == "cuda" else "cpu",
               torch=torch.__version__, triton=triton.__version__,
               interpreted=os.environ.get("TRITON_INTERPRET") == "1")  # fmt: skip
    args.out.mkdir(parents=True, exist_ok=True)
    record = dict(env=env, args={k: str(v) for k, v in vars(args).items()}, rows=rows)
    (args.out / "kernels.json").write_text(json.dumps(record, indent=1))
    print(f"wrote {args.out / 'kernels.json'}")
    return rows


if __name__ == "__main__":
    main()
