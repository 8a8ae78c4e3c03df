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
    def __init__(self, f: Any, path: Path) -> None:
        self.f = f
        self.path = path

    def take(self, n: int) -> bytes:
        b = self.f.read(n)
        if len(b) != n:
            raise QwythosError(
                f"{self.path} is truncated (its GGUF header ends early)", "convert or download it again"
            )
        return b

    def unpack(self, fmt: str) -> Any:
        return struct.unpack(fmt, self.take(struct.calcsize(fmt)))[0]

    def string(self) -> str:
        n = self.unpack("<Q")
        if n > 1 << 30:
            raise QwythosError(
                f"{self.path} is corrupt (a string of {n} bytes)", "convert or download it again"
            )
        return self.take(n).decode("utf-8", errors="replace")

    def value(self, vtype: int) -> tuple[Any, int | None]:
        t = GGUFValueType(vtype)
        if t in _SCALAR_FMT:
            return self.unpack(_SCALAR_FMT[t]), None
        if t == GGUFValueType.STRING:
            return self.string(), None
        if t == GGUFValueType.ARRAY:
            sub = GGUFValueType(self.unpack("<I"))
            n = self.unpack("<Q")
            if sub in _SCALAR_FMT:
                fmt = _SCALAR_FMT[sub]
                size = struct.calcsize(fmt)
                raw = self.take(size * n)
                return list(struct.unpack("<" + fmt[1] * n, raw)), int(sub)
            if sub == GGUFValueType.STRING:
                return [self.string() for _ in range(n)], int(sub)
            raise QwythosError(f"{self.path}: nested arrays are not supported", "")
        raise QwythosError(
            f"{self.path} is corrupt (unknown value type {vtype})", "convert or download it again"
        )


def read_header(path: str | Path) -> GGUFHeader:
    """Parse a GGUF header (metadata and tensor infos). Non-GGUF files get a clear error."""
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
        r = _Reader(f, path)
        version = r.unpack("<I")
        if version not in (2, 3):
            raise QwythosError(f"{path}: unsupported GGUF version {version}", "use a GGUF v3 file")
        n_tensors = r.unpack("<Q")
        n_kv = r.unpack("<Q")
        if n_tensors > 1 << 24 or n_kv > 1 << 24:
            raise QwythosError(
                f"{path} is corrupt (absurd counts in its header)", "convert or download it again"
            )
        hdr = GGUFHeader(path=path, version=version, file_size=size)
        for _ in range(n_kv):
            key = r.string()
            vtype = r.unpack("<I")
            try:
                val, sub = r.value(vtype)
            except ValueError as e:
                raise QwythosError(
                    f"{path} is corrupt (bad value type for {key})", "convert or download it again"
                ) from e
            hdr.kv[key] = val
            hdr.kv_types[key] = (vtype, sub)
        hdr.alignment = int(hdr.kv.get("general.alignment", DEFAULT_ALIGNMENT))
        infos = []
        for _ in range(n_tensors):
            name = r.string()
            nd = r.unpack("<I")
            ne = tuple(r.unpack("<Q") for _ in range(nd))
            gtype = r.unpack("<I")
            off = r.unpack("<Q")
            infos.append((name, ne, gtype, off))
        hdr.data_offset = pad(f.tell(), hdr.alignment)
    for name, ne, gtype, off in infos:
        try:
            qt = GGMLQuantizationType(gtype)
            nbytes = type_nbytes(qt, tuple(reversed(ne)))
        except (ValueError, KeyError):
            nbytes = 0
        start = hdr.data_offset + off
        if start + nbytes > size:
            raise QwythosError(
                f"{path} is truncated: tensor {name} ends at byte {start + nbytes} but the file has {size}",
                "convert or download it again",
            )
        hdr.tensors.append(GGUFTensorInfo(name, ne, gtype, start, nbytes))
    return hdr


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
