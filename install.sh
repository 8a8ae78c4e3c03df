#!/usr/bin/env bash
# Install qwythos, with a llama-cpp-python build that cannot hit the AMX crash.
#
#   bash install.sh            # what a user runs
#   bash install.sh dev,ref    # + test, lint and reference-check tools (torch, transformers)
#   PYTHON=venv/bin/python QWYTHOS_EDITABLE=0 bash install.sh   # into a venv, from a built wheel
#
# Why: a native llama.cpp build on a CPU that reports AMX (many cloud VMs) uses ggml's AMX matmul
# for quantized weights and dies with SIGILL/SIGSEGV where the VM does not really support AMX.
# Building with -mno-amx-* keeps every other native instruction set (AVX-512, VNNI ...) at full
# speed. Set QWYTHOS_ALLOW_AMX=1 to keep AMX (bare-metal Sapphire Rapids and newer).
# The wheel is built once and kept in ~/.cache/qwythos/wheels; the unpacked source distribution
# stays in ~/.cache/qwythos/src (its llama.cpp converter is the reference our tests compare with).
set -euo pipefail

LLAMA_VERSION=0.3.36
PY=${PYTHON:-python3}
HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
EXTRAS=${1:-}
CACHE=${QWYTHOS_CACHE:-$HOME/.cache/qwythos}
FLAGS="-mno-amx-tile -mno-amx-int8 -mno-amx-bf16"
[ "${QWYTHOS_ALLOW_AMX:-0}" = 1 ] && FLAGS=""
# Extra CMake flags: ggml's RPC backend (`run --rpc`, `qwythos rpc-server`; +0.4 MB of wheel, no
# speed cost measured; QWYTHOS_RPC=0 leaves it out), and a user's own CMAKE_ARGS pass through.
# Every flag is part of the wheel cache key, so a wheel built with other flags is never reused.
EXTRA_CMAKE=${CMAKE_ARGS:-}
[ "${QWYTHOS_RPC:-1}" = 1 ] && EXTRA_CMAKE="-DGGML_RPC=ON${EXTRA_CMAKE:+ $EXTRA_CMAKE}"
KEY=$FLAGS
[ -n "$EXTRA_CMAKE" ] && KEY="$FLAGS|$EXTRA_CMAKE"
TAG=$(printf '%s' "$KEY" | sha256sum | cut -c1-8)
SRC=$CACHE/src
WHEELS=$CACHE/wheels/llama-cpp-python-$LLAMA_VERSION-$TAG
SDIST=$SRC/llama_cpp_python-$LLAMA_VERSION.tar.gz

mkdir -p "$SRC" "$WHEELS"
if [ ! -f "$SDIST" ]; then
  echo "== downloading the llama-cpp-python $LLAMA_VERSION source distribution"
  "$PY" -m pip download --no-deps --no-binary :all: "llama-cpp-python==$LLAMA_VERSION" -d "$SRC"
fi
[ -d "$SRC/llama_cpp_python-$LLAMA_VERSION" ] || tar -xzf "$SDIST" -C "$SRC"

WHEEL=$(ls "$WHEELS"/llama_cpp_python-"$LLAMA_VERSION"-*.whl 2>/dev/null | head -n 1 || true)
if [ -z "$WHEEL" ]; then
  echo "== building llama-cpp-python $LLAMA_VERSION (native, C/C++ flags: ${FLAGS:-none}; CMake: ${EXTRA_CMAKE:-none}); about 4 minutes on 2 cores"
  PARTIAL=$(mktemp -d "$WHEELS.partial.XXXXXX")  # one per run: two installs at once do not collide
  CMAKE_ARGS="-DCMAKE_C_FLAGS='$FLAGS' -DCMAKE_CXX_FLAGS='$FLAGS' $EXTRA_CMAKE" \
    "$PY" -m pip wheel --no-deps --no-cache-dir "$SDIST" -w "$PARTIAL"
  mv -f "$PARTIAL"/*.whl "$WHEELS"/ && rm -rf "$PARTIAL"
  WHEEL=$(ls "$WHEELS"/llama_cpp_python-"$LLAMA_VERSION"-*.whl | head -n 1)
fi
echo "== installing $WHEEL"
"$PY" -m pip install -q "$WHEEL"
"$PY" -m pip install -q --no-deps --force-reinstall "$WHEEL"

if [[ ",$EXTRAS," == *",ref,"* ]] && ! "$PY" -c "import torch" 2>/dev/null; then
  # A CPU build; a bare `torch` requirement would pull a multi-GB CUDA build.
  "$PY" -m pip install -q "torch==2.13.0"
fi
echo "== installing qwythos${EXTRAS:+[$EXTRAS]}"
if [ "${QWYTHOS_EDITABLE:-1}" = 1 ]; then
  "$PY" -m pip install -q -e "$HERE${EXTRAS:+[$EXTRAS]}"
else  # a built wheel, as a user's `pip install` gets it (CI checks that nothing is missing from it)
  "$PY" -m pip install -q "$HERE${EXTRAS:+[$EXTRAS]}"
fi
"$PY" -m qwythos.core.llamacpp.probe --quiet || {
  echo "warning: the llama.cpp build failed its crash probe; run 'qwythos doctor'" >&2
}
echo "== done: try 'qwythos doctor' and 'qwythos demo'"
