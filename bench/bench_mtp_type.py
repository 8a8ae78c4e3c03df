"""Which type should the MTP head get? Trunk at Q4_K_M, head at bf16 / q8_0 / q6_K / q5_0 / q4_0.

For each head type: quantize the trained tiny model (data/tiny-trained, trunk + a working MTP head)
to Q4_K_M with `--mtp-type T`, measure the head's draft acceptance at depths 1..3 against the
trunk's greedy tokens (`qwythos.mtp.acceptance.measure_acceptance`, teacher-forced over the text),
and count the bytes one draft step reads: the MTP block (blk.N.*) plus the shared output matrix
(the head has no lm_head of its own). The tiny model is 128 wide: llama.cpp falls back to a
32-block type where a row is not a multiple of 256 (q6_K -> q8_0, except nextn.eh_proj, 256 wide),
the "head types" column shows what each tensor really got.

    nice -n 10 python bench/bench_mtp_type.py                      # calibration text, table to stdout
    nice -n 10 python bench/bench_mtp_type.py --notes /work/notes/quantize_quality.md
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
HEAD_TYPES = ("bf16", "q8_0", "q6_K", "q5_0", "q4_0")
SECTION = "## MTP head type (bench/bench_mtp_type.py)"


def head_bytes(path: Path) -> tuple[int, int, str]:
    """(bytes of the MTP block, bytes of output.weight, the block's matrix types)."""
    from qwythos.core.gguf.file import read_header
    from qwythos.core.gguf.ftypes import ggml_type_by_id
    from qwythos.core.gguf.view import GGUFView

    hdr = read_header(path)
    view = GGUFView(hdr)
    n_nextn, n_layer = view.n_nextn, view.n_trunk or 0
    prefix = tuple(f"blk.{n_layer + k}." for k in range(n_nextn))
    head = [t for t in hdr.tensors if t.name.startswith(prefix)]
    out = next((t for t in hdr.tensors if t.name == "output.weight"), None)
    out = out or next(t for t in hdr.tensors if t.name == "token_embd.weight")
    kinds = sorted({ggml_type_by_id(t.ggml_type).name for t in head if len(t.ne) > 1})
    return sum(t.nbytes for t in head), out.nbytes, "/".join(kinds)


def held_out_stdlib(max_chars: int) -> str:
    """The training run's held-out stdlib files (crc32(name) % 10 == 0), as scripts/train_tiny.py splits."""
    import sysconfig
    import zlib

    lib = Path(sysconfig.get_paths()["stdlib"])
    files = sorted(p for p in lib.glob("*.py") if 2_000 < p.stat().st_size < 200_000)
    held = [p for p in files if zlib.crc32(p.name.encode()) % 10 == 0]
    text = "".join(p.read_text(encoding="utf-8", errors="replace") for p in held)
    return text[:max_chars]


def main() -> None:
    from qwythos.convert.text import convert
    from qwythos.core.llamacpp.log import llama_log_to
    from qwythos.mtp.acceptance import measure_acceptance
    from qwythos.quantize.pipeline import quantize

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument(
        "--model", type=Path, default=REPO / "data" / "tiny-trained", help="HF folder with a head"
    )
    ap.add_argument("--trunk-type", default="Q4_K_M")
    ap.add_argument("--head-types", default=",".join(HEAD_TYPES))
    ap.add_argument("--text", choices=("calibration", "stdlib"), default="calibration")
    ap.add_argument("--max-tokens", type=int, default=4096, help="positions measured (text permitting)")
    ap.add_argument("--work", type=Path, default=None, help="folder for the GGUFs (default: a temp dir)")
    ap.add_argument("--notes", type=Path, default=None, help="also write the table into this markdown file")
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()

    work = args.work or Path(tempfile.mkdtemp(prefix="qwythos-mtp-type-"))
    work.mkdir(parents=True, exist_ok=True)
    src = work / "tiny-trained-BF16.gguf"
    if not src.is_file():
        convert(args.model, src)
    if args.text == "calibration":
        text = (REPO / "data" / "calibration.txt").read_text(encoding="utf-8")
        text_name = "data/calibration.txt"
    else:
        text = held_out_stdlib(4 * args.max_tokens)
        text_name = "held-out stdlib files"

    rows = []
    for label, trunk, head in [("BF16", "BF16", "bf16")] + [
        (args.trunk_type, args.trunk_type, h) for h in args.head_types.split(",")
    ]:
        t0 = time.perf_counter()
        rep = quantize(
            src, work / f"{trunk}-{head}", types=trunk, mtp_type=head, threads=args.threads, verify=False
        )
        path = Path(rep.outputs[0].path)
        hb, ob, kinds = head_bytes(path)
        with llama_log_to(None):  # llama.cpp's load log is long; keep the table readable
            acc = measure_acceptance(path, text=text, depth=3, max_tokens=args.max_tokens)
        rows.append((label, head, kinds, hb, ob, acc))
        print(
            f"{label:7} head {head:5} ({kinds}): {hb} B + output {ob} B, rates "
            + " ".join(f"{r:.4f}" for r in acc.rates)
            + f", E[accepted] {acc.expected_accepted:.3f}  ({time.perf_counter() - t0:.1f} s)",
            file=sys.stderr,
            flush=True,
        )

    base = next(r for r in rows if r[0] != "BF16" and r[1] == "bf16")
    lines = [
        SECTION,
        "",
        f"Trained tiny model ({args.model.name}, hidden 128), trunk {args.trunk_type}; acceptance = the head's "
        f"teacher-forced chained drafts equal the trunk's greedy token (measure_acceptance, depth 3) over "
        f"{text_name}, {rows[0][5].total[0]} positions. Depth k is conditional on depths < k accepted. "
        "Bytes per draft = MTP block + output.weight (shared with the trunk, read by every draft).",
        "",
        "| trunk | --mtp-type | head tensors got | head bytes | + output | depth-1 | depth-2 | depth-3 "
        "| E[accepted]/step | d1 vs bf16 (pts) |",
        "|---|---|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for label, head, kinds, hb, ob, acc in rows:
        r = acc.rates
        d1 = 100 * (r[0] - base[5].rates[0])
        cells = [
            label,
            head,
            kinds,
            f"{hb:,}",
            f"{hb + ob:,}",
            *(f"{100 * x:.2f}% ({a}/{t})" for x, a, t in zip(r, acc.accepted, acc.total, strict=True)),
            f"{acc.expected_accepted:.3f}",
            "-" if label == "BF16" else f"{d1:+.2f}",
        ]
        lines.append("| " + " | ".join(cells) + " |")
    table = "\n".join(lines) + "\n"
    print(table)
    if args.notes is not None:
        write_section(args.notes, table)
        print(f"written to {args.notes}", file=sys.stderr)


def write_section(path: Path, table: str) -> None:
    """Replace this bench's section of the notes file (up to the next '## ' heading), or append it."""
    text = path.read_text() if path.is_file() else ""
    if SECTION in text:
        head, rest = text.split(SECTION, 1)
        nxt = rest.find("\n## ")
        tail = rest[nxt + 1 :] if nxt >= 0 else ""
        text = head + table + ("\n" + tail if tail else "")
    else:
        text = text.rstrip("\n") + ("\n\n" if text else "") + table
    path.write_text(text)


if __name__ == "__main__":
    main()
