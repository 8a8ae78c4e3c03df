"""qwythos demo: the whole job on the bundled trained tiny model, offline."""

from __future__ import annotations

from pathlib import Path

import typer

from qwythos.commands.common import JsonOption, app, console, print_json, simple_table
from qwythos.core.errors import QwythosError


@app.command("demo")
def demo(
    work_dir: Path = typer.Option(
        Path("qwythos-demo"), "-o", "--out", help="Folder for the demo's files (created)."
    ),
    max_tokens: int = typer.Option(48, "--max-tokens", help="Tokens generated per prompt."),
    threads: int | None = typer.Option(None, "--threads", help="CPU threads (default: all)."),
    json_out: bool = JsonOption,
) -> None:
    """The whole job on the bundled trained tiny model, offline: convert, quantize, restore, run."""
    from qwythos.demo import run_demo

    if max_tokens < 1:
        raise QwythosError(f"--max-tokens {max_tokens} must be at least 1", "e.g. --max-tokens 48")

    with console.status("demo") as status:
        rep = run_demo(work_dir, max_tokens=max_tokens, threads=threads, log=status.update)
    if json_out:
        print_json(rep.to_dict())
        return
    rows = [
        [f.step, Path(f.path).name, f"{f.bytes / 2**20:.2f} MiB", f"{f.seconds:.2f} s"] for f in rep.files
    ]
    console.print(simple_table("files", ["step", "file", "size", "time"], rows))
    acc = " ".join(f"d{i + 1} {r:.2f}" for i, r in enumerate(rep.acceptance_per_depth))
    console.print(
        f"MTP head validation: {acc}; expected accepted drafts per step "
        f"{rep.expected_accepted_length:.2f} ({'PASS' if rep.validation_passed else 'FAIL'})"
    )
    rows = [
        [
            r.mode,
            r.gen_tokens,
            f"{r.gen_tps:.0f}",
            " ".join(f"{a:.2f}" for a in r.acceptance_per_depth) or "-",
            f"{r.tokens_per_pass:.2f}",
            "yes" if r.same_output else "[red]NO[/]",
        ]
        for r in rep.runs
    ]
    console.print(
        simple_table(
            "generation (greedy, 3 prompts)",
            ["mode", "tokens", "tok/s", "acceptance per depth", "tok/pass", "identical to plain"],
            rows,
        )
    )
    console.print(f"[dim]sample:[/] {rep.sample_text!r}")
    if not rep.identical:
        raise typer.Exit(2)
