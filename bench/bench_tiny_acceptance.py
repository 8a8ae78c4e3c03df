"""Acceptance per depth of the trained tiny model's own MTP head, on two prompt sets.

Issue 11's target: at draft 2 (F32, greedy, repeat penalty 1.0), depth-2 acceptance >= 0.5 on
`qwythos bench`'s prompts and on other code prompts (`runtime.speed.CODE_PROMPTS`, the speculative
tests' prompts). Prints, per set and draft length, acceptance at each depth (drafts accepted /
drafts made at that depth, given the depths before it passed), tokens per target pass, and whether
every output equals plain decoding: `qwythos bench`'s own measurement (`speed.bench_model`),
without auto and without storing costs.

    nice -n 10 python bench/bench_tiny_acceptance.py                  # seconds
    nice -n 10 python bench/bench_tiny_acceptance.py --drafts 2,4 --max-tokens 300
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--drafts", default="2")
    ap.add_argument("--max-tokens", type=int, default=300)
    ap.add_argument("--threads", type=int, default=1)
    a = ap.parse_args()
    from qwythos.convert.text import convert
    from qwythos.core.llamacpp.handles import load_model
    from qwythos.runtime.speed import BENCH_PROMPTS, CODE_PROMPTS, bench_model

    drafts = [int(x) for x in a.drafts.split(",")]
    with tempfile.TemporaryDirectory(prefix="qwythos-tiny-acc-") as tmp:
        path = convert(REPO / "data" / "tiny-trained", Path(tmp) / "tiny-F32.gguf", outtype="f32").output
        with load_model(path) as m:
            print(f"trained tiny model, F32, greedy, repeat penalty 1.0, {a.max_tokens} tokens per prompt")
            print(f"{'prompts':>16} {'draft':>5} {'acceptance per depth':>28} {'tokens/pass':>11} same")
            for name, prompts in (("bench's (4)", BENCH_PROMPTS), ("other code (8)", CODE_PROMPTS)):
                rep = bench_model(
                    m, drafts=drafts, prompts=prompts, max_tokens=a.max_tokens, threads=a.threads, auto=False
                )
                for r in rep.rows:
                    if r.draft == 0:
                        continue
                    acc = " ".join(f"{x:.3f}" for x in r.acceptance_per_depth)
                    print(f"{name:>16} {r.draft:>5} {acc:>28} {r.tokens_per_pass:11.2f} {r.same_output}")


if __name__ == "__main__":
    main()
