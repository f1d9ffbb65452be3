"""Launchers reject bad input with a ValueError naming the argument; references share their
signatures; the kernels package does not import sglang."""

import inspect
import os
import subprocess
import sys
from dataclasses import replace

import pytest
import torch
from kernel_cases import DEVICE, extend_case
from sglang_trimode.kernels import PageTable, extend_attention
from sglang_trimode.kernels import reference as ref

from sglang_trimode import kernels, masks


@pytest.fixture(scope="module")
def case():
    return extend_case(0, [masks.prefill(3), masks.quadratic(1, 2)], [4, 2], page_size=4)


def _extend(case, **changes):
    args = dict(zip(("q", "k", "v", "k_cache", "v_cache", "pages", "segments"), case.args()))
    kwargs = {k: changes.pop(k) for k in ("q_scale", "num_splits", "out") if k in changes}
    args.update(changes)
    return extend_attention(*args.values(), **kwargs)


BAD_EXTEND = [
    (dict(q="q64"), r"q: dtype must be one of"),
    (dict(k="khalf"), r"k: dtype must be one of \(torch.float32\)"),
    (dict(q="qT"), r"q: the last dim must be contiguous"),
    (dict(v="vshort"), r"v: dim 0 must be 9"),
    (dict(k_cache="cache_heads"), r"v_cache: dim 1 must be 3|k: 2 KV heads"),
    (dict(pages="rows"), r"pages.row_start: dim 0 must be 2"),
    (dict(pages="len64"), r"pages.lengths: dtype must be one of \(torch.int32\)"),
    (dict(pages="float_table"), r"pages.table: dtype must be one of"),
    (dict(segments="indptr64"), r"segments.qo_indptr: expected int32"),
    (dict(q_scale="short"), r"q_scale: dim 0 must be 9"),
    (dict(num_splits=0), r"num_splits must be a positive int"),
    (dict(out="out16"), r"out: dtype must be one of"),
]


@pytest.mark.parametrize("change,message", BAD_EXTEND)
def test_extend_rejects_bad_input(case, change, message):
    ((name, what),) = change.items()
    bad = {
        "q64": case.q.double(),
        "khalf": case.k.half(),
        "qT": case.q.transpose(1, 2).contiguous().transpose(1, 2),
        "vshort": case.v[:-1],
        "cache_heads": torch.cat([case.k_cache, case.k_cache[:, :1]], 1),
        "rows": replace(case.pages, row_start=case.pages.row_start[:1]),
        "len64": replace(case.pages, lengths=case.pages.lengths.long()),
        "float_table": replace(case.pages, table=case.pages.table.float()),
        "indptr64": replace(case.segments, qo_indptr=case.segments.qo_indptr.long()),
        "short": torch.ones(8, device=DEVICE),
        "out16": torch.empty_like(case.q, dtype=torch.float16),
    }.get(what, what)
    with pytest.raises(ValueError, match=message):
        _extend(case, **{name: bad})


def test_page_table_from_req_to_token_rejects_a_flat_table(case):
    q = case.q[:2]
    with pytest.raises(ValueError, match=r"req_to_token: expected 2-D"):
        PageTable.from_req_to_token(torch.zeros(4, dtype=torch.int32), torch.zeros(1), q[:, 0, 0])


def test_page_table_value_check(case):
    case.pages.check(case.k_cache.shape[0])
    with pytest.raises(ValueError, match=r"request \d maps to slots outside the pool \[0, 5\)"):
        case.pages.check(5)


def test_references_share_the_launchers_signatures():
    for name in ("extend_attention",):
        assert inspect.signature(getattr(kernels, name)) == inspect.signature(getattr(ref, name))


def test_kernels_do_not_import_sglang():
    code = (
        "import sys, sglang_trimode.kernels as k; k.extend_attention; "
        "import sglang_trimode.kernels.reference; "
        "assert not [m for m in sys.modules if m.split('.')[0] == 'sglang'], 'sglang imported'"
    )
    subprocess.run(
        [sys.executable, "-c", code], check=True, env=dict(os.environ, TRITON_INTERPRET="1")
    )
