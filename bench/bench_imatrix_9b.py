"""Time and memory of `qwythos imatrix` at the exact Qwythos-9B shapes, MTP head included.

A random-weight GGUF of the 9B shapes with its nextn block (bench/bench_mtp.py's file: Q4_K_M, head
q8_0; or --model, e.g. a BF16 or Q8_0 source, what importance data is usually collected from) runs a
few chunks of 512 tokens of the bundled calibration text. Printed: load time,
seconds per chunk (trunk and head together, the first chunk apart), the head's share (a second run
with --no-mtp), peak RSS, and the extrapolation to a 100-chunk run. Random weights compute exactly
as much as real ones; only the numbers in the file are meaningless. The random file's linear-attention
decay `ssm_a` is +1 (its writer fills small tensors with ones), which makes the recurrent state grow
without bound and the activations infinite (the collector refuses them, as llama-imatrix does); the
bench runs a copy with ssm_a = -1, a decaying state as in a real model.

    nice -n 10 python bench/bench_imatrix_9b.py --work /tmp/qwythos-bench-mtp --chunks 3 --threads 2
    nice -n 10 python bench/bench_imatrix_9b.py --model MY-9B-BF16.gguf --chunks 3
"""

from __future__ import annotations

import argparse
import resource
import shutil
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def with_decay(model: Path, work: Path) -> Path:
    """`model`, or a copy of it whose ssm_a tensors (F32) are -1 where they are positive."""
    import numpy as np

    from qwythos.core.gguf.file import read_header, read_tensor_bytes

    hdr = read_header(model)
    ssm_a = [t for t in hdr.tensors if t.name.endswith(".ssm_a") and t.ggml_type == 0]
    if not any((np.frombuffer(read_tensor_bytes(hdr, t.name), "<f4") > 0).any() for t in ssm_a):
        return model
    out = work / (model.stem + "-decay.gguf")
    if not out.is_file():
        shutil.copyfile(model, out)
        with open(out, "r+b") as f:
            for t in ssm_a:
                f.seek(t.offset)
                f.write(np.full(t.nbytes // 4, -1.0, dtype="<f4").tobytes())
    return out


def timed_run(model: Path, work: Path, chunks: int, threads: int, head: bool) -> dict:
    from qwythos.quantize.imatrix import CALIBRATION, compute_imatrix

    text = work / "calibration-x4.txt"  # the synthetic byte vocabulary makes ~1 token per byte
    text.write_text(CALIBRATION.read_text() * 4)
    stamps: list[float] = []
    t0 = time.perf_counter()
    rep = compute_imatrix(
        model,
        work / ("im-head.gguf" if head else "im-trunk.gguf"),
        [text],
        chunks=chunks,
        threads=threads,
        head=head,
        force=True,
        progress=lambda done, total: stamps.append(time.perf_counter()),
    )
    load = stamps[0] - t0
    per = [b - a for a, b in zip(stamps, stamps[1:], strict=False)]
    return {"report": rep, "load": load, "per_chunk": per, "total": time.perf_counter() - t0}


def plain_prefill(model: Path, work: Path, chunks: int, threads: int) -> list[float]:
    """Seconds per chunk of the same chunks decoded by a plain target context (no collector): what
    collecting costs on top of the forward pass."""
    import numpy as np

    from qwythos.core.llamacpp.handles import load_model
    from qwythos.core.llamacpp.log import llama_log_to

    with llama_log_to(None), load_model(model, mtp=False) as m:
        toks = np.array(
            m.tokenize((work / "calibration-x4.txt").read_text(), add_special=True, parse_special=False)
        )
        ctx = m.new_target(512, n_draft=1, n_batch=512, threads=threads)
        per = []
        for i in range(chunks):
            t = time.perf_counter()
            ctx.clear()
            ctx.decode(toks[i * 512 : (i + 1) * 512], 0)
            per.append(time.perf_counter() - t)
    return per


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", type=Path, default=None, help="a 9B GGUF with its MTP head (default: random)")
    ap.add_argument("--work", type=Path, default=Path("/tmp/qwythos-bench-mtp"), help="bench_mtp.py's folder")
    ap.add_argument("--chunks", type=int, default=3)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--skip-trunk-only", action="store_true", help="do not measure the head's share")
    ap.add_argument("--plain", action="store_true", help="also time the chunks without a collector")
    args = ap.parse_args()
    args.work.mkdir(parents=True, exist_ok=True)
    if args.model is None:
        sys.path.insert(0, str(REPO / "bench"))
        from bench_mtp import build_9b
    model = with_decay(args.model or build_9b(args.work, args.threads), args.work)
    print(f"model {model} ({model.stat().st_size / 2**30:.2f} GiB), {args.threads} threads", flush=True)

    runs = {"with head": timed_run(model, args.work, args.chunks, args.threads, True)}
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20  # KiB -> GiB
    if not args.skip_trunk_only:
        runs["trunk only"] = timed_run(model, args.work, args.chunks, args.threads, False)
    for label, r in runs.items():
        per = r["per_chunk"]
        steady = per[1:] or per
        mean = sum(steady) / len(steady)
        rep = r["report"]
        print(
            f"{label:10}: load {r['load']:.1f} s; chunks of {rep.chunk_size}: "
            + ", ".join(f"{p:.1f}" for p in per)
            + f" s (first, then steady mean {mean:.1f} s = {rep.chunk_size / mean:.1f} tok/s); "
            f"{rep.entries} matrices ({rep.head_entries} in the head); "
            f"100 chunks extrapolated: {(r['load'] + per[0] + 99 * mean) / 3600:.2f} h"
        )
    if len(runs) == 2:
        a = runs["with head"]["per_chunk"][1:] or runs["with head"]["per_chunk"]
        b = runs["trunk only"]["per_chunk"][1:] or runs["trunk only"]["per_chunk"]
        print(f"the head's share of a chunk: {100 * (sum(a) / len(a) / (sum(b) / len(b)) - 1):+.1f}%")
    print(f"peak RSS (with head run): {rss:.2f} GiB")
    if args.plain:
        per = plain_prefill(model, args.work, args.chunks, args.threads)
        steady = per[1:] or per
        print(
            "plain prefill, no collector: "
            + ", ".join(f"{p:.1f}" for p in per)
            + f" s per chunk (steady mean {sum(steady) / len(steady):.1f} s)"
        )


if __name__ == "__main__":
    main()
