"""A random importance matrix for a GGUF, written as llama-imatrix writes it (GGUF form through
quantize/imatrix_file.py, or the legacy .dat)."""

from __future__ import annotations

import struct
from pathlib import Path

import numpy as np

from qwythos.core.gguf.file import read_header
from qwythos.core.gguf.view import GGUFView


def write_imatrix(path: Path, src: Path, *, legacy: bool = False, skip_head: bool = True) -> Path:
    """An importance matrix for `src` as llama-imatrix writes it (GGUF: in_sum2 + counts; or .dat)."""
    hdr = read_header(src)
    view = GGUFView(hdr)
    n_layer = view.n_trunk or 0
    rng = np.random.default_rng(1)
    entries = {}
    for t in hdr.tensors:
        if len(t.ne) < 2 or t.name in ("token_embd.weight", "output.weight") or "norm" in t.name:
            continue
        if skip_head and t.name.startswith(f"blk.{n_layer}."):
            continue  # llama-imatrix never runs the nextn block
        entries[t.name] = (rng.random(t.ne[0]).astype(np.float32) + 0.5) * 10
    if legacy:
        out = bytearray(struct.pack("<i", len(entries)))
        for name, v in entries.items():
            out += (
                struct.pack("<i", len(name))
                + name.encode()
                + struct.pack("<ii", 10, v.size)
                + (v * 10).tobytes()
            )
        out += struct.pack("<i", 10) + struct.pack("<i", 4) + b"text"
        path.write_bytes(bytes(out))
        return path
    from qwythos.quantize.imatrix_file import ImatrixData
    from qwythos.quantize.imatrix_file import write_imatrix as write_gguf_imatrix

    data = ImatrixData(datasets=["text.txt"], chunk_count=10, chunk_size=512)
    for name, v in entries.items():
        data.sums[name] = (v * 5120).reshape(1, -1)
        data.counts[name] = np.array([5120.0])
    write_gguf_imatrix(path, data)
    return path
