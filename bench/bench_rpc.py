"""llama.cpp RPC over the loopback: a model split between local layers and a `qwythos rpc-server`.

Starts one worker (`qwythos rpc-server`, a child process) on 127.0.0.1, runs the model all-local,
then with --layers of its blocks on the worker (core/llamacpp/handles.load_model(rpc=..., n_gpu_layers=...)),
MTP drafting off and on; prints whether greedy output is identical and the RPC overhead per
generated token (median of --reps runs each).

    nice -n 10 python bench/bench_rpc.py [--model X.gguf] [--layers 2] [--tokens 96] [--port 50052]

Without --model it converts the bundled trained tiny model (data/tiny-trained) to BF16.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
MODEL_DIR = REPO / "data" / "tiny-trained"
PROMPT = "The quick brown fox jumps over the lazy dog. Once upon a time"


def run(
    model_path: Path, tokens: int, threads: int, reps: int, **where
) -> dict[str, tuple[list[int], float, float]]:
    """{mode: (tokens, median s/token, spread s/token)} for plain and draft 2."""
    from qwythos.core.llamacpp.handles import load_model
    from qwythos.runtime.speculative import generate

    out = {}
    with load_model(model_path, **where) as model:
        prompt = model.tokenize(PROMPT)
        for draft in (0, 2):
            generate(model, prompt, max_tokens=8, draft=draft, threads=threads, costs=None)  # warm
            per, toks = [], None
            for _ in range(reps):
                t0 = time.perf_counter()
                g = generate(model, prompt, max_tokens=tokens, draft=draft, threads=threads, costs=None)
                per.append((time.perf_counter() - t0) / max(1, len(g.tokens)))
                toks = g.tokens
            out[f"draft {draft}"] = (toks, statistics.median(per), max(per) - min(per))
    return out


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", type=Path, help="a qwen35 GGUF (default: the bundled tiny model, BF16)")
    ap.add_argument("--layers", type=int, default=2, help="blocks offloaded to the worker")
    ap.add_argument("--tokens", type=int, default=96)
    ap.add_argument("--port", type=int, default=50052)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--reps", type=int, default=3)
    args = ap.parse_args()
    from qwythos.core.llamacpp import rpc

    if not rpc.rpc_available():
        print(f"this llama-cpp-python has no RPC backend: {rpc.REBUILD_HINT}", file=sys.stderr)
        raise SystemExit(2)
    gguf = args.model
    if gguf is None:
        from qwythos.convert.text import convert

        work = Path("/tmp/qwythos-bench-rpc")
        work.mkdir(exist_ok=True)
        gguf = work / "tiny-trained-BF16.gguf"
        if not gguf.is_file():
            convert(MODEL_DIR, gguf)
    local = run(gguf, args.tokens, args.threads, args.reps)
    ep = rpc.Endpoint("127.0.0.1", args.port)
    worker, info = rpc.spawn_worker(args.port, args.threads)
    try:
        print(f"worker {ep}: protocol {info.version}, {info.devices} device(s)")
        remote = run(gguf, args.tokens, args.threads, args.reps, rpc=[ep], n_gpu_layers=args.layers)
    finally:
        worker.terminate()
        worker.wait(timeout=20)
    print(f"{gguf.name}, {args.threads} thread(s) each side, {args.tokens} tokens, median of {args.reps}")
    for mode in local:
        (lt, ls, lsp), (rt, rs, rsp) = local[mode], remote[mode]
        print(
            f"{mode}: identical={lt == rt} ({len(lt)} tokens); local {1000 * ls:.2f} ms/token "
            f"(spread {1000 * lsp:.2f}), {args.layers} layer(s) over RPC {1000 * rs:.2f} ms/token "
            f"(spread {1000 * rsp:.2f}), overhead {1000 * (rs - ls):+.2f} ms/token"
        )


if __name__ == "__main__":
    main()
