"""qwythos convert: HF safetensors (folder or Hub id) -> GGUF, and the vision projector."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import typer
from rich.progress import (
    BarColumn,
    DownloadColumn,
    Progress,
    TextColumn,
    TimeRemainingColumn,
    TransferSpeedColumn,
)

from qwythos.commands.common import (
    JsonOption,
    app,
    console,
    err_console,
    gib,
    print_json,
    simple_table,
)
from qwythos.convert import mmproj as mm
from qwythos.convert.text import convert as run_convert
from qwythos.core.errors import QwythosError


@contextmanager
def _bytes_bar(label: str, quiet: bool) -> Iterator[Callable[[str, int, int], None] | None]:
    """A transient bar on stderr for a writer's `progress(name, done, total)` callback (None when
    `quiet`: --json prints nothing else)."""
    if quiet:
        yield None
        return
    with Progress(
        TextColumn(f"[bold]{label}[/] {{task.description}}"),
        BarColumn(),
        DownloadColumn(),
        TransferSpeedColumn(),
        TimeRemainingColumn(),
        console=err_console,
        transient=True,
    ) as bar:
        task = bar.add_task("", total=None)
        yield lambda name, done, total: bar.update(task, completed=done, total=total, description=name)


@app.command()
def convert(
    src: str = typer.Argument(..., help="Checkpoint folder or Hugging Face repo id (owner/name)."),
    out: Path | None = typer.Option(
        None, "-o", "--out", help="Output .gguf (default: ./<name>-<OUTTYPE>.gguf)."
    ),
    outtype: str = typer.Option("bf16", "--outtype", help="bf16, f16 or f32."),
    no_mtp: bool = typer.Option(False, "--no-mtp", help="Leave the MTP (nextn) head out."),
    force: bool = typer.Option(False, "--force", help="Overwrite an existing output."),
    mmproj: Path | None = typer.Option(
        None, "--mmproj", help="Also write the vision projector (llama.cpp's mmproj GGUF) to this file."
    ),
    mmproj_type: str = typer.Option("f16", "--mmproj-type", help="Projector type: f32, f16, bf16 or q8_0."),
    json_out: bool = JsonOption,
) -> None:
    """Convert Qwen3.5 safetensors to GGUF (text model; with --mmproj also the vision projector)."""
    if mmproj is not None:
        # a missing tower or preprocessor_config.json fails before the text model is written
        mm.preflight(src, mmproj_type)
        if out is not None and mmproj.resolve() == out.resolve():
            raise QwythosError(
                f"--mmproj {mmproj} is the model's own output path", "give the projector its own file"
            )
    with _bytes_bar("converting", json_out) as progress:
        result = run_convert(src, out, outtype=outtype, mtp=not no_mtp, force=force, progress=progress)
    projector = _convert_mmproj(src, mmproj, mmproj_type, force, json_out) if mmproj is not None else None
    if json_out:
        print_json(result if projector is None else {"model": result, "mmproj": projector})
        return
    rows = [
        ["output", result.output],
        ["source", result.hub_id or result.source],
        ["type", result.outtype.upper()],
        [
            "layers",
            f"{result.n_layer} (+{result.nextn_layers} nextn)" if result.nextn_layers else result.n_layer,
        ],
        ["MTP head", result.mtp],
        ["tensors", f"{result.n_tensors} ({result.tensors_copied} copied byte-for-byte)"],
        ["size", gib(result.bytes_written)],
        ["time", f"{result.seconds:.1f} s"],
    ]
    console.print(simple_table("qwythos convert", ["", ""], rows))
    for note in result.notes:
        console.print(f"[yellow]note:[/] {note}")
    if projector is not None:
        rows = [
            ["output", projector.output],
            [
                "projector",
                f"{projector.projector}, {projector.depth} blocks, width {projector.embedding_length}",
            ],
            ["image", f"{projector.image_size} px, patch {projector.patch_size}"],
            ["type", projector.mmproj_type.upper()],
            ["tensors", projector.n_tensors],
            ["size", gib(projector.bytes_written)],
            ["time", f"{projector.seconds:.1f} s"],
        ]
        console.print(simple_table("vision projector (mmproj)", ["", ""], rows))
        for note in projector.notes:
            console.print(f"[yellow]note:[/] {note}")


def _convert_mmproj(src: str, out: Path, mmproj_type: str, force: bool, quiet: bool) -> mm.MmprojResult:
    """The projector half of `convert --mmproj` (with a progress bar unless --json)."""
    with _bytes_bar("projector", quiet) as progress:
        return mm.convert_mmproj(src, out, mmproj_type=mmproj_type, force=force, progress=progress)
