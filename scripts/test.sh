#!/usr/bin/env bash
# Set up .venv (project + sglang 0.5.23 for CPU) and run lint and the whole test suite (CPU only).
# Extra arguments go to pytest.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
bash scripts/setup_sglang.sh  # sglang 0.5.23 for the real-server tests on the CPU
.venv/bin/python -m ruff check .
.venv/bin/python -m ruff format --check .
# The Triton kernel tests run in their own process. Collected with the whole tree (`pytest tests`)
# they fail under the interpreter with "Cannot call @triton.jit'd outside of the scope of a kernel"
# (cause not found yet: they pass alone and with every other folder named explicitly).
rc=0
.venv/bin/python -m pytest -q tests/kernels "$@" || rc=$?
.venv/bin/python -m pytest -q --ignore=tests/kernels "$@" || rc=$?
exit $rc
