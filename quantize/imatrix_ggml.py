"""The few pieces of ggml an importance-matrix collector reads: a graph node's struct, its operation,
its name, and its data as a numpy array.

llama.cpp hands the scheduler's eval callback (`cb_eval`) a `struct ggml_tensor *` per graph node.
`GGMLTensor` mirrors that struct as ggml.h (the pinned llama.cpp) declares it; `check_layout` checks
it against the running library once (the struct's size through `ggml_tensor_overhead`, the op ids
through `ggml_op_name`), so a llama.cpp with another layout is one message, never a misread.
"""

from __future__ import annotations

import ctypes
import functools

import numpy as np

from qwythos.core.errors import QwythosError

GGML_MAX_DIMS = 4
GGML_MAX_SRC = 10
GGML_MAX_OP_PARAMS = 64
GGML_MAX_NAME = 64
GGML_OBJECT_SIZE = 32  # struct ggml_object: offs, size, next, type + padding

#: enum ggml_op values of the pinned llama.cpp, checked against ggml_op_name at first use
OP_MUL_MAT = 29
OP_MUL_MAT_ID = 30
OP_NAMES = {OP_MUL_MAT: b"MUL_MAT", OP_MUL_MAT_ID: b"MUL_MAT_ID"}


class GGMLTensor(ctypes.Structure):
    """struct ggml_tensor (ggml/include/ggml.h)."""

    _fields_ = [
        ("type", ctypes.c_int),
        ("buffer", ctypes.c_void_p),
        ("ne", ctypes.c_int64 * GGML_MAX_DIMS),
        ("nb", ctypes.c_size_t * GGML_MAX_DIMS),
        ("op", ctypes.c_int),
        ("op_params", ctypes.c_int32 * (GGML_MAX_OP_PARAMS // 4)),
        ("flags", ctypes.c_int32),
        ("src", ctypes.c_void_p * GGML_MAX_SRC),
        ("view_src", ctypes.c_void_p),
        ("view_offs", ctypes.c_size_t),
        ("data", ctypes.c_void_p),
        ("name", ctypes.c_char * GGML_MAX_NAME),
        ("extra", ctypes.c_void_p),
        ("padding", ctypes.c_char * 8),
    ]


def tensor_at(address: int) -> GGMLTensor:
    """The node at `address` (a view onto llama.cpp's memory, not a copy)."""
    return GGMLTensor.from_address(address)


@functools.cache
def libggml() -> ctypes.CDLL:
    from llama_cpp import _ggml

    lib = _ggml.libggml
    for fn, res, args in (
        ("ggml_tensor_overhead", ctypes.c_size_t, []),
        ("ggml_op_name", ctypes.c_char_p, [ctypes.c_int]),
        ("ggml_nbytes", ctypes.c_size_t, [ctypes.c_void_p]),
        ("ggml_backend_buffer_is_host", ctypes.c_bool, [ctypes.c_void_p]),
        (
            "ggml_backend_tensor_get",
            None,
            [ctypes.c_void_p, ctypes.c_void_p, ctypes.c_size_t, ctypes.c_size_t],
        ),
    ):
        f = getattr(lib, fn)
        f.restype = res
        f.argtypes = args
    return lib


@functools.cache
def check_layout() -> None:
    """Refuse a llama.cpp build whose ggml_tensor or op numbering differs from ours."""
    lib = libggml()
    size = ctypes.sizeof(GGMLTensor) + GGML_OBJECT_SIZE
    ops = {op: lib.ggml_op_name(op) for op in OP_NAMES}
    if lib.ggml_tensor_overhead() != size or ops != OP_NAMES:
        raise QwythosError(
            f"this llama.cpp build lays out ggml tensors differently (tensor overhead "
            f"{lib.ggml_tensor_overhead()} != {size}, or ops {ops})",
            "install the pinned llama-cpp-python with `bash install.sh`",
        )


def weight_name(raw: bytes) -> str:
    """A weight's GGUF name from a node's src0 name: backends may copy weights as
    'CUDA0#blk.0.attn_k.weight#0'; llama-imatrix keeps the part between the '#'s."""
    name = raw.decode("utf-8", "replace")
    if "#" in name:
        name = name.split("#", 2)[1]
    return name


def host_bytes(t: GGMLTensor, address: int) -> tuple[int, object | None]:
    """(address of t's data in host memory, a buffer that keeps a device copy alive)."""
    lib = libggml()
    if not t.buffer or lib.ggml_backend_buffer_is_host(t.buffer):
        return int(t.data or 0), None
    n = lib.ggml_nbytes(address)
    buf = (ctypes.c_uint8 * n)()
    lib.ggml_backend_tensor_get(address, buf, 0, n)
    return ctypes.addressof(buf), buf


def as_array(t: GGMLTensor, address: int, dtype: type) -> tuple[np.ndarray, object | None]:
    """The node's data as a numpy view of shape (ne3, ne2, ne1, ne0) with ggml's byte strides,
    copied to host memory first when it lives on a device."""
    ptr, keep = host_bytes(t, address)
    ne = [int(t.ne[i]) for i in range(GGML_MAX_DIMS)]
    nb = [int(t.nb[i]) for i in range(GGML_MAX_DIMS)]
    span = sum((n - 1) * s for n, s in zip(ne, nb, strict=True)) + np.dtype(dtype).itemsize
    raw = (ctypes.c_uint8 * span).from_address(ptr)
    arr = np.ndarray(shape=ne[::-1], dtype=dtype, buffer=raw, strides=nb[::-1])
    return arr, keep
