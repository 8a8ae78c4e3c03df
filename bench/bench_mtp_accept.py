"""Controlled-acceptance MTP benchmark: tok/s against draft length at a chosen acceptance rate a.

Random weights accept nothing, so on a 9B-shaped random file a normal bench only shows what
drafting costs. Here a bench-only drafter runs the real MTP head (its cost is paid: catch-up rows,
the draft chain) and then replaces each proposed token by the known greedy continuation with
probability a (a wrong token otherwise). The target verifies as usual, so the output stays the
greedy output and acceptance per depth is ~a (conditional on the previous depth).

For a in --rates and N in 0 (plain, the file loaded with its head), --drafts, auto (starting
from costs measured at this a, as after `qwythos bench`) and auto-cold (no cached costs), and
`no-mtp` (the same file loaded a second time without its MTP layer, what a user would otherwise
run, `qwythos run --no-mtp`): generated tok/s as the median of --reps runs, with the spread
(max-min)/median, acceptance and auto's choice. The modes take turns within each rep, and the
paired columns compare runs of the same rep (this machine's speed drifts by 10-30% over minutes):
"x no-mtp" is the median of per-rep ratios to `no-mtp` (the speed-up a user sees), "x plain" the
same against plain with the head loaded, "vs best" (auto rows) against the best fixed N.
With --real the trained tiny model also runs with its own head (a = what the head earns); with
--cpp BIN llama.cpp's C++ loop (llama-speculative-simple --spec-type draft-mtp) runs each fixed N
on the same file (its own head, no control of a), median of --reps.

    nice -n 10 python bench/bench_mtp_accept.py --tiny --reps 3                   # seconds
    nice -n 10 python bench/bench_mtp_accept.py --model X.gguf --threads 2 --max-tokens 48
    # the 9B shapes (random weights, Q4_K_M, q8_0 head; built once into --work, ~17 GB temporarily):
    nice -n 10 python bench/bench_mtp_accept.py --build-9b --threads 2 --max-tokens 48 --reps 3

Targets (issue 11): auto >= 0.97x plain at a = 0 and within 5% of the best fixed N at every a;
(issue 27) speed-ups against `no-mtp`.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "bench"))


def controlled_engine(model, reference: list[int], rate: float, seed: int, plan, **kw):
    """An Engine whose drafts are the real head's work, then the reference token with prob `rate`."""
    from qwythos.runtime.speculative import Engine

    class Controlled(Engine):
        def _draft(self, x, n, n_draft, history, sp, rng):
            drafts, qs = super()._draft(x, n, n_draft, history, sp, rng)
            out = []
            for j in range(n_draft):  # the head may have stopped early (EOG): still propose n_draft
                i = n + 1 + j
                right = reference[i] if i < len(reference) else 0
                out.append(right if self._ctl.random() < rate else (right + 1) % model.n_vocab)
            return out, None

    eng = Controlled(model, plan, **kw)
    eng._ctl = np.random.default_rng(seed)
    return eng


def _one(model, toks, reference, mode, rate, max_tokens, threads, costs, seed, real=False):
    """One warm generation of `mode` (0, N, "auto", "auto-cold") -> its numbers."""
    from qwythos.runtime.draft_plan import draft_plan
    from qwythos.runtime.speculative import Engine

    draft = "auto" if str(mode).startswith("auto") else int(mode)
    plan = draft_plan(model, draft, threads=threads, costs=costs)
    kw = dict(n_ctx=len(toks) + max_tokens + 16, threads=threads)
    eng = (
        Engine(model, plan, **kw)
        if real or draft == 0
        else controlled_engine(model, reference, rate, seed, plan, **kw)
    )
    with eng:
        eng.generate(toks, max_tokens=4)  # warm-up: graph allocation, first touch
        plan.restart()  # the warm-up must not teach auto anything
        g = eng.generate(toks, max_tokens=max_tokens)
    s = g.stats
    return {
        "tps": s.gen_tps,
        "tokens": g.tokens,
        "acceptance": s.acceptance_per_depth,
        "steps_per_draft": s.steps_per_draft,
        "t_verify": s.t_verify,
        "t_draft": s.t_draft,
        "final": (s.auto or {}).get("final_choice"),
    }


def _costs(rows: dict, model_max: int):
    """Costs as `qwythos bench` derives them, from the fixed-N runs at one rate."""
    from qwythos.core.drafting.costs import DraftCosts

    verify = {}
    head_t = head_n = 0.0
    acc = []
    for n, runs in rows.items():
        r = runs[0]
        steps = sum(r["steps_per_draft"])
        verify[n + 1] = r["t_verify"] / max(1, steps)
        if n:
            head_t += r["t_draft"]
            head_n += sum(k * c for k, c in enumerate(r["steps_per_draft"]))
            if n == max(rows):
                acc = r["acceptance"]
    ks = sorted(verify)
    return DraftCosts([verify[k] for k in ks], head_t / max(1, head_n), list(acc) or [0.0] * model_max)


def bench_file(path: Path, rates, drafts, reps, max_tokens, threads, prompt, real: bool, cpp: Path | None):
    from qwythos.core.llamacpp.handles import load_model

    out = {"model": str(path), "threads": threads, "max_tokens": max_tokens, "reps": reps, "rows": []}
    NO_MTP = "no-mtp"
    with load_model(path, mtp=False) as bare, load_model(path) as m:

        def one(mode, reference, rate, costs, seed, real=False):
            """A run of `mode`; `no-mtp` is plain decoding on the file loaded without its head."""
            if mode == NO_MTP:
                return _one(bare, toks, None, 0, 0.0, max_tokens, threads, None, seed)
            return _one(m, toks, reference, mode, rate, max_tokens, threads, costs, seed, real)

        toks = m.tokenize(prompt)
        repacked = m.repacked
        t = time.time()
        plain = [_one(m, toks, None, 0, 0.0, max_tokens, threads, None, r) for r in range(reps)]
        reference = toks + plain[0]["tokens"]
        print(f"\n{path.name}: {len(toks)} prompt tokens, {max_tokens} generated, {threads} threads, "
              f"median of {reps}, modes interleaved per rep (plain: {time.time() - t:.0f} s)", flush=True)  # fmt: skip
        print(
            f"{'a':>4} {'mode':>9} {'tok/s':>8} {'spread':>6} {'x no-mtp':>8} {'x plain':>7} {'vs best':>7} "
            f"{'accept/depth':>24} auto N, steps at 0/1/.."
        )

        def show(rate, mode, runs, base_runs=None, plain_runs=None, best_runs=None):
            """One row. With base_runs (the same rate's `no-mtp` runs, rep by rep) the paired
            speed-up: the median over reps of this rep's tok/s over the same rep's `no-mtp` tok/s,
            which the machine's drift between reps does not move; the same against plain_runs
            (plain decoding with the head loaded) and best_runs (the best fixed N's runs)."""
            tps = [x["tps"] for x in runs]
            med = statistics.median(tps)
            spread = (max(tps) - min(tps)) / med if med else 0.0

            def paired(other):
                if other is None:
                    return None
                return statistics.median(a / b["tps"] for a, b in zip(tps, other, strict=True) if b["tps"])

            base, pair, vs_best = paired(base_runs), paired(plain_runs), paired(best_runs)
            acc = " ".join(f"{a:.2f}" for a in runs[0]["acceptance"]) or "-"
            fin = runs[0]["final"] if runs[0]["final"] is not None else "-"
            if runs[0]["final"] is not None:  # auto: what it chose, and steps per length over all reps
                steps = np.sum([x["steps_per_draft"] for x in runs], axis=0)
                fin = f"{fin} {'/'.join(str(int(k)) for k in steps)}"
            same = all(x["tokens"] == plain[0]["tokens"] for x in runs)
            ncol, pcol, bcol = (f"{x:6.2f}x" if x is not None else " " * 7 for x in (base, pair, vs_best))
            print(f"{rate:4} {mode:>9} {med:8.2f} {spread:6.1%} {ncol:>8} {pcol} {bcol} {acc:>24} {fin!s:>6}"
                  + ("" if same else "  OUTPUT DIFFERS"), flush=True)  # fmt: skip
            out["rows"].append({"a": rate, "mode": str(mode), "tps": tps, "median": med, "spread": spread,
                                "paired_vs_no_mtp": base, "paired_vs_plain": pair, "paired_vs_best_fixed": vs_best,
                                "acceptance": runs[0]["acceptance"],
                                "auto_final": runs[0]["final"], "same_output": same})  # fmt: skip

        show("-", 0, plain)
        if real and m.has_mtp:
            modes = [NO_MTP, 0, *drafts, "auto"]
            runs = {mode: [] for mode in modes}
            for r in range(reps):
                for mode in modes:
                    runs[mode].append(one(mode, None, 0.0, None, r, real=True))
            for mode in modes:
                show("real", mode, runs[mode], runs[NO_MTP], runs[0])
        for rate in rates:
            # Modes interleaved within each rep (no-mtp, plain, each N, auto, auto-cold, then
            # again), so that drift in the machine's speed over minutes falls on every mode alike;
            # the speed-ups are against the same rate's no-mtp (and plain) runs. Auto starts from the costs of
            # this rate's first fixed runs, as it would after `qwythos bench`.
            modes = [NO_MTP, 0, *drafts, "auto", "auto-cold"]
            runs: dict = {mode: [] for mode in modes}
            costs = None
            for r in range(reps):
                for mode in modes:
                    if mode == "auto" and costs is None:
                        costs = _costs({n: runs[n] for n in [0, *drafts]}, max(drafts))
                    c = costs if mode == "auto" else None
                    runs[mode].append(one(mode, reference, rate, c, r))
            best = max([0, *drafts], key=lambda n: statistics.median(x["tps"] for x in runs[n]))
            for mode in modes:
                auto = str(mode).startswith("auto")
                show(rate, mode, runs[mode], runs[NO_MTP], runs[0], runs[best] if auto else None)
        if cpp is not None:
            from bench_mtp import run_cpp

            # Rep by rep, llama.cpp's loop and ours take turns at each N, both with the file's own
            # head; on random weights (no --real) it accepts nothing, so ours runs at a = 0 (the
            # real head's cost, every draft wrong).
            print(f"\nllama.cpp C++ loop ({cpp.name}, its own head) against ours at a = 0, same file/prompt/"
                  f"threads/repacking ({'on' if repacked else 'off: --no-repack'}), taking turns, median of {reps}")  # fmt: skip
            n_ctx = len(toks) + max_tokens + 16
            for n in drafts:
                theirs, ours = [], []
                for r in range(reps):
                    theirs.append(run_cpp(cpp, path, [prompt], n, max_tokens, threads, n_ctx, repacked))
                    ours.append(_one(m, toks, reference, n, 0.0, max_tokens, threads, None, r, real=real))
                tc = [x["gen_tps"] for x in theirs]
                to = [x["tps"] for x in ours]
                med = statistics.median(tc)
                ratio = statistics.median(o / c for o, c in zip(to, tc, strict=True) if c)
                print(f"draft {n}: C++ {med:.2f} tok/s (spread {(max(tc) - min(tc)) / med:.1%}, acceptance "
                      f"{theirs[0]['acceptance']:.2f}), ours {statistics.median(to):.2f} tok/s, "
                      f"ours/C++ paired {ratio:.2f}x", flush=True)  # fmt: skip
                out["rows"].append({"a": "cpp", "mode": str(n), "tps": tc, "median": med,
                                    "ours_tps": to, "ours_over_cpp_paired": ratio})  # fmt: skip
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", type=Path, help="a qwen35 GGUF with an MTP head")
    ap.add_argument("--tiny", action="store_true", help="the trained tiny model (F32), with --real rows")
    ap.add_argument(
        "--build-9b", action="store_true", help="random 9B shapes, Q4_K_M, q8_0 head (cached in --work)"
    )
    ap.add_argument("--work", type=Path, default=Path("/tmp/qwythos-bench-mtp"))
    ap.add_argument("--rates", default="0,0.3,0.5,0.7,0.9")
    ap.add_argument("--drafts", default="1,2,3,4")
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--max-tokens", type=int, default=64)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--prompt", default="def fibonacci(n):\n")
    ap.add_argument("--cpp", type=Path, help="llama-speculative-simple (bash bench/build_llama_cpp_tools.sh)")
    ap.add_argument("--json", type=Path, help="also write every number here")
    a = ap.parse_args()
    rates = [float(x) for x in a.rates.split(",") if x.strip()]  # --rates "" : only --real / --cpp rows
    drafts = [int(x) for x in a.drafts.split(",")]
    results = []
    with tempfile.TemporaryDirectory(prefix="qwythos-accept-") as tmp:
        files = []
        if a.tiny:
            from qwythos.convert.text import convert

            files.append(
                (
                    convert(
                        REPO / "data" / "tiny-trained", Path(tmp) / "tiny-F32.gguf", outtype="f32"
                    ).output,
                    True,
                )
            )
        if a.model:
            files.append((a.model, False))
        if a.build_9b:
            from bench_mtp import build_9b

            a.work.mkdir(parents=True, exist_ok=True)
            files.append((build_9b(a.work, a.threads), False))
        if not files:
            ap.error("pass --tiny, --model FILE or --build-9b")
        for path, real in files:
            results.append(
                bench_file(path, rates, drafts, a.reps, a.max_tokens, a.threads, a.prompt, real, a.cpp)
            )
    if a.json:
        a.json.write_text(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
