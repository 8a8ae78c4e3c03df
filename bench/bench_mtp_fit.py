"""What `qwythos mtp fit` costs at the exact Qwythos-9B shapes (random weights), and extrapolated.

Writes a random-weight GGUF of the config's shapes with its MTP head (BF16; `--quant Q4_K_M`
quantizes it first, as users run it), then measures the two halves of a fit with the real code:

- collection: llama.cpp runs the trunk over `--tokens` tokens (mtp/fit_data.collect): tok/s;
- training: `--steps` steps of mtp/fit_train at `--batch` x `--seq` with the chained depths: s/step.

It prints both, the process's peak memory (RSS), and the extrapolation to a useful fit (`--target`
tokens, default 200k, `--epochs` passes) on this CPU and, from FLOPs, on one GPU (`--gpu-tflops`
dense bf16, `--mfu` assumed utilisation). Sanity-check at a small size with the tiny config:

    nice python bench/bench_mtp_fit.py --config data/tiny-trained/config.json --tokens 1024 --steps 3
    nice -n 10 python bench/bench_mtp_fit.py --threads 2 --quant Q4_K_M --tokens 256 --seq 256 --steps 3
"""

from __future__ import annotations

import argparse
import json
import resource
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "bench"))


def peak_rss_gib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20


def head_params(d) -> int:
    h, hd = d.n_embd, d.head_dim
    return 2 * h * h + d.n_head * hd * 2 * h + 2 * d.n_head_kv * hd * h + h * d.n_head * hd + 3 * h * d.n_ff


def trunk_flops_per_token(hdr) -> float:
    """2 x the trunk's matrix parameters (embedding lookups excluded, output matrix included)."""
    from qwythos.core.model.structure import n_trunk_layers, split_block_name

    il = n_trunk_layers(hdr)
    n = 0
    for t in hdr.tensors:
        sb = split_block_name(t.name)
        if (sb and sb[0] >= il) or t.name == "token_embd.weight" or len(t.shape) < 2:
            continue
        n += int(np.prod(t.shape))
    return 2.0 * n


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--config", type=Path, default=REPO / "data" / "qwythos-9b-config.json")
    ap.add_argument("--quant", default=None, help="quantize the random GGUF first (e.g. Q4_K_M)")
    ap.add_argument("--tokens", type=int, default=256, help="tokens to collect (measured)")
    ap.add_argument("--seq", type=int, default=256)
    ap.add_argument("--batch", type=int, default=4)
    ap.add_argument("--steps", type=int, default=3, help="training steps (measured after one warm-up)")
    ap.add_argument("--depths", type=int, default=3)
    ap.add_argument("--negatives", type=int, default=1024)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--target", type=int, default=200_000, help="tokens of a useful fit")
    ap.add_argument("--epochs", type=float, default=2.0, help="passes over the target tokens")
    ap.add_argument(
        "--gpu-tflops", type=float, default=989.0, help="dense bf16 TFLOPS of one GPU (H100/H200)"
    )
    ap.add_argument("--mfu", type=float, default=0.35, help="assumed utilisation on the GPU")
    ap.add_argument("--work", type=Path, default=None, help="scratch folder (default: a temp folder)")
    ap.add_argument(
        "--model", type=Path, default=None, help="an existing 9B-shaped GGUF with a head (skip writing one)"
    )
    args = ap.parse_args()

    import torch
    from bench_quantize_9b import write_random_gguf

    from qwythos.core.gguf.file import read_header
    from qwythos.core.model.structure import dims_from_header
    from qwythos.mtp.fit import build_head
    from qwythos.mtp.fit_data import collect
    from qwythos.mtp.fit_head import TRAINED
    from qwythos.mtp.fit_train import Trainer, TrainSettings
    from qwythos.mtp.sources import dequantize, open_gguf_head

    torch.set_num_threads(args.threads)
    work = args.work or Path(tempfile.mkdtemp(prefix="bench-mtp-fit-"))
    work.mkdir(parents=True, exist_ok=True)
    out: dict = {"config": str(args.config), "threads": args.threads}
    try:
        t = time.perf_counter()
        src = args.model or write_random_gguf(args.config, work / "random-BF16.gguf", mtp=True)
        out["write_s"] = round(time.perf_counter() - t, 1)
        model = src
        if args.quant and not args.model:
            from qwythos.quantize.pipeline import quantize

            t = time.perf_counter()
            rep = quantize(src, work, types=args.quant, threads=args.threads, mtp_type="q8_0")
            model = Path(rep.outputs[0].path)
            out["quantize_s"] = round(time.perf_counter() - t, 1)
            src.unlink()
        hdr = read_header(model)
        dims = dims_from_header(hdr)
        out["model"] = {
            "file": model.name,
            "GiB": round(model.stat().st_size / 2**30, 2),
            "n_embd": dims.n_embd,
            "n_vocab": dims.n_vocab,
            "head_params": head_params(dims),
        }

        # collection: random token ids (the random GGUF's vocabulary has no real tokenizer)
        rng = np.random.default_rng(0)
        n_seq = max(1, args.tokens // args.seq)
        ids = rng.integers(256, dims.n_vocab - 1, size=(n_seq, args.seq), dtype=np.int32)
        t = time.perf_counter()
        store = collect(model, [], work / "collect", seq=args.seq, token_ids=ids, threads=args.threads)
        coll_s = time.perf_counter() - t
        out["collect"] = {
            "tokens": int(ids.size),
            "seconds": round(coll_s, 2),
            "tok_s": round(ids.size / coll_s, 2),
            "MiB_per_1k_tokens": round(store.nbytes() / 2**20 / ids.size * 1000, 2),
            "peak_rss_GiB": round(peak_rss_gib(), 2),
        }

        # training: the model's own (random) head, real Trainer steps
        head = open_gguf_head(model)
        tensors = {x.name: dequantize(x) for x in head.tensors if x.name in TRAINED}
        mtp, vocab = build_head(hdr, tensors, "cpu")
        del tensors
        s = TrainSettings(steps=args.steps, batch=args.batch, depths=args.depths, negatives=args.negatives)
        tr = Trainer(mtp, vocab, store, s, "cpu")
        opt = torch.optim.AdamW(mtp.parameters(), lr=1e-4)
        times = []
        for step in range(args.steps + 1):
            idx = rng.choice(store.n_seq, size=min(args.batch, store.n_seq), replace=False)
            t = time.perf_counter()
            loss = tr.loss(store.sequences(np.sort(idx)))
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            if step:  # the first step allocates the optimizer state
                times.append(time.perf_counter() - t)
        step_s = float(np.median(times)) if times else float("nan")
        rows = min(args.batch, store.n_seq) * args.seq
        out["train"] = {
            "rows_per_step": rows,
            "s_per_step": round(step_s, 3),
            "steps_per_s": round(1 / step_s, 3),
            "train_tok_s": round(rows / step_s, 1),
            "candidates": "whole vocabulary"
            if tr.full
            else f"batch top-{store.spec.top_k} + {args.negatives} negatives",
            "peak_rss_GiB": round(peak_rss_gib(), 2),
        }

        # extrapolation
        target, epochs = args.target, args.epochs
        cpu_collect_h = target / (ids.size / coll_s) / 3600
        cpu_train_h = target * epochs / (rows / step_s) / 3600
        f_collect = trunk_flops_per_token(hdr)
        n_head = head_params(dims)
        cand = args.negatives + 8 * store.spec.top_k * rows**0.5  # rough size of the candidate set
        f_train_row = 3 * args.depths * (2 * n_head + 2 * dims.n_embd * (dims.n_vocab if tr.full else cand))
        gpu = args.gpu_tflops * 1e12 * args.mfu
        out["extrapolated"] = {
            "target_tokens": target,
            "epochs": epochs,
            "cpu_collect_h": round(cpu_collect_h, 2),
            "cpu_train_h": round(cpu_train_h, 2),
            "collect_GFLOP_per_token": round(f_collect / 1e9, 2),
            "train_GFLOP_per_token": round(f_train_row / 1e9, 2),
            "gpu_collect_min": round(target * f_collect / gpu / 60, 2),
            "gpu_train_min": round(target * epochs * f_train_row / gpu / 60, 2),
            "gpu_assumption": f"{args.gpu_tflops:g} TFLOPS x {args.mfu:g} utilisation",
            "disk_GiB": round(store.nbytes() / ids.size * target / 2**30, 2),
        }
        print(json.dumps(out, indent=2))
    finally:
        if args.work is None:
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
