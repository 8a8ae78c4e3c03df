"""llama.cpp's GGUF importance-matrix file: what `llama-imatrix` writes by default and
`llama-quantize --imatrix` reads.

Per weight W (sorted by name, as llama-imatrix sorts them): `W.in_sum2`, F32 [n_in, n_mat], the
sums of squared input activations per column, and `W.counts`, F32 [1, n_mat], how many input rows
were summed (stored as ggml stores them: without trailing dimensions of 1, so [n_in] and [1] for
one matrix). Metadata: `general.type` = "imatrix", `imatrix.datasets` (the text files' names),
`imatrix.chunk_count`, `imatrix.chunk_size`. The quantizer divides sums by counts.

The file is written under a temporary name and renamed when complete (core/gguf/file.write_gguf).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from gguf import GGMLQuantizationType

from qwythos.core.errors import QwythosError
from qwythos.core.gguf.file import TensorPlan, read_header, read_tensor_bytes, write_gguf

SUMS_SUFFIX = ".in_sum2"
COUNTS_SUFFIX = ".counts"
KEY_TYPE = "general.type"
TYPE = "imatrix"
KEY_DATASETS = "imatrix.datasets"
KEY_CHUNK_COUNT = "imatrix.chunk_count"
KEY_CHUNK_SIZE = "imatrix.chunk_size"


@dataclass
class ImatrixData:
    """Raw importance data: per weight, sums (n_mat, n_in) and counts (n_mat,), as in the file."""

    sums: dict[str, np.ndarray] = field(default_factory=dict)
    counts: dict[str, np.ndarray] = field(default_factory=dict)
    datasets: list[str] = field(default_factory=list)
    chunk_count: int = 0
    chunk_size: int = 0

    def mean(self, name: str) -> np.ndarray:
        """Mean squared activation per column (what the quantizer uses), flattened over matrices."""
        c = self.counts[name].reshape(-1, 1)
        return np.where(c > 0, self.sums[name] / np.maximum(c, 1), 1.0).reshape(-1)


def _f32_plan(name: str, arr: np.ndarray) -> TensorPlan:
    a = np.ascontiguousarray(arr, dtype=np.float32)
    return TensorPlan(name, a.shape, GGMLQuantizationType.F32, a.nbytes, lambda a=a: a)


def write_imatrix(path: str | Path, data: ImatrixData) -> int:
    """Write `data` as llama-imatrix's GGUF; returns the file size."""
    if not data.sums:
        raise QwythosError(f"no importance data to write to {path}", "the text produced no activations")
    if not data.datasets:
        raise ValueError("an imatrix records at least one dataset name")
    tensors = []
    for name in sorted(data.sums):
        sums = np.asarray(data.sums[name], dtype=np.float64)
        counts = np.asarray(data.counts[name], dtype=np.float64).reshape(-1)
        if sums.ndim != 2 or sums.shape[0] != counts.size:
            raise ValueError(f"{name}: sums {sums.shape} do not match counts {counts.shape}")
        # ggml [n_in, n_mat] and [1, n_mat]; like ggml's writer, without trailing dimensions of 1
        one = counts.size == 1
        tensors += [
            _f32_plan(name + SUMS_SUFFIX, sums.reshape(-1) if one else sums),
            _f32_plan(name + COUNTS_SUFFIX, counts if one else counts.reshape(-1, 1)),
        ]
    kv = {
        KEY_TYPE: TYPE,
        KEY_DATASETS: [str(d) for d in data.datasets],
        KEY_CHUNK_COUNT: int(data.chunk_count),
        KEY_CHUNK_SIZE: int(data.chunk_size),
    }
    return write_gguf(path, TYPE, kv, tensors)


def read_imatrix(path: str | Path) -> ImatrixData:
    """Read a GGUF imatrix file's raw sums and counts (llama-imatrix's or ours)."""
    hdr = read_header(path)
    by_name = {t.name: t for t in hdr.tensors}
    out = ImatrixData(
        datasets=[str(d) for d in hdr.kv.get(KEY_DATASETS, [])],
        chunk_count=int(hdr.kv.get(KEY_CHUNK_COUNT, 0)),
        chunk_size=int(hdr.kv.get(KEY_CHUNK_SIZE, 0)),
    )
    f32 = int(GGMLQuantizationType.F32)
    for t in hdr.tensors:
        if not t.name.endswith(SUMS_SUFFIX):
            continue
        name = t.name[: -len(SUMS_SUFFIX)]
        c = by_name.get(name + COUNTS_SUFFIX)
        if c is None or t.ggml_type != f32 or c.ggml_type != f32 or not t.ne:
            raise QwythosError(f"{path}: {name} has no F32 counts or sums", "the imatrix file is damaged")
        n_in, n_mat = t.ne[0], int(np.prod(t.ne[1:]))
        if int(np.prod(c.ne)) != n_mat:
            raise QwythosError(
                f"{path}: {name}'s counts do not match its sums", "the imatrix file is damaged"
            )
        out.sums[name] = np.frombuffer(read_tensor_bytes(hdr, t.name), "<f4").reshape(n_mat, n_in)
        out.counts[name] = np.frombuffer(read_tensor_bytes(hdr, c.name), "<f4").reshape(n_mat)
    if not out.sums:
        raise QwythosError(f"{path} holds no importance data (no *.in_sum2 tensors)", "use an imatrix file")
    return out
