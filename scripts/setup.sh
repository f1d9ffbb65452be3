#!/usr/bin/env bash
# Create .venv (Python 3.11) with the pinned CPU install of the project and its test tools.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
  echo "[setup] creating .venv with $($PY --version)"
  "$PY" -m venv .venv
fi
echo "[setup] installing pinned requirements (requirements/test.txt); torch 2.14.1 comes from the local wheel cache"
.venv/bin/python -m pip install -q --disable-pip-version-check -r requirements/test.txt 2>&1 \
  | grep -v "is ignored: it is neither a file nor a directory" || true
.venv/bin/python -m pip install -q --disable-pip-version-check --no-deps --no-build-isolation -e . 2>&1 \
  | grep -v "is ignored: it is neither a file nor a directory" || true
.venv/bin/python -c "import sglang_trimode, torch, transformers; print('[setup] ok: torch', torch.__version__, 'transformers', transformers.__version__)"
