#!/usr/bin/env bash
# Set up .venv and run the main job: every decoding mode side by side on the default model.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
.venv/bin/python -m sglang_trimode.demo "$@"
