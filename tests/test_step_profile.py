"""The step-profile hooks (`srt/step_profile.py`, no server: fake scheduler and model runner) and
the bench's per-step statistics (`bench/step_profile.py`)."""

import json
import sys
import time
from pathlib import Path
from types import SimpleNamespace

import pytest

from sglang_trimode.srt import step_profile

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from bench.step_profile import format_table, main, step_stats, summarize  # noqa: E402


@pytest.fixture
def recorder(tmp_path, monkeypatch):
    path = tmp_path / "steps.jsonl"
    monkeypatch.setattr(step_profile, "_recorder", step_profile._Recorder(str(path)))
    return path


def _batch(bs: int, mode: str = "DECODE"):
    return SimpleNamespace(reqs=[object()] * bs, forward_mode=SimpleNamespace(name=mode))


def test_one_line_per_step_with_its_forwards(recorder):
    runner = SimpleNamespace(device="cpu")

    def forward(r, *args):
        time.sleep(0.002)
        return "logits"

    def run_batch(scheduler, batch):
        batch.forward_mode = SimpleNamespace(name="TARGET_VERIFY")  # a worker may change it
        outs = [step_profile._around_forward(forward, runner) for _ in range(3)]
        time.sleep(0.003)  # host work outside the forwards
        return outs

    for bs in (2, 5):
        assert step_profile._around_run_batch(run_batch, None, _batch(bs)) == ["logits"] * 3
    lines = [json.loads(x) for x in recorder.read_text().splitlines()]
    assert [r["bs"] for r in lines] == [2, 5] and all(r["mode"] == "DECODE" for r in lines)
    for r in lines:
        assert r["forwards"] == 3
        assert 0.006 <= r["fwd_s"] < r["run_s"]  # three 2 ms forwards, then 3 ms more
        assert r["run_s"] - r["fwd_s"] >= 0.003


def test_no_recorder_no_timing(monkeypatch):
    monkeypatch.setattr(step_profile, "_recorder", None)
    assert step_profile._around_forward(lambda r: 7, None) == 7
    assert step_profile._around_run_batch(lambda s, b: 8, None, _batch(1)) == 8
    monkeypatch.delenv(step_profile.ENV, raising=False)
    assert step_profile.install_from_env() is False


def _rec(t, bs, fwd, n, run, mode="DECODE"):
    return {"t": t, "bs": bs, "fwd_s": fwd, "forwards": n, "run_s": run, "mode": mode}


def test_step_stats_uses_full_batch_steps_and_the_gap_to_the_next():
    records = [
        _rec(0.0, 2, 0.1, 1, 0.15, "EXTEND"),
        _rec(0.2, 2, 0.010, 2, 0.012),  # loop 0.010 s -> host 0
        _rec(0.21, 2, 0.004, 2, 0.006),  # loop 0.008 s -> host 0.004
        _rec(0.218, 1, 0.002, 1, 0.003),  # a smaller batch: not a full step
        _rec(0.230, 1, 0.002, 1, 0.003),
    ]
    s = step_stats(records)
    assert s["bs"] == 2 and s["full_steps"] == 2 and s["steps"] == 4
    assert s["loop_ms"] == pytest.approx(9.0) and s["fwd_ms"] == pytest.approx(7.0)
    assert s["forwards"] == 2 and s["host_ms"] == pytest.approx(2.0)
    assert s["host_per_fwd_ms"] == pytest.approx(1.0)
    assert s["worker_ms"] == pytest.approx(2.0) and s["sched_ms"] == pytest.approx(0.0, abs=1e-9)
    assert step_stats(records[:1]) == {"steps": 0}


def test_summary_ratio_is_paired_by_round():
    rows = [
        {"server": "plain_ar", "mode": "plain_ar", "c": 1, "round": 0, "tok_s": 100.0},
        {"server": "plain_ar", "mode": "plain_ar", "c": 1, "round": 1, "tok_s": 50.0},
        {"server": "trimode", "mode": "ar", "c": 1, "round": 0, "tok_s": 90.0, "fwd_ms": 1.0},
        {"server": "trimode", "mode": "ar", "c": 1, "round": 1, "tok_s": 60.0, "fwd_ms": 3.0},
    ]
    s = {(x["server"], x["mode"]): x for x in summarize(rows)}
    assert s[("trimode", "ar")]["vs_ar_rounds"] == [0.9, 1.2]
    assert s[("trimode", "ar")]["vs_ar"] == pytest.approx(1.05)
    assert s[("trimode", "ar")]["fwd_ms"] == 2.0 and s[("plain_ar", "plain_ar")]["vs_ar"] == 1.0
    table = format_table(list(s.values()))
    assert "vs AR" in table and "1.05" in table


def test_bad_arguments_are_named(capsys):
    with pytest.raises(SystemExit):
        main(["--modes", "ar,fast"])
    assert "--modes: unknown ['fast']" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["--concurrency", "0"])
    assert "--concurrency must be >= 1" in capsys.readouterr().err
