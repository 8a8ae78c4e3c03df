"""Plain decoding against MTP drafting (draft 1..4 and auto) on a fixed prompt set, in one process.

Besides the table, the bench turns its runs into the auto policy's cost model (target time per
batch of 1..N+1 tokens, head time per draft, acceptance per depth), recommends the draft length
that model predicts fastest, prints predicted against measured speed-ups, and stores the costs in
the user's cache (core/drafting/costs.py) so that `run` and `chat` start from them.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

from qwythos.core.drafting import costs as draft_costs
from qwythos.core.drafting.costs import DraftCosts
from qwythos.core.drafting.rates import depth_rates, rate, sum_counts
from qwythos.core.errors import QwythosError
from qwythos.core.llamacpp.handles import Model, default_threads, load_model
from qwythos.runtime.draft_plan import AUTO, draft_plan
from qwythos.runtime.draft_policy import best_draft, break_even, fill_verify, predicted_tps
from qwythos.runtime.sampling import GREEDY, SamplingParams
from qwythos.runtime.speculative import Engine, Generation

#: A fixed prompt set (plain text: the bench measures decoding, not chat formatting).
BENCH_PROMPTS: tuple[str, ...] = (
    "def fibonacci(n):\n",
    "The history of the printing press",
    "import numpy as np\n\ndef normalize(",
    "Q: What is the capital of France?\nA:",
)
#: Other code prompts: the speculative tests' exactness prompts, and a second set for acceptance.
CODE_PROMPTS: tuple[str, ...] = (
    "def main():\n",
    "import os\nimport sys\n",
    "class Foo:\n    def __init__(self",
    "for i in range(10):\n    print(",
    "# Copyright",
    "return self.",
    "x = [1, 2, 3]\n",
    "if __name__ == '__main__':",
)


@dataclass
class BenchRow:
    mode: str
    draft: int
    gen_tokens: int
    gen_tps: float
    prompt_tps: float
    acceptance: float
    acceptance_per_depth: list[float]
    tokens_per_pass: float
    speedup: float
    same_output: bool
    t_draft: float
    t_verify: float
    t_rollback: float
    t_python: float
    seconds: float
    predicted_speedup: float | None = None  # the cost model's prediction for this draft length
    steps_per_draft: list[int] = field(default_factory=list)
    first_text: str = ""  # what the first prompt generated (the demo shows it)
    scatter: float = 0.0  # coefficient of variation of seconds per target pass over the prompts


@dataclass
class BenchReport:
    model: str
    prompts: int
    max_tokens: int
    threads: int | None
    rows: list[BenchRow] = field(default_factory=list)
    has_mtp: bool = True
    note: str = ""
    recommended: int | None = None  # the draft length the measured costs predict fastest
    costs: dict | None = None
    cache_file: str | None = None  # where the costs were stored
    cache_note: str = ""  # why they were not (impossible or scattered measurements, a read-only cache)
    placement: str = ""  # where the layers ran (Model.placement; "" = all on this CPU)
    placed: dict = field(default_factory=dict)  # which device held what, and why (Placement.to_dict)
    baseline: str = "plain"  # what the speed-ups are against: NO_MTP (the file without its head) or plain
    #: per draft length, the acceptance (the same at every depth) at which it starts to pay on the
    #: measured costs; None: not even full acceptance pays on this machine
    break_even: dict[int, float | None] = field(default_factory=dict)

    def to_dict(self) -> dict:
        return asdict(self)


NO_MTP = "--no-mtp"  # the baseline row: the same file loaded without its head, as a user would run it


def _engines(modes: list[tuple[Model, int | str, object]], threads, n_ctx, warm, sp):
    """One engine per (model, draft, costs), each warmed up (allocations, first-touch)."""
    engines = []
    for m, draft, costs in modes:
        plan = draft_plan(m, draft, threads=threads, costs=costs)
        eng = Engine(m, plan, n_ctx=n_ctx, threads=threads)
        engines.append(eng)
        eng.generate(warm, max_tokens=4, sampling=sp)
        if costs is None:  # auto measured from nothing: not the warm-up
            plan.restart()
    return engines


def _interleaved(modes, prompts: list[list[int]], max_tokens: int, sp, threads, n_ctx):
    """Each mode's generations over the prompts, run in rounds (prompt 1 in every mode, then prompt
    2, ...): this machine drifts by 10-30% within minutes, and interleaving spreads the drift over
    every mode instead of handing it to whichever ran last."""
    engines = _engines(modes, threads, n_ctx, prompts[0], sp)
    gens: list[list[Generation]] = [[] for _ in modes]
    try:
        for p in prompts:
            for i, eng in enumerate(engines):
                gens[i].append(eng.generate(p, max_tokens=max_tokens, sampling=sp))
                if gens[i][-1].finish_reason == "interrupted":  # Ctrl-C stops the bench
                    raise KeyboardInterrupt
    finally:
        for eng in engines:
            eng.close()
    return gens


def _row(mode: str, draft: int, gens: list[Generation], base_tps, base_tokens) -> BenchRow:
    depth = max(len(g.stats.drafted_per_depth) for g in gens)
    drafted = sum_counts((g.stats.drafted_per_depth for g in gens), depth)
    accepted = sum_counts((g.stats.accepted_per_depth for g in gens), depth)
    steps = [sum(g.stats.steps_per_draft[k] for g in gens) for k in range(depth + 1)]
    n = sum(g.stats.gen_tokens for g in gens)
    secs = sum(g.stats.gen_seconds for g in gens)
    passes = sum(g.stats.target_passes for g in gens)
    tps = n / secs if secs else 0.0
    return BenchRow(
        mode=mode,
        draft=draft,
        gen_tokens=n,
        gen_tps=tps,
        prompt_tps=sum(g.stats.prompt_tokens for g in gens)
        / max(1e-9, sum(g.stats.prompt_seconds for g in gens)),
        acceptance=rate(sum(accepted), sum(drafted)),
        acceptance_per_depth=depth_rates(accepted, drafted),
        tokens_per_pass=n / passes if passes else 0.0,
        speedup=tps / base_tps if base_tps else 1.0,
        same_output=[g.tokens for g in gens] == base_tokens if base_tokens is not None else True,
        t_draft=sum(g.stats.t_draft for g in gens),
        t_verify=sum(g.stats.t_verify for g in gens),
        t_rollback=sum(g.stats.t_rollback for g in gens),
        t_python=sum(g.stats.t_python for g in gens),
        seconds=secs,
        steps_per_draft=steps,
        first_text=gens[0].text if gens else "",
        scatter=draft_costs.scatter(
            [g.stats.t_verify / g.stats.target_passes for g in gens if g.stats.target_passes]
        ),
    )


def unsound(rows: list[BenchRow], costs: DraftCosts) -> str | None:
    """Why a bench's measurements must not be stored for `run` to trust, or None: a speed-up past
    its ceiling, costs the model cannot produce (core/drafting/costs.implausible), or a fixed mode
    whose seconds per target pass scatter over the prompts (the machine was busy)."""
    for r in rows:
        why = draft_costs.speedup_past_ceiling(r.draft, r.speedup)
        if why is not None:
            return f"{r.mode} measured {why}"
    why = draft_costs.implausible(costs, draft_costs.BOUND_SLACK)
    if why is not None:
        return why
    for r in rows:
        if r.mode != "auto" and r.scatter > draft_costs.MAX_SCATTER:
            return (
                f"{r.mode}'s time per target pass varied by {r.scatter:.0%} over the prompts "
                f"(more than {draft_costs.MAX_SCATTER:.0%})"
            )
    return None


def costs_from_rows(rows: list[BenchRow]) -> DraftCosts | None:
    """The auto policy's cost model from fixed-length runs: seconds per target pass at N + 1
    tokens, seconds per draft, and the deepest run's acceptance per depth (None without drafts)."""
    fixed = {r.draft: r for r in rows if r.mode not in ("auto", NO_MTP)}
    drafted = [r for r in fixed.values() if r.draft > 0]
    if 0 not in fixed or not drafted:
        return None
    known = {r.draft + 1: r.t_verify / max(1, sum(r.steps_per_draft)) for r in fixed.values()}
    verify = fill_verify(known, max(known))  # a length not benched: linear between its neighbours
    n_drafts = sum(sum(k * c for k, c in enumerate(r.steps_per_draft)) for r in drafted)
    head = sum(r.t_draft for r in drafted) / max(1, n_drafts)
    deepest = max(drafted, key=lambda r: r.draft)
    return DraftCosts(verify, head, list(deepest.acceptance_per_depth))


def bench_model(
    model: Model,
    *,
    drafts: Sequence[int] = (1, 2, 3, 4),
    prompts: Sequence[str] = BENCH_PROMPTS,
    max_tokens: int = 64,
    sampling: SamplingParams = GREEDY,
    threads: int | None = None,
    n_ctx: int = 1024,
    auto: bool = True,
    store: bool = False,
    baseline: Model | None = None,
) -> BenchReport:
    """Run each draft length and auto over the prompts against plain decoding: tokens/s, acceptance,
    speed-up, where the time goes; the recommended draft length and the acceptance each length
    needs to pay; store=True writes the costs to the cache.

    baseline: the same file loaded without its head (`--no-mtp`, what a user would otherwise run).
    With it, every speed-up is against it, measured in the same rounds; without it, against plain
    decoding on `model` (its head loaded but unused)."""
    toks = [model.tokenize(p) for p in prompts]
    report = BenchReport(
        str(model.path), len(toks), max_tokens, threads, has_mtp=model.has_mtp, placement=model.placement
    )
    if model.placed is not None:
        report.placed = model.placed.to_dict()
    if any(d > 0 for d in drafts) and not model.has_mtp:
        raise QwythosError(f"{model.path} has no MTP layer to benchmark", "bench a GGUF with the head")
    if not model.has_mtp:
        report.note = f"{model.path.name} has no MTP head: measured plain decoding only"
    base = [(baseline, 0, None)] if baseline is not None else []
    fixed = [(model, d, None) for d in [0, *[d for d in drafts if d > 0]]]
    gens = _interleaved(base + fixed, toks, max_tokens, sampling, threads, n_ctx)
    base_tps = base_tokens = None
    if baseline is not None:
        report.baseline = NO_MTP
        g = gens.pop(0)
        row = _row(NO_MTP, 0, g, None, None)
        base_tps, base_tokens = row.gen_tps, [x.tokens for x in g]
        report.rows.append(row)
    for (_, d, _), g in zip(fixed, gens, strict=True):
        row = _row("plain" if d == 0 else f"mtp draft {d}", d, g, base_tps, base_tokens)
        if base_tps is None:  # no baseline given: plain on this model is the one
            base_tps, base_tokens = row.gen_tps, [x.tokens for x in g]
            row.speedup = 1.0
        report.rows.append(row)
    costs = costs_from_rows(report.rows)
    if costs is not None:
        max_n = max(r.draft for r in report.rows)
        report.recommended = best_draft(costs, max_n)
        report.costs = {
            "verify_ms": [1e3 * v for v in costs.verify_s],
            "head_ms": 1e3 * costs.head_s,
            "acceptance": costs.acceptance,
        }
        report.break_even = {n: break_even(costs, n) for n in range(1, max_n + 1)}
        plain = predicted_tps(costs, 0)
        for r in report.rows:
            r.predicted_speedup = predicted_tps(costs, r.draft) / plain if plain else None
        if auto:
            # auto against the baseline again, in its own rounds (it needs the costs measured above)
            pair = [*base, (model, AUTO, costs)]
            *again, auto_gens = _interleaved(pair, toks, max_tokens, sampling, threads, n_ctx)
            ref_tps = _row(NO_MTP, 0, again[0], None, None).gen_tps if again else base_tps
            row = _row("auto", report.recommended, auto_gens, ref_tps, base_tokens)
            row.predicted_speedup = predicted_tps(costs, report.recommended) / plain if plain else None
            report.rows.append(row)
        if store:
            report.cache_note = _store(model, threads, costs, report)
    return report


def _store(model: Model, threads: int | None, costs: DraftCosts, report: BenchReport) -> str:
    """Store the costs for `run` when they are sound and the cache writable; else why not (the
    table is printed either way)."""
    why = unsound(report.rows, costs)
    if why is not None:
        return f"costs not stored: {why}; {draft_costs.MEASURE_AGAIN}"
    try:
        draft_costs.store(
            model.path, threads or default_threads(), costs, report.recommended, model.placement
        )
    except QwythosError as e:
        return f"costs not stored: {e.message}"
    except OSError as e:
        return f"costs not stored in {draft_costs.cache_file()}: {e.strerror or e}"
    report.cache_file = str(draft_costs.cache_file())
    return ""


def run_bench(
    model_path: str | Path,
    *,
    drafts: Sequence[int] = (1, 2, 3, 4),
    max_tokens: int = 64,
    threads: int | None = None,
    n_ctx: int = 1024,
    auto: bool = True,
    store: bool = True,
    rpc: str | None = None,
    gpu_layers: int | str | None = None,
    baseline: bool = True,
) -> BenchReport:
    """`qwythos bench`: bench_model on a file, storing the measured costs for `run` (store=True).
    rpc / gpu_layers: where the layers run (core/llamacpp/handles.load_model; None: -ngl auto).
    baseline: also load the file without its head and measure every speed-up against that."""
    model = load_model(model_path, rpc=rpc, n_gpu_layers=gpu_layers, n_ctx=n_ctx)
    plain = None
    try:
        if not model.has_mtp:
            drafts = ()
        elif baseline:
            plain = load_model(model_path, mtp=False, rpc=rpc, n_gpu_layers=gpu_layers, n_ctx=n_ctx)
        return bench_model(
            model,
            drafts=drafts,
            max_tokens=max_tokens,
            threads=threads,
            n_ctx=n_ctx,
            auto=auto,
            store=store,
            baseline=plain,
        )
    finally:
        model.close()
        if plain is not None:
            plain.close()
