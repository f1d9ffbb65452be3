#!/usr/bin/env bash
# Train the embedded default model on a GPU machine (torch + transformers + tokenizers, no sglang):
# the same command as on a CPU (`python -m sglang_trimode.training.train`), with more steps.
# The corpus is this repo's Python 3.11 stdlib copied to .stdlib311/ (so the split and held-out text
# match CI's Python): build it with `bash bench/gpu_train.sh --prepare` here, carry it there.
# A short probe measures seconds per step; the main run gets as many steps as fit TRAIN_MINUTES.
#
#   bash bench/gpu_train.sh --prepare                      # here: writes .stdlib311/
#   OUT=out/gpu_train bash bench/gpu_train.sh [--device cpu] # there: writes $OUT/model/
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
if [[ ${1:-} == --prepare ]]; then
    "$PY" - <<'PYEOF'
import shutil
from pathlib import Path
from sglang_trimode.training import corpus
root, dst = corpus.stdlib_root(), Path(".stdlib311")
shutil.rmtree(dst, ignore_errors=True)
files = corpus.stdlib_files("train") + corpus.stdlib_files("heldout")
for p in files:
    q = dst / p.relative_to(root)
    q.parent.mkdir(parents=True, exist_ok=True)
    shutil.copy(p, q)
print(f"copied {len(files)} files of {root} to {dst}/")
PYEOF
    exit 0
fi
DEVICE=cuda
[[ ${1:-} == --device ]] && DEVICE=$2
export PYTHONUNBUFFERED=1 SGLANG_TRIMODE_STDLIB=$PWD/.stdlib311 PYTHONPATH=$PWD${PYTHONPATH:+:$PYTHONPATH}
OUT_DIR=${OUT:-out/gpu_train}
ARGS=(--hidden "${HIDDEN:-256}" --layers "${LAYERS:-4}" --heads 4 --kv-heads 2
    --intermediate "${INTERMEDIATE:-768}" --batch "${BATCH:-32}" --device "$DEVICE")
"$PY" -m sglang_trimode.training.train --out /tmp/gpu_train_probe --steps "${PROBE_STEPS:-80}" \
    --eval-every 100000 "${ARGS[@]}" ${CORPUS_FILES:+--corpus-files $CORPUS_FILES} >/dev/null 2>&1
steps=$("$PY" - "${TRAIN_MINUTES:-5}" <<'PYEOF'
import json, sys
log = json.load(open("/tmp/gpu_train_probe/training_log.json"))["log"]
per_step = (log[-1]["minutes"] - log[len(log) // 4]["minutes"]) / (len(log) - 1 - len(log) // 4)
print(max(10, int(float(sys.argv[1]) / per_step)))
PYEOF
)
echo "probe: $steps steps fit ${TRAIN_MINUTES:-5} min on $DEVICE"
"$PY" -m sglang_trimode.training.train --out "$OUT_DIR/model" --steps "$steps" \
    --eval-every "${EVAL_EVERY:-500}" --max-minutes "${MAX_MINUTES:-7}" "${ARGS[@]}" \
    ${CORPUS_FILES:+--corpus-files $CORPUS_FILES} 2>&1 | tr '\r' '\n' | grep -v '^train:' || true
ls -la "$OUT_DIR/model"
