"""install.sh on every machine our users have, run here with stand-ins: `uname` says which machine,
`nvidia-smi` and `nvcc` are there or not, and a stand-in python records the build it is asked for
(the CMake and C flags, the packages) instead of building. PATH holds only the tools install.sh may
use (macOS gets `shasum`, not GNU's `sha256sum`), so a foreign tool fails here. The C flags it
would pass are then compiled for the machine's own target: gcc, aarch64-linux-gnu-gcc and
clang-19 --target=*-apple-macos (.ci/run installs the cross compilers)."""

from __future__ import annotations

import hashlib
import os
import re
import shlex
import shutil
import stat
import subprocess
from dataclasses import dataclass
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
INSTALL = ROOT / "install.sh"
VERSION = "0.3.36"
NO_AMX = "-mno-amx-tile -mno-amx-int8 -mno-amx-bf16"
#: What install.sh may call on any machine (macOS ships these too; GNU's sha256sum only on Linux).
TOOLS = ("bash", "sh", "cat", "cut", "head", "tail", "tr", "sed", "grep", "sort", "mkdir", "tar")
TOOLS += ("mktemp", "mv", "rm", "ls", "dirname", "touch", "printf", "perl", "gzip")
#: The compiler that builds for each machine, and the options that make it do so.
COMPILERS = {
    ("Linux", "x86_64"): ["gcc"],
    ("Linux", "aarch64"): ["aarch64-linux-gnu-gcc"],
    ("Darwin", "arm64"): ["clang-19", "--target=arm64-apple-macos"],
    ("Darwin", "x86_64"): ["clang-19", "--target=x86_64-apple-macos"],
}
C_SOURCE = "float dot(const float *a, const float *b, int n) { float s = 0; for (int i = 0; i < n; i++) s += a[i] * b[i]; return s; }\n"

STAND_IN_PYTHON = r"""#!/bin/sh
# records every call (and the build's environment) instead of running Python
{ printf 'CALL'; for a in "$@"; do printf ' %s' "$a"; done; printf '\n'; } >> "$RECORD"
case "$*" in
  *"pip wheel"*)
    printf 'CMAKE_ARGS=%s\n' "$CMAKE_ARGS" >> "$RECORD"
    printf 'CPATH=%s\n' "${CPATH:-}" >> "$RECORD"
    [ "${FAIL_BUILD:-0}" = 1 ] && { echo "nvcc fatal: something went wrong" >&2; exit 1; }
    while [ $# -gt 0 ]; do
      if [ "$1" = -w ]; then touch "$2/llama_cpp_python-0.3.36-cp311-cp311-fake.whl"; fi
      shift
    done ;;
  *"nvidia.__path__"*) [ -n "${NVIDIA_DIR:-}" ] && printf '%s\n' "$NVIDIA_DIR" ;;
  *"pip download"*)  # the source distribution: a tarball of one empty folder
    while [ $# -gt 0 ]; do
      if [ "$1" = -d ]; then
        mkdir -p "$2/sdist/llama_cpp_python-0.3.36"
        tar -czf "$2/llama_cpp_python-0.3.36.tar.gz" -C "$2/sdist" llama_cpp_python-0.3.36 && rm -rf "$2/sdist"
      fi
      shift
    done ;;
esac
exit 0
"""
NVIDIA_SMI = """#!/bin/sh
case "$*" in
  *-L*) echo "GPU 0: NVIDIA H200 (UUID: GPU-0000)" ;;
  *compute_cap*) echo "9.0" ;;
esac
"""


def _script(path: Path, text: str) -> Path:
    path.write_text(text)
    path.chmod(path.stat().st_mode | stat.S_IEXEC)
    return path


@dataclass
class Run:
    returncode: int
    out: str
    calls: list[str]
    cmake_args: list[str]
    cpath: str
    cache: Path

    @property
    def c_flags(self) -> list[str]:
        flags = [a.split("=", 1)[1] for a in self.cmake_args if a.startswith("-DCMAKE_C_FLAGS=")]
        return shlex.split(flags[0]) if flags else []

    def cmake(self, name: str) -> str | None:
        found = [a.split("=", 1)[1] for a in self.cmake_args if a.startswith(f"-D{name}=")]
        return found[-1] if found else None

    @property
    def wheel_dirs(self) -> list[str]:
        return sorted(p.name for p in (self.cache / "wheels").iterdir() if "partial" not in p.name)


class Machine:
    """A stand-in machine: its PATH, its cache, and what it has installed."""

    def __init__(self, tmp: Path, os_name: str, arch: str) -> None:
        self.tmp, self.os_name, self.arch = tmp, os_name, arch
        self.bin = tmp / "bin"
        self.bin.mkdir(parents=True)
        tools = TOOLS + (("shasum",) if os_name == "Darwin" else ("sha256sum",))
        for tool in tools:
            real = shutil.which(tool)
            assert real, f"{tool} is missing on this machine"
            (self.bin / tool).symlink_to(real)
        _script(
            self.bin / "uname", f'#!/bin/sh\ncase "$1" in -s) echo {os_name} ;; -m) echo {arch} ;; esac\n'
        )
        self.python = _script(tmp / "python", STAND_IN_PYTHON)
        self.cache = tmp / "cache"  # with the source distribution already unpacked
        (self.cache / "src" / f"llama_cpp_python-{VERSION}").mkdir(parents=True)
        (self.cache / "src" / f"llama_cpp_python-{VERSION}.tar.gz").touch()
        self.home = tmp / "home"
        self.home.mkdir()

    def add_nvidia_gpu(self, *, cublas: bool = True, libcuda_stub: bool = True) -> Path:
        """nvidia-smi, and CUDA 13.0's nvcc with a toolkit folder (cuBLAS and the libcuda stub optional)."""
        _script(self.bin / "nvidia-smi", NVIDIA_SMI)
        return self.add_cuda_toolkit(cublas=cublas, libcuda_stub=libcuda_stub)

    def add_cuda_toolkit(self, *, cublas: bool = True, libcuda_stub: bool = True) -> Path:
        root = self.tmp / "cuda-13.0"
        (root / "lib64" / "stubs").mkdir(parents=True, exist_ok=True)
        (root / "bin").mkdir(exist_ok=True)
        if cublas:
            (root / "lib64" / "libcublas.so").touch()
        if libcuda_stub:
            (root / "lib64" / "stubs" / "libcuda.so").touch()
        _script(
            self.bin / "nvcc",
            "#!/bin/sh\n"
            'case "$*" in\n'
            '  *--version*) echo "Cuda compilation tools, release 13.0, V13.0.88" ;;\n'
            f'  *--dryrun*) echo "#\\$ TOP={root}/bin/.." >&2 ;;\n'
            "esac\n",
        )
        return root

    def run(self, extras: str = "", **env: str) -> Run:
        record = self.tmp / "record.txt"
        record.write_text("")
        full = {
            "PATH": str(self.bin),
            "HOME": str(self.home),
            "RECORD": str(record),
            "PYTHON": str(self.python),
        }
        full.setdefault("QWYTHOS_CACHE", str(self.cache))
        full.update(env)
        full = {k: v for k, v in full.items() if v is not None}
        bash = shutil.which("bash")
        proc = subprocess.run(
            [bash, str(INSTALL), *([extras] if extras else [])],
            env=full,
            capture_output=True,
            text=True,
            timeout=60,
        )
        lines = record.read_text().splitlines()
        cmake = [line.split("=", 1)[1] for line in lines if line.startswith("CMAKE_ARGS=")]
        cpath = [line.split("=", 1)[1] for line in lines if line.startswith("CPATH=")]
        return Run(
            proc.returncode,
            proc.stdout + proc.stderr,
            [line[5:] for line in lines if line.startswith("CALL ")],
            shlex.split(cmake[0]) if cmake else [],
            cpath[0] if cpath else "",
            Path(full.get("QWYTHOS_CACHE") or self.cache),
        )


def compile_for(machine: tuple[str, str], flags: list[str], tmp: Path) -> subprocess.CompletedProcess:
    compiler = COMPILERS[machine]
    if not shutil.which(compiler[0]):
        pytest.skip(
            f"{compiler[0]} is not installed (.ci/run installs it: apt-get install gcc-aarch64-linux-gnu clang-19)"
        )
    src = tmp / "probe.c"
    src.write_text(C_SOURCE)
    return subprocess.run(
        [*compiler, *flags, "-c", str(src), "-o", str(tmp / "probe.o")], capture_output=True, text=True
    )


#: (os, arch, NVIDIA GPU) -> the backend install.sh must build
MATRIX = {
    ("Linux", "x86_64", False): "cpu",
    ("Linux", "x86_64", True): "cuda",
    ("Linux", "aarch64", False): "cpu",
    ("Linux", "aarch64", True): "cuda",  # DGX Spark, Jetson, GH200
    ("Darwin", "arm64", False): "metal",
    ("Darwin", "arm64", True): "metal",  # an nvidia-smi on a Mac changes nothing
    ("Darwin", "x86_64", False): "cpu",
    ("Darwin", "x86_64", True): "cpu",
}


@pytest.mark.parametrize(("os_name", "arch", "nvidia"), list(MATRIX), ids=lambda v: str(v))
def test_install_matrix(tmp_path, os_name, arch, nvidia):
    m = Machine(tmp_path, os_name, arch)
    if nvidia:
        m.add_nvidia_gpu()
    r = m.run()
    assert r.returncode == 0, r.out
    backend = MATRIX[(os_name, arch, nvidia)]
    assert f"== machine: {os_name} {arch}; backend: {backend} (auto: " in r.out
    x86 = arch == "x86_64"
    assert r.c_flags == (NO_AMX.split() if x86 else [])  # nothing foreign on ARM
    assert r.cmake("CMAKE_CXX_FLAGS") == (NO_AMX if x86 else "")
    assert "-DGGML_RPC=ON" in r.cmake_args  # RPC everywhere
    assert ("-DGGML_CUDA=ON" in r.cmake_args) == (backend == "cuda")
    assert ("-DGGML_METAL=ON" in r.cmake_args) == (backend == "metal")
    if backend == "cuda":
        assert r.cmake("CMAKE_CUDA_ARCHITECTURES") == "90"  # nvidia-smi's compute capability 9.0
        assert r.cmake("CMAKE_SHARED_LINKER_FLAGS") == r"-Wl,-rpath,\$ORIGIN/../../nvidia/cu13/lib"
        assert "-DGGML_CUDA_NO_VMM=ON" not in r.cmake_args  # the toolkit's libcuda stub links
    # the order of the work: install the wheel, check it loads (GPU builds), qwythos, the probe
    assert any(c.startswith("-m pip wheel --no-deps --no-cache-dir") for c in r.calls)
    assert any(c.startswith("-m pip install -q -e ") for c in r.calls)
    assert r.calls[-1] == "-m qwythos.core.llamacpp.probe --quiet"
    assert ("-c import llama_cpp" in r.calls) == (backend != "cpu")
    # the flags compile for this machine's target
    proc = compile_for((os_name, arch), r.c_flags, tmp_path)
    assert proc.returncode == 0, proc.stderr


@pytest.mark.parametrize(("os_name", "arch"), [("Linux", "aarch64"), ("Darwin", "arm64")])
def test_the_old_unconditional_flags_fail_on_arm(tmp_path, os_name, arch):
    """What the matrix guards against: the x86 options break every ARM build."""
    proc = compile_for((os_name, arch), NO_AMX.split(), tmp_path)
    assert proc.returncode != 0 and "amx" in proc.stderr


def test_the_cpu_wheel_key_is_unchanged_and_each_backend_and_architecture_has_its_own(tmp_path):
    m = Machine(tmp_path / "x86", "Linux", "x86_64")
    cpu = m.run()
    # the CPU build's key is what it was before backends existed: an installed wheel is reused
    old = hashlib.sha256(f"{NO_AMX}|-DGGML_RPC=ON".encode()).hexdigest()[:8]
    assert cpu.wheel_dirs == [f"llama-cpp-python-{VERSION}-{old}"]
    m.add_nvidia_gpu()
    assert m.run().returncode == 0
    assert m.run(QWYTHOS_CUDA_ARCH="89").returncode == 0
    assert m.run(QWYTHOS_BACKEND="cpu").returncode == 0  # back to the cached CPU wheel
    assert len(set(m.run().wheel_dirs)) == 3  # cpu, cuda sm_90, cuda sm_89
    again = m.run(QWYTHOS_BACKEND="cpu")
    assert not any("pip wheel" in c for c in again.calls)  # reused, not rebuilt


def test_cache_folder_follows_fileio_cache_dir(tmp_path):
    m = Machine(tmp_path, "Linux", "x86_64")
    xdg = tmp_path / "xdg"
    r = m.run(QWYTHOS_CACHE="", XDG_CACHE_HOME=str(xdg))
    assert r.returncode == 0, r.out
    assert (xdg / "qwythos" / "wheels").is_dir() and (xdg / "qwythos" / "src").is_dir()
    r = m.run(QWYTHOS_CACHE="", XDG_CACHE_HOME="relative/path")  # not absolute: ignored
    assert r.returncode == 0 and (m.home / ".cache" / "qwythos" / "wheels").is_dir()
    assert not (tmp_path / "relative").exists()


def test_a_cuda_build_uses_pypi_cublas_where_the_toolkit_has_none(tmp_path):
    m = Machine(tmp_path, "Linux", "x86_64")
    m.add_nvidia_gpu(cublas=False, libcuda_stub=False)
    site = tmp_path / "site-packages" / "nvidia"
    (site / "cu13" / "lib").mkdir(parents=True)
    (site / "cu13" / "lib" / "libcublas.so.13").touch()
    r = m.run(NVIDIA_DIR=str(site))
    assert r.returncode == 0, r.out
    # pinned to nvcc's minor version: newer headers beside it stop the build
    assert "-m pip install -q nvidia-cublas==13.0.* nvidia-cuda-runtime==13.0.*" in r.calls
    assert r.cmake("CUDA_cublas_LIBRARY") == str(site / "cu13" / "lib" / "libcublas.so.13")
    assert r.cmake("CUDA_cublasLt_LIBRARY") == str(site / "cu13" / "lib" / "libcublasLt.so.13")
    assert r.cpath == str(site / "cu13" / "include")
    assert "-DGGML_CUDA_NO_VMM=ON" in r.cmake_args  # no libcuda to link on a machine without the driver


@pytest.mark.parametrize(
    ("env", "needs", "missing"),
    [
        ({"QWYTHOS_BACKEND": "cuda", "CUDA_HOME": "/nonexistent"}, "nvcc", "none was found"),
        ({"QWYTHOS_BACKEND": "metal"}, "only on macOS", "Metal"),
        ({"QWYTHOS_BACKEND": "vulkan"}, "glslc", "none is on PATH"),
        ({"QWYTHOS_BACKEND": "hip"}, "hipconfig", "ROCm"),
        ({"QWYTHOS_BACKEND": "tpu"}, "not a backend", "auto, cpu, cuda"),
    ],
)
def test_a_gpu_build_that_cannot_be_made_is_one_message_with_the_cpu_fallback(tmp_path, env, needs, missing):
    m = Machine(tmp_path, "Linux", "x86_64")
    r = m.run(**env)
    assert r.returncode == 1
    assert needs in r.out and missing in r.out
    assert r.out.count("error:") == 1 and "Traceback" not in r.out
    if env["QWYTHOS_BACKEND"] != "tpu":
        assert "QWYTHOS_BACKEND=cpu bash install.sh" in r.out
    assert not any("pip wheel" in c for c in r.calls)  # stopped before a long build


def test_a_toolkit_without_a_gpu_builds_for_the_cpu_unless_told_the_architecture(tmp_path):
    """This machine's case (and CI's): nvcc on PATH, no GPU. auto keeps the CPU build, saying how to
    get a CUDA one; asked for CUDA without an architecture, it says which setting is missing."""
    m = Machine(tmp_path, "Linux", "x86_64")
    m.add_cuda_toolkit()
    r = m.run()
    assert r.returncode == 0 and "backend: cpu (auto: nvcc found but no GPU" in r.out
    assert "QWYTHOS_BACKEND=cuda QWYTHOS_CUDA_ARCH=90" in r.out and "-DGGML_CUDA=ON" not in r.cmake_args
    r = m.run(QWYTHOS_CUDA_ARCH="90")
    assert r.returncode == 0 and "backend: cuda (auto: nvcc (the CUDA toolkit) found" in r.out
    assert r.cmake("CMAKE_CUDA_ARCHITECTURES") == "90"
    r = m.run(QWYTHOS_BACKEND="cuda")
    assert r.returncode == 1 and "QWYTHOS_CUDA_ARCH" in r.out and "90 (H100, H200)" in r.out


def test_a_failed_gpu_build_names_what_it_needs_and_the_cpu_build(tmp_path):
    m = Machine(tmp_path, "Linux", "x86_64")
    m.add_nvidia_gpu()
    r = m.run(FAIL_BUILD="1")
    assert r.returncode == 1
    assert "error: the cuda build of llama-cpp-python failed" in r.out and "CUDA toolkit" in r.out
    assert "QWYTHOS_BACKEND=cpu bash install.sh" in r.out
    assert not list((m.cache / "wheels").glob("*/*.whl"))  # nothing half-built is kept


@pytest.mark.parametrize(
    ("backend", "tool", "flags"),
    [
        ("vulkan", "glslc", ["-DGGML_VULKAN=ON"]),
        ("hip", "hipconfig", ["-DGGML_HIP=ON", "-DGPU_TARGETS=gfx1100"]),
    ],
)
def test_vulkan_and_hip_builds_are_selectable(tmp_path, backend, tool, flags):
    """No run here (Debian 12's Vulkan headers are too old for ggml-vulkan, and there is no ROCm):
    the choice and its flags, on both Linux machines."""
    for arch in ("x86_64", "aarch64"):
        m = Machine(tmp_path / arch, "Linux", arch)
        _script(
            m.bin / tool,
            '#!/bin/sh\ncase "$1" in -l) echo /opt/rocm/llvm/bin ;; -R) echo /opt/rocm ;; esac\n',
        )
        r = m.run(QWYTHOS_BACKEND=backend, QWYTHOS_HIP_ARCH="gfx1100")
        assert r.returncode == 0, r.out
        assert all(f in r.cmake_args for f in flags) and "-DGGML_RPC=ON" in r.cmake_args
        assert r.c_flags == (NO_AMX.split() if arch == "x86_64" else [])
        proc = compile_for(("Linux", arch), r.c_flags, tmp_path)
        assert proc.returncode == 0, proc.stderr


def test_shell_scripts_parse_and_pass_shellcheck():
    scripts = [
        INSTALL,
        ROOT / ".ci" / "run",
        ROOT / "bench" / "gpu_check.sh",
        ROOT / "bench" / "cuda_build_check.sh",
    ]
    for s in scripts:
        assert subprocess.run(["bash", "-n", str(s)], capture_output=True).returncode == 0, s
    if not shutil.which("shellcheck"):
        pytest.skip("shellcheck is not installed (.ci/run installs it)")
    proc = subprocess.run(["shellcheck", *map(str, scripts)], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout


def test_no_bash_4_constructs_in_install_sh():
    """macOS ships bash 3.2: no associative arrays, case conversion, mapfile, |& or &>>."""
    code = "\n".join(
        line.split(" #")[0] for line in INSTALL.read_text().splitlines() if not line.startswith("#")
    )
    assert not re.search(r"declare -A|\$\{\w+(,,|\^\^)|\bmapfile\b|\breadarray\b|\|&|&>>|\bcoproc\b", code)


def test_the_reference_source_is_where_install_sh_unpacks_it(tmp_path, monkeypatch):
    """testing/reference.py looks in the cache folder by the same rule as install.sh (the suite
    recorded the real one in QWYTHOS_LLAMA_CPP_SRC before pointing the cache at a temp folder)."""
    from qwythos.testing import reference

    assert reference.SDIST_TREE == f"src/llama_cpp_python-{VERSION}/vendor/llama.cpp"
    monkeypatch.setenv("QWYTHOS_CACHE", str(tmp_path / "own"))
    assert reference.default_source() == tmp_path / "own" / reference.SDIST_TREE
    monkeypatch.setenv("QWYTHOS_CACHE", "")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert reference.default_source() == tmp_path / "xdg" / "qwythos" / reference.SDIST_TREE
    assert (Path(os.environ[reference.ENV_VAR]) / "convert_hf_to_gguf.py").is_file()
