#!/usr/bin/env bash
# The GPU checks of issue 16 in one short run (about 8 minutes) on a machine with a CUDA GPU.
set -uo pipefail

usage() {
  cat <<'EOF'
usage: tools/gpu_check.sh IDX_DIR [OUT_JSON]

Runs, on this machine's CUDA GPU, with the profiles cuda-torch (batch 1, CUDA graph replay) and
cuda-torch-b64:
  1. rlprune-edge bench on the shipped VGG-19 w0.25: graph replay, eager launches, batch 64 fp16
  2. python -m tools.bench_per_layer: per-layer sums vs end-to-end (mobilenet_v2, resnet18, VGG-19)
  3. rlprune-edge latency-check on the shipped VGG-19 (latency-model error on cuda-torch)
  4. rlprune-edge compress --profile cuda-torch on the embedded default (reaches 0.5x, or refuses
     it with the measured floor)
  5. the test suite (pytest, in parallel when pytest-xdist is installed), or the tests named in
     $GPU_CHECK_TESTS (a re-check after fixes)
  6. (step "target", not in the default list) compress --profile cuda-torch at $GPU_CHECK_TARGET
     (default 0.7x) with 2 KD epochs: does the latency model size a reachable target right?
and writes every figure to OUT_JSON (default ./gpu_check.json), each step's log beside it in
OUT_JSON's directory as gpu_check_logs.tar.gz.

IDX_DIR  a directory with the Fashion-MNIST IDX files (train-images-idx3-ubyte.gz, ...); no Debian
         package is needed.

Needs python3 with torch (CUDA), torchvision, onnx, onnxruntime, numpy, tqdm, matplotlib and pytest.
torch-pruning and onnxslim, when python3 lacks them, are installed (no network) from wheels in
$WHEELS (default: .whl/ in the project root):
  torch_pruning-1.6.1-py3-none-any.whl, onnxslim-0.1.98-py3-none-any.whl
Fetch them on a machine with PyPI access, e.g.
  python3 -m pip download --no-deps -d .whl torch-pruning==1.6.1 onnxslim==0.1.98
Environment: PYTHON (default python3), WHEELS, GPU_CHECK_STEPS (default "bench perlayer latency
compress tests", any subset of those and "target", run in that order), GPU_CHECK_TESTS (pytest
node ids for the test step, default: the whole tests/ folder), GPU_CHECK_TESTS_LIMIT (seconds for
the test step, default 240), GPU_CHECK_TARGET (default 0.7x), GPU_CHECK_TARGET_LIMIT
(seconds for the target step, default 300).

Re-check chosen tests after fixes, then one compress at a latency target:
  GPU_CHECK_STEPS="tests target" GPU_CHECK_TESTS="tests/test_compress.py::test_x ..." \
    GPU_CHECK_TESTS_LIMIT=100 tools/gpu_check.sh IDX_DIR OUT_DIR/gpu_check.json
EOF
}

case "${1:-}" in -h|--help) usage; exit 0 ;; "") usage >&2; exit 2 ;; esac
IDX_DIR=$(cd "$1" 2>/dev/null && pwd) || { echo "gpu_check: IDX_DIR $1 is not a directory; give the folder holding the Fashion-MNIST IDX files." >&2; exit 2; }
[ -f "$IDX_DIR/train-images-idx3-ubyte.gz" ] || [ -f "$IDX_DIR/train-images-idx3-ubyte" ] || {
  echo "gpu_check: $IDX_DIR holds no train-images-idx3-ubyte[.gz]; give the Fashion-MNIST IDX directory." >&2; exit 2; }
OUT_JSON=$(realpath -m "${2:-gpu_check.json}")
ROOT=$(cd "$(dirname "$0")/.." && pwd)
PY=${PYTHON:-python3}
WHEELS=${WHEELS:-$ROOT/.whl}
STEPS=${GPU_CHECK_STEPS:-bench perlayer latency compress tests}
PROFILE=${GPU_CHECK_PROFILE:-cuda-torch}        # a CPU profile here dry-runs the script without a GPU
B64_PROFILE=${GPU_CHECK_B64_PROFILE:-cuda-torch-b64}
WORK=$(mktemp -d /tmp/gpu-check.XXXXXX)
cd "$ROOT"

if [[ $PROFILE == cuda* ]] && ! "$PY" -c "import torch; assert torch.cuda.is_available()" 2>/dev/null; then
  echo "gpu_check: $PY has no torch with a CUDA GPU on this machine; run this where torch.cuda.is_available()." >&2
  exit 2
fi
if ! "$PY" -c "import torch_pruning, onnxslim" 2>/dev/null; then
  ls "$WHEELS"/torch_pruning-*.whl "$WHEELS"/onnxslim-*.whl >/dev/null 2>&1 || {
    echo "gpu_check: torch-pruning/onnxslim are missing and $WHEELS has no wheels of them; see --help." >&2; exit 2; }
  "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --target "$WORK/site" \
    "$WHEELS"/torch_pruning-*.whl "$WHEELS"/onnxslim-*.whl || exit 1
  export PYTHONPATH="$WORK/site${PYTHONPATH:+:$PYTHONPATH}"
fi
export PYTHONPATH="$ROOT${PYTHONPATH:+:$PYTHONPATH}"
export RLPRUNE_EDGE_FASHION_MNIST="$IDX_DIR" RLPRUNE_EDGE_CACHE="$WORK/cache" PYTHONUNBUFFERED=1
CKPT="$ROOT/rlprune_edge/assets/vgg19_w0.25_fashion-mnist.pt"
CLI=("$PY" -m rlprune_edge)
sed 's/^cuda_graphs = true/cuda_graphs = false/; 0,/^name = "\(.*\)"/s//name = "\1-eager"/' \
  "profiles/$PROFILE.toml" > "$WORK/eager.toml"

# step NAME SECONDS CMD...: run with a time limit, log to $WORK/NAME.log, record rc and seconds
step() {
  local name=$1 limit=$2; shift 2
  local t0; t0=$(date +%s%N)
  echo "gpu_check: $name (at most ${limit}s)"
  timeout --kill-after=10 "$limit" "$@" > "$WORK/$name.log" 2>&1
  local rc=$?
  local ms=$(( ($(date +%s%N) - t0) / 1000000 ))
  printf '{"step": "%s", "rc": %d, "seconds": %d.%03d}\n' "$name" "$rc" $((ms / 1000)) $((ms % 1000)) >> "$WORK/steps.jsonl"
  tail -n 3 "$WORK/$name.log" | cut -c1-240
  summarize
}
summarize() {  # every figure so far into OUT_JSON and the logs beside it (after each step: a cut-off run keeps them)
"$PY" - "$WORK" "$OUT_JSON" <<'EOF'
import json, re, sys
from pathlib import Path
work, out = Path(sys.argv[1]), Path(sys.argv[2])
def load(name):
    p = work / name
    try:
        return json.loads(p.read_text())
    except (OSError, ValueError):
        return None
def last_json_line(name):
    try:
        lines = (work / name).read_text().splitlines()
    except OSError:
        return None
    for line in reversed(lines):
        if line.startswith("{"):
            try:
                return json.loads(line)
            except ValueError:
                pass
    return None
doc = {"facts": load("facts.json"), "steps": [json.loads(l) for l in (work / "steps.jsonl").read_text().splitlines()]
       if (work / "steps.jsonl").exists() else []}
bench = {}
for key in ("bench_graphs", "bench_eager", "bench_b64"):
    b = last_json_line(f"{key}.log")
    if b:
        bench[key] = {k: b.get(k) for k in ("median_ms", "p90_ms", "p99_ms", "per_layer_sum_ms", "per_layer_wall_sum_ms",
                                            "per_layer_e2e_median_ms", "runtime")}
doc["bench"] = bench
pl = load("per_layer.json")
doc["per_layer"] = pl["results"] if pl else None
lc = load("latency_check.json")
if lc:
    doc["latency_check"] = {k: lc.get(k) for k in ("median_abs_rel_error", "p90_abs_rel_error", "max_abs_rel_error",
                                                   "dense_ms", "rounds", "channel_multiple")}
    doc["latency_check"]["variants"] = [{k: v.get(k) for k in ("predicted_ratio", "measured_ratio", "rel_error")}
                                        for v in lc.get("variants", [])]
for key in ("compress", "compress_target"):
    rep = load(f"{key}/report.json")
    log = (work / f"{key}.log").read_text() if (work / f"{key}.log").exists() else ""
    doc[key] = {"report": {k: rep.get(k) for k in ("target", "measured_ratio", "reached", "base", "final", "wall_s",
                                                    "latency_statistic", "search")} if rep else None,
                "log_tail": log.splitlines()[-16:]}
tests = (work / "tests.log").read_text() if (work / "tests.log").exists() else ""
m = re.findall(r"^(?:=+ )?(.*(?:passed|failed|error).*?)(?: in [0-9.]+s.*)?$", tests, re.M)
doc["tests"] = {"summary": m[-1] if m else None, "failures": re.findall(r"^FAILED (.*)$", tests, re.M)}
out.parent.mkdir(parents=True, exist_ok=True)
out.write_text(json.dumps(doc, indent=1))

EOF
mkdir -p "$WORK/latency_models" && cp "$WORK"/cache/latency-models/*.json "$WORK/latency_models/" 2>/dev/null
tar -czf "$(dirname "$OUT_JSON")/gpu_check_logs.tar.gz" -C "$WORK" --exclude=cache --exclude=site --exclude='*.pt' \
  --exclude='*.onnx' . 2>/dev/null
}
want() { [[ " $STEPS " == *" $1 "* ]]; }

"$PY" - > "$WORK/facts.json" <<'EOF'
import json, platform, torch, onnxruntime, onnx
gpu = torch.cuda.is_available()
p = torch.cuda.get_device_properties(0) if gpu else None
print(json.dumps({"gpu": torch.cuda.get_device_name(0) if gpu else None,
                  "gpu_memory_gib": round(p.total_memory / 2**30, 1) if gpu else None, "cpu_count": __import__("os").cpu_count(),
                  "torch": torch.__version__, "cuda": torch.version.cuda, "onnxruntime": onnxruntime.__version__,
                  "onnx": onnx.__version__, "python": platform.python_version()}))
EOF

if want bench; then
  step bench_graphs 20 "${CLI[@]}" bench "$CKPT" --profile "$PROFILE" --per-layer --json
  step bench_eager 20 "${CLI[@]}" bench "$CKPT" --profile "$WORK/eager.toml" --json
  step bench_b64 20 "${CLI[@]}" bench "$CKPT" --profile "$B64_PROFILE" --json
fi
if want perlayer; then
  step perlayer 40 "$PY" -m tools.bench_per_layer --profiles "$PROFILE" --runs 100 --json "$WORK/per_layer.json"
fi
if want latency; then
  step latency 70 "${CLI[@]}" latency-check --model "$CKPT" --profile "$PROFILE" --variants 12 --fit-variants 12 \
    --json "$WORK/latency_check.json"
fi
if want compress; then
  step compress 130 "${CLI[@]}" compress --profile "$PROFILE" --no-bundle --quiet --out "$WORK/compress"
fi
if want tests; then
  # one or two threads per worker: 8+ workers with torch's default thread count oversubscribe the cores
  xdist=(); "$PY" -c "import xdist" 2>/dev/null && xdist=(-n "$(( $(nproc) > 4 ? $(nproc) - 2 : 1 ))")
  step tests "${GPU_CHECK_TESTS_LIMIT:-240}" env OMP_NUM_THREADS=2 MKL_NUM_THREADS=2 "$PY" -m pytest -v --tb=short -p no:cacheprovider \
    -p no:benchmark "${xdist[@]}" ${GPU_CHECK_TESTS:-tests}
fi
if want target; then
  step compress_target "${GPU_CHECK_TARGET_LIMIT:-300}" "${CLI[@]}" compress --profile "$PROFILE" --target-latency "${GPU_CHECK_TARGET:-0.7x}" \
    --kd-epochs 2 --no-bundle --quiet --out "$WORK/compress_target"
fi

summarize
echo "gpu_check: figures in $OUT_JSON"
exit 0
