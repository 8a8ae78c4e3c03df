"""SRC of `quantize` and `plan`, resolved once: what it is, where it lies, and its headers.

A `Source` carries the path, the kind (a GGUF file, an HF checkpoint folder, a Hub repo id, or - for
`plan` only - a bare config.json) and the headers, each read once: a GGUF's header view
(core/gguf/view.read_view), a checkpoint's config and safetensors headers
(core/model/checkpoint.open_checkpoint). Everything downstream takes the Source, never the path
again. For an HF source, `quantize` converts the checkpoint to a BF16 GGUF first and carries on
with `source.with_view(...)`: the same source, now with the GGUF llama.cpp reads.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import re
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import Any

from qwythos.core.errors import QwythosError
from qwythos.core.gguf.view import GGUFView, read_view
from qwythos.core.model.arch import check_arch
from qwythos.core.model.checkpoint import CONFIG, Checkpoint, open_checkpoint, read_checkpoint

GGUF, HF_FOLDER, HUB, CONFIG_FILE = "gguf", "hf-folder", "hub", "config"
TYPE_SUFFIX = re.compile(r"-(BF16|F16|F32)$", re.IGNORECASE)
#: the files of a checkpoint folder whose names, sizes and times identify its content
CHECKPOINT_SUFFIXES = (".json", ".safetensors", ".txt", ".model", ".jinja")


def file_fingerprint(path: Path) -> str:
    """A cheap identity of a (possibly 17 GB) file: size, mtime and its first and last MiB."""
    st = path.stat()
    h = hashlib.sha256(f"{st.st_size}:{st.st_mtime_ns}".encode())
    with open(path, "rb") as f:
        h.update(f.read(2**20))
        if st.st_size > 2**20:
            f.seek(max(0, st.st_size - 2**20))
            h.update(f.read(2**20))
    return h.hexdigest()


def folder_fingerprint(folder: Path) -> str:
    """A cheap identity of a checkpoint folder: its files' names, sizes and mtimes."""
    h = hashlib.sha256()
    for p in sorted(folder.iterdir()):
        if p.suffix in CHECKPOINT_SUFFIXES and p.is_file():
            st = p.stat()
            h.update(f"{p.name}:{st.st_size}:{st.st_mtime_ns};".encode())
    return h.hexdigest()


@dataclass(frozen=True)
class Source:
    """SRC resolved once. `view` is the GGUF llama.cpp reads: the file itself, or (HF) the BF16
    GGUF converted from the checkpoint once `quantize` has made it."""

    given: str  # as the user wrote it (reports and messages)
    kind: str  # GGUF | HF_FOLDER | HUB | CONFIG_FILE
    path: Path  # the .gguf, the checkpoint folder (a Hub repo's local copy), or the config.json
    view: GGUFView | None = None
    checkpoint: Checkpoint | None = None  # HF_FOLDER / HUB: config and safetensors headers
    config_json: dict[str, Any] | None = None  # CONFIG_FILE: the parsed config.json

    @property
    def config(self) -> dict[str, Any] | None:
        """The HF config (checkpoint or bare config.json); None for a GGUF."""
        return self.checkpoint.config if self.checkpoint is not None else self.config_json

    @property
    def name(self) -> str:
        """The model's name in output files: the GGUF's stem without -BF16/-F16/-F32, the Hub repo's
        name, or the folder's."""
        if self.kind == GGUF:
            return TYPE_SUFFIX.sub("", self.path.stem)
        if self.checkpoint is not None:
            return self.checkpoint.short_name
        return self.path.parent.name or "model"

    @property
    def gguf(self) -> Path:
        """The GGUF llama.cpp reads."""
        if self.view is None:
            raise ValueError(f"{self.given} has no GGUF yet (convert the checkpoint first)")
        return self.view.path

    @property
    def n_layer(self) -> int:
        """Trunk blocks of the GGUF (the first MTP block's index)."""
        return (self.view.n_trunk or 0) if self.view is not None else 0

    @property
    def n_nextn(self) -> int:
        """MTP (nextn) blocks of the GGUF."""
        return self.view.n_nextn if self.view is not None else 0

    @cached_property
    def fingerprint(self) -> str:
        """The GGUF's cheap identity (`file_fingerprint`), computed once."""
        return file_fingerprint(self.gguf)

    @cached_property
    def checkpoint_fingerprint(self) -> str:
        """The checkpoint folder's cheap identity (`folder_fingerprint`), computed once."""
        return folder_fingerprint(self.path)

    def with_view(self, view: GGUFView) -> Source:
        """The same source with the GGUF llama.cpp reads (the one converted from it)."""
        return dataclasses.replace(self, view=view)


def _gguf_source(given: str | Path, path: Path, doing: str) -> Source:
    view = read_view(path)
    check_arch(view, doing)
    return Source(str(given), GGUF, path, view=view)


def _checkpoint_source(given: str | Path, ckpt: Checkpoint) -> Source:
    return Source(str(given), HUB if ckpt.hub_id else HF_FOLDER, ckpt.path, checkpoint=ckpt)


def open_source(src: str | Path | Source, doing: str = "quantize") -> Source:
    """`quantize`'s SRC: a qwen35 GGUF file, an HF checkpoint folder, or a Hub repo id (downloaded)."""
    if isinstance(src, Source):
        return src
    p = Path(src)
    if p.is_file():
        if p.suffix != ".gguf":
            raise QwythosError(
                f"{p} is neither a GGUF nor a model folder", "pass a .gguf, an HF folder or a repo id"
            )
        return _gguf_source(src, p, doing)
    return _checkpoint_source(src, open_checkpoint(src))


def open_plan_source(src: str | Path | Source) -> Source:
    """`plan`'s SRC: a qwen35 GGUF file, an HF checkpoint folder, or a bare config.json (no Hub:
    plan needs no weights)."""
    if isinstance(src, Source):
        return src
    p = Path(src)
    if p.is_file() and p.suffix == ".gguf":
        return _gguf_source(src, p, "plan")
    if p.is_dir():
        return _checkpoint_source(src, read_checkpoint(p))
    if p.is_file():
        return Source(str(src), CONFIG_FILE, p, config_json=_load_config(p))
    raise QwythosError(f"{p} not found", f"pass a GGUF, an HF folder or a {CONFIG}")


def _load_config(path: Path) -> dict[str, Any]:
    try:
        config = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise QwythosError(f"cannot read {path}: {e}", "pass a Qwen3.5 config.json") from e
    if not isinstance(config, dict):
        raise QwythosError(f"{path} is not a JSON object", "pass a Qwen3.5 config.json")
    return config
