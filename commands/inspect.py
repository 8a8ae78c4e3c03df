"""`qwythos inspect FILE`: what a GGUF file holds (architecture, context, layer layout, MTP head,
tensors and bytes by type) and whether llama.cpp can load it (the structural check of
core/model/structure.py over every tensor); a vision projector shows its own facts. The header is
read once; the summary is core/model/summary.py's, the one the exports read."""

from __future__ import annotations

from pathlib import Path

import typer

from qwythos.commands.common import JsonOption, app, console, gib, print_json, simple_table
from qwythos.core.errors import QwythosError
from qwythos.core.gguf.mmproj import MmprojSummary, is_mmproj, read_mmproj_summary
from qwythos.core.gguf.view import read_view
from qwythos.core.model.summary import GGUFSummary, summarize


@app.command()
def inspect(
    file: Path = typer.Argument(..., help="A .gguf file."),
    json_out: bool = JsonOption,
) -> None:
    """Architecture, context, layer layout, MTP head, tensors and bytes by type of a GGUF file."""
    view = read_view(file)  # the one read: both summaries are built from this view
    if is_mmproj(view):
        _inspect_mmproj(read_mmproj_summary(view), json_out)
        return
    s = summarize(view)
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


def _fail_on_issues(s: GGUFSummary) -> None:
    """A file llama.cpp would refuse: one message naming the first problem, exit 1."""
    if s.issues:
        more = f" (and {len(s.issues) - 1} more)" if len(s.issues) > 1 else ""
        raise QwythosError(
            f"{s.path} is not a loadable {s.arch} GGUF: {s.issues[0]}{more}",
            "convert or download the file again; `qwythos inspect FILE --json` lists every problem",
        )


def _inspect_mmproj(m: MmprojSummary, json_out: bool) -> None:
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
