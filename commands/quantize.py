"""qwythos quantize, plan and eval."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import typer
from rich.table import Table

from qwythos.commands.common import (
    JsonOption,
    app,
    console,
    err_console,
    print_json,
    simple_table,
    to_jsonable,
)
from qwythos.core.errors import QwythosError
from qwythos.core.model.release import START_CONTEXT
from qwythos.quantize.plan import DEFAULT_MTP_TYPE, DEFAULT_TYPES

Q_DEFAULT_TYPES = ",".join(DEFAULT_TYPES)


def _eval_table(report: Any) -> Table:
    return simple_table(
        f"quality vs {Path(report.base).name} ({report.n_tokens_scored} tokens, base PPL {report.base_ppl:.3f})",
        ["type", "size GiB", "bpw", "PPL", "mean KLD", "top-1 agree"],
        [
            [
                r.type,
                f"{r.gib:.3f}",
                f"{r.bpw:.2f}",
                f"{r.ppl:.4f}",
                f"{r.mean_kld:.6f}",
                f"{100 * r.top1_agreement:.2f}%",
            ]
            for r in report.rows
        ],
    )


@app.command()
def quantize(
    src: str = typer.Argument(..., help="HF folder / repo id, or a BF16/F16/F32 qwen35 GGUF."),
    out: Path | None = typer.Option(None, "-o", "--out", help="Output folder (default: current folder)."),
    types: str = typer.Option(Q_DEFAULT_TYPES, "--types", help="Comma-separated llama.cpp types."),
    imatrix: Path | None = typer.Option(None, "--imatrix", help="llama-imatrix file (GGUF or legacy .dat)."),
    mtp_type: str = typer.Option(
        DEFAULT_MTP_TYPE,
        "--mtp-type",
        help=f"Type of the MTP block: {DEFAULT_MTP_TYPE} (default), bf16, same, or any GGML type.",
    ),
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
        console.print(_eval_table(evaluation))


@app.command()
def plan(
    src: str = typer.Argument(..., help="GGUF, HF folder, or config.json."),
    types: str = typer.Option(Q_DEFAULT_TYPES, "--types", help="Comma-separated llama.cpp types."),
    ctx: int = typer.Option(START_CONTEXT, "--ctx", help="Context length for the memory estimate."),
    kv_type: str = typer.Option("f16", "--kv-type", help="KV cache type: f16, q8_0 or q4_0."),
    mtp_type: str = typer.Option(
        DEFAULT_MTP_TYPE,
        "--mtp-type",
        help=f"Type of the MTP block: {DEFAULT_MTP_TYPE} (default), bf16, same, or any GGML type.",
    ),
    json_out: bool = JsonOption,
) -> None:
    """Predict file sizes (llama.cpp's dry run, no weights needed) and memory at a context."""
    from qwythos.quantize.plan import plan as run_plan

    if ctx < 1:
        raise QwythosError(f"--ctx {ctx} must be a positive number of tokens", f"e.g. --ctx {START_CONTEXT}")
    p = run_plan(src, types, ctx, kv_type, mtp_type=mtp_type)
    if json_out:
        print_json(p)
        return
    console.print(
        simple_table(
            f"plan for {src} ({p.n_params / 1e9:.2f} B params, ctx {ctx}, KV {kv_type})",
            ["type", "file GiB", "+MTP GiB", "bpw", "MTP type", "memory GiB"],
            [
                [
                    t.type,
                    f"{t.file_gib:.3f}",
                    "-" if t.with_mtp_gib is None else f"{t.with_mtp_gib:.3f}",
                    f"{t.bpw:.2f}",
                    t.mtp_type,
                    f"{t.memory_gib:.2f}",
                ]
                for t in p.types
            ],
        )
    )
    console.print(
        f"KV cache {p.kv_cache_bytes / 2**30:.3f} GiB, recurrent state {p.recurrent_state_bytes / 2**20:.1f} MiB "
        "(compute buffers not included)"
    )
    if p.mmproj_bytes is not None:
        console.print(
            f"vision projector (mmproj, {(p.mmproj_type or '?').upper()}) {p.mmproj_bytes / 2**30:.3f} GiB "
            f"({p.mmproj_bytes:,} B, {p.mmproj_source})"
        )
    for n in p.notes:
        console.print(f"[yellow]note:[/] {n}")


@app.command("eval")
def eval_cmd(
    base: Path = typer.Argument(..., help="The BF16 GGUF."),
    quants: list[Path] = typer.Argument(..., help="Quantized GGUFs of the same model."),
    text: Path | None = typer.Option(
        None, "--text", help="Text file to score (default: the bundled held-out calibration text)."
    ),
    plot: Path | None = typer.Option(
        None,
        "--plot",
        help="Write a PNG of bits per weight vs mean KLD (needs matplotlib: pip install 'qwythos[plot]').",
    ),
    ctx: int = typer.Option(256, "--ctx", help="Window length in tokens (the second half is scored)."),
    max_windows: int = typer.Option(8, "--max-windows", help="Score at most this many windows."),
    threads: int = typer.Option(2, "--threads", help="CPU threads."),
    json_out: bool = JsonOption,
) -> None:
    """Perplexity, mean KL divergence and top-1 agreement against the BF16 base."""
    from qwythos.core.fileio import check_output_path, read_text_input
    from qwythos.quantize.evaluate import default_text, evaluate, plot_png, require_plotting
    from qwythos.quantize.pipeline import check_same_model

    text = text if text is not None else default_text()
    text_str = read_text_input(text, "--text")
    if threads < 1:
        raise QwythosError(f"--threads {threads} must be at least 1", "e.g. --threads 2")
    if ctx < 32 or max_windows < 1:
        raise QwythosError(
            f"--ctx {ctx} / --max-windows {max_windows} too small", "e.g. --ctx 256 --max-windows 8"
        )
    if plot is not None:  # checked before the work, not after it
        check_output_path(plot, force=True, inputs=[base, *quants, text])
        require_plotting()
    check_same_model(base, list(quants))
    report = evaluate(
        base, list(quants), text_str, n_ctx=ctx, max_windows=max_windows, threads=threads, text_name=text.name
    )
    if plot is not None:
        plot_png(report, plot)
    if json_out:
        print_json(report)
        return
    console.print(_eval_table(report))
    if plot is not None:
        console.print(f"plot: {plot}")
