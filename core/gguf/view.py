"""The one view of a GGUF header: every metadata key through a `gguf.Keys` symbol.

`GGUFView` wraps a parsed header (no tensor data is loaded) and names every metadata key through
one symbol, gguf-py's `Keys` (`Keys.LLM.NEXTN_PREDICT_LAYERS` is `"{arch}.nextn_predict_layers"`):
the architecture, the nextn (MTP) layer count, the trunk's block count, the nextn tensors, the file
type, context and embedding length, vocabulary, chat template. Everything else that reads a GGUF's
metadata (inspect, the structural check, the runtime's `ModelInfo`, restore, quantize, the
exporters) asks this view instead of typing key strings.

`read_view` is the one reader: a command reads each header once and passes the view down (the
summaries, core/model/summary.py and core/gguf/mmproj.py, are built from it; `as_view` lets a
function take a view or a path). This room knows the GGUF format only: which model a file must be
is core/model's business (`core/model/summary.py` for what inspect and the exporters read,
`core/model/arch.py` for the allow-list).
"""

from __future__ import annotations

import re
from functools import cached_property
from pathlib import Path
from typing import Any

from gguf import Keys

from qwythos.core.errors import QwythosError
from qwythos.core.gguf.file import (
    GGUFHeader,
    GGUFTensorInfo,
    file_type_name,
    ggml_type_name,
    read_header,
)

#: `{arch}.attention.recurrent_layers` (llama.cpp's LLM_KV_ATTENTION_RECURRENT_LAYERS; PyPI's gguf
#: 0.19 `Keys` has no symbol for it yet). Every other key is a `gguf.Keys` symbol.
RECURRENT_LAYERS = "{arch}.attention.recurrent_layers"

_BLK_RE = re.compile(r"^blk\.(\d+)\.")
NEXTN_RE = re.compile(r"^blk\.(\d+)\.nextn\.")


def _as_int(v: Any) -> int | None:
    return int(v) if isinstance(v, int) and not isinstance(v, bool) else None


class GGUFView:
    """A GGUF header read once, every key through a `gguf.Keys` symbol.

    Arch keys are templates (`"{arch}.block_count"`): `view.get(Keys.LLM.BLOCK_COUNT)` fills in the
    file's own architecture.
    """

    def __init__(self, header: GGUFHeader) -> None:
        self.header = header

    # ---- raw access
    @property
    def path(self) -> Path:
        return self.header.path

    @property
    def kv(self) -> dict[str, Any]:
        return self.header.kv

    @property
    def tensors(self) -> list[GGUFTensorInfo]:
        return self.header.tensors

    @property
    def file_size(self) -> int:
        return self.header.file_size

    @property
    def arch(self) -> str:
        """`general.architecture` ("" when absent or not a string)."""
        a = self.kv.get(Keys.General.ARCHITECTURE)
        return a if isinstance(a, str) else ""

    def key(self, template: str) -> str:
        """The concrete key of a `gguf.Keys` template for this file's architecture."""
        return template.format(arch=self.arch)

    def get(self, template: str, default: Any = None) -> Any:
        return self.kv.get(self.key(template), default)

    def get_int(self, template: str) -> int | None:
        return _as_int(self.get(template))

    # ---- general
    @property
    def name(self) -> str | None:
        n = self.kv.get(Keys.General.NAME)
        return n if isinstance(n, str) else None

    @property
    def file_type(self) -> int | None:
        """`general.file_type` as stored (llama.cpp's LLAMA_FTYPE id)."""
        return _as_int(self.kv.get(Keys.General.FILE_TYPE))

    @property
    def file_type_name(self) -> str | None:
        """`general.file_type` as llama.cpp names it ("Q4_K_M", "BF16"); None if absent or unknown."""
        return file_type_name(self.file_type) if self.file_type is not None else None

    # ---- layers
    @property
    def block_count(self) -> int | None:
        """All blocks, trunk plus nextn (`{arch}.block_count`)."""
        return self.get_int(Keys.LLM.BLOCK_COUNT)

    @property
    def n_nextn(self) -> int:
        """nextn (MTP) layers the metadata declares (`{arch}.nextn_predict_layers`, 0 when absent)."""
        return self.get_int(Keys.LLM.NEXTN_PREDICT_LAYERS) or 0

    @property
    def n_trunk(self) -> int | None:
        """Trunk blocks: block_count minus the nextn layers (the first nextn block's index)."""
        bc = self.block_count
        return bc - self.n_nextn if bc is not None else None

    @property
    def recurrent_layers(self) -> list[bool] | None:
        v = self.get(RECURRENT_LAYERS)
        return [bool(x) for x in v] if isinstance(v, list) else None

    @cached_property
    def tensor_names(self) -> list[str]:
        return [t.name for t in self.tensors]

    @cached_property
    def by_name(self) -> dict[str, GGUFTensorInfo]:
        return {t.name: t for t in self.tensors}

    @cached_property
    def nextn_tensors(self) -> list[str]:
        """Names of the `blk.N.nextn.*` tensors really in the file."""
        return [n for n in self.tensor_names if NEXTN_RE.match(n)]

    @cached_property
    def nextn_blocks(self) -> list[int]:
        return sorted({int(m.group(1)) for n in self.nextn_tensors if (m := NEXTN_RE.match(n))})

    @property
    def has_trunk(self) -> bool:
        """The file carries trunk blocks (llama.cpp's test: `blk.0.attn_norm.weight` is present)."""
        return "blk.0.attn_norm.weight" in self.by_name

    @property
    def has_mtp(self) -> bool:
        """The declared nextn block(s) are really in the file (`blk.{n_trunk + i}.nextn.eh_proj`)."""
        il = self.n_trunk
        return (
            self.n_nextn > 0
            and il is not None
            and all(f"blk.{il + i}.nextn.eh_proj.weight" in self.by_name for i in range(self.n_nextn))
        )

    def trunk_blocks(self) -> set[int]:
        """Indices of the trunk blocks that have at least one tensor in the file."""
        il = self.n_trunk
        return {
            int(m.group(1))
            for n in self.tensor_names
            if (m := _BLK_RE.match(n)) and (il is None or int(m.group(1)) < il)
        }

    @cached_property
    def tensors_by_type(self) -> dict[str, int]:
        """Tensor count per GGML type name ("Q8_0": 12), in the order the types first appear."""
        count: dict[str, int] = {}
        for t in self.tensors:
            n = ggml_type_name(t.ggml_type)
            count[n] = count.get(n, 0) + 1
        return count

    @cached_property
    def bytes_by_type(self) -> dict[str, int]:
        """Tensor bytes per GGML type name, in the order the types first appear."""
        size: dict[str, int] = {}
        for t in self.tensors:
            n = ggml_type_name(t.ggml_type)
            size[n] = size.get(n, 0) + t.nbytes
        return size

    # ---- sizes and tokenizer
    @property
    def context_length(self) -> int | None:
        return self.get_int(Keys.LLM.CONTEXT_LENGTH)

    @property
    def embedding_length(self) -> int | None:
        return self.get_int(Keys.LLM.EMBEDDING_LENGTH)

    @property
    def tokens(self) -> list[str] | None:
        t = self.kv.get(Keys.Tokenizer.LIST)
        return t if isinstance(t, list) else None

    @property
    def vocab_size(self) -> int:
        """Tokens in the vocabulary (`tokenizer.ggml.tokens`, else `{arch}.vocab_size`, else 0)."""
        tokens = self.tokens
        return len(tokens) if tokens is not None else (self.get_int(Keys.LLM.VOCAB_SIZE) or 0)

    @property
    def chat_template(self) -> str | None:
        t = self.kv.get(Keys.Tokenizer.CHAT_TEMPLATE)
        return t if isinstance(t, str) else None


def read_view(path: str | Path) -> GGUFView:
    """Parse a GGUF's header into a `GGUFView` (QwythosError naming the file if it is not one).

    The one reader: every summary (core/model/summary, core/gguf/mmproj) is built from the view it
    returns, and a function that needs a file's facts takes the view, so one command reads each
    header once."""
    path = Path(path)
    try:
        return GGUFView(read_header(path))
    except QwythosError:
        raise
    except OSError as e:
        raise QwythosError(f"cannot read {path}: {e.strerror}", "check the file's permissions") from e
    except Exception as e:  # anything else a corrupt header can raise
        raise QwythosError(
            f"{path} has an unreadable GGUF header: {e}", "re-download or re-convert the file"
        ) from e


def as_view(src: GGUFView | str | Path) -> GGUFView:
    """`src` itself when it is a view already read, else the view of the file at that path: for the
    functions that take either, so a caller holding a view never has the file read again."""
    return src if isinstance(src, GGUFView) else read_view(src)
