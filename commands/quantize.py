"""`qwythos quantize`: every requested type through llama.cpp's own quantizer, verified and recorded.

A thin layer over quantize/pipeline.py (SRC is resolved once there, into a quantize.source.Source).
The `--types` and `--mtp-type` options are shared with `qwythos plan` (commands/plan.py).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import typer

from qwythos.commands.common import (
    JsonOption,
    app,
    console,
    err_console,
    print_json,
    simple_table,
    to_jsonable,
)
from qwythos.quantize.plan import DEFAULT_MTP_TYPE, DEFAULT_TYPES

TypesOption = typer.Option(",".join(DEFAULT_TYPES), "--types", help="Comma-separated llama.cpp types.")
MtpTypeOption = typer.Option(
    DEFAULT_MTP_TYPE,
    "--mtp-type",
    help=f"Type of the MTP block: {DEFAULT_MTP_TYPE} (default), bf16, same, or any GGML type.",
)


@app.command()
def quantize(
    src: str = typer.Argument(..., help="HF folder / repo id, or a BF16/F16/F32 qwen35 GGUF."),
    out: Path | None = typer.Option(None, "-o", "--out", help="Output folder (default: current folder)."),
    types: str = TypesOption,
    imatrix: str | None = typer.Option(
        None,
        "--imatrix",
        help="Importance matrix: a file (`qwythos imatrix`'s or llama-imatrix's, GGUF or legacy .dat), or "
        "'auto': computed once from the calibration text and cached beside the source.",
    ),
    calib: Path | None = typer.Option(
        None, "--calib", help="Text for --imatrix auto (default: the bundled imatrix-calibration.txt)."
    ),
    mtp_type: str = MtpTypeOption,
    output_tensor_type: str | None = typer.Option(
        None, "--output-tensor-type", help="Type of output.weight."
    ),
    token_embedding_type: str | None = typer.Option(
        None, "--token-embedding-type", help="Type of token_embd."
    ),
    threads: int | None = typer.Option(None, "--threads", help="Quantizer threads (default: all)."),
    requantize: bool = typer.Option(False, "--requantize", help="Allow an already-quantized input."),
    eval_text: Path | None = typer.Option(None, "--eval", help="Text file: measure PPL/KLD vs the BF16."),
    mmproj_type: str | None = typer.Option(
        None,
        "--mmproj-type",
        help="Vision projector type when converting from an HF source: f16 (default), bf16, f32, q8_0.",
    ),
    json_out: bool = JsonOption,
) -> None:
    """Quantize with llama.cpp's own quantizer; every output verified, hashed and recorded."""
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    from qwythos.core.fileio import read_text_input, write_text_atomic
    from qwythos.quantize.pipeline import quantize as run_quantize

    eval_str = read_text_input(eval_text, "--eval") if eval_text is not None else None
    kw = dict(
        types=types,
        imatrix=imatrix,
        mtp_type=mtp_type,
        output_tensor_type=output_tensor_type,
        token_embedding_type=token_embedding_type,
        threads=threads,
        requantize=requantize,
        mmproj_type=mmproj_type,
        calib=calib,
    )
    if json_out:
        report = run_quantize(src, out, **kw)
    else:
        with Progress(
            TextColumn("[bold]{task.description}"),
            BarColumn(),
            MofNCompleteColumn(),
            TimeElapsedColumn(),
            console=err_console,
        ) as bar:
            tasks: dict[str, Any] = {}

            def progress(tname: str, done: int, total: int) -> None:
                if tname not in tasks:
                    tasks[tname] = bar.add_task(tname, total=total)
                bar.update(tasks[tname], completed=done, total=total)

            report = run_quantize(src, out, progress=progress, **kw)
    evaluation = None
    if eval_text is not None:
        from qwythos.quantize.evaluate import evaluate

        base = next((o.path for o in report.outputs if o.type == "BF16"), report.source_gguf)
        quants = [o.path for o in report.outputs if o.path != base]
        evaluation = evaluate(base, quants, eval_str or "")
        write_text_atomic(
            Path(report.out_dir) / "quality.json", json.dumps(to_jsonable(evaluation), indent=2) + "\n"
        )
    if json_out:
        print_json({"quantize": report, "eval": evaluation})
        return
    console.print(
        simple_table(
            f"quantized {report.source}",
            ["type", "size GiB", "bpw", "MTP", "time s", "verified", "file"],
            [
                [
                    o.type,
                    f"{o.gib:.3f}",
                    f"{o.bpw:.2f}",
                    o.mtp_type,
                    "skipped (current)" if o.skipped else f"{o.seconds:.1f}",
                    "yes" if o.verified else "-",
                    Path(o.path).name,
                ]
                for o in report.outputs
            ],
        )
    )
    for n in report.notes:
        console.print(f"[yellow]note:[/] {n}")
    console.print(f"manifest: {report.manifest}   sums: {report.sums}")
    if evaluation is not None:
        from qwythos.commands.eval import eval_table

        console.print(eval_table(evaluation))
