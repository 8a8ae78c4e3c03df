"""Measured MTP drafting costs, cached per (file, machine, threads, llama.cpp build).

`qwythos bench` measures what a target batch of 1..N+1 tokens costs, what one MTP draft costs
and how often drafts are accepted per depth, and stores them here with the draft length it
recommends; `run`/`chat` start `--draft auto` from them instead of measuring again, and exports can
read the recommendation. The cache is one JSON file in the user's cache folder
($XDG_CACHE_HOME/qwythos/draft_costs.json, or QWYTHOS_DRAFT_COSTS to put it elsewhere).
"""

from __future__ import annotations

import json
import os
import platform
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

from qwythos.core.fileio import atomic_output


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


@dataclass
class CostRecord:
    """One cache entry: the costs, the draft length bench recommends, and when it was measured."""

    costs: DraftCosts
    recommended: int
    measured_at: float
    key: dict

    def to_dict(self) -> dict:
        return {
            "costs": asdict(self.costs),
            "recommended": self.recommended,
            "measured_at": self.measured_at,
            "key": self.key,
        }


def cache_file() -> Path:
    env = os.environ.get("QWYTHOS_DRAFT_COSTS")
    if env:
        return Path(env)
    root = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "qwythos"
    return root / "draft_costs.json"


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
        if len(costs.verify_s) < 1 or costs.head_s < 0:
            return None
        return CostRecord(costs, int(entry["recommended"]), float(entry["measured_at"]), key)
    except (KeyError, TypeError, ValueError):
        return None


def store(
    gguf: str | Path, threads: int, costs: DraftCosts, recommended: int, placement: str = ""
) -> CostRecord:
    """Add or replace this file's entry (the rest of the cache is kept)."""
    key = cost_key(gguf, threads, placement)
    rec = CostRecord(costs, int(recommended), time.time(), key)
    path = cache_file()
    data = _read_all(path)
    data[_key_str(key)] = rec.to_dict()
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_output(path) as tmp:
        Path(tmp).write_text(json.dumps(data, indent=1), encoding="utf-8")
    return rec


def recommended_draft(gguf: str | Path, threads: int) -> int | None:
    """The draft length bench recommended for this file here, or None when it was not benched."""
    rec = lookup(gguf, threads)
    return rec.recommended if rec else None
