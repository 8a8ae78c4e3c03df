"""`qwythos eval`: perplexity, mean KL divergence and top-1 agreement of quantizations against
their BF16 base (quantize/evaluate.py); its table is also what `qwythos quantize --eval` prints."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import typer
from rich.table import Table

from qwythos.commands.common import JsonOption, app, console, print_json, simple_table
from qwythos.core.errors import QwythosError
from qwythos.quantize.evaluate import EVAL_CTX, EVAL_MAX_WINDOWS, EVAL_THREADS


def eval_table(report: Any) -> Table:
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
    ctx: int = typer.Option(EVAL_CTX, "--ctx", help="Window length in tokens (the second half is scored)."),
    max_windows: int = typer.Option(
        EVAL_MAX_WINDOWS, "--max-windows", help="Score at most this many windows."
    ),
    threads: int = typer.Option(EVAL_THREADS, "--threads", help="CPU threads."),
    json_out: bool = JsonOption,
) -> None:
    """Perplexity, mean KL divergence and top-1 agreement against the BF16 base."""
    from qwythos.core.fileio import check_output_path, read_text_input
    from qwythos.quantize.evaluate import (
        as_view,
        check_same_model,
        default_text,
        evaluate,
        plot_png,
        require_plotting,
    )

    text = text if text is not None else default_text()
    text_str = read_text_input(text, "--text")
    if ctx < 32 or max_windows < 1:
        raise QwythosError(
            f"--ctx {ctx} / --max-windows {max_windows} too small",
            f"e.g. --ctx {EVAL_CTX} --max-windows {EVAL_MAX_WINDOWS}",
        )
    if plot is not None:  # checked before the work, not after it
        check_output_path(plot, force=True, inputs=[base, *quants, text])
        require_plotting()
    base_view, quant_views = as_view(base), [as_view(q) for q in quants]  # each header read once
    check_same_model(base_view, quant_views)
    report = evaluate(
        base_view,
        quant_views,
        text_str,
        n_ctx=ctx,
        max_windows=max_windows,
        threads=threads,
        text_name=text.name,
    )
    if plot is not None:
        plot_png(report, plot)
    if json_out:
        print_json(report)
        return
    console.print(eval_table(report))
    if plot is not None:
        console.print(f"plot: {plot}")
