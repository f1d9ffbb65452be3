#!/usr/bin/env bash
# Set up .venv (project + sglang 0.5.23 for CPU) and run lint and the whole test suite (CPU only).
# Extra arguments go to pytest.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
bash scripts/setup_sglang.sh  # sglang 0.5.23 for the real-server tests on the CPU
.venv/bin/python -m ruff check .
.venv/bin/python -m ruff format --check .
.venv/bin/python -m pytest -q "$@"
