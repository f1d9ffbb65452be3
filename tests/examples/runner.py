"""Run the example scripts as subprocesses; the reference outputs they must match."""

from __future__ import annotations

import json
import os
import re
import sys
import textwrap
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
EXAMPLES = ROOT / "examples"
PROMPT = "class Path:\n    def __init__(self, "
NEW = 24
MODES = ("ar", "diffusion", "self_spec_linear", "self_spec_quadratic")


def env() -> dict[str, str]:
    """The caller's environment with the venv's python first on PATH (serve.sh calls `python`)."""
    out = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    out["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{out['PATH']}"
    return out


def run(script: str, *args: str, timeout: float = 300) -> str:
    """Run examples/<script> with args; its stdout (fails with its stderr on a non-zero exit)."""
    import subprocess

    res = subprocess.run(
        [sys.executable, str(EXAMPLES / script), *args], cwd=ROOT, env=env(),
        capture_output=True, text=True, timeout=timeout,
    )  # fmt: skip
    assert res.returncode == 0, f"{script} {args} -> {res.returncode}\n{res.stderr[-3000:]}"
    return res.stdout


def completion(stdout: str) -> str:
    """A client's completion: its stdout less the one newline `print` adds."""
    assert stdout.endswith("\n")
    return stdout[:-1]


def sections(stdout: str) -> dict[str, str]:
    """`=== mode` headers, each followed by that mode's completion (text before the first is
    ignored: SGLang may log there)."""
    out: dict[str, str] = {}
    mode = None
    for line in stdout.splitlines(keepends=True):
        if line.startswith("=== "):
            mode = line[4:].strip()
            out[mode] = ""
        elif mode is not None:
            out[mode] += line
    return {m: t[:-1] if t.endswith("\n") else t for m, t in out.items()}


def reference(prompt: str = PROMPT, new: int = NEW) -> dict[str, dict]:
    """Greedy output per mode from the reference engine (the oracle): text and stats."""
    import torch
    from transformers import AutoTokenizer

    from sglang_trimode import TriModeEngine, default_model_path

    path = default_model_path()
    tok = AutoTokenizer.from_pretrained(str(path))
    engine = TriModeEngine.from_pretrained(path, device="cpu", dtype=torch.float32)
    block = json.loads((Path(path) / "config.json").read_text())["block_size"]
    outs = engine.generate(
        [tok.encode(prompt, add_special_tokens=False)] * len(MODES), mode=list(MODES),
        max_new_tokens=new, block_size=block, threshold=0.9, temperature=0.0,
    )  # fmt: skip
    return {
        m: {
            "text": tok.decode(o.token_ids, skip_special_tokens=True),
            "tokens": len(o.token_ids),
            "accept_lengths": list(o.stats.accept_lengths),
        }
        for m, o in zip(MODES, outs)
    }


#: What README.md's "Request" section sends (checked to be there, so an edit fails loudly).
README_URL = "http://127.0.0.1:30000"
README_PROMPT = "def fibonacci(n):"
README_NEW = 32


def readme_requests() -> tuple[str, str]:
    """README.md's curl command (an indented block) and its OpenAI-client ```python block."""
    text = (ROOT / "README.md").read_text()
    curl = re.search(r"^( {4}curl .*?)\n\n", text, flags=re.S | re.M)
    code = re.search(r"^```python\n(.*?)^```", text, flags=re.S | re.M)
    assert curl and code, "README.md lost its curl or OpenAI request example"
    return textwrap.dedent(curl.group(1)), code.group(1)
