"""Test pictures for the vision checks: deterministic RGB arrays and PNG files (no PIL needed)."""

from __future__ import annotations

import struct
import zlib
from pathlib import Path

import numpy as np


def picture(w: int, h: int, seed: int) -> np.ndarray:
    """(h, w, 3) uint8: smooth gradients plus noise, structure at every scale, a pure function of the seed."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:h, 0:w]
    base = np.stack([x * 255 / w, y * 255 / h, (x + y) * 127 / (w + h)], axis=-1)
    return np.clip(base + rng.normal(0, 40, (h, w, 3)), 0, 255).astype(np.uint8)


def write_png(path: Path, rgb: np.ndarray) -> Path:
    """An 8-bit RGB PNG of `rgb` (h, w, 3)."""
    h, w, _ = rgb.shape
    raw = b"".join(b"\0" + np.ascontiguousarray(rgb[y], dtype=np.uint8).tobytes() for y in range(h))

    def chunk(tag: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + tag + data + struct.pack(">I", zlib.crc32(tag + data))

    ihdr = struct.pack(">IIBBBBB", w, h, 8, 2, 0, 0, 0)
    png = (
        b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(raw)) + chunk(b"IEND", b"")
    )
    Path(path).write_bytes(png)
    return Path(path)
