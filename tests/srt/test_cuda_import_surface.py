"""On a GPU without `sglang-kernel`, SGLang's CUDA paths import `sgl_kernel` names at module level
(norms, activations, sampling, and quantization/MoE/KV-transfer kernels a dense model never
calls). A missing one stops the server before it serves. `_cuda_imports.py` imports the server's
modules with CUDA claimed on this CPU, against the plugin's stand-in: every module must import.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from _deps import require

require("sglang", reason="the import surface is SGLang's (scripts/setup_sglang.sh)")

from sglang_trimode.srt.cpu_platform import PYTHONPATH_ENTRY  # noqa: E402

MODULES = (
    "sglang.launch_server",
    "sglang.srt.entrypoints.http_server",
    "sglang.srt.managers.scheduler",
    "sglang.srt.managers.tp_worker",
    "sglang.srt.model_executor.model_runner",
    "sglang.srt.mem_cache.memory_pool",
    "sglang.srt.layers.quantization",
    "sglang.srt.layers.attention.triton_backend",
    "sglang.srt.layers.sampler",
    "sglang.srt.speculative.spec_utils",
    "sglang.srt.models.ministral3",
    "sglang_trimode.srt.plugin",
    "sglang_trimode.srt.worker",
    "sglang_trimode.srt.model",
    # imported while the Llama MLP is built (srt/layers/dual_gemm.py), not at module level; it
    # needs cutlass, which the GPU bundle lacks: the stand-in's absent.py answers for it
    "sglang.kernels.ops.gemm.cutedsl_dual_gemm",
)


def _run(extra_path: str | None = None) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k != "SGLANG_USE_CPU_ENGINE"}
    env["PYTHONPATH"] = os.pathsep.join(p for p in (extra_path, PYTHONPATH_ENTRY) if p)
    script = Path(__file__).with_name("_cuda_imports.py")
    out = subprocess.run([sys.executable, str(script), *MODULES], capture_output=True, text=True,
                         env=env, timeout=600)  # fmt: skip
    lines = [ln for ln in out.stdout.splitlines() if ln.startswith(("OK ", "FAIL "))]
    return {ln.split()[1]: ln for ln in lines}


def test_every_server_module_imports_on_cuda_against_the_stand_in():
    got = _run()
    assert set(got) == set(MODULES)
    failed = [line for line in got.values() if line.startswith("FAIL")]
    assert not failed, "\n".join(failed)


def test_the_check_fails_when_a_cuda_name_is_missing(tmp_path):
    """The same import with one name the CUDA path needs taken out of the stand-in fails."""
    stand_in = Path(PYTHONPATH_ENTRY) / "sgl_kernel"
    pkg = tmp_path / "sgl_kernel"
    pkg.mkdir()
    for f in stand_in.glob("*.py"):
        text = f.read_text()
        if f.name == "__init__.py":
            assert '    "int8_scaled_mm",\n' in text
            text = text.replace('    "int8_scaled_mm",\n', "")
        (pkg / f.name).write_text(text)
    got = _run(str(tmp_path))
    assert "cannot import name 'int8_scaled_mm'" in got["sglang.srt.models.ministral3"]


def test_dual_gemm_without_cutlass_never_applies():
    """The stand-in's module for SGLang's cutlass dual GEMM (absent.py) keeps the MLP plain."""
    import importlib.util
    import sys

    if importlib.util.find_spec("cutlass") is not None:
        import pytest

        pytest.skip("cutlass is installed: SGLang's own dual GEMM module applies")
    sys.path.insert(0, PYTHONPATH_ENTRY)
    try:
        from sgl_kernel import absent
    finally:
        sys.path.remove(PYTHONPATH_ENTRY)
    saved = sys.modules.pop(absent.DUAL_GEMM, None)
    try:
        assert absent.install()
        mod = sys.modules[absent.DUAL_GEMM]
        assert not mod.can_use_dual_gemm(16, 4096, 14336, mod.DualGemmQuantMode.UNQUANT)
        assert not absent.install()  # registered once
    finally:
        sys.modules.pop(absent.DUAL_GEMM, None)
        if saved is not None:
            sys.modules[absent.DUAL_GEMM] = saved
