"""What `--draft auto` costs per token while it decodes plain (N = 0), against `--no-mtp`.

The same GGUF is loaded twice: without its MTP layer (`--no-mtp`, what a user would otherwise run)
and with it. Modes, each a warm engine, run in turn on the same prompt for --pairs rounds (this
machine drifts by 10-30% within minutes; a round's modes run back to back, each round starting
one mode later than the one before, so that no mode always runs first):

- `no-mtp`: plain decoding on the file loaded with mtp=False.
- `auto@0`: auto's target context (hidden output; no snapshots while it decodes plain) and the
  speculative loop, with a plan that always chooses 0 (no probes): what every step of auto at
  N = 0 pays over `no-mtp`.
- `auto`: auto with cached costs that choose 0 (probes included): what a user gets.
- `auto-cold`: auto with nothing cached, a fresh policy every round: it explores (plain, then
  draft 1 while drafts land), then decides from what it measured; a first `run` on a file.
- with --parts, where the per-step cost comes from, through the plain loop on the file loaded with
  its head: `head`: the default plain context (`Engine(draft=0)`, what the README once compared
  auto with); `+snap`: the target keeps AUTO_MAX_DRAFT recurrent snapshots (n_rs_seq), no hidden
  output; `+hidden`: hidden-state output on (llama_set_embeddings_nextn), no snapshots; `+both`:
  auto's target context before it kept snapshots only once drafting starts; `auto@0+snap`:
  `auto@0` with that target.

Per mode: the target's time per one-token decode (mean, and median over steps; timed around
`Context.decode`, what GenStats.t_verify adds up for a plain step), the step's whole time per
generated token (gen_seconds / tokens: verify + Python + probes), probes and their draft time, and
each figure's ratio to `no-mtp`: the median over rounds of that round's ratio.

With --cold N the bench runs the CLI instead, as a user does: `qwythos run MODEL -p PROMPT
--max-tokens --tokens --json` with an empty draft-cost cache (QWYTHOS_DRAFT_COSTS at a fresh file:
auto explores) against `run --no-mtp`, N interleaved pairs, and prints each pair's generated tok/s,
their ratio, and what `--json` says the exploration and the probes cost.

    nice -n 10 python bench/bench_auto_overhead.py MODEL.gguf [--pairs 8] [--tokens 48] [--threads 2] [--parts]
    nice -n 10 python bench/bench_auto_overhead.py MODEL.gguf --cold 5 --tokens 64
    nice -n 10 python bench/bench_auto_overhead.py --build-9b      # bench_mtp.build_9b's file in --work
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
PROMPT = "Write a short story about a robot."


def _timed(ctx, calls: list[tuple[int, float]]) -> None:
    """Record (tokens, seconds) of every decode on this context."""
    decode = ctx.decode

    def timed(tokens, pos0, **kw):
        a = time.perf_counter()
        decode(tokens, pos0, **kw)
        calls.append((len(tokens), time.perf_counter() - a))

    ctx.decode = timed


def _engines(plain_m, head_m, threads: int, n_ctx: int, parts: bool, costs_of):
    from qwythos.core.drafting.lengths import AUTO_MAX_DRAFT
    from qwythos.runtime.draft_plan import DraftPlan, draft_plan
    from qwythos.runtime.speculative import Engine

    class Stay0(DraftPlan):
        lazy = True  # like auto from costs that choose 0: the target keeps no snapshots

        @property
        def starts_plain(self) -> bool:
            return self.lazy

        def choose(self, limit: int) -> int:
            return 0

    class Stay0Snap(Stay0):
        lazy = False  # the target auto built before: AUTO_MAX_DRAFT snapshots from the start

    def plain(model, snapshots=None, hidden=None):
        eng = Engine(model, DraftPlan("plain", 0), n_ctx=n_ctx, threads=threads)
        if snapshots is not None:  # the target context as auto builds it, or one half of it
            eng.target.close()
            eng.target = model.new_target(
                n_ctx, n_draft=0, threads=threads, snapshots=snapshots, hidden=hidden
            )
        return eng

    modes = {"no-mtp": lambda: plain(plain_m)}
    if parts:
        modes |= {
            "head": lambda: plain(head_m),
            "+snap": lambda: plain(head_m, AUTO_MAX_DRAFT, False),
            "+hidden": lambda: plain(head_m, 0, True),
            "+both": lambda: plain(head_m, AUTO_MAX_DRAFT, True),
            "auto@0+snap": lambda: Engine(
                head_m, Stay0Snap("auto", AUTO_MAX_DRAFT), n_ctx=n_ctx, threads=threads
            ),
        }
    modes |= {
        "auto@0": lambda: Engine(head_m, Stay0("auto", AUTO_MAX_DRAFT), n_ctx=n_ctx, threads=threads),
        "auto": lambda: Engine(
            head_m,
            draft_plan(head_m, "auto", threads=threads, costs=costs_of()),
            n_ctx=n_ctx,
            threads=threads,
        ),
        # nothing cached: every generation starts a fresh policy (exploring), as a first `run` does
        "auto-cold": lambda: Engine(
            head_m, draft_plan(head_m, "auto", threads=threads, costs=None), n_ctx=n_ctx, threads=threads
        ),
    }
    return modes


def cold_runs(model: Path, pairs: int, tokens: int, threads: int, work: Path) -> list[dict]:
    """`run --no-mtp` against `run` with nothing cached (auto explores), through the CLI, in turns."""
    import os
    import subprocess

    base = [sys.executable, "-m", "qwythos.cli", "run", str(model), "-p", PROMPT, "--max-tokens",
            str(tokens), "-t", str(threads), "--json"]  # fmt: skip
    rows = []
    work.mkdir(parents=True, exist_ok=True)
    for i in range(pairs):
        row = {}
        for mode, extra in (("no-mtp", ["--no-mtp"]), ("auto-cold", [])):
            costs = work / f"cold-costs-{os.getpid()}-{i}.json"
            costs.unlink(missing_ok=True)
            env = dict(os.environ, QWYTHOS_DRAFT_COSTS=str(costs))
            p = subprocess.run(base + extra, capture_output=True, text=True, env=env)
            if p.returncode != 0:
                sys.exit(f"error: {' '.join(base + extra)} failed:\n{p.stderr[-2000:]}")
            out = json.loads(p.stdout)
            st = out["generation"]["stats"]
            row[mode] = {"tps": st["gen_tps"], "tokens": st["gen_tokens"], "draft": out["draft"]}
            costs.unlink(missing_ok=True)
        a = row["auto-cold"]["draft"].get("auto") or {}
        row["ratio"] = row["auto-cold"]["tps"] / row["no-mtp"]["tps"]
        print(
            f"pair {i + 1}: no-mtp {row['no-mtp']['tps']:.2f} tok/s, auto cold {row['auto-cold']['tps']:.2f} "
            f"tok/s ({row['auto-cold']['tokens']} tokens): {row['ratio']:.3f}x; exploration "
            f"{a.get('exploration_steps')} step(s) {a.get('exploration_seconds', 0):.2f} s, "
            f"{a.get('exploration_lost_seconds') or 0:.2f} s lost; probes {a.get('probe_steps')}, "
            f"{a.get('probe_lost_seconds') or 0:.2f} s lost; chose {a.get('final_choice')}",
            flush=True,
        )
        rows.append(row)
    ratios = [r["ratio"] for r in rows]
    total = sum(r["auto-cold"]["tokens"] / r["auto-cold"]["tps"] for r in rows)
    base_total = sum(r["no-mtp"]["tokens"] / r["no-mtp"]["tps"] for r in rows)
    print(
        f"auto cold / no-mtp: median {statistics.median(ratios):.3f}x over {pairs} pairs "
        f"({' '.join(f'{x:.2f}' for x in ratios)}); total generation time {total:.1f} s against {base_total:.1f} s"
    )
    return rows


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("model", type=Path, nargs="?")
    ap.add_argument("--build-9b", action="store_true")
    ap.add_argument("--work", type=Path, default=Path("/tmp/qwythos-bench-mtp"))
    ap.add_argument("--pairs", type=int, default=8)
    ap.add_argument("--tokens", type=int, default=48)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--parts", action="store_true", help="also time snapshots and hidden output apart")
    ap.add_argument("--cold", type=int, default=0, help="run the CLI cold against --no-mtp, N pairs")
    ap.add_argument("--json", type=Path, default=None)
    a = ap.parse_args()
    from qwythos.core.drafting.costs import DraftCosts
    from qwythos.core.drafting.lengths import AUTO_MAX_DRAFT
    from qwythos.core.llamacpp.handles import load_model
    from qwythos.runtime.draft_policy import best_draft

    if a.build_9b:
        sys.path.insert(0, str(REPO / "bench"))
        from bench_mtp import build_9b

        a.work.mkdir(parents=True, exist_ok=True)
        a.model = build_9b(a.work, a.threads)
    if a.model is None:
        sys.exit("error: give MODEL.gguf or --build-9b")
    if a.cold:
        rows = cold_runs(a.model, a.cold, a.tokens, a.threads, a.work)
        if a.json:
            a.json.write_text(json.dumps(rows, indent=2))
        return
    n_ctx = 512
    one_token: list[float] = []  # no-mtp's one-token decodes so far: auto's cached costs come from them

    def costs_of() -> DraftCosts:
        """Costs shaped as `bench` measures them at these shapes on a CPU (a verify of k tokens
        ~1 + 0.6 (k - 1) decodes, a draft ~0.2 decodes) and acceptance 0: auto's choice is 0."""
        t1 = statistics.median(one_token) if one_token else 0.3
        c = DraftCosts([t1 * (1 + 0.6 * k) for k in range(AUTO_MAX_DRAFT + 1)], 0.2 * t1, [0.0])
        assert best_draft(c, AUTO_MAX_DRAFT) == 0
        return c

    with load_model(a.model, mtp=False) as plain_m, load_model(a.model) as head_m:
        if not head_m.has_mtp:
            sys.exit(f"error: {a.model} has no MTP head")
        toks = head_m.tokenize(PROMPT)
        # no-mtp first, warmed, so that auto's costs are this machine's
        modes = _engines(plain_m, head_m, a.threads, n_ctx, a.parts, costs_of)
        engines, calls = {}, {}
        for name, make in modes.items():
            eng = engines[name] = make()
            eng.generate(toks, max_tokens=4)  # warm-up: graph allocation, first touch
            eng.plan.restart()
            calls[name] = []
            _timed(eng.target, calls[name])
            if name == "no-mtp":
                eng.generate(toks, max_tokens=8)
                one_token += [s for n, s in calls[name] if n == 1]
                calls[name].clear()
        rounds: dict[str, list[dict]] = {m: [] for m in engines}
        outputs: dict[str, list[int]] = {}
        t0 = time.time()
        names = list(engines)
        try:
            for r in range(a.pairs):
                # each round starts one mode later: no mode always runs first (or right after another)
                for name in names[r % len(names) :] + names[: r % len(names)]:
                    eng = engines[name]
                    calls[name].clear()
                    if name == "auto-cold":
                        eng.plan.restart()  # cold again: the policy measures from nothing
                    g = eng.generate(toks, max_tokens=a.tokens)
                    s = g.stats
                    ones = [t for n, t in calls[name] if n == 1] or [float("nan")]  # a head that hits drafts
                    rounds[name].append(
                        {
                            "tokens": s.gen_tokens,
                            "one_token_ms": 1e3 * statistics.fmean(ones),
                            "one_token_median_ms": 1e3 * statistics.median(ones),
                            "step_ms_per_token": 1e3 * s.gen_seconds / s.gen_tokens,
                            "verify_ms_per_token": 1e3 * s.t_verify / s.gen_tokens,
                            "python_ms_per_token": 1e3 * s.t_python / s.gen_tokens,
                            "probes": sum(s.steps_per_draft[1:]),
                            "draft_ms": 1e3 * s.t_draft,
                        }
                    )
                    outputs.setdefault(name, g.tokens)
                    if g.tokens != outputs[name]:
                        sys.exit(f"error: {name} changed its output between rounds")
                print(f"round {r + 1}/{a.pairs} done ({time.time() - t0:.0f} s)", flush=True)
        finally:
            for eng in engines.values():
                eng.close()

    base = rounds["no-mtp"]
    keys = ("one_token_ms", "one_token_median_ms", "step_ms_per_token")
    print(
        f"\n{a.model.name}: {a.pairs} rounds x {a.tokens} tokens, greedy, {a.threads} threads, "
        f"prompt {PROMPT!r}; ratios: median over rounds of mode / no-mtp in the same round"
    )
    print(
        f"{'mode':11} {'1-tok ms':>8} {'ratio':>6} {'median':>8} {'ratio':>6} {'step ms/tok':>11} {'ratio':>6} "
        f"{'py ms/tok':>9} {'probes':>6} {'draft ms':>8} {'same':>4}"
    )
    summary = {}
    for name, rs in rounds.items():
        row = {k: statistics.median(x[k] for x in rs) for k in (*keys, "python_ms_per_token")}
        for k in keys:
            row[k + "_ratio"] = statistics.median(x[k] / b[k] for x, b in zip(rs, base, strict=True))
        row["probes"] = sum(x["probes"] for x in rs)
        row["draft_ms"] = sum(x["draft_ms"] for x in rs)
        row["same_output"] = outputs[name] == outputs["no-mtp"]
        summary[name] = row
        print(
            f"{name:11} {row['one_token_ms']:8.1f} {row['one_token_ms_ratio']:6.3f} "
            f"{row['one_token_median_ms']:8.1f} {row['one_token_median_ms_ratio']:6.3f} "
            f"{row['step_ms_per_token']:11.1f} {row['step_ms_per_token_ratio']:6.3f} "
            f"{row['python_ms_per_token']:9.2f} {row['probes']:6d} {row['draft_ms']:8.0f} "
            f"{'yes' if row['same_output'] else 'NO':>4}"
        )
    if a.json:
        a.json.write_text(json.dumps({"summary": summary, "rounds": rounds}, indent=2))


if __name__ == "__main__":
    main()
