"""`qwythos imatrix` against llama.cpp's own `llama-imatrix`, and our file in `llama-quantize --imatrix`.

Both tools run on the same head-less GGUF, the same text and the same chunking (llama-imatrix with
`-c CTX -b CTX --chunks N --no-ppl`: one chunk per batch, as ours decodes). For every weight the
table gives the largest relative difference of the squared-activation sums (|ours - ref| / |ref|,
per column), and whether the counts agree; then llama-quantize (same llama.cpp source) quantizes
the model with our file and must report that it loaded every entry.

    TARGETS="llama-imatrix llama-quantize" bash bench/build_llama_cpp_tools.sh /work/scratch/imatrix-llama-build 2
    nice -n 10 python bench/bench_imatrix_reference.py --bin /work/scratch/imatrix-llama-build/bin
    nice -n 10 python bench/bench_imatrix_reference.py --bin DIR --model data/tiny-wide --type Q4_K_M

--model takes a GGUF or an HF folder (converted without its MTP head into --work). Exit status 1
when any tensor differs by more than --tol or llama-quantize refuses the file.
"""

from __future__ import annotations

import argparse
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]


def trunk_gguf(model: Path, work: Path) -> Path:
    """The model as a GGUF without an MTP head (llama-imatrix never runs one)."""
    if model.is_file():
        return model
    from qwythos.convert.text import convert

    out = work / f"{model.name}-trunk-BF16.gguf"
    if not out.is_file():
        convert(model, out, mtp=False)
    return out


def run(cmd: list[str]) -> subprocess.CompletedProcess:
    print("$ " + " ".join(map(str, cmd)), file=sys.stderr, flush=True)
    return subprocess.run([str(c) for c in cmd], capture_output=True, text=True)


def compare(ours_path: Path, ref_path: Path) -> tuple[list[tuple[str, float, bool]], list[str]]:
    """(name, max relative error, counts equal) per reference entry; and problems found."""
    from qwythos.quantize.imatrix_file import read_imatrix

    ours, ref = read_imatrix(ours_path), read_imatrix(ref_path)
    problems = []
    if set(ours.sums) != set(ref.sums):
        problems.append(
            f"entries differ: only ours {sorted(set(ours.sums) - set(ref.sums))}, "
            f"only llama-imatrix {sorted(set(ref.sums) - set(ours.sums))}"
        )
    for k in ("chunk_count", "chunk_size"):
        if getattr(ours, k) != getattr(ref, k):
            problems.append(f"{k}: ours {getattr(ours, k)}, llama-imatrix {getattr(ref, k)}")
    rows = []
    for name in sorted(set(ours.sums) & set(ref.sums)):
        a, b = ours.sums[name].astype(np.float64), ref.sums[name].astype(np.float64)
        rel = (
            float(np.max(np.abs(a - b) / np.maximum(np.abs(b), 1e-30)))
            if a.shape == b.shape
            else float("inf")
        )
        rows.append((name, rel, bool(np.array_equal(ours.counts[name], ref.counts[name]))))
    return rows, problems


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--bin", type=Path, required=True, help="folder with llama-imatrix and llama-quantize")
    ap.add_argument("--model", type=Path, default=REPO / "data" / "tiny-trained", help="GGUF or HF folder")
    ap.add_argument("--text", type=Path, default=None, help="default: the bundled imatrix calibration text")
    ap.add_argument("--ctx", type=int, default=128)
    ap.add_argument("--chunks", type=int, default=10)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--type", default="Q4_K_M", help="the type llama-quantize makes with our file")
    ap.add_argument("--tol", type=float, default=1e-3, help="largest relative difference accepted")
    ap.add_argument("--work", type=Path, default=None)
    args = ap.parse_args()

    from qwythos.quantize.imatrix import CALIBRATION, compute_imatrix

    work = args.work or Path(tempfile.mkdtemp(prefix="qwythos-imatrix-ref-"))
    work.mkdir(parents=True, exist_ok=True)
    text = args.text or CALIBRATION
    gguf = trunk_gguf(args.model, work)
    ours, ref = work / "ours.imatrix.gguf", work / "llama.imatrix.gguf"

    t0 = time.perf_counter()
    rep = compute_imatrix(
        gguf, ours, [text], ctx=args.ctx, chunks=args.chunks, threads=args.threads, force=True
    )
    t_ours = time.perf_counter() - t0
    t0 = time.perf_counter()
    r = run(
        [
            args.bin / "llama-imatrix", "-m", gguf, "-f", text, "-o", ref, "-c", args.ctx, "-b", args.ctx,
            "--chunks", args.chunks, "-t", args.threads, "--no-ppl",
        ]
    )  # fmt: skip
    t_ref = time.perf_counter() - t0
    if r.returncode != 0:
        print(r.stderr[-3000:], file=sys.stderr)
        return 1

    rows, problems = compare(ours, ref)
    print(f"model {gguf.name}, text {text.name}, {rep.chunks} chunks x {args.ctx} tokens")
    print(f"ours {t_ours:.1f} s, llama-imatrix {t_ref:.1f} s (with loading)")
    print(f"{'tensor':40} {'max rel. error':>15} {'counts':>7}")
    for name, rel, same in rows:
        print(f"{name:40} {rel:15.2e} {'equal' if same else 'DIFFER':>7}")
    worst = max((r[1] for r in rows), default=float("inf"))
    print(f"{len(rows)} tensors, worst max relative error {worst:.2e} (tolerance {args.tol:g})")

    q = run([args.bin / "llama-quantize", "--imatrix", ours, gguf, work / f"q-{args.type}.gguf", args.type])
    m = re.search(r"loaded (\d+) importance matrix entries .* computed on (\d+) chunks", q.stdout + q.stderr)
    loaded = m is not None and int(m.group(1)) == len(rows) and int(m.group(2)) == rep.chunks
    print(
        f"llama-quantize --imatrix ours {args.type}: exit {q.returncode}, "
        + (f"loaded {m.group(1)} entries computed on {m.group(2)} chunks" if m else "no 'loaded' line")
    )
    if q.returncode != 0 or not loaded:
        problems.append("llama-quantize did not load our file\n" + (q.stdout + q.stderr)[-2000:])
    problems += [f"{n}: counts differ" for n, _, same in rows if not same]
    if worst > args.tol:
        problems.append(f"max relative error {worst:.2e} over the tolerance")
    for p in problems:
        print("PROBLEM:", p)
    return 1 if problems else 0


if __name__ == "__main__":
    raise SystemExit(main())
