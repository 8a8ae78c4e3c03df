"""The backends compiled into the installed llama.cpp and the devices they find, through ggml's
backend registry (ggml_backend_reg_* / ggml_backend_dev_*): name, kind and free/total memory.

A CPU build lists the CPU alone. A GPU build on a machine without a usable GPU (a CUDA build
beside an unplugged eGPU, a container started without --gpus) registers its backend with no
device and runs everything on the CPU: `missing_gpu_note()` says so in one line, and
`note_missing_gpu()` warns once per process.
"""

from __future__ import annotations

import ctypes
import warnings
from dataclasses import dataclass

from qwythos.core.llamacpp.ggml import ggml
from qwythos.core.llamacpp.log import _llama, llama_log_to

#: ggml_backend_dev_type, as the doctor names it.
DEVICE_KINDS = ("cpu", "gpu", "igpu", "accel", "meta")
#: Backends that run on the host (or over the network) rather than on a GPU of this machine.
HOST_BACKENDS = ("CPU", "BLAS", "RPC", "AMX")


@dataclass(frozen=True)
class Device:
    """One device ggml can place tensors on (memory in bytes; 0/0 where the backend cannot say)."""

    name: str  # "CPU", "CUDA0", "MTL0", "Vulkan0" ...
    description: str
    kind: str  # DEVICE_KINDS
    backend: str  # the registering backend: "CPU", "CUDA", "Metal", "RPC" ...
    free: int
    total: int


@dataclass(frozen=True)
class Backend:
    name: str
    n_devices: int


_FIRST_LOG: list[str] = []  # what ggml logged while its registry came up (a GPU backend's failure)
_NOTED = False


def _registry_log() -> list[str]:
    """Bring ggml's backend registry up (once per process; a GPU backend initialises then),
    keeping what it logs at warning level and above, which names why a GPU is missing."""
    if not _FIRST_LOG:
        lc = _llama()

        @lc.llama_log_callback
        def keep(level: int, text: bytes, _user: ctypes.c_void_p) -> None:
            if level in (3, 4) and text:  # GGML_LOG_LEVEL_WARN, _ERROR
                _FIRST_LOG.append(text.decode(errors="replace").strip())

        with llama_log_to(keep):
            ggml().ggml_backend_reg_count()
        _FIRST_LOG.append("")  # marks the registry as up
    return [line for line in _FIRST_LOG if line]


def compiled_backends() -> list[Backend]:
    """Every backend compiled into this build, with how many devices each found here."""
    _registry_log()
    lib = ggml()
    regs = (lib.ggml_backend_reg_get(i) for i in range(lib.ggml_backend_reg_count()))
    return [
        Backend(lib.ggml_backend_reg_name(r).decode(), int(lib.ggml_backend_reg_dev_count(r))) for r in regs
    ]


def list_devices() -> list[Device]:
    """Every device of this build on this machine (RPC workers registered by this process included)."""
    _registry_log()
    lib = ggml()
    out = []
    for i in range(lib.ggml_backend_dev_count()):
        dev = lib.ggml_backend_dev_get(i)
        free, total = ctypes.c_size_t(0), ctypes.c_size_t(0)
        lib.ggml_backend_dev_memory(dev, ctypes.byref(free), ctypes.byref(total))
        kind = int(lib.ggml_backend_dev_type(dev))
        reg = lib.ggml_backend_dev_backend_reg(dev)
        out.append(
            Device(
                name=(lib.ggml_backend_dev_name(dev) or b"?").decode(errors="replace"),
                description=(lib.ggml_backend_dev_description(dev) or b"").decode(errors="replace"),
                kind=DEVICE_KINDS[kind] if 0 <= kind < len(DEVICE_KINDS) else f"type {kind}",
                backend=(lib.ggml_backend_reg_name(reg) or b"?").decode() if reg else "?",
                free=int(free.value),
                total=int(total.value),
            )
        )
    return out


def missing_gpu_note(backends: list[Backend] | None = None) -> str | None:
    """One line when a GPU backend is compiled in but found no device here (everything then runs on
    the CPU); None otherwise."""
    backends = compiled_backends() if backends is None else backends
    empty = [b.name for b in backends if b.name not in HOST_BACKENDS and b.n_devices == 0]
    if not empty:
        return None
    why = next((line for line in _registry_log() if any(n.lower() in line.lower() for n in empty)), "")
    return (
        f"this llama.cpp build has {' and '.join(empty)}, but no {empty[0]} device is usable here"
        + (f" ({why})" if why else "")
        + ": everything runs on the CPU (is the GPU's driver loaded? a container needs --gpus)"
    )


def note_missing_gpu() -> None:
    """Warn once per process when a compiled GPU backend found no device (a CPU fallback)."""
    global _NOTED
    if not _NOTED:
        _NOTED = True
        note = missing_gpu_note()
        if note:
            warnings.warn(note, RuntimeWarning, stacklevel=3)
