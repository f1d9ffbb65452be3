#!/usr/bin/env bash
# ONE command for the GPU machine: install the carried bundle (.gpu/, from bench/gpu_bundle.sh),
# print versions, then bench/gpu/serve.py under a time budget: (a) every mode through a TRIMODE
# server on the GPU equals the reference engine (default model, fp32); (b) plain SGLang AR vs
# TRIMODE per mode at NLD-8B (then 3B) shapes, dummy weights, bf16, c = 1/4/16/64, with
# projections at acceptance length 3 and 6.8; (c) one point with the torch attention reference.
# Logs, gpu_serve.json and gpu_serve.md go to $OUT (default out/gpu_serve).
#
#   bash bench/gpu_bundle.sh                 # here, once: builds .gpu/ (carry it: [".gpu"])
#   bash bench/gpu_serve.sh                  # on the GPU machine, at most 8 minutes
#   bash bench/gpu_serve.sh --cpu-smoke      # the whole script on this machine (.venv), ~15 min
#       [--phases correctness,8B,3B,torch_impl] [--modes ar,...]   (bench/gpu/serve.py's options)
#
# Env: BUDGET_S (default 400: no phase starts past it), SITE (default /tmp/site).
set -uo pipefail
cd "$(dirname "$0")/.."
OUT_DIR=${OUT:-out/gpu_serve}
mkdir -p "$OUT_DIR"
fail() { echo "[gpu_serve] error: $*" >&2; exit 2; }

case "${1:-}" in  # on the GPU, PHASES=8B,3B (env) picks phases
    --cpu-smoke)
        PY=.venv/bin/python
        [[ -x $PY ]] || fail "no .venv: run bash scripts/setup.sh && bash scripts/setup_sglang.sh"
        shift
        exec "$PY" bench/gpu/serve.py --cpu-smoke --out "$OUT_DIR" --budget-s "${BUDGET_S:-1800}" "$@"
        ;;
    "") ;;
    *) fail "usage: bash bench/gpu_serve.sh [--cpu-smoke]" ;;
esac

PY=${PYTHON:-python3}
SITE=${SITE:-/tmp/site}
ls .gpu/wheels/sglang-*.whl >/dev/null 2>&1 \
    || fail "no bundle in .gpu/: run 'bash bench/gpu_bundle.sh' on the CPU machine, carry .gpu"
command -v nvidia-smi >/dev/null || fail "no nvidia-smi: this is not the GPU machine (--cpu-smoke?)"
"$PY" -c "import torch, sys; sys.exit(not torch.cuda.is_available())" 2>/dev/null \
    || fail "torch sees no GPU ($PY)"
"$PY" -m pip install -q --no-index --no-deps --no-compile --upgrade --target "$SITE" \
    .gpu/wheels/*.whl >"$OUT_DIR/install.txt" 2>&1 || fail "bundle install failed: $OUT_DIR/install.txt"
"$PY" -m pip install -q --no-index --no-deps --no-build-isolation --target "$SITE" . \
    >>"$OUT_DIR/install.txt" 2>&1 || fail "package install failed: $OUT_DIR/install.txt"
export PYTHONPATH="$SITE${PYTHONPATH:+:$PYTHONPATH}"
{
    date -u
    nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
    "$PY" - <<'PYEOF'
import sys, torch, triton, transformers, sglang, sglang_trimode
print("python", sys.version.split()[0], "| torch", torch.__version__, "| triton", triton.__version__,
      "| transformers", transformers.__version__, "| sglang", sglang.__version__)
print("sglang_trimode from", sglang_trimode.__file__)
PYEOF
} 2>&1 | tee "$OUT_DIR/env.txt"
[[ ${PIPESTATUS[0]} -eq 0 ]] || fail "imports failed: see $OUT_DIR/env.txt"
# The device tool returns at most 8 files from $OUT: the run writes to $WORK, then the table,
# JSON and console copy come back as files and every log and step profile in one tarball.
WORK=${WORK:-/tmp/gpu_serve_work}
mkdir -p "$WORK"
timeout "${SERVE_TIMEOUT_S:-470}" "$PY" bench/gpu/serve.py --out "$WORK" \
    --budget-s "${BUDGET_S:-400}" --phases "${PHASES:-correctness,8B,3B,torch_impl}" 2>&1 \
    | tee "$OUT_DIR/serve.txt"
rc=${PIPESTATUS[0]}
cp "$WORK"/gpu_serve.json "$WORK"/gpu_serve.md "$OUT_DIR"/ 2>/dev/null
tar -czf "$OUT_DIR/logs.tgz" -C "$WORK" . 2>/dev/null
echo "[gpu_serve] exit $rc; $OUT_DIR: $(ls "$OUT_DIR" | tr '\n' ' ')"
exit "$rc"
