"""A streaming GGUF writer and a small header reader.

The writer puts the header, the key/values and every tensor's info first, then each tensor's
bytes one at a time (aligned), so memory stays near the largest tensor. A tensor whose bytes need
no change is copied from its source file inside the kernel (`os.copy_file_range`), never passing
through Python objects. The output goes through `fileio.atomic_output`: a temp name, renamed only
when complete; a full disk or Ctrl-C leaves nothing behind.
"""

from __future__ import annotations

import os
import struct
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from gguf import GGML_QUANT_SIZES, GGMLQuantizationType, GGUFValueType

from qwythos.core.errors import QwythosError
from qwythos.core.fileio import atomic_output

GGUF_MAGIC = b"GGUF"
GGUF_VERSION = 3
DEFAULT_ALIGNMENT = 32
COPY_CHUNK = 64 * 2**20

# scalar value types -> struct format (little endian)
_SCALAR_FMT: dict[GGUFValueType, str] = {
    GGUFValueType.UINT8: "<B",
    GGUFValueType.INT8: "<b",
    GGUFValueType.UINT16: "<H",
    GGUFValueType.INT16: "<h",
    GGUFValueType.UINT32: "<I",
    GGUFValueType.INT32: "<i",
    GGUFValueType.FLOAT32: "<f",
    GGUFValueType.BOOL: "<?",
    GGUFValueType.UINT64: "<Q",
    GGUFValueType.INT64: "<q",
    GGUFValueType.FLOAT64: "<d",
}


@dataclass(frozen=True)
class KV:
    """One metadata entry. For arrays, `sub_type` is the element type."""

    key: str
    vtype: GGUFValueType
    value: Any
    sub_type: GGUFValueType | None = None


@dataclass(frozen=True)
class RawSource:
    """Bytes to copy verbatim from a file: the fast path (no transform, same type)."""

    file: Path
    offset: int
    nbytes: int


@dataclass
class TensorPlan:
    """One output tensor: its name, numpy-order shape, GGML type, byte size, and how to get its bytes.

    `load()` returns the final on-disk bytes (an ndarray in the final dtype, or a bytes-like).
    Optional faster ways, used by the writer when present: `raw` (kernel copy from a file) and
    `chunks()` (an iterator of bytes-likes, to bound memory on huge converted tensors).
    """

    name: str
    shape: tuple[int, ...]
    ggml_type: GGMLQuantizationType
    nbytes: int
    load: Callable[[], Any]
    raw: RawSource | None = None
    chunks: Callable[[], Iterable[Any]] | None = None
    source: str = ""  # the HF tensor it comes from (for messages and reports)
    transform: str = ""  # a short description of what was done to it


def type_nbytes(ggml_type: GGMLQuantizationType, shape: tuple[int, ...]) -> int:
    """Bytes of a tensor of numpy-order `shape` stored as `ggml_type`."""
    block, size = GGML_QUANT_SIZES[ggml_type]
    numel = 1
    for d in shape:
        numel *= d
    if shape and shape[-1] % block:
        raise ValueError(
            f"row length {shape[-1]} is not a multiple of the {ggml_type.name} block size {block}"
        )
    return numel // block * size


def pad(n: int, align: int = DEFAULT_ALIGNMENT) -> int:
    return ((n + align - 1) // align) * align


# ---------------------------------------------------------------- encoding


def infer_kv(key: str, value: Any) -> KV:
    """A KV from a plain Python value (ints become UINT32, array ints INT32, as gguf-py does)."""
    if isinstance(value, KV):
        return value
    if isinstance(value, bool):
        return KV(key, GGUFValueType.BOOL, value)
    if isinstance(value, int):
        return KV(key, GGUFValueType.UINT32, value)
    if isinstance(value, float):
        return KV(key, GGUFValueType.FLOAT32, value)
    if isinstance(value, str):
        return KV(key, GGUFValueType.STRING, value)
    if isinstance(value, (list, tuple)):
        first = value[0]
        sub = (
            GGUFValueType.STRING
            if isinstance(first, (str, bytes))
            else GGUFValueType.BOOL
            if isinstance(first, bool)
            else GGUFValueType.INT32
            if isinstance(first, int)
            else GGUFValueType.FLOAT32
        )
        return KV(key, GGUFValueType.ARRAY, list(value), sub)
    raise TypeError(f"cannot store {type(value).__name__} in GGUF metadata key {key}")


def _pack_string(s: str | bytes) -> bytes:
    b = s.encode("utf-8") if isinstance(s, str) else bytes(s)
    return struct.pack("<Q", len(b)) + b


def _pack_value(vtype: GGUFValueType, value: Any, sub_type: GGUFValueType | None) -> bytes:
    if vtype in _SCALAR_FMT:
        return struct.pack(_SCALAR_FMT[vtype], value)
    if vtype == GGUFValueType.STRING:
        return _pack_string(value)
    if vtype == GGUFValueType.ARRAY:
        assert sub_type is not None
        out = bytearray(struct.pack("<IQ", int(sub_type), len(value)))
        if sub_type in _SCALAR_FMT:
            fmt = _SCALAR_FMT[sub_type]
            out += struct.pack("<" + fmt[1] * len(value), *value)
        elif sub_type == GGUFValueType.STRING:
            out += b"".join(_pack_string(v) for v in value)
        else:
            raise ValueError(f"nested arrays are not supported ({sub_type})")
        return bytes(out)
    raise ValueError(f"unknown GGUF value type {vtype}")


def encode_header(kvs: list[KV], tensors: list[TensorPlan], alignment: int = DEFAULT_ALIGNMENT) -> bytes:
    """Magic, version, counts, key/values and tensor infos, padded to the data alignment."""
    out = bytearray(GGUF_MAGIC + struct.pack("<IQQ", GGUF_VERSION, len(tensors), len(kvs)))
    for kv in kvs:
        out += (
            _pack_string(kv.key)
            + struct.pack("<I", int(kv.vtype))
            + _pack_value(kv.vtype, kv.value, kv.sub_type)
        )
    offset = 0
    for t in tensors:
        out += _pack_string(t.name) + struct.pack("<I", len(t.shape))
        out += struct.pack("<" + "Q" * len(t.shape), *reversed(t.shape))
        out += struct.pack("<IQ", int(t.ggml_type), offset)
        offset += pad(t.nbytes, alignment)
    out += b"\0" * (pad(len(out), alignment) - len(out))
    return bytes(out)


def normalize_kv(arch: str, kv: list[KV] | dict[str, Any]) -> list[KV]:
    items = (
        [infer_kv(k, v) for k, v in kv.items()] if isinstance(kv, dict) else [infer_kv(k.key, k) for k in kv]
    )
    if not any(k.key == "general.architecture" for k in items):
        items.insert(0, KV("general.architecture", GGUFValueType.STRING, arch))
    seen: set[str] = set()
    for k in items:
        if k.key in seen:
            raise ValueError(f"duplicate GGUF metadata key {k.key}")
        seen.add(k.key)
    return items


# ---------------------------------------------------------------- writing


def _write_all(fd: int, data: Any) -> int:
    mv = memoryview(data).cast("B")
    total = len(mv)
    done = 0
    while done < total:
        done += os.write(fd, mv[done : done + COPY_CHUNK])
    return total


def _copy_range(src: RawSource, dst_fd: int) -> None:
    with open(src.file, "rb") as f:
        sfd = f.fileno()
        done = 0
        use_cfr = hasattr(os, "copy_file_range")
        while done < src.nbytes:
            n = min(src.nbytes - done, 1 << 30)
            if use_cfr:
                try:
                    got = os.copy_file_range(sfd, dst_fd, n, src.offset + done)
                except OSError as e:
                    if e.errno in (18, 22, 38, 95):  # EXDEV, EINVAL, ENOSYS, EOPNOTSUPP: fall back
                        use_cfr = False
                        continue
                    raise
            else:
                buf = os.pread(sfd, min(n, COPY_CHUNK), src.offset + done)
                got = _write_all(dst_fd, buf) if buf else 0
            if got == 0:
                raise QwythosError(
                    f"{src.file} ended early while copying a tensor", "download the file again"
                )
            done += got


def _tensor_bytes(t: TensorPlan) -> Iterator[Any]:
    if t.chunks is not None:
        yield from t.chunks()
        return
    data = t.load()
    if isinstance(data, np.ndarray):
        data = np.ascontiguousarray(data)
    yield data


ProgressFn = Callable[[str, int, int], None]


def write_gguf(
    path: str | Path,
    arch: str,
    kv: list[KV] | dict[str, Any],
    tensors: list[TensorPlan],
    progress: ProgressFn | None = None,
    alignment: int = DEFAULT_ALIGNMENT,
    after_tensor: Callable[[TensorPlan], None] | None = None,
) -> int:
    """Write a GGUF file; returns its size. `progress(name, done_bytes, total_bytes)` after each tensor.

    `after_tensor(plan)` runs after each tensor's bytes are written, before the file gets its final
    name: an exception from it (a check that failed) leaves no file behind.
    """
    path = Path(path)
    kvs = normalize_kv(arch, kv)
    names: set[str] = set()
    for t in tensors:
        if t.name in names:
            raise ValueError(f"duplicate GGUF tensor name {t.name}")
        names.add(t.name)
    header = encode_header(kvs, tensors, alignment)
    total = sum(t.nbytes for t in tensors)
    done = 0
    with atomic_output(path) as tmp:
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
        try:
            _write_all(fd, header)
            for t in tensors:
                start = os.lseek(fd, 0, os.SEEK_CUR)
                if t.raw is not None:
                    _copy_range(t.raw, fd)
                else:
                    for piece in _tensor_bytes(t):
                        _write_all(fd, piece)
                written = os.lseek(fd, 0, os.SEEK_CUR) - start
                if written != t.nbytes:
                    raise QwythosError(
                        f"tensor {t.name} produced {written} bytes, expected {t.nbytes} (writing {path})",
                        "this is a bug in qwythos; please report it",
                    )
                if t.nbytes % alignment:
                    _write_all(fd, b"\0" * (pad(t.nbytes, alignment) - t.nbytes))
                done += t.nbytes
                if after_tensor is not None:
                    after_tensor(t)
                if progress is not None:
                    progress(t.name, done, total)
            size = os.lseek(fd, 0, os.SEEK_CUR)
        finally:
            os.close(fd)
    return size


# ---------------------------------------------------------------- reading
#
# The reader trusts nothing in the file: every count, length, dimension, type id and offset is
# checked against the bytes the file really has and against llama.cpp's own limits
# (ggml/src/gguf.cpp) BEFORE anything is allocated, so a hostile header costs at most its own size
# in memory and ends in one QwythosError naming the file. Anything llama.cpp's GGUF loader refuses
# is refused here too: a file this reader accepts is one llama.cpp can at least open.

#: llama.cpp's limits (ggml/src/gguf.cpp, ggml/include/ggml.h)
GGUF_MAX_STRING_LENGTH = 1 << 30
GGUF_MAX_ARRAY_ELEMENTS = 1 << 30
GGML_MAX_NAME = 64
GGML_MAX_DIMS = 4
GGML_TYPE_COUNT = 43  # the vendored llama.cpp's (ggml.h)
GGML_REMOVED_TYPES = frozenset({4, 5, 31, 32, 33, 36, 37, 38})  # ids ggml.h lists as removed
INT64_MAX = (1 << 63) - 1
# the fewest bytes one key/value (key length, a 1-byte key, type, a 1-byte value) and one tensor
# info (name length, n_dims, type, offset) can take: a count is refused when the file cannot hold it
_MIN_KV_BYTES = 8 + 1 + 4 + 1
_MIN_TENSOR_INFO_BYTES = 8 + 4 + 4 + 8
_FIX = "download or convert the file again: llama.cpp would refuse it too"


class GGUFCorrupt(QwythosError):
    """A GGUF header that breaks the format's rules (llama.cpp's): the message names the file and
    the first rule broken."""

    def __init__(self, path: Path, what: str, *, past_end: bool = False) -> None:
        state = "is truncated or corrupt" if past_end else "is not a valid GGUF file"
        super().__init__(f"{path} {state}: {what}", _FIX)


@dataclass
class GGUFTensorInfo:
    name: str
    ne: tuple[int, ...]  # ggml order (fastest dimension first)
    ggml_type: int
    offset: int  # absolute offset in the file
    nbytes: int

    @property
    def shape(self) -> tuple[int, ...]:
        """numpy order"""
        return tuple(reversed(self.ne))


@dataclass
class GGUFHeader:
    path: Path
    version: int
    kv: dict[str, Any] = field(default_factory=dict)
    kv_types: dict[str, tuple[int, int | None]] = field(default_factory=dict)
    tensors: list[GGUFTensorInfo] = field(default_factory=list)
    alignment: int = DEFAULT_ALIGNMENT
    data_offset: int = 0
    file_size: int = 0


class _Reader:
    """Reads a header, never asking for more bytes than the file has left."""

    def __init__(self, f: Any, path: Path, size: int) -> None:
        self.f = f
        self.path = path
        self.size = size

    @property
    def remaining(self) -> int:
        return self.size - self.f.tell()

    def truncated(self, what: str) -> QwythosError:
        return QwythosError(
            f"{self.path} is truncated (its GGUF header ends early, {what})", "convert or download it again"
        )

    def take(self, n: int, what: str = "in the middle of a value") -> bytes:
        if n > self.remaining:
            raise self.truncated(what)
        b = self.f.read(n)
        if len(b) != n:
            raise self.truncated(what)
        return b

    def unpack(self, fmt: str) -> Any:
        return struct.unpack(fmt, self.take(struct.calcsize(fmt)))[0]

    def string(self, what: str) -> str:
        n = self.unpack("<Q")
        if n > GGUF_MAX_STRING_LENGTH:
            raise GGUFCorrupt(
                self.path, f"{what} claims {n} bytes (llama.cpp's limit is {GGUF_MAX_STRING_LENGTH})"
            )
        if n > self.remaining:
            raise GGUFCorrupt(
                self.path,
                f"{what} claims {n} bytes but only {self.remaining} are left in the file",
                past_end=True,
            )
        return self.take(n).decode("utf-8", errors="replace")

    def array_count(self, key: str, n: int, elem_min: int) -> None:
        if n > GGUF_MAX_ARRAY_ELEMENTS:
            raise GGUFCorrupt(
                self.path, f"array {key} claims {n} elements (llama.cpp's limit is {GGUF_MAX_ARRAY_ELEMENTS})"
            )
        if n * elem_min > self.remaining:
            raise GGUFCorrupt(
                self.path,
                f"array {key} claims {n} elements of at least {elem_min} bytes but only "
                f"{self.remaining} bytes are left in the file",
                past_end=True,
            )

    def value(self, key: str, vtype: int) -> tuple[Any, int | None]:
        t = _value_type(vtype)
        if t in _SCALAR_FMT:
            return self.unpack(_SCALAR_FMT[t]), None
        if t == GGUFValueType.STRING:
            return self.string(f"the value of {key}"), None
        if t == GGUFValueType.ARRAY:
            sub = _value_type(self.unpack("<I"))
            n = self.unpack("<Q")
            if sub in _SCALAR_FMT:
                fmt = _SCALAR_FMT[sub]
                size = struct.calcsize(fmt)
                self.array_count(key, n, size)
                raw = self.take(size * n)
                return list(struct.unpack("<" + fmt[1] * n, raw)), int(sub)
            if sub == GGUFValueType.STRING:
                self.array_count(key, n, 8)
                return [self.string(f"element {i} of {key}") for i in range(n)], int(sub)
            raise GGUFCorrupt(self.path, f"{key} is an array of arrays (GGUF has none)")
        raise GGUFCorrupt(self.path, f"{key} has unknown value type {vtype}")  # pragma: no cover


def _value_type(vtype: int) -> GGUFValueType:
    try:
        return GGUFValueType(vtype)
    except ValueError:
        raise ValueError(vtype) from None


def _tensor_bytes_of(path: Path, name: str, ne: tuple[int, ...], gtype: int) -> int:
    """Bytes of one tensor from its header entry, every rule llama.cpp applies checked first."""
    try:
        qt = GGMLQuantizationType(gtype)
        block, type_size = GGML_QUANT_SIZES[qt]
    except (ValueError, KeyError):
        if gtype in GGML_REMOVED_TYPES:
            raise GGUFCorrupt(
                path, f"tensor {name} has GGML type id {gtype}, a type llama.cpp no longer loads"
            ) from None
        if gtype < GGML_TYPE_COUNT:  # a type newer than the installed gguf-py
            raise QwythosError(
                f"{path}: tensor {name} has GGML type id {gtype}, which the installed gguf-py cannot size",
                "upgrade gguf (`pip install -U gguf`), or re-quantize the file to a common type",
            ) from None
        raise GGUFCorrupt(
            path, f"tensor {name} has GGML type id {gtype}; llama.cpp knows ids 0 to {GGML_TYPE_COUNT - 1}"
        ) from None
    numel = 1
    for d in ne:
        if d > INT64_MAX:
            raise GGUFCorrupt(path, f"tensor {name} has a negative dimension ({d - (1 << 64)})")
        numel *= d
    if numel > INT64_MAX:
        raise GGUFCorrupt(path, f"tensor {name} has {numel} elements, more than llama.cpp can count")
    if ne and ne[0] % block:
        raise GGUFCorrupt(
            path,
            f"tensor {name} has rows of {ne[0]} elements, not a multiple of {qt.name}'s block of {block}",
        )
    return numel // block * type_size


def read_header(path: str | Path) -> GGUFHeader:
    """Parse a GGUF header (metadata and tensor infos), checking it as llama.cpp's loader does.

    A file that is not a GGUF, is cut short, or breaks a rule (a count or length past the file's
    end, a duplicate key or tensor name, an unknown type id, an alignment that is not a power of 2,
    tensor data that overlaps, is out of order, misaligned or past the end of the file) gets one
    QwythosError naming the file; nothing is allocated from an unchecked count."""
    path = Path(path)
    if path.is_dir():
        raise QwythosError(f"{path} is a folder, not a GGUF file", "pass the path of a .gguf file")
    if not path.is_file():
        raise QwythosError(f"{path} does not exist", "pass the path of a .gguf file")
    size = path.stat().st_size
    with open(path, "rb") as f:
        magic = f.read(4)
        if magic != GGUF_MAGIC:
            raise QwythosError(
                f"{path} is not a GGUF file (it starts with {magic!r}, not b'GGUF')",
                "pass a .gguf file; convert safetensors first with `qwythos convert`",
            )
        r = _Reader(f, path, size)
        version = r.unpack("<I")
        if version not in (2, 3):
            raise QwythosError(f"{path}: unsupported GGUF version {version}", "use a GGUF v3 file")
        n_tensors = r.unpack("<Q")
        n_kv = r.unpack("<Q")
        for count, what, least in (
            (n_kv, "key/value pairs", _MIN_KV_BYTES),
            (n_tensors, "tensors", _MIN_TENSOR_INFO_BYTES),
        ):
            if count * least > r.remaining:
                raise GGUFCorrupt(
                    path,
                    f"its header claims {count} {what}, more than the {r.remaining} bytes left in the "
                    "file can hold",
                    past_end=True,
                )
        hdr = GGUFHeader(path=path, version=version, file_size=size)
        for i in range(n_kv):
            key = r.string(f"the name of key/value {i}")
            if not key:
                raise GGUFCorrupt(path, f"key/value {i} has an empty name")
            if key in hdr.kv:
                raise GGUFCorrupt(path, f"the key {key} appears twice")
            vtype = r.unpack("<I")
            try:
                val, sub = r.value(key, vtype)
            except ValueError as e:
                raise GGUFCorrupt(path, f"{key} has unknown value type {e.args[0]}") from None
            hdr.kv[key] = val
            hdr.kv_types[key] = (vtype, sub)
        _check_general(hdr)
        infos = []
        names: set[str] = set()
        for i in range(n_tensors):
            name = r.string(f"the name of tensor {i}")
            if len(name.encode()) >= GGML_MAX_NAME:
                raise GGUFCorrupt(
                    path,
                    f"tensor {i}'s name is {len(name.encode())} bytes (llama.cpp's limit is {GGML_MAX_NAME - 1})",
                )
            if name in names:
                raise GGUFCorrupt(path, f"two tensors are named {name}")
            names.add(name)
            nd = r.unpack("<I")
            if nd > GGML_MAX_DIMS:
                raise GGUFCorrupt(
                    path, f"tensor {name} has {nd} dimensions (ggml has at most {GGML_MAX_DIMS})"
                )
            ne = tuple(r.unpack("<Q") for _ in range(nd))
            gtype = r.unpack("<I")
            off = r.unpack("<Q")
            infos.append((name, ne, gtype, off, _tensor_bytes_of(path, name, ne, gtype)))
        hdr.data_offset = pad(f.tell(), hdr.alignment) if infos else f.tell()
    expected = 0
    for name, ne, gtype, off, nbytes in infos:
        if off != expected:
            raise GGUFCorrupt(
                path,
                f"tensor {name}'s data starts at offset {off}, expected {expected} (llama.cpp requires "
                f"the tensors' data in order, each aligned to {hdr.alignment} bytes, none overlapping)",
            )
        start = hdr.data_offset + off
        if start + nbytes > size:
            raise QwythosError(
                f"{path} is truncated: tensor {name} ends at byte {start + nbytes} but the file has {size}",
                "convert or download it again",
            )
        hdr.tensors.append(GGUFTensorInfo(name, ne, gtype, start, nbytes))
        expected = off + pad(nbytes, hdr.alignment)
    return hdr


def _check_general(hdr: GGUFHeader) -> None:
    """The general.* keys the format itself depends on: the alignment (a UINT32 power of 2, as
    llama.cpp requires) and the architecture (a string, as llama.cpp reads it)."""
    path = hdr.path
    if "general.alignment" in hdr.kv:
        vt, _ = hdr.kv_types["general.alignment"]
        a = hdr.kv["general.alignment"]
        if vt != GGUFValueType.UINT32:
            raise GGUFCorrupt(path, f"general.alignment is a {_type_word(vt)}, not a UINT32")
        if a <= 0 or a & (a - 1):
            raise GGUFCorrupt(path, f"general.alignment is {a}, not a power of 2")
        hdr.alignment = a
    if "general.architecture" in hdr.kv and not isinstance(hdr.kv["general.architecture"], str):
        vt, _ = hdr.kv_types["general.architecture"]
        raise GGUFCorrupt(
            path,
            f"general.architecture is a {_type_word(vt)} ({str(hdr.kv['general.architecture'])[:40]}), "
            "not a string naming the model's architecture",
        )


def _type_word(vtype: int) -> str:
    try:
        return GGUFValueType(vtype).name
    except ValueError:
        return f"type {vtype}"


def read_tensor_bytes(hdr: GGUFHeader, name: str) -> bytes:
    """The raw bytes of one tensor of a GGUF file."""
    for t in hdr.tensors:
        if t.name == name:
            with open(hdr.path, "rb") as f:
                f.seek(t.offset)
                return f.read(t.nbytes)
    raise KeyError(name)


def ggml_type_name(t: int) -> str:
    """A tensor's GGML type as gguf-py names it ("Q8_0"); "type{t}" for an id gguf-py does not know."""
    try:
        return GGMLQuantizationType(t).name
    except ValueError:
        return f"type{t}"


def file_type_name(value: int) -> str | None:
    """`general.file_type` as llama.cpp names it (15 -> "Q4_K_M"), from gguf-py's table; None if unknown."""
    import gguf

    try:
        name = gguf.LlamaFileType(value).name
    except ValueError:
        return None
    for prefix in ("MOSTLY_", "ALL_"):
        if name.startswith(prefix):
            return name[len(prefix) :]
    return name
