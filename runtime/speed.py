"""Plain decoding against MTP drafting (draft 1..4) on a fixed prompt set, in one process."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

from qwythos.core.errors import QwythosError
from qwythos.core.llama import Model, load_model
from qwythos.runtime.sampling import GREEDY, SamplingParams
from qwythos.runtime.speculative import Engine

#: A fixed prompt set (plain text: the bench measures decoding, not chat formatting).
BENCH_PROMPTS: tuple[str, ...] = (
    "def fibonacci(n):\n",
    "The history of the printing press",
    "import numpy as np\n\ndef normalize(",
    "Q: What is the capital of France?\nA:",
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


@dataclass
class BenchReport:
    model: str
    prompts: int
    max_tokens: int
    threads: int | None
    rows: list[BenchRow] = field(default_factory=list)

    def to_dict(self) -> dict:
        return asdict(self)


def _run_mode(model: Model, prompts: list[list[int]], draft: int, max_tokens: int, sp, threads, n_ctx):
    gens = []
    with Engine(model, n_ctx=n_ctx, draft=draft, threads=threads) as eng:
        eng.generate(prompts[0], max_tokens=4, sampling=sp)  # warm-up (allocations, first-touch)
        for p in prompts:
            gens.append(eng.generate(p, max_tokens=max_tokens, sampling=sp))
    return gens


def bench_model(
    model: Model,
    *,
    drafts: Sequence[int] = (1, 2, 3, 4),
    prompts: Sequence[str] = BENCH_PROMPTS,
    max_tokens: int = 64,
    sampling: SamplingParams = GREEDY,
    threads: int | None = None,
    n_ctx: int = 1024,
) -> BenchReport:
    """Run plain and each draft length over the prompts; tokens/s, acceptance, speed-up, parts."""
    toks = [model.tokenize(p) for p in prompts]
    report = BenchReport(str(model.path), len(toks), max_tokens, threads)
    if any(d > 0 for d in drafts) and not model.has_mtp:
        raise QwythosError(f"{model.path} has no MTP layer to benchmark", "bench a GGUF with the head")
    base_tps = None
    base_tokens = None
    for d in [0, *[d for d in drafts if d > 0]]:
        gens = _run_mode(model, toks, d, max_tokens, sampling, threads, n_ctx)
        n = sum(g.stats.gen_tokens for g in gens)
        secs = sum(g.stats.gen_seconds for g in gens)
        drafted = [sum(g.stats.drafted_per_depth[j] for g in gens) for j in range(d)]
        accepted = [sum(g.stats.accepted_per_depth[j] for g in gens) for j in range(d)]
        passes = sum(g.stats.target_passes for g in gens)
        tps = n / secs if secs else 0.0
        outs = [g.tokens for g in gens]
        if d == 0:
            base_tps, base_tokens = tps, outs
        report.rows.append(
            BenchRow(
                mode="plain" if d == 0 else f"mtp draft {d}",
                draft=d,
                gen_tokens=n,
                gen_tps=tps,
                prompt_tps=sum(g.stats.prompt_tokens for g in gens)
                / max(1e-9, sum(g.stats.prompt_seconds for g in gens)),
                acceptance=sum(accepted) / sum(drafted) if sum(drafted) else 0.0,
                acceptance_per_depth=[a / t if t else 0.0 for a, t in zip(accepted, drafted, strict=True)],
                tokens_per_pass=n / passes if passes else 0.0,
                speedup=tps / base_tps if base_tps else 1.0,
                same_output=outs == base_tokens,
                t_draft=sum(g.stats.t_draft for g in gens),
                t_verify=sum(g.stats.t_verify for g in gens),
                t_rollback=sum(g.stats.t_rollback for g in gens),
                t_python=sum(g.stats.t_python for g in gens),
                seconds=secs,
            )
        )
    return report


def run_bench(
    model_path: str | Path,
    *,
    drafts: Sequence[int] = (1, 2, 3, 4),
    max_tokens: int = 64,
    threads: int | None = None,
    n_ctx: int = 1024,
) -> BenchReport:
    model = load_model(model_path)
    try:
        if not model.has_mtp:
            drafts = ()
        return bench_model(model, drafts=drafts, max_tokens=max_tokens, threads=threads, n_ctx=n_ctx)
    finally:
        model.close()
