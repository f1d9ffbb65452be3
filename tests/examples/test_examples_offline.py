"""`examples/offline_engine.py` (in-process `sglang.Engine`, one mode per request) on a CPU.

Every mode's completion must equal the reference engine's greedy output. Its own module, so no
server of another module competes with the engine for the CPU. Skipped without sglang.
"""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

pytest.importorskip(
    "sglang", reason="sglang is not installed (bash scripts/setup_sglang.sh installs it for CPU)"
)

sys.path.insert(0, str(Path(__file__).parent))
from runner import NEW, PROMPT, reference, run, sections  # noqa: E402


def test_offline_engine_every_mode():
    out = run("offline_engine.py", "--prompt", PROMPT, "--max-new-tokens", str(NEW), timeout=600)
    assert sections(out) == {m: e["text"] for m, e in reference().items()}, out[-3000:]
