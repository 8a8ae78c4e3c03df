"""What a GGUF file holds: architecture, context, layer layout, MTP head, tensors and bytes by type."""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path

from gguf import GGMLQuantizationType

from qwythos.core.gguf_file import file_type_name, read_header

NEXTN_RE = re.compile(r"^blk\.(\d+)\.nextn\.")


@dataclass
class GGUFSummary:
    path: Path
    file_size: int
    arch: str
    name: str
    file_type: str
    context_length: int | None
    block_count: int | None
    trunk_layers: int | None  # block_count minus nextn layers
    linear_attention_layers: int
    full_attention_layers: int
    layer_layout: str
    nextn_predict_layers: int
    mtp_present: bool  # nextn tensors are really in the file
    mtp_note: str
    vocab_size: int
    chat_template: bool
    n_tensors: int
    tensors_by_type: dict[str, int] = field(default_factory=dict)
    bytes_by_type: dict[str, int] = field(default_factory=dict)


def _type_name(t: int) -> str:
    try:
        return GGMLQuantizationType(t).name
    except ValueError:
        return f"type{t}"


def inspect_gguf(path: str | Path) -> GGUFSummary:
    """Summarize a GGUF file (reads only its header). Non-GGUF files get a QwythosError."""
    hdr = read_header(path)
    kv = hdr.kv
    arch = str(kv.get("general.architecture", "?"))

    def a(key: str) -> object:
        return kv.get(f"{arch}.{key}")

    block_count = a("block_count")
    nextn = int(a("nextn_predict_layers") or 0)
    recurrent = a("attention.recurrent_layers")
    trunk = int(block_count) - nextn if isinstance(block_count, int) else None
    if isinstance(recurrent, list) and trunk is not None:
        n_lin = sum(1 for r in recurrent[:trunk] if r)
        n_full = trunk - n_lin
        interval = a("full_attention_interval")
        layout = f"{n_lin} linear-attention + {n_full} full-attention" + (
            f" (every {interval}th full)" if interval else ""
        )
    else:
        n_lin, n_full = 0, trunk or 0
        layout = f"{trunk} layers" if trunk is not None else "unknown"
    nextn_blocks = {int(m.group(1)) for t in hdr.tensors if (m := NEXTN_RE.match(t.name))}
    present = bool(nextn_blocks)
    if nextn and present:
        note = f"MTP head present ({nextn} nextn layer(s), block {min(nextn_blocks)})"
    elif nextn and not present:
        note = "metadata declares an MTP layer but the file has no nextn tensors: llama.cpp will refuse it"
    elif present:
        note = "nextn tensors present but nextn_predict_layers is 0"
    else:
        note = "no MTP head (`qwythos mtp restore` can add one)"
    by_type: dict[str, int] = {}
    count: dict[str, int] = {}
    for t in hdr.tensors:
        n = _type_name(t.ggml_type)
        by_type[n] = by_type.get(n, 0) + t.nbytes
        count[n] = count.get(n, 0) + 1
    ft = kv.get("general.file_type")
    return GGUFSummary(
        path=Path(path),
        file_size=hdr.file_size,
        arch=arch,
        name=str(kv.get("general.name", "")),
        file_type=(file_type_name(ft) or str(ft)) if isinstance(ft, int) else "?",
        context_length=a("context_length"),  # type: ignore[arg-type]
        block_count=block_count,  # type: ignore[arg-type]
        trunk_layers=trunk,
        linear_attention_layers=n_lin,
        full_attention_layers=n_full,
        layer_layout=layout,
        nextn_predict_layers=nextn,
        mtp_present=present and nextn > 0,
        mtp_note=note,
        vocab_size=len(kv.get("tokenizer.ggml.tokens") or []),
        chat_template="tokenizer.chat_template" in kv,
        n_tensors=len(hdr.tensors),
        tensors_by_type=count,
        bytes_by_type=by_type,
    )
