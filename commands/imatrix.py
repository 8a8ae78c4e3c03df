"""qwythos imatrix: an importance matrix (llama-imatrix's GGUF) for a qwen35 GGUF, its MTP head too."""

from __future__ import annotations

from pathlib import Path

import typer
from rich.progress import (
    BarColumn,
    Progress,
    ProgressColumn,
    Task,
    TextColumn,
    TimeRemainingColumn,
)
from rich.text import Text

from qwythos.commands.common import JsonOption, app, console, err_console, print_json, simple_table
from qwythos.quantize.imatrix import CALIBRATION, DEFAULT_CTX


class _Tokens(ProgressColumn):
    """tokens done / in all, and tokens per second."""

    def render(self, task: Task) -> Text:
        speed = f"{task.speed:,.0f} tok/s" if task.speed else "- tok/s"
        return Text(f"{task.completed:,.0f}/{task.total:,.0f} tok  {speed}")


@app.command()
def imatrix(
    model: Path = typer.Argument(..., help="A qwen35 GGUF (BF16/F16/F32 for the best data)."),
    text: list[Path] | None = typer.Option(
        None, "--text", help=f"Calibration text file(s) (default: the bundled {CALIBRATION.name})."
    ),
    out: Path | None = typer.Option(None, "-o", "--out", help="Output (default: MODEL.imatrix.gguf)."),
    chunks: int | None = typer.Option(None, "--chunks", help="Use at most N chunks (default: all)."),
    ctx: int = typer.Option(DEFAULT_CTX, "--ctx", help="Tokens per chunk (llama-imatrix's -c)."),
    threads: int | None = typer.Option(None, "-t", "--threads", help="CPU threads (default: all)."),
    no_mtp: bool = typer.Option(False, "--no-mtp", help="Leave the MTP head out (as llama-imatrix does)."),
    force: bool = typer.Option(False, "--force", help="Overwrite an existing output."),
    json_out: bool = JsonOption,
) -> None:
    """Importance matrix over a text, the MTP head included; for `qwythos quantize --imatrix`.
    Ctrl-C keeps the finished chunks in OUT.checkpoint: the same command continues from there."""
    from qwythos.quantize.imatrix import compute_imatrix

    kw = dict(chunks=chunks, ctx=ctx, threads=threads, head=not no_mtp, force=force)
    if json_out:
        report = compute_imatrix(model, out, text, **kw)
        print_json(report)
        return
    bar = Progress(
        TextColumn("[bold]imatrix"),
        BarColumn(),
        _Tokens(),
        TextColumn("ETA"),
        TimeRemainingColumn(),
        console=err_console,
    )
    task = None

    def progress(done: int, total: int) -> None:
        nonlocal task
        if task is None:  # started at the first chunk: nothing shows for a flag or file refused
            bar.start()  # ... and tokens taken from a checkpoint do not count towards the speed
            task = bar.add_task("imatrix", total=total, completed=done)
        bar.update(task, completed=done, total=total)

    try:
        report = compute_imatrix(model, out, text, progress=progress, **kw)
    finally:
        if task is not None:
            bar.stop()
    head = f"{report.head_entries} of them in the MTP head" if report.head else "no MTP head"
    console.print(
        simple_table(
            f"importance matrix of {Path(report.model).name}",
            ["", ""],
            [
                ["output", report.output],
                ["text", f"{', '.join(report.datasets)} ({report.text_tokens:,} tokens)"],
                ["chunks", f"{report.chunks} x {report.chunk_size} tokens"],
                ["matrices", f"{report.entries} ({head})"],
                ["speed", f"{report.tokens_per_s:,.0f} tok/s ({report.seconds:.1f} s)"],
            ],
        )
    )
    for n in report.notes:
        console.print(f"[yellow]note:[/] {n}")
