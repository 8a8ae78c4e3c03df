"""What the Engine benches share: their common flags, and the model file they run on (the one
given with --model, else the bundled trained tiny model converted into a temporary folder)."""

from __future__ import annotations

import argparse
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

TINY_TRAINED = Path(__file__).resolve().parents[1] / "data" / "tiny-trained"


def bench_args(doc: str | None, *, max_tokens: int, reps: int, threads: int = 2) -> argparse.ArgumentParser:
    """A parser with --model, --threads, --max-tokens and --reps; a bench adds its own flags."""
    ap = argparse.ArgumentParser(description=doc, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", type=Path, help="a qwen35 GGUF (default: the trained tiny model, F32)")
    ap.add_argument("--threads", type=int, default=threads)
    ap.add_argument("--max-tokens", type=int, default=max_tokens, help="tokens generated per run")
    ap.add_argument("--reps", type=int, default=reps, help="runs per measurement (the median is shown)")
    return ap


@contextmanager
def model_file(path: Path | None, outtype: str = "f32") -> Iterator[Path]:
    """`path`, or the trained tiny model as a GGUF of `outtype` while the block runs."""
    if path is not None:
        yield Path(path)
        return
    from qwythos.convert.text import convert

    with tempfile.TemporaryDirectory(prefix="qwythos-bench-") as tmp:
        yield convert(TINY_TRAINED, Path(tmp) / f"tiny-{outtype.upper()}.gguf", outtype=outtype).output
