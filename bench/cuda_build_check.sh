#!/usr/bin/env bash
# The CUDA build, checked on a machine without a GPU (CI does not build it: README, "What install.sh
# builds"): install.sh builds the CUDA llama-cpp-python wheel into a fresh venv and the time is
# printed; then the trained tiny model's greedy tokens from that build must equal the CPU build's
# (a user with a CUDA build and no usable GPU: an unplugged eGPU, a container without --gpus), and
# the CUDA build must say so in one note.
#
#   bash bench/cuda_build_check.sh                      # sm_90, the wheel cache as install.sh keeps it
#   bash bench/cuda_build_check.sh --cold --arch 89     # a fresh cache: the cold build time
#   bash bench/cuda_build_check.sh --keep DIR           # also copy the built wheel to DIR
#
# Needs the CUDA toolkit (nvcc; cuBLAS from it or from PyPI) and about 40-70 minutes on 2 cores.
# The CPU reference is $CPU_PYTHON (default python3): a Python whose llama-cpp-python is the CPU
# build, e.g. the venv README's install command made. Both run this working tree's qwythos.
set -euo pipefail

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
CPU_PYTHON=${CPU_PYTHON:-python3}
ARCH=90
KEEP=""
COLD=0
while [ $# -gt 0 ]; do
  case $1 in
    --arch) ARCH=$2 && shift ;;
    --keep) KEEP=$2 && shift ;;
    --cold) COLD=1 ;;
    *) echo "usage: bash bench/cuda_build_check.sh [--arch 90] [--cold] [--keep DIR]" >&2 && exit 2 ;;
  esac
  shift
done
WORK=$(mktemp -d "${TMPDIR:-/tmp}/qwythos-cuda-check.XXXXXX")
trap 'rm -rf "$WORK"' EXIT
if [ "$COLD" = 1 ]; then export QWYTHOS_CACHE="$WORK/cache"; fi

echo "== install.sh, QWYTHOS_BACKEND=cuda QWYTHOS_CUDA_ARCH=$ARCH, into a fresh venv"
python3 -m venv "$WORK/venv"
START=$(date +%s)
PYTHON="$WORK/venv/bin/python" QWYTHOS_BACKEND=cuda QWYTHOS_CUDA_ARCH=$ARCH bash "$HERE/install.sh" | tee "$WORK/install.log"
echo "== built and installed in $(($(date +%s) - START)) s ($(nproc) cores, load $(cut -d' ' -f1-3 /proc/loadavg))"
LIB=$("$WORK/venv/bin/python" -c 'import llama_cpp, os; print(os.path.join(os.path.dirname(llama_cpp.__file__), "lib"))')
ls -l "$LIB"/libggml-cuda.so*
if [ -n "$KEEP" ]; then
  mkdir -p "$KEEP"
  WHEEL=$(sed -n 's/^== installing \(.*\.whl\)$/\1/p' "$WORK/install.log")
  cp "$WHEEL" "$KEEP"/ && echo "== kept $KEEP/$(basename "$WHEEL")"
fi

mkdir -p "$WORK/path"
ln -s "$HERE" "$WORK/path/qwythos"
echo "== greedy tokens of the trained tiny model: the CUDA build (no GPU here), then the CPU build"
PYTHONPATH="$WORK/path" "$WORK/venv/bin/python" "$HERE/bench/gpu_check.py" greedy --json "$WORK/cuda.json"
PYTHONPATH="$WORK/path" "$CPU_PYTHON" "$HERE/bench/gpu_check.py" greedy --json "$WORK/cpu.json"
"$CPU_PYTHON" - "$WORK/cuda.json" "$WORK/cpu.json" <<'EOF'
import json, sys

cuda, cpu = (json.load(open(p)) for p in sys.argv[1:3])
print("CUDA build backends:", ", ".join(f"{b['name']} ({b['n_devices']} devices)" for b in cuda["backends"]))
print("its notes:", cuda["notes"] or "none")
same = cuda["tokens"] == cpu["tokens"]
for name, toks in cuda["tokens"].items():
    print(f"{name:>15}: {len(toks)} tokens, {'the same as' if toks == cpu['tokens'][name] else 'DIFFERENT from'} the CPU build's")
names = [b["name"] for b in cuda["backends"]]
ok = same and "CUDA" in names and len(cuda["notes"]) == 1 and "no CUDA device" in cuda["notes"][0]
print("PASS" if ok else "FAIL")
sys.exit(0 if ok else 1)
EOF
