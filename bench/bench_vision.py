"""Image encode time through libmtmd with our mmproj: the tiny fixture tower, and (shape only,
random weights) the exact Qwythos-9B / Qwen3.5-9B tower; plus the projector's size and conversion time.

    nice -n 10 python bench/bench_vision.py [--threads 2] [--skip-9b] [--dir /tmp/qwythos-bench-vision]

The 9B-shaped checkpoint has the real vision_config (27 blocks, width 1152, FFN 4304, 2304
position embeddings, merger to 4096) and a small text model of width 4096 (libmtmd needs a text
model whose width the projector matches): ~1 GB of BF16 safetensors, ~0.9 GB F16 mmproj.
Images are sized to multiples of 32 px so neither side resizes them.
"""

from __future__ import annotations

import argparse
import json
import shutil
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]


def _png(path: Path, w: int, h: int, seed: int) -> Path:
    from qwythos.testing.images import picture, write_png

    return write_png(path, picture(w, h, seed))


def encode_times(trunk: Path, mmproj: Path, images: list[Path], threads: int, reps: int) -> list[tuple]:
    from qwythos.core.llamacpp.handles import load_model
    from qwythos.runtime.vision import Vision

    out = []
    with load_model(trunk, mtp=False) as model, Vision(model, mmproj, threads=threads) as vis:
        for img in images:
            layout = vis.tokenize(vis.marker, [img])
            seg = layout.images[0]
            vis.encode(seg)  # warm-up (graph allocation)
            t = []
            for _ in range(reps):
                t0 = time.perf_counter()
                vis.encode(seg)
                t.append(time.perf_counter() - t0)
            out.append((img.stem, seg.nx, seg.ny, seg.n_tokens, float(np.median(t))))
            vis.free_layout(layout)
    return out


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--dir", type=Path, default=Path("/tmp/qwythos-bench-vision"))
    ap.add_argument("--skip-9b", action="store_true")
    ap.add_argument("--keep", action="store_true")
    a = ap.parse_args()

    from qwythos.convert.mmproj import convert_mmproj, projector_file_bytes
    from qwythos.convert.text import convert
    from qwythos.testing import tiny

    a.dir.mkdir(parents=True, exist_ok=True)
    try:
        src = tiny.build_tiny_checkpoint(a.dir / "tiny", variant="qwythos")
        trunk = convert(src, a.dir / "tiny-trunk.gguf", mtp=False, force=True).output
        proj = convert_mmproj(src, a.dir / "mmproj-tiny-F16.gguf", force=True).output
        imgs = [_png(a.dir / f"img-{w}x{h}.png", w, h, 0) for w, h in ((128, 96), (448, 448), (1024, 768))]
        print("tiny fixture tower (1 block, width 64), F16 mmproj:")
        for name, nx, ny, n, s in encode_times(trunk, proj, imgs, a.threads, 5):
            print(f"  {name}: {nx}x{ny} = {n} tokens, encode {s * 1000:.1f} ms")
        if a.skip_9b:
            return
        cfg9 = json.loads((ROOT / "data" / "qwythos-9b-config.json").read_text())
        cfg = tiny.tiny_config("qwythos")
        cfg["text_config"]["hidden_size"] = 4096
        cfg["vision_config"] = cfg9["vision_config"]
        print(f"planned 9B projector (F16): {projector_file_bytes(cfg9, 'f16'):,} B")
        src9 = tiny.build_checkpoint_from_config(a.dir / "tower-9b", cfg, include_mtp=False)
        trunk9 = convert(src9, a.dir / "text-4096.gguf", mtp=False, force=True).output
        t0 = time.perf_counter()
        res = convert_mmproj(src9, a.dir / "mmproj-9b-F16.gguf", force=True)
        print(
            f"9B-shaped tower: mmproj F16 {res.bytes_written:,} B written in {time.perf_counter() - t0:.1f} s"
        )
        imgs9 = [_png(a.dir / f"img9-{w}x{h}.png", w, h, 1) for w, h in ((256, 256), (448, 448))]
        for name, nx, ny, n, s in encode_times(trunk9, res.output, imgs9, a.threads, 2):
            print(f"  {name}: {nx}x{ny} = {n} tokens, encode {s:.2f} s ({a.threads} threads)")
    finally:
        if not a.keep:
            shutil.rmtree(a.dir, ignore_errors=True)


if __name__ == "__main__":
    main()
