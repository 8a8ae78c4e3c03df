"""Find an MTP head in a source: a HF checkpoint (folder or Hub id) with `mtp.*` tensors, a GGUF
whose trunk carries a nextn block, or a stand-alone MTP GGUF.

Our stand-alone MTP GGUF is what llama.cpp's `convert_hf_to_gguf.py --mtp` writes and what its
qwen35 loader accepts as an MTP-only model: arch `qwen35`, the full model metadata (tokenizer,
hyper-parameters, `block_count` = trunk layers + 1, `nextn_predict_layers` = 1, recurrent flags),
and only the tensors `output.weight`, `token_embd.weight`, `output_norm.weight` plus the
`blk.{n_layer}.*` block. llama.cpp sees no `blk.0.attn_norm.weight`, marks the trunk tensors
optional, and runs the block as an MTP draft context next to the unchanged trunk.

A head is returned as block-relative tensors (`nextn.eh_proj.weight`, `attn_q.weight`, ...) in
llama.cpp's on-disk form, so the grafter can put it at any block index.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from gguf import GGMLQuantizationType, Keys

from qwythos.core import hub
from qwythos.core.errors import QwythosError
from qwythos.core.fileio import cache_dir
from qwythos.core.gguf.file import RawSource
from qwythos.core.gguf.view import read_view
from qwythos.core.model import qwen35
from qwythos.core.model.arch import ARCH, check_arch
from qwythos.core.model.checkpoint import Checkpoint, read_checkpoint
from qwythos.core.model.structure import HeadDims, dims_from_header, split_block_name


@dataclass
class HeadTensor:
    """One tensor of the head, block-relative name, in its source's on-disk GGML form."""

    name: str  # e.g. "nextn.eh_proj.weight"
    shape: tuple[int, ...]  # numpy order
    ggml_type: GGMLQuantizationType
    nbytes: int
    load: Callable[[], Any]  # bytes-like or ndarray in `ggml_type`
    raw: RawSource | None = None
    source: str = ""


@dataclass
class HeadSource:
    kind: str  # "hf" | "gguf-nextn" | "gguf-mtp"
    path: Path
    dims: HeadDims
    tensors: list[HeadTensor] = field(default_factory=list)
    hub_id: str | None = None
    files_read: list[str] = field(default_factory=list)
    checkpoint: Checkpoint | None = None  # kind "hf": the head's safetensors headers, read once

    @property
    def names(self) -> list[str]:
        return [t.name for t in self.tensors]


KIND_LABEL = {
    "hf": "HF checkpoint (mtp.* tensors)",
    "gguf-nextn": "GGUF with a nextn block",
    "gguf-mtp": "stand-alone MTP GGUF",
}


# ---------------------------------------------------------------- HF checkpoints


def _hf_folder(src: str) -> tuple[Path, str | None]:
    p = Path(src).expanduser()
    if p.is_dir():
        return p, None
    if p.exists():
        raise QwythosError(
            f"{p} is neither a checkpoint folder nor a GGUF file", "pass a folder, a .gguf or a repo id"
        )
    if not hub.looks_like_hub_id(src):
        raise QwythosError(f"{p} does not exist", "pass a checkpoint folder, a .gguf file, or a Hub repo id")
    return _download_head_shards(src), src


def head_cache_dir(repo_id: str) -> Path:
    """Where a Hub repo's MTP shards are kept: heads/ in qwythos's cache folder (fileio.cache_dir)."""
    return cache_dir("heads", repo_id.replace("/", "--"))


def _download_head_shards(repo_id: str) -> Path:
    """config, tokenizer files and the index first, then only the shards that hold mtp.* tensors
    (the same selection as `qwythos download --mtp-only`; resumable, complete files kept)."""
    return hub.download(repo_id, head_cache_dir(repo_id), mtp_only=True).local_dir


def _is_mtp_name(name: str) -> bool:
    return name.startswith(("mtp.", "model.mtp."))


def open_hf_head(src: str | Path) -> HeadSource:
    folder, hub_id = _hf_folder(str(src))
    ckpt = read_checkpoint(folder, hub_id=hub_id, select=_is_mtp_name)
    ckpt.tensors = dict(sorted(ckpt.tensors.items()))
    tcfg = qwen35.text_config_from(ckpt.config, where=str(folder / "config.json"))
    if not ckpt.tensors:
        raise QwythosError(
            f"{folder} has no mtp.* tensors (config promises {tcfg.mtp_layers} MTP layer(s))",
            "use a checkpoint that ships its head, e.g. the base Qwen/Qwen3.5-9B, or a GGUF with a nextn block",
        )
    if qwen35.mtp_layer_count(ckpt) != 1:
        raise QwythosError(
            f"{folder} carries {qwen35.mtp_layer_count(ckpt)} MTP blocks",
            "llama.cpp's qwen35 runs exactly one",
        )
    plans = qwen35.plan_tensors(ckpt, tcfg, outtype="bf16", include_mtp=True, mtp_only=True)
    head = []
    for p in plans:
        sb = split_block_name(p.name)
        if sb is None or sb[0] != tcfg.n_layer:
            raise QwythosError(f"{folder}: unexpected head tensor {p.source}", "check the checkpoint")
        head.append(HeadTensor(sb[1], tuple(p.shape), p.ggml_type, p.nbytes, p.load, p.raw, p.source))
    dims = HeadDims(ARCH, tcfg.n_embd, tcfg.n_vocab, tcfg.n_head, tcfg.n_head_kv, tcfg.head_dim, tcfg.n_ff)
    return HeadSource("hf", folder, dims, head, hub_id, [f.name for f in ckpt.files], ckpt)


# ---------------------------------------------------------------- GGUF files


def byte_loader(path: Path, offset: int, nbytes: int) -> Callable[[], bytes]:
    """A loader of `nbytes` bytes of `path` from `offset` (one tensor of a GGUF)."""

    def load() -> bytes:
        with open(path, "rb") as f:
            f.seek(offset)
            return f.read(nbytes)

    return load


def open_gguf_head(src: str | Path) -> HeadSource:
    view = read_view(src)
    hdr = view.header
    check_arch(view, "take an MTP head from")
    if view.n_nextn == 0:
        raise QwythosError(
            f"{src} has no MTP head (no {view.key(Keys.LLM.NEXTN_PREDICT_LAYERS)})",
            "take the head from a GGUF that has one (e.g. the official ...-MTP-BF16.gguf)",
        )
    il = view.n_trunk or 0
    head = []
    for t in hdr.tensors:
        sb = split_block_name(t.name)
        if sb and sb[0] == il:
            raw = RawSource(hdr.path, t.offset, t.nbytes)
            gt = GGMLQuantizationType(t.ggml_type)
            head.append(
                HeadTensor(
                    sb[1], t.shape, gt, t.nbytes, byte_loader(hdr.path, t.offset, t.nbytes), raw, t.name
                )
            )
    if not head:
        raise QwythosError(
            f"{src} promises a nextn block {il} but has none of its tensors", "re-download the file"
        )
    kind = "gguf-nextn" if view.has_trunk else "gguf-mtp"
    return HeadSource(kind, hdr.path, dims_from_header(view), head, None, [hdr.path.name])


def open_head(src: str | Path) -> HeadSource:
    """A head from any of the three source kinds."""
    p = Path(str(src)).expanduser()
    if p.is_file():
        return open_gguf_head(p)
    return open_hf_head(src)


def dequantize(t: HeadTensor) -> np.ndarray:
    """A head tensor as float32 (numpy shape)."""
    from gguf.quants import dequantize as gdeq

    data = t.load()
    if isinstance(data, np.ndarray) and data.dtype == np.float32:
        return data.reshape(t.shape)
    raw = np.frombuffer(bytes(data) if not isinstance(data, np.ndarray) else data.tobytes(), dtype=np.uint8)
    if t.ggml_type == GGMLQuantizationType.F32:
        return raw.view(np.float32).reshape(t.shape)
    if t.ggml_type == GGMLQuantizationType.F16:
        return raw.view(np.float16).astype(np.float32).reshape(t.shape)
    return np.asarray(gdeq(raw.reshape(t.shape[0], -1), t.ggml_type), dtype=np.float32).reshape(t.shape)
