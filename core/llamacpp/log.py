"""llama.cpp's library handle and its process-wide log: silenced, or routed to a callback for a block.

Library code never lets llama.cpp print to the terminal; quantize and eval collect its log lines
to name what went wrong.
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Iterator


def _llama():
    import llama_cpp

    return llama_cpp


def _ext():
    from llama_cpp import llama_cpp_ext

    return llama_cpp_ext


_LOG_LOCK = threading.RLock()  # llama.cpp's log callback is process-wide
_DROP_LOG = None  # the ctypes callback must outlive every call into llama.cpp


def _drop_log():
    global _DROP_LOG
    if _DROP_LOG is None:
        # native (libc getpid ignores its arguments): a Ctrl-C can never land in a Python log callback
        # during a model load and be lost as "Exception ignored" (core/llamacpp/interrupt.py)
        import ctypes

        getpid = ctypes.cast(ctypes.CDLL(None).getpid, ctypes.c_void_p).value
        _DROP_LOG = ctypes.cast(getpid, _llama().llama_log_callback)
    return _DROP_LOG


def quiet_llama_logs() -> None:
    """Silence llama.cpp's stderr logging (library code must not spray logs)."""
    _llama().llama_log_set(_drop_log(), None)


@contextlib.contextmanager
def llama_log_to(callback=None) -> Iterator[None]:
    """Route llama.cpp's log to `callback` (a llama_log_callback; None: drop it) for the block.

    Afterwards the log stays silenced: library code never lets llama.cpp print to the terminal.
    """
    lc = _llama()
    with _LOG_LOCK:
        lc.llama_log_set(callback if callback is not None else _drop_log(), None)
        try:
            yield
        finally:
            lc.llama_log_set(_drop_log(), None)


@contextlib.contextmanager
def llama_log_captured() -> Iterator[list[str]]:
    """Collect llama.cpp's log text for the block (every level, pieces as llama.cpp sends them:
    join them before splitting lines); silenced afterwards, as llama_log_to leaves it."""
    pieces: list[str] = []

    @_llama().llama_log_callback
    def keep(_level: int, text: bytes, _user: object) -> None:
        pieces.append((text or b"").decode(errors="replace"))

    with llama_log_to(keep):
        yield pieces
