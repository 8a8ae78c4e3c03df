"""qwythos mtp restore / validate."""

from __future__ import annotations

from pathlib import Path

import typer

from qwythos.commands.common import (
    JsonOption,
    console,
    gib,
    mtp_app,
    print_json,
    simple_table,
)


@mtp_app.command("restore")
def mtp_restore(
    trunk: Path = typer.Argument(..., help="The converted (possibly quantized) trunk .gguf."),
    src: str = typer.Option(
        ...,
        "--from",
        help="HF folder / repo id with mtp.* tensors, a GGUF with a nextn block, or an MTP GGUF.",
    ),
    out: Path | None = typer.Option(None, "-o", "--out", help="Output .gguf (default: next to TRUNK)."),
    separate: bool = typer.Option(False, "--separate", help="Write a stand-alone MTP draft GGUF instead."),
    head_type: str = typer.Option(
        "bf16", "--type", help="Type of the head's matrices: bf16, f16, f32, q8_0, ..."
    ),
    force: bool = typer.Option(False, "--force", help="Overwrite the output / replace an existing head."),
    json_out: bool = JsonOption,
) -> None:
    """Give a trunk GGUF its MTP head (grafted into a copy, or as a separate draft file)."""
    from qwythos.mtp.restore import restore

    r = restore(trunk, src, out, separate=separate, head_type=head_type, force=force)
    if json_out:
        print_json(r)
        return
    rows = [
        ["output", r.output],
        ["mode", "stand-alone MTP draft" if r.mode == "separate" else "grafted into the trunk"],
        ["head from", f"{r.source} ({r.source_kind})"],
        ["head block", f"blk.{r.head_block} (block_count {r.block_count}, nextn_predict_layers 1)"],
        ["head type", r.head_type.upper()],
        ["tensors", r.n_tensors],
        ["size", gib(r.bytes_written)],
        ["time", f"{r.seconds:.1f} s"],
    ]
    console.print(simple_table("qwythos mtp restore", ["", ""], rows))
    for note in r.notes:
        console.print(f"[yellow]note:[/] {note}")


@mtp_app.command("validate")
def mtp_validate(
    model: Path = typer.Argument(..., help="A GGUF with its MTP head (or the trunk, with --draft)."),
    draft: Path | None = typer.Option(None, "--draft", help="A stand-alone MTP GGUF for MODEL."),
    text: Path | None = typer.Option(None, "--text", help="Calibration text (default: the bundled one)."),
    depth: int = typer.Option(3, "--depth", help="Draft depth to measure."),
    min_accept: float = typer.Option(
        0.1, "--min-accept", help="Fail below this depth-1 acceptance rate (a wrong head scores ~0)."
    ),
    json_out: bool = JsonOption,
) -> None:
    """Check the head's structure, then measure its draft acceptance with llama.cpp's MTP context."""
    from qwythos.mtp.validate import validate

    rep = validate(model, draft=draft, text=text, depth=depth, min_accept=min_accept)
    if json_out:
        print_json(rep.to_dict())
    else:
        st = rep.draft_structure or rep.structure
        console.print(
            f"structure: {st.kind}, block {st.head_block}, "
            + ("[green]ok[/]" if st.ok else f"[red]{len(st.issues)} problem(s)[/]")
        )
        for issue in st.issues:
            console.print(f"  [red]{issue.tensor}[/] {issue.problem}")
        if rep.depths:
            rows = [[d.depth, f"{d.accepted}/{d.total}", f"{d.rate:.3f}"] for d in rep.depths]
            console.print(
                simple_table(f"MTP acceptance on {Path(rep.text).name}", ["depth", "accepted", "rate"], rows)
            )
            console.print(f"expected accepted length per step: {rep.expected_accepted_length:.2f}")
        console.print(("[green]PASS[/] " if rep.passed else "[red]FAIL[/] ") + rep.reason)
    if not rep.passed:
        raise typer.Exit(2)
