#!/usr/bin/env bash
# Set up .venv (project + sglang 0.5.23 for CPU) and run lint and the whole test suite (CPU only).
#   bash scripts/test.sh            everything (what .ci/run runs)
#   bash scripts/test.sh --fast     the fast subset: no real servers, no Triton-interpreter
#                                   kernels, nothing marked slow (pytest -m "not (...)")
# Other arguments go to pytest. Runs with CI=true unless CI is set: this script installs every
# optional test dependency, so a missing or broken one fails (tests/_deps.py) instead of skipping.
set -euo pipefail
cd "$(dirname "$0")/.."
FAST=()
if [ "${1:-}" = "--fast" ]; then
  shift
  FAST=(-m "not (server or interpreter or slow)")
fi
export CI="${CI:-true}"
bash scripts/setup.sh
bash scripts/setup_sglang.sh  # sglang 0.5.23 for the real-server tests on the CPU
.venv/bin/python -m ruff check .
.venv/bin/python -m ruff format --check .
.venv/bin/python -m pytest -q "${FAST[@]}" "$@"
