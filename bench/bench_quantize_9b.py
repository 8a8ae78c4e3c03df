"""Plan vs real at the exact Qwythos-9B shapes: a random-weight BF16 GGUF, the five types, sizes.

Writes a ~17 GB random BF16 GGUF of the 9B shapes (trunk only, like the published quants; pass
--mtp to include the nextn block), quantizes it to each type with llama.cpp's quantizer, measures
the file, deletes it, and prints plan vs real (target: within 0.1%) next to the published sizes.

    nice -n 10 python bench/bench_quantize_9b.py --threads 2 [--config data/qwythos-9b-config.json]
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import time
from pathlib import Path

import numpy as np

from qwythos.core.model import qwen35
from qwythos.quantize.pipeline import quantize
from qwythos.quantize.plan import _config_checkpoint, plan

PUBLISHED_GIB = {"Q4_K_M": 5.24, "Q5_K_M": 6.02, "Q6_K": 6.85, "Q8_0": 8.87, "BF16": 16.69}
REPO = Path(__file__).resolve().parents[1]


def write_random_gguf(config_path: Path, out: Path, mtp: bool) -> Path:
    from gguf import GGMLQuantizationType, GGUFValueType

    from qwythos.core.gguf.file import KV, write_gguf

    sys.path.insert(0, str(REPO / "tests"))
    from test_quantize import _byte_tokens

    config = json.loads(config_path.read_text())
    cfg = qwen35.text_config_from(config)
    plans = qwen35.plan_tensors(_config_checkpoint(config, cfg, mtp, config_path), cfg, include_mtp=mtp)
    rng = np.random.default_rng(0)
    pool = (rng.standard_normal(2**22).astype(np.float32) * 0.02).view(np.uint32) >> 16
    pool = pool.astype(np.uint16)
    for p in plans:

        def chunks(p=p):
            n = p.nbytes // (2 if p.ggml_type == GGMLQuantizationType.BF16 else 4)
            if p.name.endswith(".ssm_a"):  # -exp(A_log), A ~ U(0.5, 16) as trained models start: a
                # state that decays (+1 makes it grow without bound and trips a llama.cpp kernel,
                # README "A llama.cpp kernel fault")
                yield -np.random.default_rng(n).uniform(0.5, 16.0, n).astype(np.float32)
                return
            if p.ggml_type != GGMLQuantizationType.BF16:
                yield np.ones(n, np.float32)
                return
            done = 0
            while done < n:
                k = min(pool.size, n - done)
                yield pool[:k]
                done += k

        p.load = lambda p=p: b"".join(bytes(c) for c in chunks(p))
        p.chunks = chunks
        p.raw = None
    toks = _byte_tokens()
    toks += [f"<tok{i}>" for i in range(cfg.n_vocab - len(toks) - 1)] + ["<|endoftext|>"]
    S, A = GGUFValueType.STRING, GGUFValueType.ARRAY
    kvs = [
        KV("general.architecture", S, "qwen35"),
        KV("general.type", S, "model"),
        KV("general.name", S, "Random9B"),
        *qwen35.hparams_kv(cfg, n_nextn=1 if mtp else 0),
        KV("general.quantization_version", GGUFValueType.UINT32, 2),
        KV("tokenizer.ggml.model", S, "gpt2"),
        KV("tokenizer.ggml.pre", S, "qwen35"),
        KV("tokenizer.ggml.tokens", A, toks, S),
        KV("tokenizer.ggml.token_type", A, [1] * (len(toks) - 1) + [3], GGUFValueType.INT32),
        KV("tokenizer.ggml.merges", A, ["Ġ t"], S),
        KV("tokenizer.ggml.eos_token_id", GGUFValueType.UINT32, len(toks) - 1),
    ]
    out.parent.mkdir(parents=True, exist_ok=True)
    write_gguf(out, "qwen35", kvs, plans)
    return out


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--config", type=Path, default=REPO / "data" / "qwythos-9b-config.json")
    ap.add_argument("--work", type=Path, default=Path("/tmp/qwythos-bench-9b"))
    ap.add_argument("--types", default="Q4_K_M,Q5_K_M,Q6_K,Q8_0,BF16")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--mtp", action="store_true", help="include the MTP block (bf16)")
    a = ap.parse_args()
    a.work.mkdir(parents=True, exist_ok=True)
    src = a.work / "Random9B-BF16.gguf"
    t0 = time.time()
    if not src.is_file():
        write_random_gguf(a.config, src, a.mtp)
    print(f"source {src}: {src.stat().st_size / 2**30:.3f} GiB, written in {time.time() - t0:.0f} s")
    planned = {t.type: t for t in plan(a.config, a.types.split(","), mtp=a.mtp).types}
    planned_src = {t.type: t.file_bytes for t in plan(src, a.types.split(",")).types}
    print(
        f"{'type':8} {'plan(config) GiB':>16} {'plan(gguf) B':>14} {'real B':>14} {'diff %':>8} {'published':>9} {'time s':>7}"
    )
    out = a.work / "out"
    for t in a.types.split(","):
        t1 = time.time()
        rep = quantize(src, out, types=[t], threads=a.threads, verify=False)
        o = rep.outputs[0]
        real = o.bytes
        diff = 100 * (planned[t].file_bytes / real - 1)
        print(
            f"{t:8} {planned[t].file_gib:16.3f} {planned_src[t]:14d} {real:14d} {diff:8.3f} "
            f"{PUBLISHED_GIB.get(t, float('nan')):9.2f} {time.time() - t1:7.0f}",
            flush=True,
        )
        if Path(o.path).resolve() != src.resolve():
            Path(o.path).unlink()
    shutil.rmtree(out, ignore_errors=True)


if __name__ == "__main__":
    main()
