#!/usr/bin/env bash
# One prepared command for a GPU machine that has torch + triton (+ pytest) but not sglang:
#   1. the kernel tests (tests/kernels, incl. test_packed.py: the TRIMODE backend's packed call)
#      compiled on the GPU, fp32/fp16/bf16;
#   2. bench/kernels.py: ours vs SDPA dense mask, FlashInfer, SGLang (each where it runs) and the
#      unmasked flash reference, contexts 1k-32k, batch 1-64, block 32 / quad 8, 16 / decode;
#   3. a small FlexAttention pass (one compile per shape, so a few shapes only);
#   4. tests/test_sampled_rows.py with the logits on the GPU (the worker's sampled-request path).
# Logs and JSON go to $OUT (default out/gpu_check): env.txt, tests.txt, tests.xml, sampling.txt,
# bench.txt, bench/kernels.json, flex.txt, flex/kernels.json. Exit status: non-zero if a step
# failed.
#
#   bash bench/gpu_check.sh                                    # on the GPU machine, ~6-8 min
#   TRITON_INTERPRET=1 bash bench/gpu_check.sh --cpu-smoke     # check this script on a CPU, ~1 min
#
# Env: PYTHON (default .venv/bin/python if present, else python3), BENCH_SECONDS (default 300),
# FLEX_SECONDS (default 120). The package need not be installed: when `sglang_trimode.kernels`
# does not import, a temporary shim maps sglang_trimode/ and kernels/ onto PYTHONPATH.
set -uo pipefail
cd "$(dirname "$0")/.."

mode=gpu
case "${1:-}" in
    --cpu-smoke) mode=cpu ;;
    "") ;;
    *) echo "usage: bash bench/gpu_check.sh [--cpu-smoke]" >&2; exit 2 ;;
esac
PY=${PYTHON:-}
if [[ -z $PY ]]; then
    if [[ -x .venv/bin/python ]]; then PY=.venv/bin/python; else PY=python3; fi
fi
OUT_DIR=${OUT:-out/gpu_check}
mkdir -p "$OUT_DIR"

if ! "$PY" -c "import sglang_trimode.kernels" 2>/dev/null; then
    shim=$(mktemp -d)
    trap 'rm -rf "$shim"' EXIT
    mkdir "$shim/sglang_trimode"
    for f in "$PWD"/sglang_trimode/*; do ln -s "$f" "$shim/sglang_trimode/"; done
    ln -s "$PWD/kernels" "$shim/sglang_trimode/kernels"
    export PYTHONPATH="$shim${PYTHONPATH:+:$PYTHONPATH}"
    export PYTHONSAFEPATH=1  # the repo's own sglang_trimode/ (no kernels/) must not shadow the shim
fi

if [[ $mode == cpu ]]; then
    export TRITON_INTERPRET=1
else
    unset TRITON_INTERPRET
fi
{
    date -u
    echo "mode: $mode  python: $PY"
    "$PY" - <<'EOF'
import sys, torch, triton, sglang_trimode.kernels as k
print("python", sys.version.split()[0], "| torch", torch.__version__, "| triton", triton.__version__)
print("device:", torch.cuda.get_device_name() if torch.cuda.is_available() else "cpu")
print("sglang_trimode.kernels from", k.__file__)
EOF
    if [[ $mode == gpu ]]; then nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv; fi
} 2>&1 | tee "$OUT_DIR/env.txt"
if [[ $mode == gpu ]] && ! "$PY" -c "import torch; assert torch.cuda.is_available()" 2>/dev/null; then
    echo "no GPU visible to $PY: run with --cpu-smoke on a CPU" | tee -a "$OUT_DIR/env.txt"
    exit 1
fi

status=0
step() {  # step NAME LOG CMD...: run, tee the log, remember a failure
    local name=$1 log=$2
    shift 2
    echo "== $name: $*"
    local t0=$SECONDS
    "$@" 2>&1 | tee "$log"
    local rc=${PIPESTATUS[0]}
    echo "== $name: exit $rc after $((SECONDS - t0)) s" | tee -a "$log"
    [[ $rc -eq 0 ]] || status=1
}

step tests "$OUT_DIR/tests.txt" "$PY" -m pytest tests/kernels -q -p no:cacheprovider \
    --junitxml="$OUT_DIR/tests.xml"
# the worker's row summaries with logits on the device (SampledRows / GreedyRows; needs
# transformers for the tiny model): the cuda cases on a GPU, the cpu cases in the smoke run
step sampling "$OUT_DIR/sampling.txt" "$PY" -m pytest tests/test_sampled_rows.py -q -rs \
    -p no:cacheprovider -k "$([[ $mode == gpu ]] && echo cuda || echo cpu)"
if [[ $mode == cpu ]]; then
    step bench "$OUT_DIR/bench.txt" "$PY" bench/kernels.py --quick --out "$OUT_DIR/bench"
    step flex "$OUT_DIR/flex.txt" "$PY" bench/kernels.py --quick --methods ours,flex \
        --steps quad3 --out "$OUT_DIR/flex"
else
    step bench "$OUT_DIR/bench.txt" "$PY" bench/kernels.py --out "$OUT_DIR/bench" \
        --methods ours,sdpa_dense,flashinfer,sglang,flash_ref --max-seconds "${BENCH_SECONDS:-300}"
    step flex "$OUT_DIR/flex.txt" "$PY" bench/kernels.py --out "$OUT_DIR/flex" \
        --methods ours,flex --contexts 4096,32768 --batches 8 --steps block32,quad16 \
        --max-seconds "${FLEX_SECONDS:-120}"
fi
echo "gpu_check ($mode): $([[ $status -eq 0 ]] && echo all steps passed || echo a step FAILED)" \
    "- logs in $OUT_DIR"
exit $status
