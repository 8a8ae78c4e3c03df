"""llama.cpp's own quantizer, called through llama-cpp-python's `llama_model_quantize`.

This fills `llama_model_quantize_params` the way `llama-quantize` does: ftype, threads, output /
token-embedding types, per-tensor type overrides (`tt_overrides`, a NULL-terminated array of
regex -> ggml type), importance-matrix data (`imatrix`, a NULL-terminated array of name -> floats,
already normalised the way llama-quantize normalises a loaded file) and the matching
`quantize.imatrix.*` metadata, and `dry_run`. llama.cpp's log is captured (never printed): its
per-tensor lines drive progress and, in a dry run, tell which type each tensor would get.
"""

from __future__ import annotations

import contextlib
import ctypes
import json
import math
import re
import struct
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from gguf import GGMLQuantizationType

from qwythos.core.errors import QwythosError
from qwythos.core.gguf.file import GGUFTensorInfo
from qwythos.core.gguf.ftypes import FType, GGMLType, ggml_types
from qwythos.core.gguf.view import read_view
from qwythos.core.llamacpp import interrupt
from qwythos.core.llamacpp.log import llama_log_to

# "[  12/ 345]  blk.0.attn_q.weight - [ 4096, 8192, 1, 1], type =   bf16, size = ... MiB -> ... MiB (q4_K)"
TENSOR_LINE = re.compile(
    r"\[\s*(\d+)/\s*(\d+)\]\s+(\S+)\s+-\s+\[([^\]]*)\],\s+type =\s*(\S+),\s+"
    r"(?:converting to (\S+) \.\. )?size =\s*[\d.]+ MiB(?:\s*->\s*[\d.]+ MiB(?:\s*\((\S+)\))?)?"
)
PROGRESS_HEAD = re.compile(r"\[\s*(\d+)/\s*(\d+)\]\s+(\S+)")
ERROR_LINE = re.compile(r"failed to quantize: (.*)")
#: the fix for an importance-matrix file we cannot use
REMAKE = "make one with `qwythos imatrix MODEL.gguf`, or let quantize compute it: --imatrix auto"


@dataclass
class Imatrix:
    """Importance data per tensor name, normalised as llama-quantize uses it (mean of squares)."""

    path: Path
    entries: dict[str, np.ndarray]
    datasets: list[str] = field(default_factory=list)
    chunk_count: int = 0
    legacy: bool = False

    def has(self, tensor: str) -> bool:
        return tensor in self.entries


@dataclass
class TensorChoice:
    name: str
    ne: tuple[int, ...]  # ggml order
    src_type: str
    new_type: str

    def nbytes(self) -> int:
        t = ggml_types()[self.new_type.lower()]
        rows = 1
        for d in self.ne[1:]:
            rows *= d
        return rows * t.row_bytes(self.ne[0])


@dataclass
class QuantizeCall:
    ok: bool
    tensors: list[TensorChoice]
    error: str | None
    log: str


# ---------------------------------------------------------------- imatrix files


# the tensor types an imatrix GGUF stores its sums and counts in -> numpy dtype of the raw bytes
IMATRIX_DTYPES = {int(GGMLQuantizationType.F32): "<f4", int(GGMLQuantizationType.F16): "<f2"}


def _imatrix_from_gguf(path: Path) -> Imatrix:
    """The GGUF form: `<tensor>.in_sum2` and `<tensor>.counts` per matrix, `imatrix.*` metadata,
    read through our own header view (core/gguf/view.py), each tensor's floats from its offset."""
    view = read_view(path)

    def floats(t: GGUFTensorInfo) -> np.ndarray:
        dtype = IMATRIX_DTYPES.get(t.ggml_type)
        if dtype is None:
            raise QwythosError(f"{path}: {t.name} is stored as type {t.ggml_type}, not F32", REMAKE)
        n = math.prod(t.ne)
        return np.fromfile(path, dtype=dtype, count=n, offset=t.offset).astype(np.float32)

    sums: dict[str, np.ndarray] = {}
    counts: dict[str, np.ndarray] = {}
    for t in view.tensors:
        if t.name.endswith(".in_sum2"):
            sums[t.name[: -len(".in_sum2")]] = floats(t)
        elif t.name.endswith(".counts"):
            counts[t.name[: -len(".counts")]] = floats(t)
    if not sums:
        raise QwythosError(f"{path} holds no importance data (no *.in_sum2 tensors)", REMAKE)
    entries: dict[str, np.ndarray] = {}
    for name, s in sums.items():
        c = counts.get(name)
        if c is None:
            raise QwythosError(f"{path}: {name} has sums but no counts", "the imatrix file is damaged")
        ne0 = s.size // c.size
        per = s.reshape(c.size, ne0)
        cnt = np.round(c).reshape(-1, 1)
        entries[name] = np.where(cnt > 0, per / np.maximum(cnt, 1), 1.0).astype(np.float32).reshape(-1)
    datasets = [d for d in view.kv.get("imatrix.datasets") or [] if isinstance(d, str)]
    chunks = view.kv.get("imatrix.chunk_count")
    if not isinstance(chunks, int) or "imatrix.chunk_size" not in view.kv or not datasets:
        raise QwythosError(f"{path}: imatrix metadata missing", REMAKE)
    return Imatrix(path, entries, datasets, int(chunks), legacy=False)


def _imatrix_from_dat(path: Path) -> Imatrix:
    data = path.read_bytes()
    pos = 0

    def take(fmt: str) -> tuple:
        nonlocal pos
        size = struct.calcsize(fmt)
        if pos + size > len(data):
            raise QwythosError(f"{path} is truncated or not an imatrix file", REMAKE)
        out = struct.unpack_from(fmt, data, pos)
        pos += size
        return out

    (n,) = take("<i")
    if n < 1 or n > 1_000_000:
        raise QwythosError(f"{path} is not an imatrix file (GGUF or legacy .dat)", REMAKE)
    entries: dict[str, np.ndarray] = {}
    for _ in range(n):
        (ln,) = take("<i")
        if ln <= 0 or ln > 4096:
            raise QwythosError(f"{path} is not an imatrix file", REMAKE)
        name = data[pos : pos + ln].decode("utf-8", "replace")
        pos += ln
        ncall, nval = take("<ii")
        if nval < 1 or pos + 4 * nval > len(data):
            raise QwythosError(f"{path} is truncated (entry {name})", REMAKE)
        vals = np.frombuffer(data, dtype="<f4", count=nval, offset=pos).astype(np.float32)
        pos += 4 * nval
        entries[name] = vals / ncall if ncall > 0 else vals.copy()
    chunks, datasets = 0, []
    if pos + 4 <= len(data):
        (chunks,) = take("<i")
        if pos + 4 <= len(data):
            (ln,) = take("<i")
            if 0 < ln <= len(data) - pos:
                datasets.append(data[pos : pos + ln].decode("utf-8", "replace"))
    return Imatrix(path, entries, datasets, chunks, legacy=True)


def load_imatrix(path: str | Path) -> Imatrix:
    """Read an importance-matrix file (`qwythos imatrix`'s or llama-imatrix's): the GGUF form
    (`*.in_sum2` / `*.counts`) or the legacy .dat."""
    path = Path(path)
    if not path.is_file():
        raise QwythosError(
            f"imatrix file {path} not found",
            "pass a file written by `qwythos imatrix` (or llama-imatrix), or --imatrix auto",
        )
    with open(path, "rb") as f:
        magic = f.read(4)
    im = _imatrix_from_gguf(path) if magic == b"GGUF" else _imatrix_from_dat(path)
    for name, v in im.entries.items():
        if not np.all(np.isfinite(v)):
            raise QwythosError(f"{path}: entry {name} has non-finite values", REMAKE)
    return im


# ---------------------------------------------------------------- the call


@dataclass
class _Buffers:
    """Everything the C side points into; kept alive for the duration of the call."""

    keep: list = field(default_factory=list)


def _overrides(pairs: list[tuple[str, GGMLType]], buf: _Buffers):
    import llama_cpp

    arr = (llama_cpp.llama_model_tensor_override * (len(pairs) + 1))()
    for i, (pattern, t) in enumerate(pairs):
        b = pattern.encode()
        buf.keep.append(b)
        arr[i].pattern = b
        arr[i].type = t.id
    arr[len(pairs)].pattern = None
    arr[len(pairs)].type = int(llama_cpp.GGML_TYPE_COUNT)
    buf.keep.append(arr)
    return arr


def _imatrix_array(im: Imatrix, buf: _Buffers):
    import llama_cpp

    items = list(im.entries.items())
    arr = (llama_cpp.llama_model_imatrix_data * (len(items) + 1))()
    for i, (name, v) in enumerate(items):
        v = np.ascontiguousarray(v, dtype=np.float32)
        b = name.encode()
        buf.keep += [v, b]
        arr[i].name = b
        arr[i].data = v.ctypes.data_as(ctypes.POINTER(ctypes.c_float))
        arr[i].size = v.size
    arr[len(items)].name = None
    buf.keep.append(arr)
    return arr


def _kv_overrides(im: Imatrix, buf: _Buffers):
    import llama_cpp

    vals: list[tuple[str, int, object]] = [
        ("quantize.imatrix.file", llama_cpp.LLAMA_KV_OVERRIDE_TYPE_STR, str(im.path.name)),
        ("quantize.imatrix.entries_count", llama_cpp.LLAMA_KV_OVERRIDE_TYPE_INT, len(im.entries)),
    ]
    if im.datasets:
        vals.append(("quantize.imatrix.dataset", llama_cpp.LLAMA_KV_OVERRIDE_TYPE_STR, im.datasets[0]))
    if im.chunk_count > 0:
        vals.append(("quantize.imatrix.chunks_count", llama_cpp.LLAMA_KV_OVERRIDE_TYPE_INT, im.chunk_count))
    arr = (llama_cpp.llama_model_kv_override * (len(vals) + 1))()
    for i, (key, tag, v) in enumerate(vals):
        arr[i].key = key.encode()
        arr[i].tag = tag
        if tag == llama_cpp.LLAMA_KV_OVERRIDE_TYPE_STR:
            arr[i].value.val_str = str(v).encode()[:127]
        else:
            arr[i].value.val_i64 = int(v)  # type: ignore[arg-type]
    arr[len(vals)].key = b""
    buf.keep.append(arr)
    return arr


def parse_tensor_lines(log: str) -> list[TensorChoice]:
    """The per-tensor lines of llama.cpp's quantize log (dry run or real)."""
    out: list[TensorChoice] = []
    for m in TENSOR_LINE.finditer(log):
        ne = tuple(int(x) for x in m.group(4).split(","))
        while len(ne) > 1 and ne[-1] == 1:
            ne = ne[:-1]
        src = m.group(5)
        out.append(TensorChoice(m.group(3), ne, src, m.group(7) or m.group(6) or src))
    return out


def llama_quantize(
    src: str | Path,
    dst: str | Path | None,
    ftype: FType,
    *,
    nthread: int = 0,
    output_tensor_type: GGMLType | None = None,
    token_embedding_type: GGMLType | None = None,
    overrides: list[tuple[str, GGMLType]] | None = None,
    imatrix: Imatrix | None = None,
    allow_requantize: bool = False,
    pure: bool = False,
    dry_run: bool = False,
    progress: Callable[[int, int, str], None] | None = None,
    in_process: bool | None = None,
) -> QuantizeCall:
    """One llama_model_quantize call. Returns ok/error and the per-tensor choices; never prints.

    A real quantization runs in a child process (`in_process=None`): llama_model_quantize has no
    abort hook, so Ctrl-C / SIGTERM kill the child within a second and the caller removes its
    temporary output. A dry run (no weights read) runs here with the signals held back.
    """
    kw = dict(
        src=str(src),
        dst=None if dst is None else str(dst),
        ftype=ftype,
        nthread=nthread,
        output_tensor_type=output_tensor_type,
        token_embedding_type=token_embedding_type,
        overrides=overrides,
        imatrix=imatrix,
        allow_requantize=allow_requantize,
        pure=pure,
        dry_run=dry_run,
    )
    if in_process or (in_process is None and dry_run):
        return _quantize_here(progress=progress, **kw)
    return _quantize_in_child(kw, progress)


def _quantize_here(
    src: str,
    dst: str | None,
    ftype: FType,
    *,
    nthread: int,
    output_tensor_type: GGMLType | None,
    token_embedding_type: GGMLType | None,
    overrides: list[tuple[str, GGMLType]] | None,
    imatrix: Imatrix | None,
    allow_requantize: bool,
    pure: bool,
    dry_run: bool,
    progress: Callable[[int, int, str], None] | None,
    defer_signals: bool = True,
) -> QuantizeCall:
    import llama_cpp

    buf = _Buffers()
    p = llama_cpp.llama_model_quantize_default_params()
    p.nthread = int(nthread or 0)
    p.ftype = ftype.id
    p.allow_requantize = bool(allow_requantize)
    p.pure = bool(pure)
    p.dry_run = bool(dry_run)
    p.quantize_output_tensor = True
    if output_tensor_type is not None:
        p.output_tensor_type = output_tensor_type.id
    if token_embedding_type is not None:
        p.token_embedding_type = token_embedding_type.id
    if overrides:
        p.tt_overrides = ctypes.cast(
            _overrides(overrides, buf), ctypes.POINTER(llama_cpp.llama_model_tensor_override)
        )
    if imatrix is not None and imatrix.entries:
        p.imatrix = ctypes.cast(
            _imatrix_array(imatrix, buf), ctypes.POINTER(llama_cpp.llama_model_imatrix_data)
        )
        p.kv_overrides = ctypes.cast(
            _kv_overrides(imatrix, buf), ctypes.POINTER(llama_cpp.llama_model_kv_override)
        )

    chunks: list[str] = []
    raised: list[BaseException] = []

    @llama_cpp.llama_log_callback
    def _collect(level: int, text: bytes, user_data: ctypes.c_void_p) -> None:
        # an exception cannot cross the C frames: keep it, raise it after (signals are deferred)
        try:
            s = text.decode("utf-8", "replace")
            chunks.append(s)
            if progress is not None and not raised:
                m = PROGRESS_HEAD.match(s)
                if m:
                    progress(int(m.group(1)), int(m.group(2)), m.group(3))
        except BaseException as e:  # noqa: BLE001
            raised.append(e)

    out_path = b"" if dst is None else str(dst).encode()

    held = interrupt.deferred() if defer_signals else contextlib.nullcontext()
    with held, llama_log_to(_collect):
        rc = llama_cpp.llama_model_quantize(str(src).encode(), out_path, ctypes.byref(p))
    if raised:
        raise raised[0]
    log = "".join(chunks)
    error = None
    if rc != 0:
        m = ERROR_LINE.search(log)
        error = m.group(1).strip() if m else f"llama_model_quantize returned {rc}"
    return QuantizeCall(ok=rc == 0, tensors=parse_tensor_lines(log), error=error, log=log)


# ---------------------------------------------------------------- the child process


def _quantize_in_child(kw: dict, progress: Callable[[int, int, str], None] | None) -> QuantizeCall:
    """Run `_quantize_here` in `python -m qwythos.quantize.llama_quant`; progress lines come back on its
    stdout, the result as one JSON line. Any exception here (Ctrl-C included) kills the child."""
    import pickle
    import subprocess
    import sys
    import tempfile

    with tempfile.TemporaryFile() as err:
        child = subprocess.Popen(
            [sys.executable, "-m", "qwythos.quantize.llama_quant"],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=err,
        )
        result: dict | None = None
        try:
            assert child.stdin is not None and child.stdout is not None
            child.stdin.write(pickle.dumps(kw))
            child.stdin.close()
            for raw in child.stdout:
                line = raw.decode("utf-8", "replace")
                if line.startswith("P ") and progress is not None:
                    i, n, name = line[2:].rstrip("\n").split(" ", 2)
                    progress(int(i), int(n), name)
                elif line.startswith("R "):
                    result = json.loads(line[2:])
            rc = child.wait()
        except BaseException:
            child.kill()
            child.wait()
            raise
        if result is None:
            err.seek(0)
            tail = err.read()[-2000:].decode("utf-8", "replace").strip()
            how = f"was killed by signal {-rc}" if rc < 0 else f"exited with code {rc}"
            raise QwythosError(
                f"llama.cpp's quantizer {how} while writing {kw['dst']}"
                + (f": {tail.splitlines()[-1]}" if tail else ""),
                "killed by signal 9 usually means out of memory: close other programs or lower --threads"
                if rc == -9
                else "run again; if it persists, check the output folder's disk and report it",
            )
    return QuantizeCall(
        ok=result["ok"], tensors=parse_tensor_lines(result["log"]), error=result["error"], log=result["log"]
    )


def _child_main() -> None:
    """The child's side: read the call from stdin, run it, report on stdout."""
    import os
    import pickle
    import signal
    import sys

    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the parent decides; it kills us on Ctrl-C
    with contextlib.suppress(Exception):  # die with the parent, even when it is SIGKILLed
        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
        if os.getppid() == 1:
            sys.exit(1)
    kw = pickle.loads(sys.stdin.buffer.read())
    out = open(sys.stdout.fileno(), "w", buffering=1 << 16, closefd=False)  # flushed when we say

    last = [0.0]

    def progress(i: int, n: int, name: str) -> None:  # a few lines a second are enough for a bar
        out.write(f"P {i} {n} {name}\n")
        now = time.monotonic()
        if now - last[0] > 0.25 or i == n:
            out.flush()
            last[0] = now

    call = _quantize_here(progress=progress, defer_signals=False, **kw)
    out.write("R " + json.dumps({"ok": call.ok, "error": call.error, "log": call.log}) + "\n")
    out.flush()


# ---------------------------------------------------------------- header size of an output


class _GGUFInitParams(ctypes.Structure):
    _fields_ = [("no_alloc", ctypes.c_bool), ("ctx", ctypes.c_void_p)]


def output_meta_size(src: str | Path, ftype_id: int) -> int:
    """Bytes of the header llama.cpp will write for a quantization of `src` (same tensors and keys,
    general.file_type and general.quantization_version set), from ggml's own gguf code."""
    from llama_cpp import _ggml

    lib = _ggml.libggml
    lib.gguf_init_from_file.restype = ctypes.c_void_p
    lib.gguf_init_from_file.argtypes = [ctypes.c_char_p, _GGUFInitParams]
    lib.gguf_get_meta_size.restype = ctypes.c_size_t
    lib.gguf_get_meta_size.argtypes = [ctypes.c_void_p]
    lib.gguf_set_val_u32.restype = None
    lib.gguf_set_val_u32.argtypes = [ctypes.c_void_p, ctypes.c_char_p, ctypes.c_uint32]
    lib.gguf_free.restype = None
    lib.gguf_free.argtypes = [ctypes.c_void_p]
    ctx = lib.gguf_init_from_file(str(src).encode(), _GGUFInitParams(True, None))
    if not ctx:
        raise QwythosError(f"{src}: ggml cannot read this GGUF header", "convert or download the file again")
    try:
        lib.gguf_set_val_u32(ctx, b"general.quantization_version", 2)
        lib.gguf_set_val_u32(ctx, b"general.file_type", int(ftype_id))
        return int(lib.gguf_get_meta_size(ctx))
    finally:
        lib.gguf_free(ctx)


if __name__ == "__main__":
    _child_main()
