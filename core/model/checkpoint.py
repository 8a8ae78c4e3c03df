"""Reading a Hugging Face checkpoint folder (config, index, safetensors headers) without torch.

The one opener of an HF folder: `read_config` and `read_index` (one message for a missing or broken
file), `read_checkpoint` (a folder, optionally only the tensors a caller selects, as the MTP head
reader does), `open_checkpoint` (a folder or a Hub repo id). `mtp check` reads the same files with
the same functions but reports what is wrong instead of stopping at the first problem.

Every file is untrusted. Safetensors headers are parsed here (8-byte length, JSON header, raw data)
and validated before any byte is used: the header length against the file, the JSON's shape (one
object, no name twice), each entry's dtype, shape and `data_offsets` (integers; bytes = elements x
dtype size; inside the data area; no two tensors sharing a byte). The index's `weight_map` names
shards by relative paths that stay inside the folder (no `..`, no absolute path, no folder on the
way that is a link out of it; the shard itself may be a link, as in Hugging Face's cache) and are
regular files. Each problem ends in one `QwythosError` naming the file and the fix. Tensor data is reached by
file offset, so the converter can copy bytes straight from the source file (no Python objects), or
memory-map / read one tensor at a time. The one writer is core/model/safetensors_writer.py.
"""

from __future__ import annotations

import json
import math
import stat
import struct
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from qwythos.core import hub
from qwythos.core.errors import QwythosError

# safetensors dtype -> (numpy dtype used to view the raw bytes, bytes per element)
ST_DTYPES: dict[str, tuple[str, int]] = {
    "BF16": ("<u2", 2),  # viewed as uint16; converted explicitly where needed
    "F16": ("<f2", 2),
    "F32": ("<f4", 4),
    "F64": ("<f8", 8),
    "I8": ("i1", 1),
    "U8": ("u1", 1),
    "I16": ("<i2", 2),
    "I32": ("<i4", 4),
    "I64": ("<i8", 8),
    "BOOL": ("?", 1),
}

#: the dtypes a converter reads (the weights of every Qwen3.5 checkpoint are one of them)
FLOAT_DTYPES = ("BF16", "F16", "F32")
MAX_HEADER_BYTES = 100 * 2**20  # safetensors' own limit
MAX_JSON_BYTES = 100 * 2**20  # a config or index file (real ones are a few KB to a few hundred KB)
CONFIG = "config.json"
INDEX = "model.safetensors.index.json"


@dataclass(frozen=True)
class TensorInfo:
    """Where one tensor's bytes lie: file, absolute byte offset, length; dtype and shape."""

    name: str
    dtype: str  # safetensors dtype string, e.g. "BF16"
    shape: tuple[int, ...]
    file: Path
    offset: int  # absolute offset of the first data byte in `file`
    nbytes: int

    @property
    def numel(self) -> int:
        n = 1
        for d in self.shape:
            n *= d
        return n


@dataclass
class Checkpoint:
    """A validated checkpoint folder. Tensors are listed in llama.cpp's converter order:
    shard files in sorted order, names sorted within each shard."""

    path: Path
    config: dict[str, Any]
    files: list[Path]
    tensors: dict[str, TensorInfo] = field(default_factory=dict)
    hub_id: str | None = None
    index: dict[str, Any] | None = None  # model.safetensors.index.json as read (None: no index)

    @property
    def short_name(self) -> str:
        """The model's name for default output files: the hub repo's name, else the folder's."""
        return self.hub_id.split("/")[-1] if self.hub_id else self.path.name

    def tensor_names(self) -> list[str]:
        return list(self.tensors)

    def tensor_info(self, name: str) -> TensorInfo:
        try:
            return self.tensors[name]
        except KeyError:
            raise QwythosError(
                f"tensor {name} is not in the checkpoint {self.path}", "check that the folder is complete"
            ) from None

    def read(self, name: str) -> np.ndarray:
        """The tensor as a read-only memory-mapped array (BF16 viewed as uint16)."""
        info = self.tensor_info(name)
        np_dtype = np.dtype(ST_DTYPES[info.dtype][0])
        if info.nbytes == 0:
            return np.zeros(info.shape, dtype=np_dtype)
        return np.memmap(info.file, dtype=np_dtype, mode="r", offset=info.offset, shape=info.shape)

    def read_copy(self, name: str) -> np.ndarray:
        """The tensor read into memory with one pread (no mapping kept alive; BF16 as uint16)."""
        return read_copy(self.tensor_info(name))

    def read_f32(self, name: str) -> np.ndarray:
        """The tensor as float32 (exact for BF16/F16/F32 sources)."""
        return read_f32(self.tensor_info(name))


def read_copy(info: TensorInfo) -> np.ndarray:
    """One tensor read into memory with one pread (no mapping kept alive; BF16 as uint16)."""
    np_dtype = np.dtype(ST_DTYPES[info.dtype][0])
    buf = bytearray(info.nbytes)
    with open(info.file, "rb") as f:
        f.seek(info.offset)
        got = f.readinto(buf)
    if got != info.nbytes:
        raise QwythosError(f"{info.file} is truncated (tensor {info.name})", "download the file again")
    return np.frombuffer(buf, dtype=np_dtype).reshape(info.shape)


def read_f32(info: TensorInfo) -> np.ndarray:
    """One tensor as float32 (exact for BF16/F16/F32 sources)."""
    return to_f32(read_copy(info), info.dtype)


def check_tensor(info: TensorInfo, expected: tuple[int, ...]) -> None:
    """A tensor a converter reads: the shape config.json implies, a float dtype."""
    if info.shape != expected:
        raise QwythosError(
            f"{info.file}: tensor {info.name} has shape {list(info.shape)}, config.json implies {list(expected)}",
            "the weights do not match config.json; use the config that came with them",
        )
    if info.dtype not in FLOAT_DTYPES:
        raise QwythosError(
            f"{info.file}: tensor {info.name} is {info.dtype}", "use a BF16, F16 or F32 checkpoint"
        )


def to_f32(arr: np.ndarray, st_dtype: str) -> np.ndarray:
    """Widen a raw safetensors array to float32; BF16 (uint16 view) is shifted into the high half."""
    if st_dtype == "BF16":
        return (arr.astype(np.uint32) << 16).view(np.float32)
    return arr.astype(np.float32)


def load_json(path: Path, what: str) -> Any:
    """A small JSON file (config, index): a regular file of at most MAX_JSON_BYTES, UTF-8, parsed."""
    size = check_regular_file(path, f"{what} file")
    if size > MAX_JSON_BYTES:
        raise QwythosError(
            f"{path} is {size} bytes, more than a {what} file can be ({MAX_JSON_BYTES})",
            f"re-download the {what} file",
        )
    try:
        with open(path, encoding="utf-8") as f:
            return json.load(f)
    except json.JSONDecodeError as e:
        raise QwythosError(
            f"{path} is not valid JSON ({e.msg}, line {e.lineno})", f"repair or re-download the {what}"
        ) from e
    except (UnicodeDecodeError, RecursionError) as e:
        why = "not UTF-8" if isinstance(e, UnicodeDecodeError) else "nested too deeply"
        raise QwythosError(f"{path} is not valid JSON ({why})", f"repair or re-download the {what}") from None
    except OSError as e:
        raise QwythosError(f"cannot read {path}: {e.strerror}", f"check the {what} file") from e


def _corrupt(path: Path, what: str) -> QwythosError:
    return QwythosError(f"{path} is corrupt: {what}", "download the file again")


def _unique_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    """json object hook: a name given twice is refused (two entries could alias one tensor)."""
    out: dict[str, Any] = {}
    for k, v in pairs:
        if k in out:
            raise ValueError(f"{k!r} appears twice")
        out[k] = v
    return out


def _is_count(x: Any) -> bool:
    """A JSON integer >= 0 (not a bool, float or string)."""
    return isinstance(x, int) and not isinstance(x, bool) and x >= 0


def check_regular_file(path: Path, what: str = "safetensors file") -> int:
    """The size of `path`, after checking it is a regular file (a folder, a FIFO or a device is
    refused before it is opened: opening a FIFO would block)."""
    try:
        st = path.stat()
    except FileNotFoundError:
        raise QwythosError(f"{path} is missing", "download the missing file into the folder") from None
    except OSError as e:
        raise QwythosError(f"cannot read {path}: {e.strerror}", "check the file and its permissions") from e
    if stat.S_ISDIR(st.st_mode):
        raise QwythosError(
            f"{path} is a folder, not a {what}", f"replace it with the {what} (download it again)"
        )
    if not stat.S_ISREG(st.st_mode):
        raise QwythosError(f"{path} is not a regular file", f"replace it with the {what} (download it again)")
    return st.st_size


def _header_entry(path: Path, name: str, meta: Any) -> tuple[str, tuple[int, ...], int, int]:
    """(dtype, shape, begin, end) of one header entry, every field type-checked."""
    if not isinstance(meta, dict):
        raise _corrupt(path, f"the header entry of tensor {name} is not a JSON object")
    dtype, shape, offsets = meta.get("dtype"), meta.get("shape"), meta.get("data_offsets")
    if not isinstance(dtype, str):
        raise _corrupt(path, f"tensor {name} has no dtype")
    if dtype not in ST_DTYPES:
        raise QwythosError(
            f"{path}: tensor {name} has unsupported dtype {dtype[:40]!r}", "use a BF16, F16 or F32 checkpoint"
        )
    if not isinstance(shape, list) or not all(_is_count(d) for d in shape):
        raise _corrupt(path, f"tensor {name} has shape {str(shape)[:80]} (not a list of sizes >= 0)")
    if not isinstance(offsets, list) or len(offsets) != 2 or not all(_is_count(x) for x in offsets):
        raise _corrupt(path, f"tensor {name} has data_offsets {str(offsets)[:80]} (not two offsets >= 0)")
    return dtype, tuple(shape), offsets[0], offsets[1]


def read_safetensors_header(path: Path) -> dict[str, TensorInfo]:
    """Parse and validate one safetensors file's header. Tensors come back sorted by name."""
    size = check_regular_file(path)
    try:
        with open(path, "rb") as f:
            head = f.read(8)
            if len(head) < 8:
                raise QwythosError(
                    f"{path} is truncated (shorter than a safetensors header)", "download the file again"
                )
            (hlen,) = struct.unpack("<Q", head)
            if hlen < 2 or hlen > MAX_HEADER_BYTES or 8 + hlen > size:
                raise QwythosError(
                    f"{path} is truncated or corrupt: its header claims {hlen} bytes but the file has {size}",
                    "download the file again",
                )
            raw = f.read(hlen)
    except OSError as e:
        raise QwythosError(f"cannot read {path}: {e.strerror}", "check the file and its permissions") from e
    try:
        header = json.loads(raw.decode("utf-8"), object_pairs_hook=_unique_keys)
        if not isinstance(header, dict):
            raise ValueError("the header is not a JSON object")
    except RecursionError:
        raise _corrupt(path, "the safetensors header is nested too deeply") from None
    except (UnicodeDecodeError, ValueError) as e:
        raise QwythosError(
            f"{path} is corrupt: the safetensors header is not valid JSON ({e})", "download the file again"
        ) from e
    if not isinstance(header.get("__metadata__", {}), dict):
        raise _corrupt(path, "__metadata__ is not a JSON object")
    data_start = 8 + hlen
    data_len = size - data_start
    out: dict[str, TensorInfo] = {}
    for name, meta in header.items():
        if name == "__metadata__":
            continue
        dtype, shape, begin, end = _header_entry(path, name, meta)
        numel = math.prod(shape)
        if end < begin or end - begin != numel * ST_DTYPES[dtype][1]:
            raise _corrupt(path, f"tensor {name} has {end - begin} bytes for shape {list(shape)} {dtype}")
        if end > data_len:
            raise QwythosError(
                f"{path} is truncated: tensor {name} ends at byte {data_start + end} but the file has {size}",
                "download the file again (the copy is incomplete)",
            )
        out[name] = TensorInfo(name, dtype, shape, path, data_start + begin, end - begin)
    _check_no_overlap(path, out.values(), data_start)
    return dict(sorted(out.items()))


def _check_no_overlap(path: Path, infos: Iterable[TensorInfo], data_start: int) -> None:
    """No byte belongs to two tensors (aliased or overlapping data_offsets)."""
    last: TensorInfo | None = None
    for info in sorted((i for i in infos if i.nbytes), key=lambda i: i.offset):
        if last is not None and info.offset < last.offset + last.nbytes:
            raise _corrupt(
                path,
                f"tensors {last.name} and {info.name} share bytes (data_offsets "
                f"[{last.offset - data_start}, {last.offset - data_start + last.nbytes}] and "
                f"[{info.offset - data_start}, {info.offset - data_start + info.nbytes}])",
            )
        last = info


def read_config(folder: Path) -> dict[str, Any]:
    """The folder's config.json as a dict: the one message for a folder without one or a broken one
    (a config.json, `text_config` or `architectures` of the wrong JSON type included)."""
    path = folder / CONFIG
    if not path.exists():
        raise QwythosError(f"{folder} has no config.json", "pass the folder of a Hugging Face checkpoint")
    config = load_json(path, "config")
    if not isinstance(config, dict):
        raise QwythosError(f"{path} is not a JSON object", "re-download config.json")
    for key, kind, name in (("text_config", dict, "an object"), ("vision_config", dict, "an object")):
        if config.get(key) is not None and not isinstance(config[key], kind):
            raise QwythosError(
                f"{path}: {key} is {type(config[key]).__name__}, not {name}",
                "use the checkpoint's original config.json",
            )
    archs = config.get("architectures")
    if archs is not None and not (isinstance(archs, list) and all(isinstance(a, str) for a in archs)):
        raise QwythosError(
            f"{path}: architectures is not a list of names", "use the checkpoint's original config.json"
        )
    return config


def shard_path(folder: Path, name: str, where: Path) -> Path:
    """`folder / name` for a shard named in `where` (the index), refused without opening anything
    unless the name is a relative `.safetensors` path that stays inside `folder`: no `..`, not
    absolute, no folder on the way that is a link out of `folder`. The shard itself may be a link
    (Hugging Face's cache and `mtp restore --hf` link shards)."""
    fix = f"the index is damaged; download {INDEX} again from the model's repository"
    parts = Path(name).parts
    if (
        not name.endswith(".safetensors")
        or "\x00" in name
        or "\\" in name
        or Path(name).is_absolute()
        or ".." in parts
    ):
        raise QwythosError(
            f"{where} names {name[:200]!r} as a shard: not a .safetensors file in {folder}", fix
        )
    path = folder / name
    if len(parts) > 1:
        try:
            inside = path.parent.resolve().is_relative_to(folder.resolve())
        except (OSError, RuntimeError):  # a link loop
            inside = False
        if not inside:
            raise QwythosError(
                f"{where} names {name[:200]!r} as a shard: its folder lies outside {folder}", fix
            )
    return path


def read_index(folder: Path) -> dict[str, Any] | None:
    """model.safetensors.index.json (None when the folder has none); its weight_map is checked to
    be a non-empty map of tensor name -> shard path inside the folder (`shard_path`), and its
    metadata an object whose total_size, if any, is a byte count."""
    path = folder / INDEX
    if not path.exists() and not path.is_symlink():
        return None
    data = load_json(path, "index")
    wmap = data.get("weight_map") if isinstance(data, dict) else None
    if not isinstance(wmap, dict) or not wmap or not all(isinstance(f, str) and f for f in wmap.values()):
        raise QwythosError(f"{path} has no weight_map", "re-download the index file")
    for name in set(wmap.values()):
        shard_path(folder, name, path)
    meta = data.get("metadata")
    if meta is not None and not (isinstance(meta, dict) and _is_count(meta.get("total_size", 0))):
        raise QwythosError(
            f"{path}: metadata is not an object with a byte count total_size", "re-download the index file"
        )
    return data


def _shard_files(
    folder: Path, index: dict[str, Any] | None, select: Callable[[str], bool] | None
) -> list[Path]:
    """The safetensors files to read (sorted, as llama.cpp does): the index's shards that hold a
    selected tensor, else the folder's model*.safetensors. A shard that is a folder (or a FIFO, a
    device) is refused with its own message, before any is opened."""
    if index is None:
        found = sorted(folder.glob("model*.safetensors"))
        for p in found:
            check_regular_file(p)
        return found
    wmap: dict[str, str] = index["weight_map"]
    names = sorted({f for n, f in wmap.items() if select is None or select(n)})
    paths = [shard_path(folder, n, folder / INDEX) for n in names]
    missing = [p for p in paths if not p.exists()]
    if missing:
        raise QwythosError(
            f"{missing[0]} is missing (named in {INDEX}; {len(missing)} shard(s) missing in all)",
            "download the missing shards into the folder",
        )
    for p in paths:
        check_regular_file(p)
    return paths


def resolve_source(src: str | Path) -> tuple[Path, str | None]:
    """A local folder, or a Hub repo id downloaded to the local cache."""
    p = Path(src).expanduser()
    if p.exists():
        if not p.is_dir():
            raise QwythosError(
                f"{p} is a file, not a checkpoint folder", "pass the folder holding config.json"
            )
        return p, None
    if hub.looks_like_hub_id(str(src)):
        return hub.fetch_checkpoint(str(src)), str(src)
    raise QwythosError(
        f"{p} does not exist", "pass a checkpoint folder or a Hugging Face repo id (owner/name)"
    )


def read_checkpoint(
    folder: Path, *, hub_id: str | None = None, select: Callable[[str], bool] | None = None
) -> Checkpoint:
    """Open and validate the checkpoint in `folder`. With `select`, only the tensors it accepts are
    kept, and only the shards that hold them are read (or need to be there): the MTP head reader
    opens a Hub download that holds just the head's shards this way."""
    config = read_config(folder)
    index = read_index(folder)
    files = _shard_files(folder, index, select)
    if not files and select is None:
        raise QwythosError(f"{folder} has no *.safetensors weights", "download the model's safetensors files")
    tensors: dict[str, TensorInfo] = {}
    for f in files:
        for name, info in read_safetensors_header(f).items():
            if name in tensors:
                raise QwythosError(
                    f"tensor {name} appears in both {tensors[name].file.name} and {f.name}",
                    "remove the stray file",
                )
            tensors[name] = info
    if select is not None:
        tensors = {n: i for n, i in tensors.items() if select(n)}
        files = sorted({i.file for i in tensors.values()})
    if index is not None:
        wmap: dict[str, str] = index["weight_map"]
        missing = sorted(n for n in set(wmap) - set(tensors) if select is None or select(n))
        if missing:
            shard = folder / wmap[missing[0]]
            raise QwythosError(
                f"{shard} lacks tensor {missing[0]} listed in {INDEX} ({len(missing)} missing)",
                "download that shard again",
            )
    return Checkpoint(folder, config, files, tensors, hub_id, index)


def open_checkpoint(src: str | Path | Checkpoint) -> Checkpoint:
    """Open and validate a checkpoint folder (or Hub repo id); an opened one is passed through."""
    if isinstance(src, Checkpoint):
        return src
    folder, hub_id = resolve_source(src)
    return read_checkpoint(folder, hub_id=hub_id)
