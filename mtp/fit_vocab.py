"""The trunk's frozen vocabulary matrices (token embedding, output) as rows read on demand.

At 9B both are 248320 x 4096: 4 GiB each as float32. `mtp fit` needs the embedding rows of the
tokens it feeds and the output rows of the candidates its loss looks at, so rows are memory-mapped
from the GGUF in their stored type and dequantized per batch (a quantized row is self-contained).
Small vocabularies are dequantized once and kept whole.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from gguf import GGML_QUANT_SIZES, GGMLQuantizationType

from qwythos.core.errors import QwythosError
from qwythos.core.gguf.file import GGUFHeader

WHOLE_BYTES = 256 * 2**20  # keep a matrix whole (float32) below this size


def dequantize_rows(raw: np.ndarray, gtype: GGMLQuantizationType, n_cols: int) -> np.ndarray:
    """(n, row_bytes) uint8 rows of one GGML type -> (n, n_cols) float32."""
    if gtype == GGMLQuantizationType.F32:
        return raw.view(np.float32).reshape(len(raw), n_cols)
    if gtype == GGMLQuantizationType.F16:
        return raw.view(np.float16).astype(np.float32).reshape(len(raw), n_cols)
    if gtype == GGMLQuantizationType.BF16:
        u = raw.view(np.uint16).astype(np.uint32) << 16
        return u.view(np.float32).reshape(len(raw), n_cols)
    from gguf.quants import dequantize

    return np.asarray(dequantize(np.ascontiguousarray(raw), gtype), dtype=np.float32).reshape(
        len(raw), n_cols
    )


class RowTable:
    """One (n_rows, n_cols) matrix of a GGUF, rows fetched as float32 torch tensors."""

    def __init__(self, hdr: GGUFHeader, name: str, device: str = "cpu") -> None:
        info = next((t for t in hdr.tensors if t.name == name), None)
        if info is None:
            raise QwythosError(f"{hdr.path} has no {name}", "convert the model again")
        self.name = name
        self.n_rows, self.n_cols = info.shape
        self.gtype = GGMLQuantizationType(info.ggml_type)
        block, size = GGML_QUANT_SIZES[self.gtype]
        self.row_bytes = self.n_cols // block * size
        self.raw = np.memmap(
            Path(hdr.path), dtype=np.uint8, mode="r", offset=info.offset, shape=(self.n_rows, self.row_bytes)
        )
        self.device = device
        self.whole: torch.Tensor | None = None
        if self.n_rows * self.n_cols * 4 <= WHOLE_BYTES:
            self.whole = torch.from_numpy(
                dequantize_rows(np.asarray(self.raw), self.gtype, self.n_cols).copy()
            )
            self.whole = self.whole.to(device)

    def rows(self, ids: torch.Tensor) -> torch.Tensor:
        """Rows `ids` (any shape of int64) -> ids.shape + (n_cols,) float32."""
        if self.whole is not None:
            return self.whole[ids.to(self.whole.device)]
        flat = ids.reshape(-1).cpu().numpy()
        uniq, inv = np.unique(flat, return_inverse=True)
        x = dequantize_rows(np.asarray(self.raw[uniq]), self.gtype, self.n_cols)
        out = torch.from_numpy(x)[torch.from_numpy(inv.reshape(-1))]
        return out.reshape(*ids.shape, self.n_cols).to(self.device)


class Vocab:
    """The trunk's embedding and output matrices (output falls back to the embedding when tied)."""

    def __init__(self, hdr: GGUFHeader, device: str = "cpu") -> None:
        names = {t.name for t in hdr.tensors}
        self.embed = RowTable(hdr, "token_embd.weight", device)
        self.output = RowTable(
            hdr, "output.weight" if "output.weight" in names else "token_embd.weight", device
        )
        self.n_vocab = self.output.n_rows

    def logits(self, g: torch.Tensor, cand: torch.Tensor | None) -> torch.Tensor:
        """g (..., H) against the output rows `cand` (C,) or, with None, the whole vocabulary."""
        if cand is None:
            if self.output.whole is None:
                raise ValueError("the whole vocabulary is not resident")
            return g @ self.output.whole.T
        return g @ self.output.rows(cand).T

    @property
    def resident(self) -> bool:
        return self.output.whole is not None
