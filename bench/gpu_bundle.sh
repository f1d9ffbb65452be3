#!/usr/bin/env bash
# Build the bundle the GPU machine lacks to run the TRIMODE server (sglang 0.5.23 trimmed + the
# server stack's wheels for CPython 3.12) into the git-ignored folder .gpu/, print its size, and
# fail, naming the largest parts, when bundle + working tree exceed 60 MiB (the device tool
# carries 64 MiB). Send it along with `carry: [".gpu"]`; bench/gpu_serve.sh installs it there.
#
#   bash bench/gpu_bundle.sh                               # .gpu/ for the GPU machine (~30 s)
#   bash bench/gpu_bundle.sh --python 3.11 --out DIR       # the same for this machine + stand-ins
#                                                          # of the GPU image's packages (smoke)
#   python bench/gpu/bundle_smoke.py --bundle DIR          # serve every mode from it, torch 2.11
#
# Options: --python {3.12,3.11} --out DIR --budget-mib N --image-packages FILE (see
# bench/gpu/bundle.py). Needs the package index (PyPI) and any python3 with pip.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-}
if [[ -z $PY ]]; then
    if [[ -x .venv/bin/python ]]; then PY=.venv/bin/python; else PY=python3; fi
fi
exec "$PY" bench/gpu/bundle.py "$@"
