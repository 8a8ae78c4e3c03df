#!/usr/bin/env bash
# Build llama.cpp's own C++ speculative loop (llama-speculative-simple) from the llama.cpp that is
# vendored in the llama-cpp-python source distribution install.sh unpacked, with the same no-AMX
# flags as our wheel, so bench/bench_mtp.py --cpp can compare our Python loop with it.
#
#   bash bench/build_llama_cpp_tools.sh [BUILD_DIR] [JOBS]      # default /work/scratch/llama-build, 2
#   -> prints the binary's path (BUILD_DIR/bin/llama-speculative-simple)
#
# Env: QWYTHOS_CACHE (default ~/.cache/qwythos), LLAMA_VERSION (default 0.3.36),
#      TARGETS (default llama-speculative-simple), QWYTHOS_ALLOW_AMX=1 to keep AMX.
set -euo pipefail

LLAMA_VERSION=${LLAMA_VERSION:-0.3.36}
CACHE=${QWYTHOS_CACHE:-$HOME/.cache/qwythos}
SRC=$CACHE/src/llama_cpp_python-$LLAMA_VERSION/vendor/llama.cpp
BUILD=${1:-/work/scratch/llama-build}
JOBS=${2:-2}
TARGETS=${TARGETS:-llama-speculative-simple}
FLAGS="-mno-amx-tile -mno-amx-int8 -mno-amx-bf16"
[ "${QWYTHOS_ALLOW_AMX:-0}" = 1 ] && FLAGS=""

if [ ! -f "$SRC/CMakeLists.txt" ]; then
  echo "error: no llama.cpp source at $SRC" >&2
  echo "hint: run 'bash install.sh' first (it unpacks the llama-cpp-python $LLAMA_VERSION sdist)" >&2
  exit 1
fi
GEN=()
command -v ninja >/dev/null && GEN=(-G Ninja)
cmake -S "$SRC" -B "$BUILD" "${GEN[@]}" \
  -DCMAKE_BUILD_TYPE=Release \
  -DCMAKE_C_FLAGS="$FLAGS" -DCMAKE_CXX_FLAGS="$FLAGS" \
  -DLLAMA_CURL=OFF -DLLAMA_OPENSSL=OFF \
  -DLLAMA_BUILD_TESTS=OFF -DLLAMA_BUILD_SERVER=OFF \
  -DBUILD_SHARED_LIBS=OFF >/dev/null
# shellcheck disable=SC2086
cmake --build "$BUILD" --target $TARGETS -j "$JOBS"
for t in $TARGETS; do
  echo "$BUILD/bin/$t"
done
