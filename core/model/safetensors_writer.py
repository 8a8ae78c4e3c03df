"""The one safetensors writer: a header (name -> dtype, shape, data offsets; padded with spaces to
8 bytes, as the safetensors library writes it), then each tensor's bytes, streamed from its own
writer so memory stays at one chunk. The file goes through `fileio.atomic_output`: a temporary
name, renamed only when complete.

The reader (and every check of a file read back) is core/model/checkpoint.py. `mtp restore --hf`
writes the head's shard and rewrites trunk shards with this; qwythos.testing builds the tiny
checkpoints with it.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO

from qwythos.core.errors import QwythosError
from qwythos.core.fileio import atomic_output
from qwythos.core.model.checkpoint import ST_DTYPES

COPY_CHUNK = 64 * 2**20
METADATA = {"format": "pt"}

Writer = Callable[[BinaryIO], None]


@dataclass(frozen=True)
class SafetensorsEntry:
    """One tensor to write: its name, safetensors dtype ("BF16"), shape, and a writer of its bytes."""

    name: str
    dtype: str
    shape: tuple[int, ...]
    write: Writer  # writes exactly `nbytes` bytes

    @property
    def nbytes(self) -> int:
        return math.prod(self.shape) * ST_DTYPES[self.dtype][1]


def copy_bytes(path: Path, offset: int, nbytes: int) -> Writer:
    """A writer that copies `nbytes` bytes of `path` from `offset`, a chunk at a time."""

    def write(out: BinaryIO) -> None:
        with open(path, "rb") as f:
            f.seek(offset)
            left = nbytes
            while left:
                buf = f.read(min(COPY_CHUNK, left))
                if not buf:
                    raise QwythosError(f"{path} is truncated", "download the file again")
                out.write(buf)
                left -= len(buf)

    return write


def write_pieces(pieces: Callable[[], Iterable[Any]]) -> Writer:
    """A writer of the bytes-likes that `pieces()` yields, one after another."""

    def write(out: BinaryIO) -> None:
        for piece in pieces():
            out.write(piece)

    return write


def encode_header(entries: list[SafetensorsEntry]) -> tuple[bytes, int]:
    """(the header's bytes: 8-byte length, then the JSON padded to 8 bytes; the data's size)."""
    header: dict[str, Any] = {"__metadata__": METADATA}
    offset = 0
    for e in entries:
        header[e.name] = {
            "dtype": e.dtype,
            "shape": list(e.shape),
            "data_offsets": [offset, offset + e.nbytes],
        }
        offset += e.nbytes
    raw = json.dumps(header, separators=(",", ":")).encode()
    raw += b" " * (-len(raw) % 8)
    return len(raw).to_bytes(8, "little") + raw, offset


def write_safetensors(path: str | Path, entries: list[SafetensorsEntry]) -> int:
    """Write `entries` in this order as one safetensors file; returns the bytes of tensor data."""
    head, data_bytes = encode_header(entries)
    with atomic_output(path) as tmp, open(tmp, "wb") as f:
        f.write(head)
        for e in entries:
            start = f.tell()
            e.write(f)
            if f.tell() - start != e.nbytes:
                raise QwythosError(
                    f"{path}: tensor {e.name} came out as {f.tell() - start} bytes, expected {e.nbytes}",
                    "this is a bug in qwythos; please report it",
                )
    return data_bytes
