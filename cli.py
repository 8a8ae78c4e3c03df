"""The `qwythos` command: one typer command per verb, a thin layer over the library.

Each command parses flags, calls a library function that returns data, and renders it with rich
(or prints it as JSON with --json). Errors the user can meet are `QwythosError`s: printed as one
message and a fix, never a traceback.
"""

from __future__ import annotations

import json
import sys
from dataclasses import asdict, is_dataclass
from pathlib import Path
from typing import Any

import typer
from rich.console import Console
from rich.table import Table

from qwythos.errors import QwythosError

app = typer.Typer(
    name="qwythos",
    help="Qwythos-9B (qwen35) from safetensors to fast local llama.cpp inference.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)
mtp_app = typer.Typer(help="Find, graft and validate the MTP (nextn) head.", no_args_is_help=True)
export_app = typer.Typer(help="Hand GGUFs to Ollama, LM Studio, KoboldCpp.", no_args_is_help=True)
app.add_typer(mtp_app, name="mtp")
app.add_typer(export_app, name="export")

console = Console()
err_console = Console(stderr=True)


def fail(error: QwythosError) -> None:
    """Print a user-facing error and exit 1 (no traceback)."""
    err_console.print(f"[bold red]error:[/] {error.message}")
    if error.hint:
        err_console.print(f"[yellow]fix:[/] {error.hint}")
    raise typer.Exit(1)


def to_jsonable(obj: Any) -> Any:
    """Dataclasses, paths and nested containers as plain JSON values."""
    if is_dataclass(obj) and not isinstance(obj, type):
        return to_jsonable(asdict(obj))
    if isinstance(obj, dict):
        return {str(k): to_jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [to_jsonable(v) for v in obj]
    if isinstance(obj, Path):
        return str(obj)
    return obj


def print_json(obj: Any) -> None:
    sys.stdout.write(json.dumps(to_jsonable(obj), indent=2) + "\n")


def simple_table(title: str, columns: list[str], rows: list[list[Any]]) -> Table:
    table = Table(title=title)
    for c in columns:
        table.add_column(c)
    for r in rows:
        table.add_row(*[str(v) for v in r])
    return table


# ---------------------------------------------------------------- section: doctor (lead)
@app.command()
def doctor(
    json_out: bool = typer.Option(False, "--json", help="Print the result as JSON."),
    fresh: bool = typer.Option(False, "--fresh", help="Probe again instead of using the cached verdict."),
) -> None:
    """Check that the installed llama.cpp build runs quantized models on this CPU (AMX crash probe)."""
    from qwythos.runtime import probe

    result = probe.probe_build(use_cache=not fresh)
    if json_out:
        print_json({**to_jsonable(result), "verdict": result.verdict, "model_kwargs": result.model_kwargs()})
    else:
        rows = [
            ["llama.cpp library", result.library],
            ["CPU reports AMX", "yes" if result.cpu_reports_amx else "no"],
            ["build has AMX kernels", "yes" if result.build_has_amx else "no"],
        ]
        for run in result.runs:
            label = "default buffers" if run.use_extra_bufts else "use_extra_bufts=False"
            state = "ok" if run.ok else f"crashed ({run.signal or run.returncode}) {run.detail}".strip()
            rows.append([f"probe: Q8_0 batch decode, {label}", state])
        rows.append(["verdict", result.verdict])
        console.print(simple_table("qwythos doctor", ["check", "result"], rows))
        if not result.default_ok:
            console.print(f"[yellow]fix:[/] rebuild llama-cpp-python without AMX:\n  {probe.REBUILD_COMMAND}")
    if not result.default_ok and not result.fallback_ok:
        raise typer.Exit(1)


# ---------------------------------------------------------------- end: doctor

# ---------------------------------------------------------------- section: convert/inspect
# ---------------------------------------------------------------- end: convert/inspect

# ---------------------------------------------------------------- section: quantize/plan/eval
# ---------------------------------------------------------------- end: quantize/plan/eval

# ---------------------------------------------------------------- section: mtp
# ---------------------------------------------------------------- end: mtp

# ---------------------------------------------------------------- section: run/chat/bench/demo
# ---------------------------------------------------------------- end: run/chat/bench/demo

# ---------------------------------------------------------------- section: export/hub
# ---------------------------------------------------------------- end: export/hub


def main() -> None:
    """Console-script entry: user-facing errors become one message and exit code 1."""
    try:
        app()
    except QwythosError as e:
        err_console.print(f"[bold red]error:[/] {e.message}")
        if e.hint:
            err_console.print(f"[yellow]fix:[/] {e.hint}")
        sys.exit(1)
    except KeyboardInterrupt:
        err_console.print("[yellow]interrupted[/]")
        sys.exit(130)


if __name__ == "__main__":
    main()
