"""bench/kernels.py smoke run (CPU, --quick) and equivalence with SGLang's extend kernel."""

import json
import sys
from pathlib import Path

import torch
from _deps import require
from kernel_cases import assert_close, extend_case
from sglang_trimode.kernels import extend_attention

from sglang_trimode import masks

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
from bench.kernels import main as bench_main  # noqa: E402
from bench.kernels import sglang_extend  # noqa: E402


def test_bench_quick_writes_rows_that_agree(tmp_path):
    rows = bench_main(["--quick", "--steps", "quad3,decode", "--out", str(tmp_path)])
    data = json.loads((tmp_path / "kernels.json").read_text())
    assert data["rows"] == json.loads(json.dumps(rows))
    by = {(r["step"], r["method"]): r for r in rows}
    for step in ("quad3", "decode"):
        ours = by[step, "ours"]
        assert ours["status"] == "ok" and ours["ms"] > 0 and ours["tflops"] > 0
        dense = by[step, "sdpa_dense"]
        assert dense["status"] == "ok" and dense["max_diff"] < 1e-4  # same math, fp32
        flash = by[step, "flash_ref"]
        if torch.cuda.is_available():  # --quick runs fp32, which the flash backend does not take
            assert flash["status"].startswith("skipped: the flash SDPA backend"), flash
        else:
            assert flash["status"] == "ok" and "max_diff" not in flash
        for method in ("flashinfer", "sglang"):
            status = by[step, method]["status"]
            assert status == "ok" or status.startswith("skipped: "), status


def test_matches_sglang_extend_attention_fwd():
    """SGLang's own extend kernel, given the equivalent dense custom mask, agrees with ours."""
    require("sglang", reason="sglang is not installed in this environment")
    descs = [masks.quadratic(2, 3), masks.diffusion_draft(8, 5), masks.prefill(6)]
    case = extend_case(21, descs, [17, 0, 40], heads=(4, 2), page_size=1)
    assert_close(sglang_extend(*case.args())(), extend_attention(*case.args()))
