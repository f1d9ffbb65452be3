"""bench/gpu_train_sweep.sh, bench/train_sweep.py: the grid parses, the best rule, a CPU smoke."""

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from sglang_trimode.training.train import build_parser

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
from bench import train_sweep  # noqa: E402


@pytest.mark.parametrize("smoke", [False, True])
def test_every_grid_config_is_a_valid_train_command(tmp_path, smoke):
    args = train_sweep.parse_args(["--cpu-smoke"] if smoke else [])
    runs = train_sweep.build_runs(args)
    assert [r["name"] for r in runs] == [g[0] for g in train_sweep.GRID]
    for r in runs:
        ns = build_parser().parse_args(["--out", str(tmp_path), *r["argv"]])
        assert ns.steps == r["steps"]
    by_name = {r["name"]: build_parser().parse_args(["--out", "x", *r["argv"]]) for r in runs}
    assert by_name["distill1"].distill == 1.0 and by_name["early1.15"].early_weight == 1.15
    assert by_name["distill3"].distill == 3.0 and by_name["baseline"].distill == 0.0
    assert by_name["drop0.1_x1.6"].steps > by_name["baseline"].steps
    assert by_name["large_drop0.1"].layers > by_name["baseline"].layers
    if not smoke:
        assert by_name["baseline"].budget_minutes == 5.0 and by_name["baseline"].tf32
        assert by_name["baseline"].hidden == 256 and by_name["baseline"].batch == 32


def _run(name, quad8, quad16, ar_loss, equal=True):
    return {
        "name": name,
        "train": {"final_heldout": {"ar_loss": ar_loss}},
        "eval": {
            "tpf": {"quad8": quad8, "quad16": quad16},
            "spec_equals_ar": {"lin8": True, "quad8": equal, "quad16": True},
        },
    }


def test_best_is_the_highest_quadratic_tpf_among_exact_runs():
    runs = [
        _run("a", 2.1, 2.0, 2.5),
        _run("b", 2.6, 2.6, 2.4, equal=False),  # faster but not AR-exact: never the best
        _run("c", 2.3, 2.0, 2.7),
        _run("d", 2.3, 2.1, 2.9),
        {"name": "failed", "error": "training exit 1"},
    ]
    assert train_sweep.pick_best(runs)["name"] == "d"  # quad8 tie broken by quad16
    runs[3]["eval"]["tpf"]["quad16"] = 2.0
    assert train_sweep.pick_best(runs)["name"] == "c"  # then by the lower held-out AR loss
    assert train_sweep.pick_best([runs[1]]) is None


@pytest.mark.skipif(shutil.which("bash") is None, reason="bench/gpu_train_sweep.sh needs bash")
@pytest.mark.slow
def test_cpu_smoke_writes_table_json_and_an_exportable_best(tmp_path):
    """The shell script's whole path on a CPU, two configs (one of each model size)."""
    out, work = tmp_path / "out", tmp_path / "work"
    env = {**os.environ, "OUT": str(out), "PYTHON": sys.executable}
    cmd = ["bash", "bench/gpu_train_sweep.sh", "--cpu-smoke", "--work", str(work)]
    cmd += ["--only", "baseline,large_drop0.1"]
    proc = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert "<- best" in proc.stdout and "quad8" in proc.stdout

    res = json.loads((out / "train_sweep.json").read_text())
    assert res["cpu_smoke"] and res["best"] in ("baseline", "large_drop0.1")
    assert [r["name"] for r in res["runs"]] == ["baseline", "large_drop0.1"]
    for r in res["runs"]:
        assert r["train"]["steps_done"] == r["steps"] and r["train"]["curve"]
        assert {"ar_loss", "ar_accuracy", "diffusion_loss"} <= set(r["train"]["final_heldout"])
        e = r["eval"]
        assert set(e["tpf"]) == {"ar1", "diff8", "diff16", "lin8", "quad8", "quad16"}
        assert e["tpf"]["ar1"] == 1.0 and set(e["spec_equals_ar"]) == {"lin8", "quad8", "quad16"}
        assert len(e["rows"]) == 6 and e["threshold"] == 0.9
    table = (out / "train_sweep.txt").read_text()
    for col in ("config", "ar_loss", "quad8", "quad16", "diff8", "diff16", "lin8", "spec=ar"):
        assert col in table
    files = [p for p in out.rglob("*") if p.is_file()]
    assert len(files) <= 8 and all(p.stat().st_size < 16 * 2**20 for p in files)

    best = out / "best"
    assert sorted(p.name for p in best.iterdir()) == sorted(
        [*train_sweep.OUT_FILES, "training_log.json"]
    )
    from sglang_trimode import TriModeEngine
    from sglang_trimode.training.export import main as export_main

    export_main([str(best), "--dst", str(tmp_path / "exported")])
    engine = TriModeEngine.from_pretrained(tmp_path / "exported")
    assert engine.config.attention_dropout == 0.0
