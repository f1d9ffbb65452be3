"""`examples/offline_engine.py` (in-process `sglang.Engine`, one mode per request) on a CPU.

Every mode's completion must equal the reference engine's greedy output. Its own module, so no
server of another module competes with the engine for the CPU. Skipped without sglang.
"""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
from _deps import require

require(
    "sglang", reason="sglang is not installed (bash scripts/setup_sglang.sh installs it for CPU)"
)

pytestmark = pytest.mark.server  # a real SGLang server (or engine) on the CPU: minutes

sys.path.insert(0, str(Path(__file__).parent))
from runner import NEW, PROMPT, reference, run, sections  # noqa: E402


def test_offline_engine_every_mode():
    out = run("offline_engine.py", "--prompt", PROMPT, "--max-new-tokens", str(NEW), timeout=600)
    assert sections(out) == {m: e["text"] for m, e in reference().items()}, out[-3000:]


def test_offline_engine_takes_trimode_settings():
    """`--trimode-mode diffusion --trimode-block-size 4 --trimode-threshold 0.5` reach the
    engine through `sglang_trimode.srt.offline.server_args` (sglang.Engine's own keywords cannot
    carry them): a request without a mode runs the engine's diffusion at block 4 / threshold 0.5,
    one asking for self_spec_quadratic runs it at block 4, both equal to the reference engine
    with those settings (and different from what the checkpoint's defaults give, so ignored
    settings would fail here)."""
    import torch
    from transformers import AutoTokenizer

    from sglang_trimode import TriModeEngine, default_model_path

    path = default_model_path()
    tok = AutoTokenizer.from_pretrained(str(path))
    engine = TriModeEngine.from_pretrained(path, device="cpu", dtype=torch.float32)
    ids = tok.encode(PROMPT, add_special_tokens=False)

    def text(mode, **kw):
        (o,) = engine.generate([ids], mode=mode, max_new_tokens=NEW, temperature=0.0, **kw)
        return tok.decode(o.token_ids, skip_special_tokens=True)

    want = {
        "default": text("diffusion", block_size=4, threshold=0.5),
        "self_spec_quadratic": text("self_spec_quadratic", block_size=4),
    }
    defaults = reference()  # the checkpoint's block size, threshold 0.9
    assert want["default"] != defaults["diffusion"]["text"]
    assert want["default"] != defaults["self_spec_linear"]["text"]  # the server default mode
    out = run("offline_engine.py", "--prompt", PROMPT, "--max-new-tokens", str(NEW),
              "--modes", "default,self_spec_quadratic", "--trimode-mode", "diffusion",
              "--trimode-block-size", "4", "--trimode-threshold", "0.5", timeout=600)  # fmt: skip
    assert sections(out) == want, out[-3000:]
