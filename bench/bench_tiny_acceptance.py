"""Acceptance per depth of the trained tiny model's own MTP head, on two prompt sets.

Issue 11's target: at draft 2 (F32, greedy, repeat penalty 1.0), depth-2 acceptance >= 0.5 on
`qwythos bench`'s prompts and on other code prompts (the speculative tests' prompts). Prints, per
set and draft length, acceptance at each depth (drafts accepted / drafts made at that depth,
given the depths before it passed), tokens per target pass, and whether every output equals plain
decoding.

    nice -n 10 python bench/bench_tiny_acceptance.py                  # seconds
    nice -n 10 python bench/bench_tiny_acceptance.py --drafts 2,4 --max-tokens 300
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
CODE_PROMPTS = (  # tests/test_speculative.py's prompts
    "def main():\n",
    "import os\nimport sys\n",
    "class Foo:\n    def __init__(self",
    "for i in range(10):\n    print(",
    "# Copyright",
    "return self.",
    "x = [1, 2, 3]\n",
    "if __name__ == '__main__':",
)


def measure(model, prompts, draft: int, max_tokens: int, threads: int) -> dict:
    from qwythos.runtime.sampling import SamplingParams
    from qwythos.runtime.speculative import Engine

    sp = SamplingParams(temperature=0.0, repeat_penalty=1.0)
    made = [0] * draft
    hit = [0] * draft
    passes = tokens = 0
    same = True
    with (
        Engine(model, n_ctx=1024, draft=0, threads=threads) as plain,
        Engine(model, n_ctx=1024, draft=draft, threads=threads) as eng,
    ):
        for p in prompts:
            toks = model.tokenize(p)
            ref = plain.generate(toks, max_tokens=max_tokens, sampling=sp)
            g = eng.generate(toks, max_tokens=max_tokens, sampling=sp)
            same &= g.tokens == ref.tokens
            for j in range(draft):
                made[j] += g.stats.drafted_per_depth[j]
                hit[j] += g.stats.accepted_per_depth[j]
            passes += g.stats.target_passes
            tokens += len(g.tokens)
    return {
        "acceptance": [h / m if m else 0.0 for h, m in zip(hit, made, strict=True)],
        "tokens_per_pass": tokens / max(1, passes),
        "same": same,
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--drafts", default="2")
    ap.add_argument("--max-tokens", type=int, default=300)
    ap.add_argument("--threads", type=int, default=1)
    a = ap.parse_args()
    from qwythos.convert.text import convert
    from qwythos.core.llama import load_model
    from qwythos.runtime.speed import BENCH_PROMPTS

    with tempfile.TemporaryDirectory(prefix="qwythos-tiny-acc-") as tmp:
        path = convert(REPO / "data" / "tiny-trained", Path(tmp) / "tiny-F32.gguf", outtype="f32").output
        with load_model(path) as m:
            print(f"trained tiny model, F32, greedy, repeat penalty 1.0, {a.max_tokens} tokens per prompt")
            print(f"{'prompts':>16} {'draft':>5} {'acceptance per depth':>28} {'tokens/pass':>11} same")
            for name, prompts in (("bench's (4)", BENCH_PROMPTS), ("other code (8)", CODE_PROMPTS)):
                for n in (int(x) for x in a.drafts.split(",")):
                    r = measure(m, prompts, n, a.max_tokens, a.threads)
                    acc = " ".join(f"{x:.3f}" for x in r["acceptance"])
                    print(f"{name:>16} {n:>5} {acc:>28} {r['tokens_per_pass']:11.2f} {r['same']}", flush=True)


if __name__ == "__main__":
    main()
