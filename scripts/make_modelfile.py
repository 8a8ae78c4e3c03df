"""Generate the repository's top-level `Modelfile` (Ollama) for the default Q4_K_M file name.

    python scripts/make_modelfile.py           # (re)write ./Modelfile
    python scripts/make_modelfile.py --check   # exit 1 if ./Modelfile differs from what it would write

The file is never edited by hand: change qwythos/export/ollama.py and run this again.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from qwythos.core.fileio import atomic_output
from qwythos.export.ollama import default_spec, render

REPO_ROOT = Path(__file__).resolve().parent.parent


def generate() -> str:
    """The top-level Modelfile text."""
    return render(default_spec())


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--check", action="store_true", help="only compare, do not write")
    ap.add_argument("-o", type=Path, default=REPO_ROOT / "Modelfile", help="output path")
    args = ap.parse_args(argv)
    text = generate().encode()
    current = args.o.read_bytes() if args.o.is_file() else None
    if args.check:
        if current != text:
            print(f"{args.o} is out of date: run python scripts/make_modelfile.py", file=sys.stderr)
            return 1
        return 0
    if current != text:
        with atomic_output(args.o) as tmp:
            tmp.write_bytes(text)
    print(f"wrote {args.o}" if current != text else f"{args.o} is up to date")
    return 0


if __name__ == "__main__":
    sys.exit(main())
