"""`quantize --imatrix auto`: the source's importance matrix, computed once and cached.

The matrix is `qwythos imatrix` over the bundled calibration text (or `--calib F`), the MTP head
included, at llama-imatrix's default chunk size. It is cached beside the GGUF llama.cpp quantizes
(the BF16 GGUF, or the BF16 intermediate converted from an HF source), or in qwythos's cache when
that folder is not writable, under a name that carries a key of the source's content fingerprint
(`quantize.source.file_fingerprint`), the calibration text's sha256 and the settings: while both
are unchanged a rerun finds the file and reuses it; a changed source or text gets a new file.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from qwythos.core.errors import QwythosError
from qwythos.core.fileio import cache_dir, read_text_input, sha256_file
from qwythos.quantize.imatrix import CALIBRATION, DEFAULT_CTX, compute_imatrix
from qwythos.quantize.source import Source

#: `--imatrix auto`
AUTO = "auto"
#: qwythos's cache folder for matrices whose source folder is not writable
CACHE_SUBDIR = "imatrix"
#: hex digits of the key in the file name
KEY_DIGITS = 16


@dataclass
class AutoImatrix:
    """The matrix `--imatrix auto` uses, and how it was got (recorded in the manifest)."""

    path: Path
    calibration: str  # the text's file name
    calibration_sha256: str
    computed: bool  # made in this run (False: reused from the cache)


def is_auto(imatrix: str | Path | None) -> bool:
    return isinstance(imatrix, str) and imatrix.strip().lower() == AUTO


def cache_key(source_fingerprint: str, calib_sha256: str, ctx: int = DEFAULT_CTX) -> str:
    """The name key: the source's content, the text's content and the settings."""
    raw = json.dumps([source_fingerprint, calib_sha256, ctx, "head"])
    return hashlib.sha256(raw.encode()).hexdigest()[:KEY_DIGITS]


def _file_name(source: Source, key: str) -> str:
    return f"{source.gguf.stem}.imatrix-{key}.gguf"


def cached_paths(source: Source, key: str) -> list[Path]:
    """Where the matrix may lie: beside the source first, then in qwythos's cache."""
    name = _file_name(source, key)
    return [source.gguf.parent / name, cache_dir(CACHE_SUBDIR) / name]


def _writable(folder: Path) -> bool:
    return folder.is_dir() and os.access(folder, os.W_OK | os.X_OK)


def auto_imatrix(
    source: Source,
    calib: str | Path | None = None,
    *,
    threads: int | None = None,
    progress: Callable[[int, int], None] | None = None,
) -> AutoImatrix:
    """The cached matrix of `source` over `calib` (default: the bundled calibration text),
    computed first when there is none for this source and text."""
    text = Path(calib) if calib is not None else CALIBRATION
    read_text_input(text, "--calib")  # missing, a folder or not UTF-8: one message before any work
    calib_sha = sha256_file(text)
    key = cache_key(source.fingerprint, calib_sha)
    beside, cached = cached_paths(source, key)
    for p in (beside, cached):
        if p.is_file():
            return AutoImatrix(p, text.name, calib_sha, computed=False)
    out = beside if _writable(beside.parent) else cached
    if out == cached:
        cached.parent.mkdir(parents=True, exist_ok=True)
    try:
        compute_imatrix(source.gguf, out, [text], threads=threads, progress=progress, force=True)
    except QwythosError as e:
        raise QwythosError(
            f"--imatrix auto could not compute the importance matrix of {source.gguf}: {e.message}",
            e.hint or "pass --calib with a longer text, or an --imatrix file",
        ) from None
    return AutoImatrix(out, text.name, calib_sha, computed=True)
