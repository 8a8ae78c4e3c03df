"""qwythos convert and inspect."""

from __future__ import annotations

from pathlib import Path

import typer

from qwythos.commands.common import (
    JsonOption,
    app,
    console,
    err_console,
    gib,
    print_json,
    simple_table,
)


@app.command()
def convert(
    src: str = typer.Argument(..., help="Checkpoint folder or Hugging Face repo id (owner/name)."),
    out: Path | None = typer.Option(
        None, "-o", "--out", help="Output .gguf (default: ./<name>-<OUTTYPE>.gguf)."
    ),
    outtype: str = typer.Option("bf16", "--outtype", help="bf16, f16 or f32."),
    no_mtp: bool = typer.Option(False, "--no-mtp", help="Leave the MTP (nextn) head out."),
    force: bool = typer.Option(False, "--force", help="Overwrite an existing output."),
    json_out: bool = JsonOption,
) -> None:
    """Convert Qwen3.5 safetensors to GGUF (text model; the vision tower is left out)."""
    from rich.progress import (
        BarColumn,
        DownloadColumn,
        Progress,
        TextColumn,
        TimeRemainingColumn,
        TransferSpeedColumn,
    )

    from qwythos.convert.text import convert as run_convert

    if json_out:
        result = run_convert(src, out, outtype=outtype, mtp=not no_mtp, force=force)
    else:
        with Progress(
            TextColumn("[bold]converting[/] {task.description}"),
            BarColumn(),
            DownloadColumn(),
            TransferSpeedColumn(),
            TimeRemainingColumn(),
            console=err_console,
            transient=True,
        ) as bar:
            task = bar.add_task("", total=None)

            def progress(name: str, done: int, total: int) -> None:
                bar.update(task, completed=done, total=total, description=name)

            result = run_convert(
                src, out, outtype=outtype, mtp=not no_mtp, force=force, progress=progress
            )
    if json_out:
        print_json(result)
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


@app.command()
def inspect(
    file: Path = typer.Argument(..., help="A .gguf file."),
    json_out: bool = JsonOption,
) -> None:
    """Architecture, context, layer layout, MTP head, tensors and bytes by type of a GGUF file."""
    from qwythos.core.inspect import inspect_gguf

    s = inspect_gguf(file)
    if json_out:
        print_json(s)
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
    console.print(simple_table("qwythos inspect", ["", ""], rows))
