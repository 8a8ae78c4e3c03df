"""Plain decoding speed of one GGUF with the installed llama-cpp-python: tok/s, median of --reps.

Used to compare builds (run it with each venv's python: with and without the RPC backend) and
llama.cpp's repacked CPU weights against none (`--repack on|off`; `narrow`: repacked but for the
suspect weights, load_model's first fallback; `auto` is what `load_model` decides, see
core/llamacpp/probe.py on the batched-logits check).

    python bench/bench_plain.py MODEL.gguf [--tokens 24] [--reps 3] [--threads 2] [--repack auto|on|off|narrow]
"""

from __future__ import annotations

import argparse
import statistics
from pathlib import Path


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("model", type=Path)
    ap.add_argument("--tokens", type=int, default=24)
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--repack", choices=("auto", "on", "off", "narrow"), default="auto")
    args = ap.parse_args()
    import llama_cpp

    from qwythos.core.llamacpp import probe, rpc
    from qwythos.core.llamacpp.handles import SUSPECT_WEIGHTS, load_model
    from qwythos.runtime.speculative import generate

    if args.repack != "auto":  # the cached verdict decides how load_model loads the file
        probe.batched_verdict = lambda path: (
            SUSPECT_WEIGHTS if args.repack == "narrow" else args.repack == "on"
        )
    with load_model(args.model, mtp=False) as m:
        toks = m.tokenize("The history of the printing press")
        generate(m, toks, max_tokens=4, draft=0, threads=args.threads, costs=None)  # warm-up
        tps = [
            generate(m, toks, max_tokens=args.tokens, draft=0, threads=args.threads, costs=None).stats.gen_tps
            for _ in range(args.reps)
        ]
        print(
            f"{args.model.name}: llama-cpp-python {llama_cpp.__version__} "
            f"({'with' if rpc.rpc_available() else 'without'} RPC), repacked weights "
            f"{('narrow' if m.plain_weights else 'on') if m.repacked else 'off'}, {args.threads} threads: plain {statistics.median(tps):.2f} tok/s "
            f"median of {args.reps} ({' '.join(f'{x:.2f}' for x in tps)})"
        )


if __name__ == "__main__":
    main()
