#!/usr/bin/env bash
# One prepared command for a GPU machine (torch + transformers + tokenizers, no sglang): train the
# default grid of bench/train_sweep.py concurrently on the one GPU (baseline, --distill 1,
# --distill 3, --early-weight 1.15, --dropout 0.1 with 1.6x steps, a 6-layer model with dropout;
# 5000 base steps, TF32, each run's steps shrunk to fit --budget-minutes, default 5), evaluate
# each (held-out TPF, greedy self-spec == AR) and copy the best to $OUT/best (bf16, ready for
# `python -m sglang_trimode.training.export $OUT/best`). About 7-8 minutes on an H200.
#
#   bash bench/gpu_train.sh --prepare                   # here, once: the Python 3.11 stdlib in .stdlib311/
#   OUT=$OUT bash bench/gpu_train_sweep.sh [DRIVER ARGS] # there (carry .stdlib311)
#   bash bench/gpu_train_sweep.sh --cpu-smoke           # here: the whole path, tiny, ~2-3 min
#
# Env: PYTHON (default .venv/bin/python if present, else python3), OUT (default out/train_sweep),
# DRAFTER_STEPS (default 0: off; N > 0 trains a drafter adapter for the best run, see the end).
# Writes $OUT/train_sweep.json, $OUT/train_sweep.txt, $OUT/best/ (7 files, each under 16 MB).
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-}
if [[ -z $PY ]]; then
    if [[ -x .venv/bin/python ]]; then PY=.venv/bin/python; else PY=python3; fi
fi
smoke=0
for a in "$@"; do [[ $a == --cpu-smoke ]] && smoke=1; done
if [[ -d .stdlib311 ]]; then
    export SGLANG_TRIMODE_STDLIB=$PWD/.stdlib311
elif [[ $smoke == 0 ]]; then
    echo "no .stdlib311/: run 'bash bench/gpu_train.sh --prepare' on the CPU machine and carry it" >&2
    exit 2
fi
export PYTHONUNBUFFERED=1 PYTHONPATH=$PWD${PYTHONPATH:+:$PYTHONPATH}
if [[ $smoke == 0 ]] && command -v nvidia-smi >/dev/null; then
    nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader || true
fi
"$PY" -c 'import sys, torch, transformers, tokenizers; print("python", sys.version.split()[0],
    "torch", torch.__version__, "transformers", transformers.__version__,
    "tokenizers", tokenizers.__version__, "cuda", torch.cuda.is_available())'
out=${OUT:-out/train_sweep}
"$PY" bench/train_sweep.py --out "$out" "$@"
# Optional (DRAFTER_STEPS=N, default off): a draft-only adapter for the best run
# (python -m sglang_trimode.training.drafter, corpus KL to the frozen AR head), then the held-out
# TPF of the best run with and without it (CPU, fp32), tables in $out/drafter_{on,off}.txt.
# training.export carries $out/best/linear_spec_lora into the default model: delete it first if the
# table shows no gain.
if [[ ${DRAFTER_STEPS:-0} -gt 0 && -d $out/best ]]; then
    dev=cpu
    [[ $smoke == 0 ]] && "$PY" -c 'import torch, sys; sys.exit(not torch.cuda.is_available())' && dev=cuda
    "$PY" -m sglang_trimode.training.drafter --model "$out/best" --rollouts 0 \
        --steps "$DRAFTER_STEPS" --minutes "${DRAFTER_MINUTES:-3}" --device "$dev" \
        ${DRAFTER_SMOKE_ARGS:-}
    for d in on off; do
        "$PY" bench/tpf.py --model "$out/best" --heldout --num-prompts "${TPF_PROMPTS:-32}" \
            --max-new-tokens "${TPF_TOKENS:-64}" --block-sizes 8 --device cpu --drafter $d \
            --modes diffusion,self_spec_linear,self_spec_quadratic --out "$out/tpf_drafter_$d" \
            | tee "$out/drafter_$d.txt"
    done
fi
