"""The `qwythos` command: one typer command per verb, a thin layer over the library.

The commands live in `qwythos.commands` (one module per feature); importing them registers them
on `app`. Errors the user can meet are `QwythosError`s, mapped once (commands/common.py) to one
message and exit 1; Ctrl-C exits 130.
"""

from __future__ import annotations  # noqa: I001 - the commands import below is in --help order

import sys

from qwythos.commands import (  # noqa: F401, I001 - registers the commands, in --help order
    bench,
    chat,
    convert,
    demo,
    doctor,
    download,
    eval,
    export,
    imatrix,
    inspect,
    mtp,
    plan,
    quantize,
    rpc,
    run,
    serve,
    upload,
)
from qwythos.commands.common import app, err_console, report
from qwythos.core.errors import QwythosError

__all__ = ["app", "main"]


def main() -> None:
    """Console-script entry."""
    try:
        app()
    except QwythosError as e:  # raised outside a command (while parsing)
        report(e)
        sys.exit(1)
    except KeyboardInterrupt:
        err_console.print("[yellow]interrupted[/]")
        sys.exit(130)


if __name__ == "__main__":
    main()
