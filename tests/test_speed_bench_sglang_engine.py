"""SPEED-Bench `--backend sglang-engine --trimode-server` on a CPU: SGLang's offline `sglang.Engine`
with `speculative_algorithm="TRIMODE"` and `--block-size 4` (not the checkpoint's 8; it reaches the
engine through `sglang_trimode.srt.offline.server_args`), every request mode, concurrency 4 (one
batched `generate` per mode; the concurrency sweep over a server is
`tests/test_speed_bench_server.py`), greedy, `--ignore-eos`.

`python -m bench.speed_bench` runs as a subprocess (SGLang spawns its scheduler; the CLI's exit
status is 1 when greedy self-speculation differs from AR). Outputs (token ids) and per-step
acceptance lengths must equal the reference engine's (`--backend engine`, same flags).
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from _deps import require

require(
    "sglang", reason="sglang is not installed (bash scripts/setup_sglang.sh installs it for CPU)"
)

pytestmark = pytest.mark.server  # a real SGLang server (or engine) on the CPU: minutes

from bench.speed_bench.cli import main  # noqa: E402
from sglang_trimode.srt.flags import REQUEST_MODES  # noqa: E402

MODES = list(REQUEST_MODES)
COMMON = ["--dataset", "sample", "--num-requests", "4", "--max-new-tokens", "12", "--ignore-eos",
          "--mode", ",".join(MODES), "--concurrency", "4", "--no-progress",
          "--block-size", "4"]  # fmt: skip
ROOT = Path(__file__).resolve().parents[1]


def _responses(out: Path, mode: str, conc: int) -> list[dict]:
    path = out / mode / f"c{conc}" / "specbench_responses.jsonl"
    return [json.loads(x) for x in path.read_text().splitlines()]


@pytest.mark.slow
def test_sglang_engine_every_mode_equals_reference_engine(tmp_path):
    cmd = [sys.executable, "-m", "bench.speed_bench", *COMMON, "--backend", "sglang-engine",
           "--trimode-server", "--out", str(tmp_path / "sgl")]  # fmt: skip
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    got = json.loads((tmp_path / "sgl" / "results.json").read_text())
    assert got["greedy_mismatches"] == {} and len(got["runs"]) == len(MODES)
    want = main([*COMMON, "--backend", "engine", "--no-ttft", "--out", str(tmp_path / "ref")])
    for mode in MODES:
        ref = _responses(tmp_path / "ref", mode, 4)
        assert all(len(r["output_ids"][0]) == 12 for r in ref)
        out = _responses(tmp_path / "sgl", mode, 4)
        for key in ("question_id", "output_ids", "acceptance_lengths", "choices"):
            assert [r[key] for r in out] == [r[key] for r in ref], (mode, key)
        if mode != "ar":  # the block size is 4, not the checkpoint's 8
            steps = [a for r in out for turn in r["acceptance_lengths"] for a in turn]
            assert steps and max(steps) <= 4, (mode, steps)
    tpf = {r["mode"]: (r["forwards"], r["tpf"], r["al"]) for r in got["runs"]}
    assert tpf == {r["mode"]: (r["forwards"], r["tpf"], r["al"]) for r in want["runs"]}
