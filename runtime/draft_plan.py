"""How an Engine drafts, settled before it starts: plain decoding, a fixed length, or `--draft auto`.

`parse_draft` checks a user's draft value once (auto, or 0..MAX_DRAFT). `draft_plan` turns it into
a `DraftPlan` for one model: a fixed length needs an MTP head (or a stand-in drafter); auto needs
one too (plain decoding without it, saying why) and starts its `DraftPolicy` from the costs the
caller gives, from the draft-cost cache, or from nothing (measuring as it goes).

`CostCache` is the one place a generation reads and writes that cache (core/drafting/costs.py): the
entry for this file, machine, thread count and placement, measured by `qwythos bench` or kept by an
earlier run; a run that found none keeps what its policy measured once exploring is done.

The Engine only asks the plan for each step's length (`choose`), reports the step (`record`) and,
when a generation ends, takes its account for the stats (`done`).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from qwythos.core.drafting import costs as draft_costs
from qwythos.core.drafting.costs import CostRecord, DraftCosts
from qwythos.core.drafting.lengths import AUTO_MAX_DRAFT, MAX_DRAFT
from qwythos.core.errors import QwythosError
from qwythos.core.llamacpp.handles import Model, default_threads
from qwythos.runtime.draft_policy import DraftPolicy, best_draft

AUTO = "auto"

#: A stand-in for the MTP head: (history, n) -> up to n draft tokens (a point-mass q); tests, benches.
Drafter = Callable[[list[int], int], list[int]]


def parse_draft(draft: int | str) -> int | str:
    """A user's draft value: "auto" (any case), or a length 0..MAX_DRAFT (0: plain decoding)."""
    if isinstance(draft, str):
        if draft.strip().lower() == AUTO:
            return AUTO
        try:
            draft = int(draft)
        except ValueError:
            raise QwythosError(f"--draft {draft!r} is not a number", f"use auto or 0..{MAX_DRAFT}") from None
    if isinstance(draft, bool) or not isinstance(draft, int):
        raise QwythosError(f"--draft {draft!r} is not a number", f"use auto or 0..{MAX_DRAFT}")
    if not 0 <= draft <= MAX_DRAFT:
        raise QwythosError(
            f"--draft {draft} is out of range", f"use 1..{MAX_DRAFT}, auto, or 0 for plain decoding"
        )
    return draft


@dataclass(frozen=True)
class CostCache:
    """The draft-cost cache entry of one model file at one thread count and placement."""

    path: Path
    threads: int
    placement: str = ""

    @classmethod
    def of(cls, model: Model, threads: int | None = None) -> CostCache:
        return cls(model.path, threads or default_threads(), model.placement)

    def lookup(self) -> CostRecord | None:
        return draft_costs.lookup(self.path, self.threads, self.placement)

    def keep(self, learned: DraftCosts, max_draft: int) -> None:
        """Store what a run without cached costs measured, so that the next run starts from it (a
        bench entry is never replaced; a cache that cannot be written only means measuring again)."""
        try:
            draft_costs.store(
                self.path,
                self.threads,
                learned,
                best_draft(learned, max_draft),
                self.placement,
                source="run",
            )
        except (QwythosError, OSError):
            pass


@dataclass
class DraftPlan:
    """What an Engine drafts with: the mode, the longest draft a step may use (the fixed N, or auto's
    maximum), why (auto: where its costs come from; plain: why it cannot draft), auto's policy, the
    cache entry a cold policy's measurements go to (once), and a stand-in drafter if any."""

    mode: str  # "plain" | "fixed" | "auto"
    max_draft: int
    reason: str = ""
    policy: DraftPolicy | None = None
    keep_in: CostCache | None = None
    drafter: Drafter | None = None

    def choose(self, limit: int) -> int:
        """This step's draft length (at most `limit`: the room and tokens left)."""
        return self.policy.choose(limit) if self.policy is not None else min(self.max_draft, limit)

    @property
    def starts_plain(self) -> bool:
        """Auto starting from costs that choose plain decoding (its target keeps no snapshots
        until a step verifies drafts)."""
        p = self.policy
        return p is not None and p.start is not None and p.current == 0

    @property
    def probing(self) -> bool:
        """This step drafts one deeper than auto's choice only to see whether that draft lands."""
        return self.policy is not None and self.policy.probing

    def record(
        self, n_drafts: int, accepted: int, t_verify: float, t_draft: float, rows: int | None = None
    ) -> None:
        if self.policy is not None:
            self.policy.record(n_drafts, accepted, t_verify, t_draft, rows)

    def restart(self) -> None:
        """Forget what the policy measured, keeping where it started (a warm-up teaches it nothing)."""
        if self.policy is not None:
            self.policy = DraftPolicy(self.max_draft, self.policy.start)

    def done(self) -> dict | None:
        """A generation ended: what auto chose and why (GenStats.auto; None for a fixed length or
        --draft 0). A policy that started cold and has finished exploring is kept in the cache."""
        if self.policy is None:
            return {"reason": self.reason} if self.reason else None
        learned = self.policy.learned() if self.keep_in is not None else None
        if learned is not None:
            self.keep_in.keep(learned, self.max_draft)
            self.keep_in = None
        return {"reason": self.reason, **self.policy.explain()}


def draft_plan(
    model: Model,
    draft: int | str = AUTO,
    *,
    threads: int | None = None,
    costs: DraftCosts | str | None = "cache",
    drafter: Drafter | None = None,
) -> DraftPlan:
    """The plan for `draft` on this model. costs (auto only): "cache" (this file's entry for this
    machine, threads and placement; measure as it goes and keep the result when there is none), a
    DraftCosts to start from, or None (measure, keep nothing). drafter: replaces the MTP head."""
    draft = parse_draft(draft)
    can_draft = drafter is not None or model.has_mtp
    if draft == AUTO:
        if not can_draft:
            return DraftPlan("plain", 0, f"{model.path.name} has no MTP head: plain decoding")
        return _auto(model, threads, costs, drafter)
    if draft > 0 and not can_draft:
        raise QwythosError(
            f"{model.path} has no MTP (nextn) layer, so it cannot draft tokens",
            "use a GGUF with the MTP head (`qwythos mtp restore`) or run with --no-mtp",
        )
    return DraftPlan("fixed" if draft > 0 else "plain", draft, drafter=drafter)


def _auto(model: Model, threads: int | None, costs, drafter: Drafter | None) -> DraftPlan:
    start = costs if isinstance(costs, DraftCosts) else None
    reason = "costs given by the caller" if start is not None else "no cached costs: measuring"
    keep_in = CostCache.of(model, threads) if costs == "cache" and drafter is None else None
    rec = keep_in.lookup() if keep_in is not None else None
    if rec is not None:
        start, keep_in = rec.costs, None  # the policy then has nothing of its own to keep
        by = "`qwythos bench`" if rec.source == "bench" else "an earlier run's first steps"
        reason = f"costs measured by {by} ({time.ctime(rec.measured_at)})"
    return DraftPlan("auto", AUTO_MAX_DRAFT, reason, DraftPolicy(AUTO_MAX_DRAFT, start), keep_in, drafter)
