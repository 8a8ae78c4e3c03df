"""Draft acceptance arithmetic, written once (validate, bench, the speculative loop and the demo use it).

Depth k counts a draft only when the drafts at depths < k of the same step were accepted, so each
rate is conditional; the expected number of accepted drafts per step with draft length N is
sum_{k<=N} prod_{i<=k} rate_i.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence


def rate(accepted: int, total: int) -> float:
    """accepted / total, 0.0 when nothing was drafted."""
    return accepted / total if total else 0.0


def depth_rates(accepted: Sequence[int], total: Sequence[int]) -> list[float]:
    """Per-depth acceptance rates from parallel accepted/total counts."""
    return [rate(a, t) for a, t in zip(accepted, total, strict=True)]


def expected_accepted(rates: Iterable[float]) -> float:
    """Expected accepted drafts per step: the sum of the cumulative products of the depth rates."""
    e, run = 0.0, 1.0
    for r in rates:
        run *= r
        e += run
    return e


def sum_counts(rows: Iterable[Sequence[int]], depth: int) -> list[int]:
    """Element-wise sum of per-depth count lists (shorter lists count as zeros)."""
    out = [0] * depth
    for row in rows:
        for j, v in enumerate(row[:depth]):
            out[j] += v
    return out
