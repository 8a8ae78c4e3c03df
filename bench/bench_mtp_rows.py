"""Which way to feed the MTP context its catch-up rows: one batch, or the rows then x_n alone?

The draft chain needs x_n's hidden state from the MTP context. Two correct ways (issue 11):
  one call  - catch-up rows and (x_n, h_{n-1}) in one batch, hidden states unmasked (one row per
              input), the last row read (what Engine does);
  two calls - the catch-up rows first, then x_n as its own one-row batch (llama.cpp's C++ loop).
Both give the same drafts; this prints the draft time per step and tok/s of each (median of
--reps), greedy, on the trained tiny model (F32) or --model.

    nice -n 10 python bench/bench_mtp_rows.py --reps 5
    nice -n 10 python bench/bench_mtp_rows.py --model X.gguf --threads 2 --max-tokens 32 --reps 3
"""

from __future__ import annotations

import statistics

from engine_setup import bench_args, model_file

PROMPTS = (
    "def fibonacci(n):\n",
    "import numpy as np\n\ndef normalize(",
    "class Point:\n    def __init__(self",
)


def two_calls_engine():
    """An Engine that feeds the MTP context its catch-up rows first, then x_n as its own batch."""
    import numpy as np

    from qwythos.runtime.speculative import Engine

    class TwoCalls(Engine):
        def _draft(self, x, n, n_draft, history, sp, rng):
            if n_draft > 0 and self.mtp is not None and self._cu_tokens:
                rows = len(self._cu_tokens)
                self.mtp.decode_rows(self._cu_tokens, n - rows, np.stack(self._cu_hidden))
                self._cu_tokens, self._cu_hidden = [], []
            return super()._draft(x, n, n_draft, history, sp, rng)  # x_n alone now

    return TwoCalls


def measure(model, draft: int, split: bool, max_tokens: int, threads: int) -> tuple[float, float, list]:
    """(tok/s, ms of drafting per step, tokens) over PROMPTS."""
    from qwythos.runtime.draft_plan import draft_plan
    from qwythos.runtime.speculative import Engine

    kind = two_calls_engine() if split else Engine
    with kind(model, draft_plan(model, draft, threads=threads), n_ctx=1024, threads=threads) as eng:
        eng.generate(model.tokenize(PROMPTS[0]), max_tokens=4)  # warm-up
        gens = [eng.generate(model.tokenize(p), max_tokens=max_tokens) for p in PROMPTS]
    n = sum(g.stats.gen_tokens for g in gens)
    secs = sum(g.stats.gen_seconds for g in gens)
    steps = sum(g.stats.target_passes for g in gens)
    return n / secs, 1e3 * sum(g.stats.t_draft for g in gens) / steps, [g.tokens for g in gens]


def main() -> None:
    from qwythos.core.llamacpp.handles import load_model

    ap = bench_args(__doc__, max_tokens=64, reps=5)
    ap.add_argument("--drafts", default="2,4")
    a = ap.parse_args()
    with model_file(a.model) as path, load_model(path) as m:
        print(f"{path.name}, {a.threads} threads, median of {a.reps}")
        print(f"{'draft':>5} {'variant':>9} {'tok/s':>8} {'draft ms/step':>13} {'same drafts':>11}")
        for d in (int(x) for x in a.drafts.split(",")):
            res = {}
            for _ in range(a.reps):
                for split in (False, True):  # interleaved: machine noise hits both alike
                    res.setdefault(split, []).append(measure(m, d, split, a.max_tokens, a.threads))
            same = res[False][0][2] == res[True][0][2]
            for split, runs in res.items():
                tps = statistics.median(r[0] for r in runs)
                ms = statistics.median(r[1] for r in runs)
                name = "two calls" if split else "one call"
                print(f"{d:5d} {name:>9} {tps:8.1f} {ms:13.3f} {'yes' if same else 'NO':>11}")


if __name__ == "__main__":
    main()
