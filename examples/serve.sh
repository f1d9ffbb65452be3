#!/usr/bin/env bash
# Serve a tri-mode model with SGLang; MODE is the default for requests, and a request may pick
# another with custom_params {"trimode_mode": ...} (examples/per_request_mode.py).
#   examples/serve.sh [MODE] [MODEL] [PORT]
#   MODE   ar | diffusion | self_spec_linear | self_spec_quadratic | auto (default self_spec_linear);
#          ar = plain SGLang AR: no TRIMODE worker, no per-request modes
#   MODEL  checkpoint folder or hub id (default: the package's tiny default model)
#   PORT   default 30000; HOST default 127.0.0.1
# DEVICE=cpu (default) adds SGLang's CPU settings; DEVICE=cuda serves on GPUs with SGLang's
# defaults. BLOCK_SIZE / THRESHOLD set --trimode-block-size / --trimode-threshold.
set -euo pipefail
MODE=${1:-self_spec_linear}
MODEL=${2:-$(python -c 'import sglang_trimode as t; print(t.default_model_path())')}
PORT=${3:-30000}
ARGS=(--model-path "$MODEL" --host "${HOST:-127.0.0.1}" --port "$PORT")
if [ "$MODE" != ar ]; then
  ARGS+=(--speculative-algorithm TRIMODE --trimode-mode "$MODE")
  if [ -n "${BLOCK_SIZE:-}" ]; then ARGS+=(--trimode-block-size "$BLOCK_SIZE"); fi
  if [ -n "${THRESHOLD:-}" ]; then ARGS+=(--trimode-threshold "$THRESHOLD"); fi
  # the TRIMODE worker runs every forward eager: capture no CUDA graphs it would drop
  if [ "${DEVICE:-cpu}" != cpu ]; then ARGS+=(--disable-cuda-graph); fi
fi
if [ "${DEVICE:-cpu}" = cpu ]; then
  # SGLang's CPU engine, with the plugin's plain-torch stand-in for the CUDA-only sgl_kernel
  export SGLANG_USE_CPU_ENGINE=1
  STANDIN=$(python -c 'from sglang_trimode.srt import cpu_platform as c; print(c.PYTHONPATH_ENTRY)')
  export PYTHONPATH=$STANDIN${PYTHONPATH:+:$PYTHONPATH}
  ARGS+=(--device cpu --attention-backend torch_native --disable-cuda-graph --skip-server-warmup
    --mem-fraction-static 0.05 --max-total-tokens 4096 --dtype float32)
fi
exec python -m sglang.launch_server "${ARGS[@]}"
