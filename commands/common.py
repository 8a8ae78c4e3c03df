"""What every command shares: the typer apps, the consoles, JSON output and the one error handler.

Each command parses flags, calls a library function that returns data, and renders it with rich
(or prints it as JSON with --json). Errors the user can meet are `QwythosError`s: printed as one
message and a fix, never a traceback.
"""

from __future__ import annotations

import functools
import inspect
import json
import sys
import warnings
from collections.abc import Callable
from dataclasses import asdict, is_dataclass
from pathlib import Path
from typing import Any

import click
import typer
from rich.console import Console
from rich.markup import escape
from rich.table import Table
from typer.core import TyperGroup

from qwythos.core.errors import QwythosError

console = Console()
err_console = Console(stderr=True)


def report(error: QwythosError) -> None:
    """Print a user-facing error: one message and the fix, no traceback. Not wrapped by rich (the
    terminal wraps), so a path or a command in it can be copied whole."""
    err_console.print(f"[bold red]error:[/] {escape(error.message)}", highlight=False, soft_wrap=True)
    if error.hint:
        err_console.print(f"[yellow]fix:[/] {escape(error.hint)}", highlight=False, soft_wrap=True)


def _show_warning(message, category, filename, lineno, file=None, line=None) -> None:  # noqa: ANN001
    """A library warning (a slower fallback, say) as one line, not Python's file:line form."""
    err_console.print(f"[yellow]warning:[/] {escape(str(message))}", highlight=False, soft_wrap=True)


def _flag(param: click.Parameter | None) -> str:
    """The flag as the user spells it at its longest (`--threads`, not `-t`)."""
    opts = getattr(param, "opts", None) or [getattr(param, "name", "") or "value"]
    return max(opts, key=len)


def _by_name_checks() -> dict[str, Callable[[Any, str], Any]]:
    """Flags checked by their name in every command that takes them: one checker per kind of value
    (core/limits), so `bench -t 0` is refused as `run -t 0` is, and a bad QWYTHOS_THREADS is refused
    by every command with --threads before any work."""
    from qwythos.core import limits

    def threads(value: int | None, flag: str) -> int | None:
        if value is None:
            limits.env_threads()  # the default comes from QWYTHOS_THREADS: checked now, not mid-run
            return None
        return limits.check_threads(value, flag)

    return {"threads": threads, "seed": limits.check_seed}


def _finite(value: Any, flag: str) -> Any:
    """Every float flag (temperature, top-p, penalties, learning rate, ...): a finite number; `inf`
    is refused as `nan` is (core/limits.check_finite)."""
    from qwythos.core.limits import check_finite

    for v in value if isinstance(value, (list, tuple)) else [value]:
        if isinstance(v, float):
            check_finite(v, flag)
    return value


def _checked(param: click.Parameter, *checks: Callable[[Any, str], Any]) -> None:
    inner = param.callback

    def callback(ctx: click.Context, p: click.Parameter, value: Any) -> Any:
        for check in checks:
            value = check(value, _flag(p))
        return inner(ctx, p, value) if inner is not None else value

    param.callback = callback


#: Groups whose flags describe another machine (an export's --threads is the server's, not ours):
#: only the checks that do not depend on this machine apply there.
OTHER_MACHINE_GROUPS = {"export": ("threads",)}


def check_flags(group: Any, by_name: dict[str, Callable[[Any, str], Any]] | None = None) -> None:
    """Give every command of `group` (its sub-groups too) the checks above: float flags finite,
    the flags of _by_name_checks checked wherever they appear."""
    by_name = _by_name_checks() if by_name is None else by_name
    for name, cmd in group.commands.items():
        if hasattr(cmd, "commands"):  # a sub-group (typer's click may be its own copy: no isinstance)
            skip = OTHER_MACHINE_GROUPS.get(name, ())
            check_flags(cmd, {k: v for k, v in by_name.items() if k not in skip})
            continue
        for p in cmd.params:
            _checked(p, _finite, *([by_name[p.name]] if p.name in by_name else []))


class QwythosGroup(TyperGroup):
    """The one error mapping (as huggingface_hub's `hf` does it): every command of every sub-group
    runs inside this `invoke`, so a `QwythosError` becomes one message and exit 1, Ctrl-C exit 130.
    Every flag gets its kind's check here (`check_flags`)."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        check_flags(self)

    def invoke(self, ctx: click.Context):  # noqa: ANN201 - click's signature
        from qwythos.core import fileio
        from qwythos.core.llamacpp import interrupt

        interrupt.install()  # SIGTERM = Ctrl-C; both stop llama.cpp mid-computation
        fileio.clear_inputs()
        warnings.showwarning = _show_warning
        try:
            return super().invoke(ctx)
        except QwythosError as e:
            report(e)
            raise typer.Exit(1) from None
        except OSError as e:  # an OS error no library code named: still one message, no traceback
            report(fileio.os_error(e))
            raise typer.Exit(1) from None
        except KeyboardInterrupt:
            err_console.print("[yellow]interrupted[/]")
            raise typer.Exit(130) from None


#: The `--json` flag, spelled once.
JsonOption = typer.Option(False, "--json", help="Print the result as JSON.")


class FlagGroup:
    """Flags that several commands share, declared once and handed to a command as one value.

    A command names the group as one parameter's default (`sampling: SamplingParams =
    SAMPLING_FLAGS`) and carries `@with_flag_groups`: typer then sees the group's flags in that
    parameter's place (same names, types and help in every command), and the command receives
    `build(**flags)`, which checks them once."""

    def __init__(self, build: Callable[..., Any], **flags: tuple[Any, Any]) -> None:
        self.build = build
        self.flags = flags  # name -> (type, typer.Option(...)), in --help order


def with_flag_groups(command: Callable[..., Any]) -> Callable[..., Any]:
    """A typer command whose FlagGroup parameters are spelled out as the group's flags."""
    sig = inspect.signature(command, eval_str=True)
    params: list[inspect.Parameter] = []
    groups: dict[str, FlagGroup] = {}
    for p in sig.parameters.values():
        if isinstance(p.default, FlagGroup):
            groups[p.name] = p.default
            params += [
                inspect.Parameter(n, p.kind, default=o, annotation=t) for n, (t, o) in p.default.flags.items()
            ]
        else:
            params.append(p)

    @functools.wraps(command)
    def run(**values: Any) -> Any:
        for name, group in groups.items():
            values[name] = group.build(**{n: values.pop(n) for n in group.flags})
        return command(**values)

    run.__signature__ = sig.replace(parameters=params)  # what typer reads
    run.__annotations__ = {p.name: p.annotation for p in params}
    return run


app = typer.Typer(
    cls=QwythosGroup,
    name="qwythos",
    help="Qwythos-9B (qwen35) from safetensors to fast local llama.cpp inference.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)
mtp_app = typer.Typer(help="Find, graft and validate the MTP (nextn) head.", no_args_is_help=True)
export_app = typer.Typer(
    help="Hand GGUFs to Ollama, LM Studio, KoboldCpp; HF folders to vLLM, SGLang.", no_args_is_help=True
)
app.add_typer(mtp_app, name="mtp")
app.add_typer(export_app, name="export")


def fail(error: QwythosError) -> None:
    """Print a user-facing error and exit 1 (no traceback)."""
    report(error)
    raise typer.Exit(1)


def gib(n: int) -> str:
    """Bytes as GiB (MiB below a quarter GiB)."""
    return f"{n / 2**30:.2f} GiB" if n >= 2**28 else f"{n / 2**20:.2f} MiB"


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
