#!/usr/bin/env bash
# Install sglang 0.5.23 for the CPU tests into an existing .venv (made by scripts/setup.sh).
# sglang itself goes in with --no-deps (its own pins pull several GB of CUDA-only packages: flashinfer,
# sglang-kernel, flash-attn-4); its pure-Python needs come pinned from requirements/sglang-cpu.txt.
# pip warns about sglang's unmet pins: expected, do not run 'pip check'. Idempotent: skips the
# install when sglang 0.5.23 and its needs already import. The CUDA-only sgl_kernel is NOT
# installed: the tests put the plugin's CPU stand-in (sglang_trimode/srt/cpu_platform) on PYTHONPATH.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=.venv/bin/python
if [ ! -x "$PY" ]; then
  echo "[setup_sglang] no .venv: run scripts/setup.sh first" >&2
  exit 1
fi

pip_install() {  # quiet pip install; drops the local-index noise, keeps pip's exit status
  local log rc=0
  log=$(mktemp)
  "$PY" -m pip install -q --disable-pip-version-check "$@" >"$log" 2>&1 || rc=$?
  grep -v "is ignored: it is neither a file nor a directory" "$log" >&2 || true
  rm -f "$log"
  return $rc
}

CHECK="import sglang, fastapi, uvicorn, zmq, xgrammar, torchvision, openai, uvloop"
if "$PY" -c "import importlib.metadata as m, sys; sys.exit(m.version('sglang') != '0.5.23')" \
    2>/dev/null && "$PY" -c "$CHECK" 2>/dev/null; then
  echo "[setup_sglang] sglang 0.5.23 already installed"
else
  echo "[setup_sglang] installing requirements/sglang-cpu.txt, then sglang==0.5.23 with --no-deps"
  pip_install -r requirements/sglang-cpu.txt
  pip_install --no-deps sglang==0.5.23
fi
# (re)install this package so its sglang.srt.plugins entry point is registered
pip_install --no-deps --no-build-isolation -e .
"$PY" -c "$CHECK; print('[setup_sglang] ok: sglang', sglang.__version__)"
