"""How often the MTP head's drafts equal the trunk's greedy tokens, per draft depth: the
measurement itself (llama.cpp runs the trunk and the head); mtp/validate.py gates on it, and
core/drafting/rates.py holds the arithmetic on the counts.

The trunk reads a calibration text once (teacher forcing): at every position p it gives its greedy
next token g_p and its post-norm hidden state h_p. The head then drafts from every position the way
the speculative loop does: d_1 from (x_p, h_{p-1}), d_{j+1} from (d_j, the head's own hidden state).
Depth 1 counts at every position. Depth j > 1 counts only where it is well defined: the drafts
d_1..d_{j-1} were accepted and the text itself followed the trunk's greedy path there, so g_{p+j-1}
is the token the trunk would really verify against. Rates per depth are conditional (given all
shallower drafts accepted); the expected accepted length per step is sum_j prod_{i<=j} rate_i.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from qwythos.core.drafting.lengths import DEFAULT_DRAFT, MAX_DRAFT
from qwythos.core.drafting.rates import depth_rates, expected_accepted
from qwythos.core.errors import QwythosError
from qwythos.core.llamacpp.handles import load_model
from qwythos.core.model.release import CALIBRATION_TEXT

DEFAULT_TEXT_TOKENS = 512
#: draft depths measured by default: as deep as the draft length exports write (DEFAULT_DRAFT)
DEFAULT_DEPTH = DEFAULT_DRAFT


@dataclass
class AcceptanceReport:
    model: str
    draft_model: str | None
    n_tokens: int
    depth: int
    accepted: list[int] = field(default_factory=list)
    total: list[int] = field(default_factory=list)

    @property
    def rates(self) -> list[float]:
        return depth_rates(self.accepted, self.total)

    @property
    def expected_accepted(self) -> float:
        """Expected accepted drafts per step with draft length `depth`."""
        return expected_accepted(self.rates)

    def to_dict(self) -> dict:
        d = asdict(self)
        d.update(rates=self.rates, expected_accepted=self.expected_accepted)
        return d


def measure_acceptance(
    model_path: str | Path,
    *,
    draft_path: str | Path | None = None,
    text: str | None = None,
    depth: int = DEFAULT_DEPTH,
    n_ctx: int | None = None,
    max_tokens: int = DEFAULT_TEXT_TOKENS,
) -> AcceptanceReport:
    """Measure the head's per-depth agreement with the trunk's greedy tokens over `text`."""

    if not 1 <= depth <= MAX_DRAFT:
        raise QwythosError(f"--depth {depth} is out of range", f"use --depth 1..{MAX_DRAFT}")
    model = load_model(model_path, mtp=True, draft_path=draft_path)
    try:
        toks = model.tokenize(text if text is not None else CALIBRATION_TEXT.read_text(encoding="utf-8"))
        limit = min(max_tokens, (n_ctx or 4096) - depth - 2)
        toks = toks[:limit]
        if len(toks) < 2:
            raise QwythosError("the calibration text is too short", "pass a longer --text file")
        L = len(toks)
        ctx_len = n_ctx or max(256, L + depth + 8)
        tgt = model.new_target(ctx_len, n_draft=1, n_batch=64)
        mtp = model.new_draft(ctx_len)
        greedy = np.empty(L, dtype=np.int64)
        hidden = np.empty((L, model.n_embd), dtype=np.float32)
        for s in range(0, L, tgt.n_batch):
            chunk = toks[s : s + tgt.n_batch]
            tgt.decode(chunk, s, outputs="all")
            greedy[s : s + len(chunk)] = tgt.logits(len(chunk)).argmax(axis=1)
            hidden[s : s + len(chunk)] = tgt.hidden(len(chunk))
        accepted = [0] * depth
        total = [0] * depth
        zero = np.zeros((1, model.n_embd), dtype=np.float32)
        for p in range(L - 1):
            mtp.decode([toks[p]], p, outputs="last", hidden=hidden[p - 1 : p] if p else zero)
            for j in range(depth):
                if p + j >= L:
                    break
                total[j] += 1
                d = int(np.argmax(mtp.logits(1)[0]))
                if d != greedy[p + j]:
                    break
                accepted[j] += 1
                # deeper targets are known only while the text follows the trunk's greedy path
                if j + 1 >= depth or p + j + 1 >= L or toks[p + j + 1] != d:
                    break
                h = mtp.hidden(1).copy()
                mtp.decode([d], p + j + 1, outputs="last", hidden=h[None, :])
            mtp.truncate(p + 1)
        return AcceptanceReport(
            model=str(model_path),
            draft_model=str(draft_path) if draft_path else None,
            n_tokens=L,
            depth=depth,
            accepted=accepted,
            total=total,
        )
    finally:
        model.close()
