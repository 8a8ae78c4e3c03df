#!/usr/bin/env bash
# One prepared run on a machine with an NVIDIA GPU (issue 26, item 5): the model on the GPU, the
# controlled-acceptance MTP bench at a = 0, 0.7, 0.9 against plain decoding, and `qwythos bench`'s
# recommendation. Made for one short loan of the machine: nothing is downloaded or compiled there.
#
#   OUT=results bash bench/gpu_check.sh --wheels DIR            # on the GPU machine
#   OUT=results bash bench/gpu_check.sh --wheels DIR --shape tiny   # the same steps on a CPU, in seconds
#
# --wheels DIR   the wheels the machine lacks, installed with `pip install --no-index --no-deps`
#                into a fresh folder: the CUDA llama-cpp-python wheel that install.sh built
#                (QWYTHOS_BACKEND=cuda QWYTHOS_CUDA_ARCH=90), gguf, diskcache, requests and its deps.
#                The machine's own Python brings numpy, typer, rich, jinja2, huggingface_hub and PyPI's
#                nvidia-cublas / nvidia-cuda-runtime; their lib folders go on LD_LIBRARY_PATH (the
#                wheel's RUNPATH finds them only in its own site-packages).
# --shape S      9b (default): a random Qwythos-9B-shaped Q4_K_M with a q8_0 MTP head, built here
#                (bench/gpu_check.py); 9b-L8: the same with 8 of the 32 layers; tiny: the trained
#                tiny model (F32, its own head).
# --ngl N        n_gpu_layers for every load (default 999: every layer on the GPU).
# --minutes M    the whole run's budget (default 9): a step that would not fit what is left is
#                skipped and the summary says so.
# --threads N    CPU threads (default: the cores, at most 16; 1 for the tiny check on a busy CPU).
# Results in $OUT (at most 8 files): summary.txt (the table), gpu_check.log (everything printed),
# env.txt (machine, GPU, the libraries the CUDA build resolved), model.json, place.json,
# accept.json, bench.json.
set -euo pipefail

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
PY=${PYTHON:-python3}
WHEELS=""
SHAPE=9b
NGL=999
MINUTES=9
THREADS=$(nproc)
[ "$THREADS" -le 16 ] || THREADS=16
while [ $# -gt 0 ]; do
  case $1 in
    --wheels) WHEELS=$2 && shift ;;
    --shape) SHAPE=$2 && shift ;;
    --ngl) NGL=$2 && shift ;;
    --minutes) MINUTES=$2 && shift ;;
    --threads) THREADS=$2 && shift ;;
    *) echo "usage: OUT=DIR bash bench/gpu_check.sh --wheels DIR [--shape 9b|9b-L8|tiny] [--ngl N] [--minutes M] [--threads N]" >&2 && exit 2 ;;
  esac
  shift
done
[ -d "$WHEELS" ] || { echo "error: --wheels DIR (the folder of wheels to install) is required" >&2 && exit 2; }
OUT=${OUT:-$(mktemp -d)}
mkdir -p "$OUT"
WORK=$(mktemp -d "${TMPDIR:-/tmp}/qwythos-gpu-check.XXXXXX")
trap 'rm -rf "$WORK"' EXIT
START=$(date +%s)
DEADLINE=$((START + MINUTES * 60))
exec > >(tee -a "$OUT/gpu_check.log") 2>&1

left() { echo $((DEADLINE - $(date +%s))); }
step() {  # step NAME NEEDED_SECONDS COMMAND...: runs when enough time is left, within what is left
  local name=$1 need=$2 rc=0
  shift 2
  if [ "$(left)" -lt "$need" ]; then
    echo "== $name: skipped, $(left) s left of the ${MINUTES}-minute budget (it needs about $need s)"
    echo "$name: skipped (time)" >> "$WORK/skipped"
    return 0
  fi
  echo "== $name ($(($(date +%s) - START)) s in, $(left) s left)"
  timeout "$(left)" "$@" || rc=$?
  if [ "$rc" != 0 ]; then
    echo "== $name failed (exit $rc)"
    echo "$name: failed (exit $rc)" >> "$WORK/skipped"
  fi
}

echo "== machine"
{
  date -u
  uname -a
  echo "cores: $(nproc)"
  "$PY" --version
  nvidia-smi --query-gpu=name,compute_cap,memory.total,memory.free,driver_version --format=csv 2>&1 || echo "no nvidia-smi"
} | tee "$OUT/env.txt"

echo "== installing:" "$WHEELS"/*.whl
"$PY" -m pip install -q --no-index --no-deps --target "$WORK/site" "$WHEELS"/*.whl
mkdir -p "$WORK/path"
ln -s "$HERE" "$WORK/path/qwythos"  # the working tree is the qwythos package
export PYTHONPATH="$WORK/site:$WORK/path"
NVLIBS=$("$PY" -c 'import nvidia, os
for d in nvidia.__path__:
    for sub in ("cu13", "cu12", "cublas", "cuda_runtime"):
        if os.path.isdir(os.path.join(d, sub, "lib")):
            print(os.path.join(d, sub, "lib"))' 2>/dev/null | tr '\n' ':' || true)
export LD_LIBRARY_PATH="${NVLIBS}${LD_LIBRARY_PATH:-}"
export QWYTHOS_CACHE="$WORK/cache" QWYTHOS_DRAFT_COSTS="$WORK/cache/draft_costs.json"
{
  echo "LD_LIBRARY_PATH=$LD_LIBRARY_PATH"
  LIB=$("$PY" -c 'import llama_cpp, os; print(os.path.join(os.path.dirname(llama_cpp.__file__), "lib"))')
  echo "llama_cpp libraries: $LIB"
  ldd "$LIB"/libggml-cuda.so 2>/dev/null | grep -E 'cublas|cudart|libcuda' || echo "no libggml-cuda.so (not a CUDA build)"
} | tee -a "$OUT/env.txt"

GC=("$PY" "$HERE/bench/gpu_check.py")
case $SHAPE in 9b) NEED=300 ;; 9b-L8) NEED=120 ;; *) NEED=20 ;; esac
step "build the $SHAPE model" "$NEED" "${GC[@]}" build --shape "$SHAPE" --work "$WORK/model" --threads "$THREADS" --json "$OUT/model.json"
model() { "$PY" -c 'import json, sys; print(json.load(open(sys.argv[1]))["model"])' "$OUT/model.json" 2>/dev/null || true; }
MODEL=$(model)
if [ -z "$MODEL" ] && [ "$SHAPE" != tiny ]; then  # still worth running every step: on the tiny model
  step "build the tiny model instead" 20 "${GC[@]}" build --shape tiny --work "$WORK/model" --json "$OUT/model.json"
  MODEL=$(model)
fi
if [ -n "$MODEL" ]; then
  step "placement and load (-ngl $NGL)" 30 "${GC[@]}" place --model "$MODEL" --ngl "$NGL" --json "$OUT/place.json"
  step "controlled acceptance, a = 0 / 0.7 / 0.9" 90 "${GC[@]}" accept --model "$MODEL" --ngl "$NGL" \
    --rates 0,0.7,0.9 --drafts 1,2,3 --reps 3 --max-tokens 64 --threads "$THREADS" --json "$OUT/accept.json"
  # shellcheck disable=SC2016  # $0..$3 belong to the inner sh
  step "qwythos bench (-ngl $NGL)" 45 sh -c '"$0" -m qwythos.cli bench "$1" -ngl "$2" -t "$3" --drafts 1,2,3 --json > "$4"' \
    "$PY" "$MODEL" "$NGL" "$THREADS" "$OUT/bench.json"
fi

echo
echo "== summary ($(($(date +%s) - START)) s in all)"
{
  "${GC[@]}" summary --dir "$OUT" || true
  if [ -f "$WORK/skipped" ]; then cat "$WORK/skipped"; fi
} | tee "$OUT/summary.txt"
