"""What an importance matrix buys where k-quants really apply: the wide trained tiny model.

data/tiny-wide (scripts/train_tiny.py --shape wide: hidden 256, every matrix row a multiple of the
256-wide k-quant block, trained with its MTP head on the stdlib's train split) is converted to
BF16 (a model whose linear-attention key heads are narrower than its value heads, as an earlier
data/tiny-wide was, is first zero-padded by scripts/pad_linear_keys.py: llama.cpp's qwen35 loader
needs them equal; every figure compares a model with its own BF16), its importance
matrix computed by `qwythos quantize --imatrix auto` (head included) from a calibration text, and it
is quantized to each type twice (`--mtp-type same`, without and with the imatrix; an IQ type
without one, which `quantize` refuses, through llama.cpp's quantizer directly). Then, on held-out text that is not the calibration text (the stdlib files the training
held out), the library behind `qwythos eval` measures mean KL divergence and top-1 agreement against
the BF16, and the one behind `qwythos mtp validate` the head's depth-1 acceptance. A third
quantization per type uses the same imatrix without its head entries (what llama-imatrix's file
would give the head: nothing), so the two head columns differ only in the head's own data.

    nice -n 10 python bench/bench_imatrix_quality.py --calib mixed      # the bundled calibration text
    nice -n 10 python bench/bench_imatrix_quality.py --calib code       # stdlib train-split code
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
TYPES = ("Q4_K_M", "Q3_K_M", "IQ4_XS", "Q2_K")


def loadable(model: Path, work: Path) -> tuple[Path, str]:
    """`model`, or a copy with its key heads zero-padded to the value heads' width (llama.cpp's
    qwen35 loader reads both from one key) -> (folder, note)."""
    import json

    text = json.loads((model / "config.json").read_text())["text_config"]
    if text["linear_key_head_dim"] >= text["linear_value_head_dim"]:
        return model, ""
    sys.path.insert(0, str(REPO / "scripts"))
    from pad_linear_keys import pad_folder

    out = work / f"{model.name}-keys-padded"
    if not (out / "config.json").is_file():
        pad_folder(model, out)
    return out, (
        f"key heads zero-padded {text['linear_key_head_dim']} -> {text['linear_value_head_dim']} "
        "(scripts/pad_linear_keys.py)"
    )


def blind(src: Path, out: Path, type_name: str, threads: int) -> Path:
    """`type_name` without an importance matrix through llama.cpp's quantizer directly (quantize
    refuses IQ types without one): the comparison the imatrix is measured against."""
    from qwythos.core.gguf.ftypes import parse_ftype
    from qwythos.quantize.llama_quant import llama_quantize

    out.mkdir(parents=True, exist_ok=True)
    path = out / f"{type_name}-blind.gguf"
    if not path.is_file():
        call = llama_quantize(src, path, parse_ftype(type_name), nthread=threads)
        if not call.ok:
            raise SystemExit(f"llama.cpp could not make {type_name} without an imatrix: {call.error}")
    return path


def train_split_code(max_chars: int) -> str:
    """Stdlib files of the training split (not held out), as calibration text of the model's domain."""
    import sysconfig
    import zlib

    lib = Path(sysconfig.get_paths()["stdlib"])
    files = sorted(p for p in lib.glob("*.py") if 2_000 < p.stat().st_size < 200_000)
    train = [p for p in files if zlib.crc32(p.name.encode()) % 10 != 0]
    text = "".join(p.read_text(encoding="utf-8", errors="replace") for p in train[::7])
    return text[:max_chars]


def without_head(src: Path, out: Path, n_layer: int) -> Path:
    """The same imatrix file minus the MTP block's entries (llama-imatrix's view of the model)."""
    from qwythos.quantize.imatrix_file import ImatrixData, read_imatrix, write_imatrix

    d = read_imatrix(src)
    keep = [n for n in d.sums if not n.startswith(f"blk.{n_layer}.")]
    write_imatrix(
        out,
        ImatrixData(
            {n: d.sums[n] for n in keep},
            {n: d.counts[n] for n in keep},
            d.datasets,
            d.chunk_count,
            d.chunk_size,
        ),
    )
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", type=Path, default=REPO / "data" / "tiny-wide", help="HF folder with a head")
    ap.add_argument("--types", default=",".join(TYPES))
    ap.add_argument("--calib", choices=("mixed", "code"), default="mixed")
    ap.add_argument("--eval-ctx", type=int, default=256)
    ap.add_argument("--eval-windows", type=int, default=16)
    ap.add_argument("--accept-tokens", type=int, default=1024)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--work", type=Path, default=None)
    args = ap.parse_args()

    from qwythos.convert.text import convert
    from qwythos.core.gguf.ftypes import parse_ftype
    from qwythos.core.gguf.view import read_view
    from qwythos.core.llamacpp.log import llama_log_to
    from qwythos.mtp.acceptance import measure_acceptance
    from qwythos.quantize.evaluate import evaluate
    from qwythos.quantize.imatrix import CALIBRATION, DEFAULT_CTX
    from qwythos.quantize.pipeline import quantize

    sys.path.insert(0, str(REPO / "bench"))
    from bench_mtp_type import held_out_stdlib

    work = args.work or Path(tempfile.mkdtemp(prefix="qwythos-imatrix-quality-"))
    work.mkdir(parents=True, exist_ok=True)
    model, pad_note = loadable(args.model, work)
    src = work / f"{args.model.name}-BF16.gguf"
    if not src.is_file():
        convert(model, src)
    view = read_view(src)
    n_layer = view.n_trunk or 0
    if args.calib == "mixed":
        calib = CALIBRATION
    else:
        calib = work / "calib-code.txt"
        calib.write_text(train_split_code(200_000))
    held = held_out_stdlib(400_000)

    t0 = time.perf_counter()
    types = args.types.split(",")
    files: dict[tuple[str, str], Path] = {}
    first = quantize(  # --imatrix auto: computed here once, reused by the quantizations after it
        src,
        work / f"{types[0]}-imatrix-{args.calib}",
        types=types[0],
        imatrix="auto",
        calib=calib,
        mtp_type="same",
        threads=args.threads,
    )
    files[(types[0], "imatrix")] = Path(first.outputs[0].path)
    im = first.imatrix or {}
    im_file = Path(im["file"])
    print(
        f"imatrix ({'computed' if im.get('computed') else 'reused'}): {im['chunks']} chunks of {calib.name}, "
        f"head covered: {im['covers_head']}, {time.perf_counter() - t0:.1f} s (with the first quantization)",
        file=sys.stderr,
        flush=True,
    )
    trunk_im = without_head(im_file, work / f"{args.calib}-nohead.imatrix.gguf", n_layer)

    for ft in types:
        for label, imf in (("none", None), ("imatrix", "auto"), ("trunk-only", trunk_im)):
            if (ft, label) in files:
                continue
            if imf is None and parse_ftype(ft).needs_imatrix:
                files[(ft, label)] = blind(src, work / f"blind-{args.calib}", ft, args.threads)
                continue
            rep = quantize(
                src,
                work / f"{ft}-{label}-{args.calib}",
                types=ft,
                imatrix=imf,
                calib=calib if imf == "auto" else None,
                mtp_type="same",
                threads=args.threads,
            )
            files[(ft, label)] = Path(rep.outputs[0].path)
    with llama_log_to(None):
        scored = [k for k in files if k[1] != "trunk-only"]  # same trunk as "imatrix": same KLD
        ev = evaluate(
            src,
            [files[k] for k in scored],
            held,
            n_ctx=args.eval_ctx,
            max_windows=args.eval_windows,
            threads=args.threads,
            text_name="held-out stdlib files",
        )
        kld = {k: r for k, r in zip(scored, ev.rows, strict=True)}
        print(f"eval done, {time.perf_counter() - t0:.1f} s", file=sys.stderr, flush=True)
        acc = {
            k: measure_acceptance(p, text=held, depth=1, max_tokens=args.accept_tokens).rates[0]
            for k, p in files.items()
        }
        base_acc = measure_acceptance(src, text=held, depth=1, max_tokens=args.accept_tokens).rates[0]

    print(
        f"\n{args.model.name} (hidden {view.embedding_length}{', ' + pad_note if pad_note else ''}), "
        f"imatrix from {calib.name} ({im['chunks']} chunks of {DEFAULT_CTX} tokens), "
        f"scored on held-out stdlib files: {ev.n_tokens_scored} tokens (windows of {ev.n_ctx}), "
        f"BF16 PPL {ev.base_ppl:.3f}; depth-1 acceptance over {args.accept_tokens} positions, "
        f"BF16 {base_acc:.3f}; head type = trunk type (--mtp-type same)\n"
    )
    print(
        "| type | GiB | KLD, no imatrix | KLD, imatrix | KLD change | top-1, no imatrix | top-1, imatrix "
        "| d1 accept, no imatrix | d1, imatrix without head data | d1, imatrix with head data |"
    )
    print("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    worst = []
    for ft in args.types.split(","):
        a, b = kld[(ft, "none")], kld[(ft, "imatrix")]
        change = 100 * (b.mean_kld / a.mean_kld - 1) if a.mean_kld > 0 else float("nan")
        worst.append((ft, change))
        print(
            f"| {ft} | {b.gib * 1024:.2f} MiB | {a.mean_kld:.5f} | {b.mean_kld:.5f} | {change:+.1f}% "
            f"| {100 * a.top1_agreement:.2f}% | {100 * b.top1_agreement:.2f}% "
            f"| {acc[(ft, 'none')]:.3f} | {acc[(ft, 'trunk-only')]:.3f} | {acc[(ft, 'imatrix')]:.3f} |"
        )
    print("\n(an IQ type's head without head data gets q8_0: quantize never gives the head an IQ type blind)")
    q4 = dict(worst).get("Q4_K_M")
    raised = [ft for ft, c in worst if not np.isnan(c) and c > 0]
    print(
        f"\nQ4_K_M KLD change {q4:+.1f}% (target <= -5%); types whose KLD the imatrix raised: {raised or 'none'}"
        if q4 is not None
        else ""
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
