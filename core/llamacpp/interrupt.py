"""Ctrl-C and SIGTERM stop llama.cpp within seconds, and Python cleans up on the way out.

Python runs its signal handlers only between bytecodes of the main thread, so a Ctrl-C that arrives
while llama.cpp computes (a long prefill, a perplexity window) would wait for the C call to end, and
one that lands in a ctypes callback is printed as "Exception ignored" and lost. Here:

- `install()` (once, from the main thread) makes SIGTERM raise KeyboardInterrupt like Ctrl-C, and
  routes both signals through `signal.set_wakeup_fd` to a small thread that raises a one-byte flag
  at once, even while the main thread is inside llama.cpp;
- `attach(ctx)` gives a llama context an abort callback that reads that flag natively (libc
  `strlen` of the flag buffer: 0 until the flag is raised), so ggml stops at its next graph node
  without calling into Python once per node; `llama_decode` then returns 2 and the pending
  KeyboardInterrupt surfaces;
- `deferred()` holds both signals back during a C call whose callbacks are Python (the quantizer's
  log), and raises KeyboardInterrupt when the call returns.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import signal
import threading
from collections.abc import Iterator

_FLAG = ctypes.create_string_buffer(2)  # b"\0\0"; b"\1\0" once a stop was asked for
_FN = None  # the native abort callback (kept alive for the process)
_INSTALLED = False
_SIGNALS = (signal.SIGINT, signal.SIGTERM)


def requested() -> bool:
    """True when Ctrl-C / SIGTERM arrived since the last `clear()`."""
    return _FLAG.raw[0] != 0


def clear() -> None:
    _FLAG[0] = b"\0"


def request() -> None:
    _FLAG[0] = b"\1"


def _sigterm(signum, frame) -> None:  # noqa: ANN001 - signal handler signature
    request()
    raise KeyboardInterrupt


def _watch(fd: int) -> None:
    while True:
        try:
            data = os.read(fd, 64)
        except OSError:
            return
        if not data:
            return
        if any(b in (int(s) for s in _SIGNALS) for b in data):
            request()


def install() -> None:
    """SIGTERM behaves like Ctrl-C, and both raise the abort flag at once. Main thread only."""
    global _INSTALLED
    if _INSTALLED or threading.current_thread() is not threading.main_thread():
        return
    if signal.getsignal(signal.SIGTERM) in (signal.SIG_DFL, None):
        signal.signal(signal.SIGTERM, _sigterm)
    r, w = os.pipe()
    os.set_blocking(w, False)
    try:
        signal.set_wakeup_fd(w, warn_on_full_buffer=False)
    except (ValueError, OSError):
        os.close(r)
        os.close(w)
        return
    threading.Thread(target=_watch, args=(r,), name="qwythos-signals", daemon=True).start()
    _INSTALLED = True


def _native_callback():
    global _FN
    if _FN is None:
        import llama_cpp

        strlen = ctypes.CDLL(None).strlen
        _FN = ctypes.cast(ctypes.cast(strlen, ctypes.c_void_p).value, llama_cpp.ggml_abort_callback)
    return _FN


def attach(ctx_handle) -> None:  # noqa: ANN001 - a llama_context pointer
    """Let a llama context stop at its next graph node once Ctrl-C / SIGTERM arrives."""
    import llama_cpp

    llama_cpp.llama_set_abort_callback(ctx_handle, _native_callback(), ctypes.addressof(_FLAG))


@contextlib.contextmanager
def deferred() -> Iterator[None]:
    """Hold Ctrl-C / SIGTERM back during the block (a C call with Python callbacks), then raise."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    got: list[int] = []

    def hold(signum, frame) -> None:  # noqa: ANN001
        got.append(signum)

    old = {s: signal.signal(s, hold) for s in _SIGNALS}
    try:
        yield
    finally:
        for s, h in old.items():
            signal.signal(s, h)
    if got:
        clear()
        raise KeyboardInterrupt
