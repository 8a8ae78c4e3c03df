"""`qwythos mtp validate`: the pass/fail gate for a GGUF's MTP head (grafted, or a separate draft).

Structure first, from the header alone (core/model/structure.py; nothing is loaded if it is
broken), then the acceptance llama.cpp's own MTP context reaches on a calibration text (measured
by mtp/acceptance.py), passed or failed at depth 1 against `--min-accept`. An HF folder's head, as
vLLM and SGLang will load it, is checked by mtp/hf_check.py instead (headers only, nothing runs).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from qwythos.core.drafting.lengths import MAX_DRAFT
from qwythos.core.drafting.rates import depth_rates, expected_accepted
from qwythos.core.errors import QwythosError
from qwythos.core.fileio import read_text_input
from qwythos.core.model.release import CALIBRATION_TEXT
from qwythos.core.model.structure import StructureReport, check_structure
from qwythos.mtp.acceptance import DEFAULT_DEPTH, measure_acceptance

DEFAULT_TEXT = CALIBRATION_TEXT
# A head that belongs to its trunk agrees with it far more often than this (0.53 on the trained tiny
# model, higher on real 9B heads); another model's head scores near chance (0.007 measured).
DEFAULT_MIN_ACCEPT = 0.1
DEFAULT_MAX_TOKENS = 4096  # the bundled text is ~1.8k tokens with the tiny tokenizer, ~1k with Qwen's


@dataclass
class DepthRow:
    depth: int
    accepted: int
    total: int
    rate: float  # accepted / total: drafts at this depth equal to the trunk's greedy token


@dataclass
class ValidationReport:
    model: str
    draft: str | None
    text: str
    structure: StructureReport
    draft_structure: StructureReport | None = None
    depths: list[DepthRow] = field(default_factory=list)
    expected_accepted_length: float | None = None  # mean accepted drafts per speculative step
    n_positions: int = 0
    min_accept: float = DEFAULT_MIN_ACCEPT
    passed: bool = False
    reason: str = ""

    def to_dict(self) -> dict[str, Any]:
        from dataclasses import asdict

        d = asdict(self)
        d["structure"] = self.structure.to_dict()
        d["draft_structure"] = self.draft_structure.to_dict() if self.draft_structure else None
        return d


def _rows_from(report: Any) -> list[DepthRow]:
    """Per-depth rows from mtp.acceptance's report (parallel accepted/total lists)."""
    rates = depth_rates(report.accepted, report.total)
    return [
        DepthRow(k + 1, int(a), int(t), r)
        for k, (a, t, r) in enumerate(zip(report.accepted, report.total, rates, strict=True))
    ]


def _measure(model: str | Path, draft: str | Path | None, text: str, depth: int, max_tokens: int) -> Any:

    return measure_acceptance(
        str(model), draft_path=str(draft) if draft else None, text=text, depth=depth, max_tokens=max_tokens
    )


def expected_length(rows: list[DepthRow]) -> float:
    """Expected accepted drafts per step when depth k counts only after depths < k were accepted:
    sum over k of P(first k all accepted) = sum of the cumulative products of the rates."""
    return expected_accepted(r.rate for r in rows)


def validate(
    model: str | Path,
    *,
    draft: str | Path | None = None,
    text: str | Path | None = None,
    depth: int = DEFAULT_DEPTH,
    min_accept: float = DEFAULT_MIN_ACCEPT,
    max_tokens: int = DEFAULT_MAX_TOKENS,
) -> ValidationReport:
    """Check the head's structure, then measure acceptance at depths 1..`depth`."""
    text_path = Path(text) if text is not None else DEFAULT_TEXT
    if not 1 <= depth <= MAX_DRAFT:
        raise QwythosError(f"--depth {depth} is out of range", f"use --depth 1..{MAX_DRAFT}")
    if not 0.0 <= min_accept <= 1.0:
        raise QwythosError(
            f"--min-accept {min_accept} is not a rate",
            f"pass a number from 0 to 1 (default {DEFAULT_MIN_ACCEPT})",
        )
    if max_tokens < 2:
        raise QwythosError(f"max_tokens {max_tokens} is too small", "score at least a few tokens")
    calibration = read_text_input(text_path, "--text")
    st = check_structure(model)
    dst = check_structure(draft, trunk=model) if draft is not None else None
    rep = ValidationReport(
        str(model), str(draft) if draft else None, str(text_path), st, dst, min_accept=min_accept
    )
    head_ok = dst.ok if dst is not None else st.ok
    if draft is not None and st.kind == "stand-alone head":
        rep.reason = f"{model} is a stand-alone head; pass the trunk as MODEL and the head as --draft"
        return rep
    if not head_ok:
        bad = (dst or st).issues
        rep.reason = "structure: " + (f"{bad[0].tensor} {bad[0].problem}" if bad else "no MTP head")
        return rep
    measured = _measure(model, draft, calibration, depth, max_tokens)
    rep.depths = _rows_from(measured)
    rep.n_positions = rep.depths[0].total if rep.depths else 0
    rep.expected_accepted_length = expected_length(rep.depths)
    d1 = rep.depths[0].rate if rep.depths else 0.0
    rep.passed = d1 >= min_accept
    rep.reason = (
        f"depth-1 acceptance {d1:.3f} >= {min_accept:.3f}"
        if rep.passed
        else f"depth-1 acceptance {d1:.3f} is below --min-accept {min_accept:.3f}"
    )
    return rep
