"""`qwythos inspect FILE`: what a GGUF file holds (architecture, context, layer layout, MTP head,
tensors and bytes by type) and whether llama.cpp can load it (the structural check of
core/model/structure.py over every tensor); a vision projector shows its own facts."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import typer
from gguf import Keys

from qwythos.commands.common import JsonOption, app, console, gib, print_json, simple_table
from qwythos.core.errors import QwythosError
from qwythos.core.gguf.file import ggml_type_name, read_header
from qwythos.core.gguf.mmproj import is_mmproj, read_mmproj_summary
from qwythos.core.gguf.view import read_view
from qwythos.core.model.structure import check_model


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
    issues: list[str] = field(default_factory=list)  # structural problems llama.cpp would refuse

    @property
    def ok(self) -> bool:
        return not self.issues


def inspect_gguf(path: str | Path) -> GGUFSummary:
    """Summarize a GGUF file (reads only its header) and check its structure. Non-GGUF files get a
    QwythosError; a GGUF llama.cpp would refuse gets its problems in `issues`."""
    v = read_view(path)
    arch = v.arch or str(v.kv.get(Keys.General.ARCHITECTURE, "?"))
    nextn, trunk = v.n_nextn, v.n_trunk
    recurrent = v.recurrent_layers
    if recurrent is not None and trunk is not None:
        n_lin = sum(1 for r in recurrent[:trunk] if r)
        n_full = trunk - n_lin
        interval = v.get_int(Keys.LLM.FULL_ATTENTION_INTERVAL)
        layout = f"{n_lin} linear-attention + {n_full} full-attention" + (
            f" (every {interval}th full)" if interval else ""
        )
    else:
        n_lin, n_full = 0, trunk or 0
        layout = f"{trunk} layers" if trunk is not None else "unknown"
    present = bool(v.nextn_blocks)
    if nextn and present:
        note = f"MTP head present ({nextn} nextn layer(s), block {min(v.nextn_blocks)})"
    elif nextn and not present:
        note = "metadata declares an MTP layer but the file has no nextn tensors: llama.cpp will refuse it"
    elif present:
        note = "nextn tensors present but nextn_predict_layers is 0"
    else:
        note = "no MTP head (`qwythos mtp restore` can add one)"
    by_type: dict[str, int] = {}
    count: dict[str, int] = {}
    for t in v.tensors:
        n = ggml_type_name(t.ggml_type)
        by_type[n] = by_type.get(n, 0) + t.nbytes
        count[n] = count.get(n, 0) + 1
    ft = v.file_type
    return GGUFSummary(
        path=Path(path),
        file_size=v.header.file_size,
        arch=arch,
        name=v.name or "",
        file_type=(v.file_type_name or str(ft)) if ft is not None else "?",
        context_length=v.context_length,
        block_count=v.block_count,
        trunk_layers=trunk,
        linear_attention_layers=n_lin,
        full_attention_layers=n_full,
        layer_layout=layout,
        nextn_predict_layers=nextn,
        mtp_present=present and nextn > 0,
        mtp_note=note,
        vocab_size=len(v.tokens or []),
        chat_template=Keys.Tokenizer.CHAT_TEMPLATE in v.kv,
        n_tensors=len(v.tensors),
        tensors_by_type=count,
        bytes_by_type=by_type,
        issues=[str(i) for i in check_model(v)],
    )


@app.command()
def inspect(
    file: Path = typer.Argument(..., help="A .gguf file."),
    json_out: bool = JsonOption,
) -> None:
    """Architecture, context, layer layout, MTP head, tensors and bytes by type of a GGUF file."""
    if is_mmproj(read_header(file)):
        _inspect_mmproj(read_mmproj_summary(file), json_out)
        return
    s = inspect_gguf(file)
    if json_out:
        print_json(s)
        _fail_on_issues(s)
        return
    rows = [
        ["file", f"{s.path} ({gib(s.file_size)})"],
        ["architecture", s.arch],
        ["name", s.name],
        ["file type", s.file_type],
        ["context length", s.context_length],
        ["layers", f"{s.trunk_layers}: {s.layer_layout}"],
        ["MTP", s.mtp_note],
        ["vocabulary", f"{s.vocab_size} tokens" + (", chat template" if s.chat_template else "")],
        ["tensors", s.n_tensors],
    ]
    rows += [[f"  {t}", f"{s.tensors_by_type[t]} tensors, {gib(b)}"] for t, b in s.bytes_by_type.items()]
    rows.append(["structure", "ok" if s.ok else f"{len(s.issues)} problem(s)"])
    rows += [["", issue] for issue in s.issues[:10]]
    console.print(simple_table("qwythos inspect", ["", ""], rows))
    _fail_on_issues(s)


def _fail_on_issues(s) -> None:
    """A file llama.cpp would refuse: one message naming the first problem, exit 1."""
    if s.issues:
        more = f" (and {len(s.issues) - 1} more)" if len(s.issues) > 1 else ""
        raise QwythosError(
            f"{s.path} is not a loadable {s.arch} GGUF: {s.issues[0]}{more}",
            "convert or download the file again; `qwythos inspect FILE --json` lists every problem",
        )


def _inspect_mmproj(m, json_out: bool) -> None:
    """`inspect` of a vision projector (arch clip)."""
    if json_out:
        print_json(m)
        return
    grid = m.image_size // m.patch_size if m.image_size and m.patch_size else None
    rows = [
        ["file", f"{m.path} ({gib(m.file_size)})"],
        ["architecture", "clip (vision projector, mmproj)"],
        ["name", m.name],
        ["file type", m.file_type],
        ["encoder", m.encoder],
        [
            "projector",
            f"{m.projector_type}: {m.spatial_merge_size}x{m.spatial_merge_size} patches -> width {m.projection_dim}",
        ],
        ["image size", f"{m.image_size} px (position grid {grid}x{grid})" if grid else m.image_size],
        ["patch size", m.patch_size],
        ["image mean / std", f"{m.image_mean} / {m.image_std}"],
        ["tensors", m.n_tensors],
    ]
    rows += [[f"  {t}", f"{m.tensors_by_type[t]} tensors, {gib(b)}"] for t, b in m.bytes_by_type.items()]
    console.print(simple_table("qwythos inspect", ["", ""], rows))
