"""A resumable importance-matrix run: the totals at a chunk boundary, beside the output.

`OUT.checkpoint` (numpy's .npz, read without pickle) holds the collector's float64 sums and integer
counts after `chunks_done` chunks and the key of the run that made it (model fingerprint, the
tokens' hash, chunk size, head or not). A rerun with the same key continues after those chunks; a
rerun of anything else starts over. It is not an imatrix: neither llama-quantize nor
`qwythos quantize --imatrix` reads it, so a half-done run can never be used as a finished one.
"""

from __future__ import annotations

import contextlib
import json
from pathlib import Path

import numpy as np

from qwythos.core.fileio import atomic_output
from qwythos.quantize.imatrix_collect import Stats

CHECKPOINT_SUFFIX = ".checkpoint"


def checkpoint_path(out: Path) -> Path:
    return out.with_name(out.name + CHECKPOINT_SUFFIX)


def save_checkpoint(path: Path, key: str, chunks_done: int, totals: dict[str, Stats]) -> None:
    names = sorted(totals)
    arrays = {f"s{i}": totals[n].sums for i, n in enumerate(names)}
    arrays |= {f"c{i}": totals[n].counts for i, n in enumerate(names)}
    meta = json.dumps({"key": key, "chunks_done": chunks_done})
    with atomic_output(path) as tmp, open(tmp, "wb") as f:
        np.savez(f, meta=np.array(meta), names=np.array(names, dtype=str), **arrays)


def load_checkpoint(path: Path, key: str) -> tuple[int, dict[str, Stats]] | None:
    """(chunks done, totals) of a checkpoint made by the same run, else None."""
    if not path.is_file():
        return None
    with contextlib.suppress(Exception), np.load(path, allow_pickle=False) as z:
        meta = json.loads(str(z["meta"]))
        if meta.get("key") != key:
            return None
        totals = {
            str(n): Stats(z[f"s{i}"].astype(np.float64), z[f"c{i}"].astype(np.int64))
            for i, n in enumerate(z["names"])
        }
        return int(meta["chunks_done"]), totals
    return None


def remove_checkpoint(path: Path) -> None:
    path.unlink(missing_ok=True)
