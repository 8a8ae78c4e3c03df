"""Measured MTP drafting costs, cached per (file, machine, threads, llama.cpp build).

`qwythos bench` measures what a target batch of 1..N+1 tokens costs, what one MTP draft costs
and how often drafts are accepted per depth, and stores them here with the draft length it
recommends; `run`/`chat` start `--draft auto` from them instead of measuring again, and exports can
read the recommendation. A `run` that found no entry keeps what its own first steps measured (source
"run"), so that only the first run on a machine pays for measuring; `bench` replaces such an entry,
a run never replaces bench's. The cache is one JSON file in the user's cache folder
($XDG_CACHE_HOME/qwythos/draft_costs.json, or QWYTHOS_DRAFT_COSTS to put it elsewhere).
"""

from __future__ import annotations

import json
import math
import os
import platform
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

from qwythos.core.errors import QwythosError
from qwythos.core.fileio import atomic_output, cache_dir

LOCK_WAIT_S = 5.0  # two processes storing at once: the second waits for the first


@dataclass
class DraftCosts:
    """Seconds per target batch of k = 1.. tokens (verify_s[k-1]), seconds per MTP draft, and
    acceptance per draft depth (each conditional on the previous depth being accepted)."""

    verify_s: list[float]
    head_s: float
    acceptance: list[float] = field(default_factory=list)

    def verify(self, k: int) -> float:
        """Seconds for a batch of k tokens; beyond the measured sizes, the last measured slope."""
        v = self.verify_s
        if k <= len(v):
            return v[k - 1]
        slope = max(0.0, v[-1] - v[-2]) if len(v) >= 2 else v[-1]
        return v[-1] + (k - len(v)) * slope


#: How far bench's measurements may stray past a bound of the cost model before they count as
#: broken (timer noise on a quiet machine stays well inside it; a busy one's 333x "speed-ups" do not).
BOUND_SLACK = 0.25
#: The looser guard on the bench entries the cache stores or hands out (past it they are impossible
#: however measured). A run's entry, from its first few short steps, is only where the next run's
#: policy starts measuring again: for it only the times and acceptances are checked.
GUARD_SLACK = 1.0


def guard_slack(source: str) -> float:
    return GUARD_SLACK if source == "bench" else math.inf


#: The largest coefficient of variation (std / mean) of one mode's seconds per target pass over the
#: bench's prompts: more scatter than this means something else ran on the machine meanwhile.
MAX_SCATTER = 0.5
MEASURE_AGAIN = "measure again with `qwythos bench` when the machine is otherwise idle"


def implausible(costs: DraftCosts, slack: float | None = None) -> str | None:
    """Why these costs cannot come from a real measurement, or None. Times must be finite and
    positive, acceptances within 0..1, and a step with N drafts (a target batch of N + 1 tokens plus
    N head passes) can cost no less than a plain step (a batch of 1): else its predicted speed-up
    would pass the N + 1 tokens a step can yield at most. slack: the noise allowed (GUARD_SLACK by
    default; bench asks for BOUND_SLACK)."""
    slack = GUARD_SLACK if slack is None else slack
    v, h = costs.verify_s, costs.head_s
    if not v or not all(math.isfinite(t) and t > 0 for t in v) or not (math.isfinite(h) and h >= 0):
        return "a non-positive or non-finite time"
    if not all(math.isfinite(a) and 0 <= a <= 1 for a in costs.acceptance):
        return "an acceptance outside 0..1"
    for n in range(1, len(v)):
        step = v[n] + n * h
        if step * (1 + slack) < v[0]:
            return (
                f"a step with {n} draft(s) measured {v[0] / step:.1f}x cheaper than a plain step "
                f"(a predicted speed-up past the ceiling of {n + 1}x)"
            )
    return None


def speedup_past_ceiling(n: int, speedup: float) -> str | None:
    """A measured speed-up of draft length n beyond its ceiling (n + 1 tokens per target pass), or
    not a finite positive number: why it cannot be real, else None."""
    if not (math.isfinite(speedup) and speedup > 0):
        return f"a speed-up of {speedup} for draft {n}"
    if n > 0 and speedup > (n + 1) * (1 + BOUND_SLACK):
        return f"a speed-up of {speedup:.1f}x for draft {n}, whose ceiling is {n + 1}x"
    return None


def scatter(samples: list[float]) -> float:
    """The coefficient of variation of repeated measurements (0 for fewer than two)."""
    if len(samples) < 2:
        return 0.0
    mean = sum(samples) / len(samples)
    if not mean > 0:
        return math.inf
    var = sum((x - mean) ** 2 for x in samples) / (len(samples) - 1)
    return math.sqrt(var) / mean


#: Who measured an entry: `qwythos bench` (every length over whole runs), or a `run` that
#: started without cached costs and kept what its first steps measured.
SOURCES = ("bench", "run")


@dataclass
class CostRecord:
    """One cache entry: the costs, the draft length recommended on them, when and by what they
    were measured."""

    costs: DraftCosts
    recommended: int
    measured_at: float
    key: dict
    source: str = "bench"

    def to_dict(self) -> dict:
        return {
            "costs": asdict(self.costs),
            "recommended": self.recommended,
            "measured_at": self.measured_at,
            "key": self.key,
            "source": self.source,
        }


def cache_file() -> Path:
    env = os.environ.get("QWYTHOS_DRAFT_COSTS")
    if env:
        return Path(env)
    return cache_dir("draft_costs.json")


def _machine() -> str:
    cpu = ""
    try:
        for line in Path("/proc/cpuinfo").read_text(errors="replace").splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return f"{platform.node()}|{platform.machine()}|{cpu or platform.processor()}"


def _build() -> str:
    try:
        import llama_cpp

        return str(getattr(llama_cpp, "__version__", "unknown"))
    except ImportError:  # pragma: no cover - the runtime needs it anyway
        return "none"


def cost_key(gguf: str | Path, threads: int, placement: str = "") -> dict:
    """What the measurement depends on: the file (path, size, mtime), machine, threads, build, and
    where the layers run when not all on this CPU (`Model.placement`: offload, RPC workers)."""
    p = Path(gguf).resolve()
    st = p.stat()
    key = {
        "file": str(p),
        "size": st.st_size,
        "mtime_ns": st.st_mtime_ns,
        "machine": _machine(),
        "threads": int(threads),
        "llama_cpp": _build(),
    }
    if placement:
        key["placement"] = placement
    return key


def _key_str(key: dict) -> str:
    return json.dumps(key, sort_keys=True)


def _read_all(path: Path) -> dict:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
        return data if isinstance(data, dict) else {}
    except (OSError, ValueError):
        return {}  # a missing or damaged cache only means measuring again


def lookup(gguf: str | Path, threads: int, placement: str = "") -> CostRecord | None:
    """The cached measurement for this file on this machine at this thread count, if any."""
    key = cost_key(gguf, threads, placement)
    entry = _read_all(cache_file()).get(_key_str(key))
    if not isinstance(entry, dict):
        return None
    try:
        c = entry["costs"]
        costs = DraftCosts(
            [float(x) for x in c["verify_s"]], float(c["head_s"]), [float(x) for x in c["acceptance"]]
        )
        source = entry.get("source", "bench")
        if source not in SOURCES or implausible(costs, guard_slack(source)) is not None:
            return None  # an impossible entry (a busy machine's, an edited cache) is measured again
        return CostRecord(costs, int(entry["recommended"]), float(entry["measured_at"]), key, source)
    except (KeyError, TypeError, ValueError):
        return None


def store(
    gguf: str | Path,
    threads: int,
    costs: DraftCosts,
    recommended: int,
    placement: str = "",
    source: str = "bench",
) -> CostRecord | None:
    """Add or replace this file's entry (the rest of the cache is kept; read and written under the
    cache's lock). An entry from a `run` never replaces one from `bench`: None then. Costs that
    cannot be real (`implausible`) are never stored: a QwythosError saying to measure again."""
    why = implausible(costs, guard_slack(source))
    if why is not None:
        raise QwythosError(f"the measured draft costs were not stored: {why}", MEASURE_AGAIN)
    key = cost_key(gguf, threads, placement)
    rec = CostRecord(costs, int(recommended), time.time(), key, source)
    path = cache_file()
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_output(path, lock_wait=LOCK_WAIT_S) as tmp:
        data = _read_all(path)
        old = data.get(_key_str(key))
        kept = source == "run" and isinstance(old, dict) and old.get("source", "bench") == "bench"
        if not kept:
            data[_key_str(key)] = rec.to_dict()
        Path(tmp).write_text(json.dumps(data, indent=1), encoding="utf-8")
    return None if kept else rec


def recommended_draft(gguf: str | Path, threads: int) -> int | None:
    """The draft length bench recommended for this file here, or None when it was not benched
    (what a run kept from its first steps is not a recommendation)."""
    rec = lookup(gguf, threads)
    return rec.recommended if rec and rec.source == "bench" else None
