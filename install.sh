#!/usr/bin/env bash
# Install qwythos, with a llama-cpp-python build made for this machine.
#
#   bash install.sh            # what a user runs
#   bash install.sh dev,ref    # + test, lint and reference-check tools (torch, transformers)
#   PYTHON=venv/bin/python QWYTHOS_EDITABLE=0 bash install.sh   # into a venv, from a built wheel
#   QWYTHOS_BACKEND=cuda QWYTHOS_CUDA_ARCH=90 bash install.sh     # a GPU build, chosen by hand
#
# The backend (QWYTHOS_BACKEND=auto|cpu|cuda|metal|vulkan|hip; auto when unset):
#   auto     Metal on Apple Silicon (llama.cpp's default there), CUDA where `nvidia-smi` is found
#            (or `nvcc`, with QWYTHOS_CUDA_ARCH naming the GPU to build for: a toolkit alone on a
#            machine without a GPU builds for the CPU), the CPU otherwise. The choice and its
#            reason are printed before the build.
#   cuda     needs NVIDIA's CUDA toolkit (nvcc). cuBLAS comes from the toolkit, or else from PyPI's
#            nvidia-cublas, which is installed beside the wheel and found at run time through the
#            library's RUNPATH (no LD_LIBRARY_PATH). QWYTHOS_CUDA_ARCH picks the GPU architecture
#            (90 = H100/H200; default: what nvidia-smi reports for this machine's GPUs).
#   metal    macOS only (llama-cpp-python compiles Metal into every macOS build).
#   vulkan   needs the Vulkan headers and loader and `glslc` (shaderc).
#   hip      needs AMD's ROCm (hipconfig); QWYTHOS_HIP_ARCH picks the GPU (e.g. gfx1100).
# A GPU build that cannot be made stops with one message that names what is missing and how to
# get the CPU build instead (QWYTHOS_BACKEND=cpu).
#
# On x86_64 (Linux, Intel Macs) the build passes -mno-amx-*: a native llama.cpp build on a CPU
# that reports AMX (many cloud VMs) uses ggml's AMX matmul for quantized weights and dies with
# SIGILL/SIGSEGV where the VM does not really support AMX. Every other native instruction set
# (AVX-512, VNNI ...) stays on. QWYTHOS_ALLOW_AMX=1 keeps AMX (bare-metal Sapphire Rapids and newer).
# ARM machines get no extra C flags: those options are x86's and fail there.
#
# ggml's RPC backend (`run --rpc`, `qwythos rpc-server`) is compiled in on every machine
# (QWYTHOS_RPC=0 leaves it out); a user's own CMAKE_ARGS pass through. Every flag that shapes the
# build (backend, architecture, C flags, CMake flags) is part of the wheel's cache key, so a wheel
# built another way is never reused. The wheel is kept in the cache folder's wheels/, the unpacked
# source distribution in its src/ (its llama.cpp converter is the reference our tests compare
# with). The cache folder: $QWYTHOS_CACHE, else $XDG_CACHE_HOME/qwythos (when absolute), else
# ~/.cache/qwythos, as in core/fileio.cache_dir.
#
# Written for bash 3.2 and BSD userland too (what macOS ships).
set -eEuo pipefail
trap 'printf "error: install.sh stopped at line %s: the command above failed\n" "$LINENO" >&2' ERR

LLAMA_VERSION=0.3.36
PY=${PYTHON:-python3}
HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
EXTRAS=${1:-}
CPU_FIX="QWYTHOS_BACKEND=cpu bash install.sh builds the CPU version (every feature, at CPU speed)"

say() { printf '== %s\n' "$*"; }
note() { printf '   %s\n' "$*"; }
die() {  # one message: what went wrong or is missing, then what to do
  printf 'error: %s\n' "$1" >&2
  if [ -n "${2:-}" ]; then printf '  fix: %s\n' "$2" >&2; fi
  exit 1
}
have() { command -v "$1" >/dev/null 2>&1; }
first_file() {  # the first of its arguments that is a file (unmatched globs stay literal: skipped)
  local f
  for f in "$@"; do
    if [ -f "$f" ]; then
      printf '%s\n' "$f"
      return 0
    fi
  done
}
hash8() {  # the first 8 hex digits of stdin's SHA-256 (GNU coreutils, or macOS's shasum)
  if have sha256sum; then sha256sum | cut -c1-8; else shasum -a 256 | cut -c1-8; fi
}

if [ -n "${QWYTHOS_CACHE:-}" ]; then
  CACHE=$QWYTHOS_CACHE
else
  case ${XDG_CACHE_HOME:-} in
    /*) CACHE=$XDG_CACHE_HOME/qwythos ;;
    *) CACHE=$HOME/.cache/qwythos ;;
  esac
fi

# ---- the machine ---------------------------------------------------------------------------
OS=$(uname -s)
CPU=$(uname -m)
FLAGS=""
case $CPU in
  x86_64 | amd64) [ "${QWYTHOS_ALLOW_AMX:-0}" = 1 ] || FLAGS="-mno-amx-tile -mno-amx-int8 -mno-amx-bf16" ;;
esac
if [ "$OS" = Darwin ] && [ "$CPU" = x86_64 ] && [ "$(sysctl -n hw.optional.arm64 2>/dev/null || true)" = 1 ]; then
  note "warning: this shell runs under Rosetta (x86_64 on Apple Silicon): the build will be x86_64"
  note "  without Metal's speed; run install.sh from an arm64 terminal with an arm64 Python instead"
fi

# ---- the backend ---------------------------------------------------------------------------
BACKEND=${QWYTHOS_BACKEND:-auto}
case $BACKEND in
  auto)
    if [ "$OS" = Darwin ] && [ "$CPU" = arm64 ]; then
      BACKEND=metal WHY="auto: Apple Silicon, where Metal is llama.cpp's default"
    elif [ "$OS" != Darwin ] && have nvidia-smi; then
      BACKEND=cuda WHY="auto: nvidia-smi found ($(nvidia-smi -L 2>/dev/null | head -n 1 | cut -c1-60 || true))"
    elif [ "$OS" != Darwin ] && have nvcc && [ -n "${QWYTHOS_CUDA_ARCH:-}" ]; then
      BACKEND=cuda WHY="auto: nvcc (the CUDA toolkit) found at $(command -v nvcc), QWYTHOS_CUDA_ARCH=$QWYTHOS_CUDA_ARCH"
    elif [ "$OS" != Darwin ] && have nvcc; then  # a toolkit without a GPU: for which GPU would it build?
      BACKEND=cpu WHY="auto: nvcc found but no GPU (no nvidia-smi) and no QWYTHOS_CUDA_ARCH; for a CUDA build set QWYTHOS_BACKEND=cuda QWYTHOS_CUDA_ARCH=90 (the target GPU's)"
    else
      BACKEND=cpu WHY="auto: not Apple Silicon, and no nvidia-smi or nvcc on PATH"
    fi
    ;;
  cpu | cuda | metal | vulkan | hip) WHY="QWYTHOS_BACKEND=$BACKEND" ;;
  *) die "QWYTHOS_BACKEND=$BACKEND is not a backend" "use one of auto, cpu, cuda, metal, vulkan, hip" ;;
esac

say "machine: $OS $CPU; backend: $BACKEND ($WHY)"

# What each backend adds: KEYED shapes the wheel (part of the cache key); PLACES only says where
# this machine keeps a library (cuBLAS) and leaves the wheel the same.
KEYED=""
PLACES=""
NEEDS=""  # what a failed build of this backend most likely lacked, for the closing message
cuda_setup() {
  [ "$OS" != Darwin ] || die "CUDA does not exist on macOS (QWYTHOS_BACKEND=cuda)" "use QWYTHOS_BACKEND=metal on Apple Silicon, or: $CPU_FIX"
  local nvcc="" dir root version major arch lib inc pkg rpath
  if have nvcc; then nvcc=$(command -v nvcc); fi
  dir=${CUDA_HOME:-${CUDA_PATH:-/usr/local/cuda}}  # where the toolkit is when nvcc is not on PATH
  if [ -z "$nvcc" ] && [ -x "$dir/bin/nvcc" ]; then nvcc=$dir/bin/nvcc; fi
  [ -n "$nvcc" ] || die "a CUDA build needs NVIDIA's CUDA toolkit (nvcc), and none was found on PATH or in $dir (\$CUDA_HOME)" \
    "install the CUDA toolkit (12 or 13) and put its bin/ on PATH; or: $CPU_FIX"
  version=$("$nvcc" --version 2>/dev/null | sed -n 's/.*release \([0-9][0-9]*\.[0-9][0-9]*\).*/\1/p' | head -n 1 || true)
  major=${version%%.*}
  case $major in
    12 | 13) ;;
    *) die "$nvcc is CUDA ${version:-of an unknown version}; this build wants CUDA 12 or 13" "install CUDA 12 or 13; or: $CPU_FIX" ;;
  esac
  root=$("$nvcc" --dryrun -c -x cu /dev/null -o /dev/null 2>&1 | sed -n 's/^#\$ TOP=//p' | head -n 1 || true)
  [ -n "$root" ] || root=$(dirname "$nvcc")/..
  root=$(cd "$root" 2>/dev/null && pwd || printf '%s' "$root")
  arch=${QWYTHOS_CUDA_ARCH:-}
  if [ -z "$arch" ] && have nvidia-smi; then  # this machine's GPUs, e.g. "9.0" -> 90
    arch=$(nvidia-smi --query-gpu=compute_cap --format=csv,noheader 2>/dev/null | tr -d '. \r' | grep -E '^[0-9]+$' | sort -u | tr '\n' ';' | sed 's/;$//' || true)
  fi
  [ -n "$arch" ] || die "a CUDA build needs the GPU's architecture, and no nvidia-smi here reports it" \
    "set QWYTHOS_CUDA_ARCH: 90 (H100, H200), 89 (RTX 40xx, L4, L40), 86 (RTX 30xx, A10), 80 (A100), 120 (RTX 50xx), several as '86;89'; or: $CPU_FIX"
  KEYED="-DGGML_CUDA=ON '-DCMAKE_CUDA_ARCHITECTURES=$arch'"
  note "CUDA $version at $root; GPU architecture $arch"
  # ggml's CUDA virtual-memory pool links libcuda (the driver, or the toolkit's stub). A machine
  # without either (a build container) builds without the pool: same results, the legacy pool.
  if [ -z "$(first_file "$root"/lib64/stubs/libcuda.so "$root"/lib/stubs/libcuda.so "$root"/targets/*/lib/stubs/libcuda.so)" ] &&
    ! { have ldconfig && ldconfig -p 2>/dev/null | grep -q 'libcuda\.so'; }; then
    KEYED="$KEYED -DGGML_CUDA_NO_VMM=ON"
    note "no libcuda (driver or toolkit stub) to link: built without ggml's CUDA virtual-memory pool (GGML_CUDA_NO_VMM)"
  fi
  # Run time: the wheel finds PyPI's nvidia-* libraries next to it (site-packages/nvidia/...),
  # whatever the toolkit's place, through a RUNPATH relative to llama_cpp/lib. ($ORIGIN reaches
  # CMake as \$ORIGIN, so that the shell that runs the link command keeps it.)
  # shellcheck disable=SC2016  # a literal $ORIGIN, for the linker
  if [ "$major" = 13 ]; then
    rpath='\$ORIGIN/../../nvidia/cu13/lib'
  else
    rpath='\$ORIGIN/../../nvidia/cublas/lib:\$ORIGIN/../../nvidia/cuda_runtime/lib'
  fi
  KEYED="$KEYED '-DCMAKE_SHARED_LINKER_FLAGS=-Wl,-rpath,$rpath'"
  # cuBLAS: the toolkit's, else PyPI's (installed into this Python, where the RUNPATH looks).
  lib=$(first_file "$root"/lib64/libcublas.so "$root"/lib/libcublas.so "$root"/targets/*/lib/libcublas.so)
  if [ -n "$lib" ]; then
    note "cuBLAS: the toolkit's ($lib)"
  else
    # The same minor version as nvcc: PyPI's newest headers beside an older nvcc stop the build
    # ("CUDA compiler and CUDA toolkit headers are incompatible", measured with 13.5's beside 13.0).
    if [ "$major" = 13 ]; then
      pkg="nvidia-cublas==$version.* nvidia-cuda-runtime==$version.*"
    else
      pkg="nvidia-cublas-cu12==$version.* nvidia-cuda-runtime-cu12==$version.*"
    fi
    note "the CUDA toolkit at $root has no cuBLAS: installing PyPI's ($pkg)"
    # shellcheck disable=SC2086  # two package specs
    "$PY" -m pip install -q $pkg || die "could not install PyPI's cuBLAS ($pkg)" "install the full CUDA toolkit (with cuBLAS); or: $CPU_FIX"
    for dir in $("$PY" -c 'import nvidia; print("\n".join(nvidia.__path__))' 2>/dev/null || true); do
      for sub in "cu$major" cublas; do
        if [ -z "$lib" ] && [ -f "$dir/$sub/lib/libcublas.so.$major" ]; then lib=$dir/$sub/lib/libcublas.so.$major inc=$dir/$sub/include; fi
      done
    done
    [ -n "$lib" ] || die "cuBLAS not found: neither in the CUDA toolkit at $root nor in $PY's nvidia-* packages" \
      "install the full CUDA toolkit (with cuBLAS); or: $CPU_FIX"
    PLACES="'-DCUDA_cublas_LIBRARY=$lib' '-DCUDA_cublasLt_LIBRARY=$(dirname "$lib")/libcublasLt.so.$major'"
    export CPATH="$inc${CPATH:+:$CPATH}"  # cublas_v2.h, for nvcc's host compiler
    note "cuBLAS: PyPI's ($lib)"
  fi
  NEEDS="the CUDA toolkit at $root (nvcc $version) with cuBLAS, and a host C++ compiler that nvcc $version accepts"
}
case $BACKEND in
  cpu)
    if [ "$OS" = Darwin ]; then note "llama-cpp-python compiles Metal into every macOS build; -ngl 0 keeps a model off it"; fi
    ;;
  metal)
    [ "$OS" = Darwin ] || die "Metal is Apple's GPU API: QWYTHOS_BACKEND=metal builds only on macOS" "$CPU_FIX"
    KEYED="-DGGML_METAL=ON"
    NEEDS="Xcode's command line tools (xcode-select --install)"
    ;;
  cuda) cuda_setup ;;
  vulkan)
    have glslc || die "a Vulkan build needs glslc (the shader compiler), and none is on PATH" \
      "install the Vulkan SDK, or on Debian/Ubuntu: apt-get install libvulkan-dev glslc glslang-tools spirv-headers; or: $CPU_FIX"
    KEYED="-DGGML_VULKAN=ON"
    NEEDS="the Vulkan headers and loader (libvulkan-dev; headers newer than Debian 12's 1.3.239, which lack vk::LayerSettingEXT), glslc and SPIR-V headers"
    ;;
  hip)
    [ "$OS" != Darwin ] || die "ROCm (HIP) does not exist on macOS" "use QWYTHOS_BACKEND=metal on Apple Silicon, or: $CPU_FIX"
    HIPCONFIG=$(command -v hipconfig || first_file /opt/rocm/bin/hipconfig)
    [ -n "$HIPCONFIG" ] || die "a HIP build needs AMD's ROCm (hipconfig), and none was found on PATH or in /opt/rocm" "install ROCm; or: $CPU_FIX"
    HIPCXX="$("$HIPCONFIG" -l)/clang"
    HIP_PATH=$("$HIPCONFIG" -R)
    export HIPCXX HIP_PATH
    HIP_ARCH=${QWYTHOS_HIP_ARCH:-}
    if [ -z "$HIP_ARCH" ] && have rocminfo; then
      HIP_ARCH=$(rocminfo 2>/dev/null | grep -o 'gfx[0-9a-f]*' | grep -v '^gfx000$' | sort -u | tr '\n' ';' | sed 's/;$//' || true)
    fi
    [ -n "$HIP_ARCH" ] || die "a HIP build needs the GPU's architecture, and no rocminfo here reports it" "set QWYTHOS_HIP_ARCH (e.g. gfx1100 for RX 7900, gfx90a for MI210); or: $CPU_FIX"
    KEYED="-DGGML_HIP=ON '-DGPU_TARGETS=$HIP_ARCH'"
    note "ROCm at $HIP_PATH; GPU architecture $HIP_ARCH"
    NEEDS="ROCm at $HIP_PATH with hipBLAS and rocBLAS"
    ;;
esac

EXTRA_CMAKE=${CMAKE_ARGS:-}
[ "${QWYTHOS_RPC:-1}" = 1 ] && EXTRA_CMAKE="-DGGML_RPC=ON${EXTRA_CMAKE:+ $EXTRA_CMAKE}"
EXTRA_CMAKE="$KEYED${KEYED:+${EXTRA_CMAKE:+ }}$EXTRA_CMAKE"
KEY=$FLAGS
[ -n "$EXTRA_CMAKE" ] && KEY="$FLAGS|$EXTRA_CMAKE"
TAG=$(printf '%s' "$KEY" | hash8)
SRC=$CACHE/src
WHEELS=$CACHE/wheels/llama-cpp-python-$LLAMA_VERSION-$TAG
SDIST=$SRC/llama_cpp_python-$LLAMA_VERSION.tar.gz

note "C/C++ flags: ${FLAGS:-none}; CMake: ${EXTRA_CMAKE:-none}; wheel cache: $WHEELS"

mkdir -p "$SRC" "$WHEELS"
if [ ! -f "$SDIST" ]; then
  say "downloading the llama-cpp-python $LLAMA_VERSION source distribution"
  "$PY" -m pip download --no-deps --no-binary :all: "llama-cpp-python==$LLAMA_VERSION" -d "$SRC"
fi
[ -d "$SRC/llama_cpp_python-$LLAMA_VERSION" ] || tar -xzf "$SDIST" -C "$SRC"

WHEEL=$(first_file "$WHEELS"/llama_cpp_python-"$LLAMA_VERSION"-*.whl)
if [ -z "$WHEEL" ]; then
  case $BACKEND in
    cuda) TIME="about 40 minutes on 2 cores for one GPU architecture, a few on 16" ;;
    *) TIME="about 4 minutes on 2 cores" ;;
  esac
  say "building llama-cpp-python $LLAMA_VERSION for $BACKEND ($TIME)"
  PARTIAL=$(mktemp -d "$WHEELS.partial.XXXXXX")  # one per run: two installs at once do not collide
  if ! CMAKE_ARGS="-DCMAKE_C_FLAGS='$FLAGS' -DCMAKE_CXX_FLAGS='$FLAGS' $EXTRA_CMAKE${PLACES:+ $PLACES}" \
    "$PY" -m pip wheel --no-deps --no-cache-dir "$SDIST" -w "$PARTIAL"; then
    rm -rf "$PARTIAL"
    if [ "$BACKEND" = cpu ]; then
      die "the build of llama-cpp-python failed (the compiler's messages are above)" \
        "a C/C++ compiler and CMake 3.21+ are needed (Debian/Ubuntu: apt-get install build-essential cmake; macOS: xcode-select --install)"
    fi
    die "the $BACKEND build of llama-cpp-python failed (the compiler's messages are above); it needs $NEEDS" "$CPU_FIX"
  fi
  mv -f "$PARTIAL"/*.whl "$WHEELS"/ && rm -rf "$PARTIAL"
  WHEEL=$(first_file "$WHEELS"/llama_cpp_python-"$LLAMA_VERSION"-*.whl)
fi
say "installing $WHEEL"
"$PY" -m pip install -q "$WHEEL"
"$PY" -m pip install -q --no-deps --force-reinstall "$WHEEL"
if [ "$BACKEND" != cpu ] && ! LOAD=$("$PY" -c 'import llama_cpp' 2>&1); then
  printf '%s\n' "$LOAD" | tail -n 3 >&2
  die "the $BACKEND build installed but its library does not load (above: the library it could not find)" \
    "it needs $NEEDS at run time; or: $CPU_FIX"
fi

if [[ ",$EXTRAS," == *",ref,"* ]] && ! "$PY" -c "import torch" 2>/dev/null; then
  # A CPU build; a bare `torch` requirement would pull a multi-GB CUDA build.
  "$PY" -m pip install -q "torch==2.13.0"
fi
say "installing qwythos${EXTRAS:+[$EXTRAS]}"
if [ "${QWYTHOS_EDITABLE:-1}" = 1 ]; then
  "$PY" -m pip install -q -e "$HERE${EXTRAS:+[$EXTRAS]}"
else  # a built wheel, as a user's `pip install` gets it (CI checks that nothing is missing from it)
  "$PY" -m pip install -q "$HERE${EXTRAS:+[$EXTRAS]}"
fi
"$PY" -m qwythos.core.llamacpp.probe --quiet || {
  echo "warning: the llama.cpp build failed its crash probe; run 'qwythos doctor'" >&2
}
say "done: try 'qwythos doctor' and 'qwythos demo'"
