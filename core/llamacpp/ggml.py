"""libggml of the installed llama-cpp-python (the copy libllama already uses), with the signatures
of the ggml backend API that qwythos calls: the backend registry, its devices (name, type, memory)
and the RPC backend's entry points (core/llamacpp/rpc.py)."""

from __future__ import annotations

import ctypes

_VOIDP, _SIZE, _STR = ctypes.c_void_p, ctypes.c_size_t, ctypes.c_char_p
_SIGNATURES = (
    ("ggml_backend_reg_count", _SIZE, []),
    ("ggml_backend_reg_get", _VOIDP, [_SIZE]),
    ("ggml_backend_reg_name", _STR, [_VOIDP]),
    ("ggml_backend_reg_by_name", _VOIDP, [_STR]),
    ("ggml_backend_reg_get_proc_address", _VOIDP, [_VOIDP, _STR]),
    ("ggml_backend_register", None, [_VOIDP]),
    ("ggml_backend_reg_dev_count", _SIZE, [_VOIDP]),
    ("ggml_backend_reg_dev_get", _VOIDP, [_VOIDP, _SIZE]),
    ("ggml_backend_dev_by_type", _VOIDP, [ctypes.c_int]),
    ("ggml_backend_dev_count", _SIZE, []),
    ("ggml_backend_dev_get", _VOIDP, [_SIZE]),
    ("ggml_backend_dev_type", ctypes.c_int, [_VOIDP]),
    ("ggml_backend_dev_name", _STR, [_VOIDP]),
    ("ggml_backend_dev_description", _STR, [_VOIDP]),
    ("ggml_backend_dev_memory", None, [_VOIDP, ctypes.POINTER(_SIZE), ctypes.POINTER(_SIZE)]),
    ("ggml_backend_dev_backend_reg", _VOIDP, [_VOIDP]),
)

_GGML: ctypes.CDLL | None = None


def ggml() -> ctypes.CDLL:
    """The loaded libggml, once per process (the file llama-cpp-python found for this platform)."""
    global _GGML
    if _GGML is None:
        from llama_cpp import _ggml

        lib = ctypes.CDLL(_ggml.libggml._name, mode=ctypes.RTLD_GLOBAL)
        for name, res, args in _SIGNATURES:
            fn = getattr(lib, name)
            fn.restype, fn.argtypes = res, args
        _GGML = lib
    return _GGML
