"""qwythos bench: plain decoding against MTP drafts and auto on a fixed prompt set; stores the costs."""

from __future__ import annotations

from pathlib import Path

import typer
from rich.markup import escape

from qwythos.commands import engine_flags as flags
from qwythos.commands.common import (
    JsonOption,
    app,
    console,
    err_console,
    fail,
    print_json,
    simple_table,
    with_flag_groups,
)
from qwythos.core.drafting.lengths import MAX_DRAFT
from qwythos.core.errors import QwythosError


@app.command("bench")
@with_flag_groups
def bench_cmd(
    model_path: Path = typer.Argument(..., help="A qwen35 .gguf with an MTP head."),
    max_tokens: int = typer.Option(64, "--max-tokens"),
    drafts: str = typer.Option("1,2,3,4", "--drafts", help="Draft lengths to compare with plain."),
    threads: int | None = flags.THREADS_OPTION,
    no_auto: bool = typer.Option(False, "--no-auto", help="Skip the auto row (and keep the cache as it is)."),
    no_baseline: bool = typer.Option(
        False,
        "--no-baseline",
        help="Skip the --no-mtp row (the file loaded a second time, without its head): speed-ups are then "
        "against plain decoding with the head loaded.",
    ),
    placement: flags.PlacementFlags = flags.PLACEMENT_FLAGS,
    json_out: bool = JsonOption,
) -> None:
    """Plain decoding against MTP drafts (greedy) on a fixed prompt set: tok/s, acceptance, speed-up."""
    from qwythos.runtime.speed import NO_MTP, run_bench

    try:
        ds = tuple(int(x) for x in drafts.split(",") if x.strip())
    except ValueError:
        fail(QwythosError(f"--drafts {drafts!r} is not a list of numbers", "e.g. --drafts 1,2,3"))
        return
    if max_tokens < 1:
        raise QwythosError(f"--max-tokens {max_tokens} must be at least 1", "e.g. --max-tokens 64")
    if any(not 1 <= d <= MAX_DRAFT for d in ds):
        raise QwythosError(f"--drafts {drafts} is out of range", f"use draft lengths 1..{MAX_DRAFT}")
    r = run_bench(
        model_path,
        drafts=ds,
        max_tokens=max_tokens,
        threads=threads,
        auto=not no_auto,
        store=not no_auto,
        rpc=placement.rpc,
        gpu_layers=placement.gpu_layers,
        baseline=not no_baseline,
    )
    if json_out:
        print_json(r)
        return
    rows = [
        [
            x.mode,
            f"{x.gen_tps:.1f}",
            f"{x.speedup:.2f}x",
            f"{x.predicted_speedup:.2f}x" if x.predicted_speedup is not None else "-",
            f"{x.acceptance:.0%}" if x.draft else "-",
            " ".join(f"{a:.0%}" for a in x.acceptance_per_depth) or "-",
            f"{x.tokens_per_pass:.2f}",
            "yes" if x.same_output else "no",
            f"{x.t_draft:.2f}/{x.t_verify:.2f}/{x.t_rollback:.3f}/{x.t_python:.2f}",
        ]
        for x in r.rows
    ]
    cols = [
        "mode",
        "tok/s",
        "speed-up",
        "predicted",
        "accept",
        "per depth",
        "tok/pass",
        "same output",
        "draft/verify/rollback/py s",
    ]
    console.print(
        simple_table(
            f"qwythos bench {model_path.name} ({r.prompts} prompts x {r.max_tokens} tokens, greedy; "
            f"speed-ups against {r.baseline}, measured in the same rounds"
            + (f"; {r.placement}" if r.placement else "")
            + ")",
            cols,
            rows,
        )
    )
    if r.recommended is not None:
        best = {x.draft: x for x in r.rows if x.mode not in ("auto", NO_MTP)}[r.recommended]
        console.print(
            f"recommended: --draft {r.recommended} (predicted {best.predicted_speedup:.2f}x, measured "
            f"{best.speedup:.2f}x {r.baseline})"
            + (
                f"; `run` and `chat` use it with --draft auto [dim](costs stored in {r.cache_file})[/]"
                if r.cache_file
                else ""
            )
        )
        if r.cache_note:
            err_console.print(f"[yellow]warning:[/] {escape(r.cache_note)}", highlight=False, soft_wrap=True)
    if r.break_even:
        needs = ", ".join(
            f"draft {n}: {a:.0%}" if a is not None else f"draft {n}: never" for n, a in r.break_even.items()
        )
        console.print(
            f"acceptance at which drafting pays on this machine (the same at every depth): {needs}",
            highlight=False,
        )
    if r.recommended is None and r.note:
        console.print(r.note)
    if r.placed:
        console.print(f"placement: -ngl {r.placed['n_gpu_layers']}: {r.placed['reason']}", highlight=False)
