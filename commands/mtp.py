"""`qwythos mtp`: one tight group over the MTP (nextn) head.

- `restore`: give a trunk GGUF its head (mtp/restore.py), or an HF folder its mtp.* tensors (--hf,
  mtp/hf_out.py);
- `validate`: the head's structure (core/model/structure.py), then its measured draft acceptance
  with llama.cpp's MTP context and a pass/fail gate (mtp/validate.py, mtp/acceptance.py);
- `check`: an HF folder's head as vLLM / SGLang will load it, from headers only (mtp/hf_check.py);
- `fit`: re-fit the head to its trunk (mtp/fit.py).
Every default comes from the library module the command calls.
"""

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
from qwythos.core.errors import QwythosError
from qwythos.mtp.acceptance import DEFAULT_DEPTH
from qwythos.mtp.fit import FIT_LR, INIT_LR, FitSettings
from qwythos.mtp.restore import DEFAULT_HEAD_TYPE
from qwythos.mtp.validate import DEFAULT_MIN_ACCEPT

FIT_DEFAULTS = FitSettings()


def _card(title: str, rows: list[list], notes: list[str]) -> None:
    """A result as a two-column table, then its notes."""
    console.print(simple_table(title, ["", ""], rows))
    for note in notes:
        console.print(f"[yellow]note:[/] {note}")


def _short(x: float) -> str:
    """1e-3, not 0.001."""
    return f"{x:.0e}".replace("e-0", "e-")


@mtp_app.command("restore")
def mtp_restore(
    trunk: Path = typer.Argument(
        ..., help="The converted (possibly quantized) trunk .gguf; with --hf, the HF folder of the fine-tune."
    ),
    src: str = typer.Option(
        ...,
        "--from",
        help="HF folder / repo id with mtp.* tensors, a GGUF with a nextn block, or an MTP GGUF.",
    ),
    out: Path | None = typer.Option(None, "-o", "--out", help="Output .gguf (default: next to TRUNK)."),
    separate: bool = typer.Option(False, "--separate", help="Write a stand-alone MTP draft GGUF instead."),
    head_type: str = typer.Option(
        DEFAULT_HEAD_TYPE, "--type", help="Type of the head's matrices: bf16, f16, f32, q8_0, ..."
    ),
    force: bool = typer.Option(False, "--force", help="Overwrite the output / replace an existing head."),
    hf: Path | None = typer.Option(
        None, "--hf", help="Write a HF checkpoint folder (TRUNK = the HF folder) for vLLM / SGLang."
    ),
    copy: bool = typer.Option(False, "--copy", help="With --hf: copy the trunk's shards instead of linking."),
    json_out: bool = JsonOption,
) -> None:
    """Give a trunk GGUF its MTP head (grafted or a separate draft); --hf: a HF folder's mtp.* back."""
    if hf is not None:
        _restore_hf(trunk, src, hf, out=out, separate=separate, copy=copy, force=force, json_out=json_out)
        return
    if copy:
        raise QwythosError("--copy only applies with --hf", "add --hf OUT_DIR, or drop --copy")
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
    _card("qwythos mtp restore", rows, r.notes)


@mtp_app.command("validate")
def mtp_validate(
    model: Path = typer.Argument(..., help="A GGUF with its MTP head (or the trunk, with --draft)."),
    draft: Path | None = typer.Option(None, "--draft", help="A stand-alone MTP GGUF for MODEL."),
    text: Path | None = typer.Option(None, "--text", help="Calibration text (default: the bundled one)."),
    depth: int = typer.Option(DEFAULT_DEPTH, "--depth", help="Draft depth to measure."),
    min_accept: float = typer.Option(
        DEFAULT_MIN_ACCEPT,
        "--min-accept",
        help="Fail below this depth-1 acceptance rate (a wrong head scores ~0).",
    ),
    json_out: bool = JsonOption,
) -> None:
    """A GGUF's MTP head: its structure, then its measured draft acceptance (llama.cpp's MTP context), pass/fail."""
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


def _restore_hf(
    trunk: Path,
    src: str,
    hf: Path,
    *,
    out: Path | None,
    separate: bool,
    copy: bool,
    force: bool,
    json_out: bool,
) -> None:
    from qwythos.mtp.hf_out import restore_hf

    if out is not None or separate:
        raise QwythosError(
            "--hf writes a folder; -o and --separate are for GGUF output", "drop -o / --separate"
        )
    r = restore_hf(trunk, src, hf, copy=copy, force=force)
    if json_out:
        print_json(r)
        return
    rows = [
        ["output", r.output],
        ["trunk shards", f"{r.link_mode} from {r.trunk}"],
        ["head from", f"{r.source} ({r.source_kind})"],
        ["head", f"{len(r.head_tensors)} mtp.* tensors ({r.dtype}) in {r.shard}"],
        ["index", f"{r.n_tensors} tensors, total_size {r.total_size:,} bytes"],
        ["time", f"{r.seconds:.1f} s"],
    ]
    _card("qwythos mtp restore --hf", rows, r.notes)
    console.print(f"next: [bold]qwythos mtp check {r.output}[/]")


@mtp_app.command("check")
def mtp_check(
    folder: Path = typer.Argument(..., help="A Hugging Face checkpoint folder (config.json + safetensors)."),
    json_out: bool = JsonOption,
) -> None:
    """An HF folder's MTP head as vLLM / SGLang load it: names, shapes, index, norms (headers only, nothing runs)."""
    from qwythos.mtp.hf_check import check_hf

    rep = check_hf(folder)
    if json_out:
        print_json(rep.to_dict())
    else:
        console.print(
            f"{rep.path}: config promises {rep.mtp_promised} MTP layer(s), {rep.mtp_found} mtp.* tensors found"
        )
        if rep.norms:
            rows = [
                [n.name, f"{n.mean:+.3f}", f"{n.trunk_range[0]:+.2f}..{n.trunk_range[1]:+.2f}", n.verdict]
                if n.trunk_range
                else [n.name, f"{n.mean:+.3f}", "-", n.verdict]
                for n in rep.norms
            ]
            console.print(
                simple_table("MTP norms (stored w - 1)", ["tensor", "mean", "trunk range", "verdict"], rows)
            )
        for i in rep.issues:
            color = "red" if i.severity == "error" else "yellow"
            console.print(f"[{color}]{i.severity}:[/] {i.where} {i.problem}", highlight=False)
        console.print("[green]OK[/]" if rep.ok else "[red]FAIL[/]")
    if not rep.ok:
        raise typer.Exit(2)


@mtp_app.command("fit")
def mtp_fit(
    model: Path = typer.Argument(..., help="The GGUF whose head to fit (trunk + restored head)."),
    text: list[Path] = typer.Option(
        None, "--text", help="Text file(s) to fit on (repeatable; default: the bundled mixed set)."
    ),
    bundled: bool = typer.Option(False, "--bundled", help="Add the bundled set to the --text files."),
    tokens: int = typer.Option(FIT_DEFAULTS.tokens, "--tokens", help="Most tokens of text to collect."),
    steps: int = typer.Option(FIT_DEFAULTS.steps, "--steps", help="Training steps."),
    out: Path | None = typer.Option(None, "-o", "--out", help="Output .gguf (default: MODEL-fit.gguf)."),
    head: str | None = typer.Option(None, "--head", help="Start from this head (any `mtp restore --from`)."),
    init: bool = typer.Option(False, "--init", help="Start from a fresh head instead."),
    head_type: str | None = typer.Option(
        None, "--type", help="Type of the head's matrices (default: each keeps its type)."
    ),
    separate: bool = typer.Option(False, "--separate", help="Write a stand-alone MTP draft GGUF."),
    threads: int | None = typer.Option(None, "--threads", help="CPU threads (llama.cpp and torch)."),
    seq: int = typer.Option(FIT_DEFAULTS.seq, "--seq", help="Tokens per collected sequence."),
    batch: int = typer.Option(FIT_DEFAULTS.batch, "--batch", help="Sequences per training step."),
    lr: float | None = typer.Option(
        None,
        "--lr",
        help="Peak learning rate (default {}, {} with --init).".format(*map(_short, (FIT_LR, INIT_LR))),
    ),
    depths: int = typer.Option(FIT_DEFAULTS.depths, "--depths", help="Chained draft depths trained."),
    device: str | None = typer.Option(None, "--device", help="torch device (default: cuda when present)."),
    work: Path | None = typer.Option(None, "--work", help="Work folder (default: OUT.work; resumes)."),
    force: bool = typer.Option(False, "--force", help="Overwrite the output."),
    json_out: bool = JsonOption,
) -> None:
    """Re-fit the MTP head to this trunk (trunk frozen byte for byte); resumable."""
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    from qwythos.mtp.fit import FitSettings, fit

    s = FitSettings(tokens=tokens, seq=seq, steps=steps, batch=batch, lr=lr, depths=depths)
    kw = dict(
        texts=text or None,
        bundled=True if bundled else None,
        out=out,
        head=head,
        init=init,
        head_type=head_type,
        separate=separate,
        settings=s,
        threads=threads,
        device=device,
        work=work,
        force=force,
    )
    if json_out:
        r = fit(model, **kw)
        print_json(r.to_dict())
        return
    with Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("{task.fields[info]}"),
        TimeElapsedColumn(),
        console=console,
        transient=False,
    ) as bar:
        tasks: dict[str, int] = {}
        shown = {"loss": "", "accept": ""}  # the latest of each, kept until the next one comes

        def progress(stage: str, p) -> None:
            if stage == "collect":
                if stage not in tasks:
                    tasks[stage] = bar.add_task("collect tokens", total=p.tokens_total, info="")
                rate = f"{p.tokens_done / p.seconds:.0f} tok/s" if p.seconds > 0 else ""
                bar.update(tasks[stage], completed=p.tokens_done, info=rate)
            elif stage == "train":
                if stage not in tasks:
                    tasks[stage] = bar.add_task("train head", total=p.steps, info="")
                if p.loss is not None:
                    shown["loss"] = f"loss {p.loss:.3f}"
                if p.accept is not None:
                    shown["accept"] = "  accept " + "/".join(f"{a:.2f}" for a in p.accept)
                bar.update(tasks[stage], completed=p.step, info=shown["loss"] + shown["accept"])

        r = fit(model, progress=progress, **kw)
    rows = [
        ["output", r.output],
        [
            "mode",
            "stand-alone MTP draft" if r.mode == "separate" else "grafted into the trunk (bytes unchanged)",
        ],
        ["started from", r.start],
        ["text", f"{r.tokens} tokens in {r.sequences} sequences ({r.held_out_sequences} held out)"],
        ["collection", f"{r.collect_seconds:.1f} s ({r.collect_tok_s:.0f} tok/s)"],
        ["training", f"{r.steps} steps on {r.device}, {r.train_seconds:.1f} s, final loss {r.loss:.4f}"],
        [
            "held-out acceptance (estimate)",
            " -> ".join("/".join(f"{a:.3f}" for a in acc) for acc in (r.accept_before, r.accept_after)),
        ],
        ["head types", ", ".join(sorted({t for t in r.head_types.values() if t != "F32"})) or "-"],
        ["size", gib(r.bytes_written)],
    ]
    _card("qwythos mtp fit", rows, r.notes)
    console.print(
        f"measure it: qwythos mtp validate {r.output}" + (" (with --draft)" if r.mode == "separate" else "")
    )
