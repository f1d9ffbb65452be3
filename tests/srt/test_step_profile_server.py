"""`bench/step_profile.py` end to end on the CPU: a real TRIMODE server with the step-profile hooks,
one linear self-speculation request. Every decode step of a linear cycle is two timed forwards
(draft, verify), the forwards take part of the step, and the table and JSON are written. Skipped
when sglang is not installed (`bash scripts/setup_sglang.sh` installs it)."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
from _deps import require

require(
    "sglang", reason="sglang is not installed (bash scripts/setup_sglang.sh installs it for CPU)"
)

pytestmark = pytest.mark.server  # a real SGLang server (or engine) on the CPU: minutes

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
from bench.step_profile import main  # noqa: E402


def test_step_profile_of_a_trimode_server(tmp_path, capsys):
    out = tmp_path / "sp"
    args = ["--servers", "trimode", "--concurrency", "1", "--modes", "ar,self_spec_linear"]
    main([*args, "--rounds", "1", "--max-new-tokens", "12", "--out", str(out)])
    result = json.loads((out / "step_profile.json").read_text())
    rows = {r["mode"]: r for r in result["summary"]}
    assert set(rows) == {"ar", "self_spec_linear"}
    assert rows["ar"]["forwards"] == 1 and rows["self_spec_linear"]["forwards"] == 2
    for r in rows.values():
        assert r["tok_s"] > 0 and 0 < r["fwd_ms"] < r["loop_ms"]
        assert r["vs_ar"] is None  # no plain AR server in this run
    lines = (out / "steps_trimode_r0.jsonl").read_text().splitlines()
    assert any(json.loads(x)["mode"] == "EXTEND" for x in lines)  # prefills are steps too
    assert "self_spec_linear" in capsys.readouterr().out
