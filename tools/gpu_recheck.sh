#!/usr/bin/env bash
# Re-run given pytest node ids on the GPU machine after fixes (same environment set-up as gpu_check.sh).
# usage: tools/gpu_recheck.sh IDX_DIR OUT_DIR TEST_ID... ; then one compress at --target-latency $GPU_RECHECK_TARGET
set -uo pipefail
IDX_DIR=$(cd "$1" && pwd); OUT_DIR=$2; shift 2
ROOT=$(cd "$(dirname "$0")/.." && pwd); cd "$ROOT"
PY=${PYTHON:-python3}; WORK=$(mktemp -d /tmp/gpu-recheck.XXXXXX)
if ! "$PY" -c "import torch_pruning, onnxslim" 2>/dev/null; then
  "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --target "$WORK/site" .whl/*.whl || exit 1
  export PYTHONPATH="$WORK/site"
fi
export PYTHONPATH="$ROOT:${PYTHONPATH:-}" RLPRUNE_EDGE_FASHION_MNIST="$IDX_DIR" RLPRUNE_EDGE_CACHE="$WORK/cache"
mkdir -p "$OUT_DIR"
timeout 100 env OMP_NUM_THREADS=2 "$PY" -m pytest -q -p no:cacheprovider -p no:benchmark -n 4 "$@" > "$OUT_DIR/tests.log" 2>&1
echo "tests rc=$?"; tail -n 3 "$OUT_DIR/tests.log"
if [ -n "${GPU_RECHECK_TARGET:-}" ]; then
  timeout 110 "$PY" -m rlprune_edge compress --profile cuda-torch --target-latency "$GPU_RECHECK_TARGET" --kd-epochs 2 \
    --no-bundle --quiet --out "$WORK/c" > "$OUT_DIR/compress.log" 2>&1
  echo "compress rc=$?"; tail -n 8 "$OUT_DIR/compress.log"
  cp "$WORK/c/report.json" "$OUT_DIR/" 2>/dev/null
fi
exit 0
