"""bench/gpu/report.py (the GPU serve run's comparisons, projections and table) and
bench/gpu_serve.sh's clear failures when the bundle or the GPU is missing."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from _deps import require

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "bench" / "gpu"))

import report  # noqa: E402


def test_first_divergence_names_request_and_position():
    assert report.first_divergence([[1, 2], [3]], [[1, 2], [3]]) == {"equal": True}
    got = report.first_divergence([[1, 2], [3, 4, 5]], [[1, 2], [3, 9, 5]])
    assert got == {"equal": False, "request": 1, "position": 1}
    # a shorter output diverges where it stops
    assert report.first_divergence([[1, 2, 3]], [[1, 2]])["position"] == 2
    assert "request 1, first at output position 1" in report.verdict(got)


def _row(mode, c, loop_ms, tok_s, server="trimode"):
    return {"size": "8B", "server": server, "mode": mode, "impl": "auto", "c": c,
            "new_tokens": 256, "tok_s": tok_s, "loop_ms": loop_ms, "fwd_ms": loop_ms * 0.9,
            "forwards": 2, "host_ms": loop_ms * 0.1, "peak_gib": 20.0}  # fmt: skip


def test_projection_is_c_times_al_over_step_for_self_speculation_only():
    lin = _row("self_spec_linear", 4, 20.0, 150.0)
    assert report.projected_tok_s(lin, 6.8) == 4 * 6.8 * 1e3 / 20.0
    assert report.projected_tok_s(_row("ar", 4, 10.0, 380.0), 6.8) is None
    assert report.projected_tok_s(_row("diffusion", 4, 10.0, 380.0), 3) is None
    assert report.projected_tok_s(dict(lin, loop_ms=None), 3) is None


def test_markdown_has_ratios_against_plain_ar_of_the_same_size_and_c(tmp_path):
    rows = [
        _row("plain_ar", 1, 10.0, 100.0, server="plain_ar"),
        _row("self_spec_linear", 1, 25.0, 40.0),
    ]
    result = {"cpu_smoke": False, "date": "2026-12-04", "speed": rows, "skipped": ["3B: budget"]}
    result["correctness"] = [{"mode": "ar", "equal": True}, {"attention_path": "compiled Triton"}]
    md = report.markdown(result, (3.0, 6.8))
    line = next(ln for ln in md.splitlines() if "self_spec_linear" in ln)
    cells = [c.strip() for c in line.strip("|").split("|")]
    assert cells[7] == "0.40"  # measured vs AR
    assert cells[-4:] == ["120.0", "272.0", "1.20", "2.72"]  # projected at AL 3 / 6.8 and ratios
    assert "- skipped 3B: budget" in md and "attention path: compiled Triton" in md
    report.write(result, tmp_path, (3.0, 6.8))
    assert (tmp_path / "gpu_serve.md").read_text() == md
    assert '"6.8": 272.0' in (tmp_path / "gpu_serve.json").read_text()


def test_gpu_serve_without_bundle_or_gpu_says_so_in_one_line(tmp_path):
    env = {"PATH": "/usr/bin:/bin", "OUT": str(tmp_path)}
    proc = subprocess.run(["bash", str(ROOT / "bench" / "gpu_serve.sh")], capture_output=True,
                          text=True, env=env, cwd=tmp_path)  # fmt: skip
    assert proc.returncode == 2
    # this checkout may or may not hold a built bundle: either message is one clear line
    msg = proc.stderr.strip()
    assert msg.count("\n") == 0 and msg.startswith("[gpu_serve] error: "), msg
    assert "gpu_bundle.sh" in msg or "not the GPU machine" in msg
    bad = subprocess.run(["bash", str(ROOT / "bench" / "gpu_serve.sh"), "--gpu"],
                         capture_output=True, text=True)  # fmt: skip
    assert bad.returncode == 2 and "usage: bash bench/gpu_serve.sh [--cpu-smoke]" in bad.stderr


@pytest.mark.slow
def test_cpu_smoke_runs_the_whole_script_to_its_table(tmp_path):
    """bench/gpu_serve.sh --cpu-smoke: correctness (server == reference engine), the plain AR vs
    TRIMODE speed table, the torch-impl point and correctness again with padded forwards, on CPU
    servers (two modes to keep it short)."""
    require("sglang", reason="the smoke starts SGLang servers (scripts/setup_sglang.sh)")
    cmd = ["bash", str(ROOT / "bench" / "gpu_serve.sh"), "--cpu-smoke"]
    cmd += ["--phases", "correctness,8B,torch_impl,padded", "--modes", "ar,self_spec_linear"]
    proc = subprocess.run(
        cmd, capture_output=True, text=True, env=dict(os.environ, OUT=str(tmp_path))
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    result = json.loads((tmp_path / "gpu_serve.json").read_text())
    modes = [(r["mode"], r["padded"]) for r in result["correctness"] if "mode" in r]
    assert modes == [(m, p) for p in (False, True) for m in ("ar", "self_spec_linear")]
    assert all(r["equal"] for r in result["correctness"] if "mode" in r)
    assert "TRIMODE: attention impl sdpa" in result["correctness"][-1]["attention_path"]
    (counts,) = [r for r in result["correctness"] if "trimode_forwards" in r]
    assert counts["trimode_forwards"]["padded"] > 0 and counts["buckets"], counts
    kinds = {(r["server"], r["mode"], r["impl"], r["c"]) for r in result["speed"]}
    assert ("plain_ar", "plain_ar", "auto", 2) in kinds
    assert ("trimode", "self_spec_linear", "--trimode-attention-impl torch", 1) in kinds
    lin = next(r for r in result["speed"] if r["mode"] == "self_spec_linear")
    assert lin["forwards"] == 2 and lin["projected_tok_s"]["6.8"] > 0
    assert result["skipped"] == []
    assert "| plain_ar | plain_ar |" in (tmp_path / "gpu_serve.md").read_text()
