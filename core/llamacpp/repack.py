"""Weights kept out of llama.cpp's repacked CPU buffers, by tensor name, while the others keep theirs.

llama.cpp repacks quantized CPU weights into interleaved layouts for faster matrix products
(`use_extra_bufts`, "CPU_REPACK"). Its only switch is per model. Per tensor it offers buffer-type
overrides (`tensor_buft_overrides`, llama-server's `-ot PATTERN=CPU`), but an override to the CPU
buffer type still lets the repacked type win (llama-model-loader.cpp: "when overriding to a CPU
buffer, consider the extra buffer types"): the loader compares the override with
`ggml_backend_cpu_buffer_type()` by address. So the plain type given here is a copy of that type's
descriptor (the same functions, device and context) at another address: a tensor matching a
pattern is allocated as an ordinary host buffer, read from the file and used by the ordinary
kernels; every other tensor is placed as llama.cpp would place it.

The copy depends on ggml's `struct ggml_backend_buffer_type` (six function pointers, the device,
the context; ggml-backend-impl.h of the pinned llama-cpp-python). It is checked against the
original (name, alignment, host memory, device) before use; `plain_cpu_buffer_type()` returns None
when the check fails, and callers then turn repacking off for the whole model instead.
"""

from __future__ import annotations

import ctypes
from collections.abc import Sequence

from qwythos.core.llamacpp.ggml import ggml

_VOIDP = ctypes.c_void_p


class _BufferTypeInterface(ctypes.Structure):
    _fields_ = [
        (name, _VOIDP)
        for name in ("get_name", "alloc_buffer", "get_alignment", "get_max_size", "get_alloc_size", "is_host")
    ]


class _BufferType(ctypes.Structure):
    _fields_ = [("iface", _BufferTypeInterface), ("device", _VOIDP), ("context", _VOIDP)]


class TensorBufferOverride(ctypes.Structure):
    """llama.cpp's `struct llama_model_tensor_buft_override`."""

    _fields_ = [("pattern", ctypes.c_char_p), ("buft", _VOIDP)]


_PLAIN: _BufferType | None = None
_CHECKED = False


def _bind() -> ctypes.CDLL:
    lib = ggml()
    for name, res, args in (
        ("ggml_backend_cpu_buffer_type", _VOIDP, []),
        ("ggml_backend_buft_name", ctypes.c_char_p, [_VOIDP]),
        ("ggml_backend_buft_get_alignment", ctypes.c_size_t, [_VOIDP]),
        ("ggml_backend_buft_is_host", ctypes.c_bool, [_VOIDP]),
        ("ggml_backend_buft_get_device", _VOIDP, [_VOIDP]),
    ):
        fn = getattr(lib, name)
        fn.restype, fn.argtypes = res, args
    return lib


def plain_cpu_buffer_type() -> int | None:
    """The address of a CPU buffer type that llama.cpp does not replace by its repacked one (made
    once per process), or None when this build's descriptor does not look as expected."""
    global _PLAIN, _CHECKED
    if not _CHECKED:
        _CHECKED = True
        try:
            lib = _bind()
            original = lib.ggml_backend_cpu_buffer_type()
            if not original:
                return None
            copy = _BufferType.from_buffer_copy(ctypes.string_at(original, ctypes.sizeof(_BufferType)))
            address = ctypes.addressof(copy)
            same = (
                lib.ggml_backend_buft_name(address) == lib.ggml_backend_buft_name(original) == b"CPU"
                and lib.ggml_backend_buft_get_alignment(address)
                == lib.ggml_backend_buft_get_alignment(original)
                and lib.ggml_backend_buft_is_host(address)
                and lib.ggml_backend_buft_get_device(address) == lib.ggml_backend_buft_get_device(original)
            )
        except (AttributeError, OSError, ValueError):
            return None
        _PLAIN = copy if same else None
    return ctypes.addressof(_PLAIN) if _PLAIN is not None else None


def plain_overrides(patterns: Sequence[str]) -> ctypes.Array | None:
    """A NULL-terminated override list that keeps tensors matching any of `patterns` (ECMAScript
    regexes searched in the tensor name, as llama.cpp's -ot) in plain CPU buffers; None when there
    are no patterns or the plain type is unavailable. Keep the array alive until the load returns."""
    buft = plain_cpu_buffer_type() if patterns else None
    if buft is None:
        return None
    entries = [TensorBufferOverride(p.encode(), buft) for p in patterns]
    return (TensorBufferOverride * (len(entries) + 1))(*entries, TensorBufferOverride(None, None))
