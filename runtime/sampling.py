"""Token choice from logits, as numpy over the vocabulary (no Python loop per token id).

One function turns a row of logits into a sparse distribution (`Dist`: candidate ids and their
probabilities) under the sampling transforms, in this order: repetition penalty (llama.cpp style:
positive logits divided, negative multiplied), top-k, temperature softmax, top-p, min-p. The
speculative loop uses the same function for the target (p) and the MTP draft (q), which is what
makes rejection sampling exact. Temperature <= 0 means greedy: the argmax of the penalised logits.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np

from qwythos.core.model import release


@dataclass(frozen=True)
class SamplingParams:
    """Sampling settings. Defaults are the model card's (core/model/release.py)."""

    temperature: float = release.TEMPERATURE
    top_k: int = release.TOP_K  # 0 = off
    top_p: float = release.TOP_P  # 1.0 = off
    min_p: float = release.MIN_P  # 0.0 = off
    repeat_penalty: float = release.REPEAT_PENALTY  # 1.0 = off
    repeat_last_n: int = 64  # window of recent tokens the penalty looks at
    seed: int | None = None

    @property
    def greedy(self) -> bool:
        return self.temperature <= 0.0

    def to_dict(self) -> dict:
        return asdict(self)


#: The model card's sampling (what `run` and `chat` use unless a flag says otherwise).
CARD_SAMPLING = SamplingParams()
GREEDY = SamplingParams(temperature=0.0, top_k=0, top_p=1.0, min_p=0.0, repeat_penalty=1.0)


@dataclass
class Dist:
    """A sparse distribution: ids (int64) with probabilities p (float64, sums to 1)."""

    ids: np.ndarray
    p: np.ndarray

    def prob(self, token: int) -> float:
        hit = np.nonzero(self.ids == token)[0]
        return float(self.p[hit[0]]) if hit.size else 0.0

    def sample(self, rng: np.random.Generator) -> int:
        if self.ids.size == 1:
            return int(self.ids[0])
        c = np.cumsum(self.p)
        i = int(np.searchsorted(c, rng.random() * c[-1], side="right"))
        return int(self.ids[min(i, self.ids.size - 1)])


def penalized(logits: np.ndarray, history, params: SamplingParams) -> np.ndarray:
    """Logits after the repetition penalty over the last `repeat_last_n` tokens (a copy if changed)."""
    if params.repeat_penalty == 1.0 or params.repeat_last_n == 0 or len(history) == 0:
        return logits
    window = history[-params.repeat_last_n :] if params.repeat_last_n > 0 else history
    ids = np.unique(np.asarray(window, dtype=np.int64))
    ids = ids[(ids >= 0) & (ids < logits.shape[-1])]
    out = np.array(logits, dtype=np.float32, copy=True)
    v = out[ids]
    out[ids] = np.where(v > 0, v / params.repeat_penalty, v * params.repeat_penalty)
    return out


def greedy_token(logits: np.ndarray, history, params: SamplingParams = GREEDY) -> int:
    """Argmax of the penalised logits (ties: lowest id, like numpy)."""
    return int(np.argmax(penalized(logits, history, params)))


def distribution(logits: np.ndarray, history, params: SamplingParams) -> Dist:
    """The sparse sampling distribution of one logits row under `params` (not for greedy)."""
    x = penalized(logits, history, params)
    n = x.shape[-1]
    k = params.top_k if 0 < params.top_k < n else n
    if k < n:
        ids = np.argpartition(x, n - k)[n - k :]
    else:
        ids = np.arange(n)
    vals = x[ids].astype(np.float64)
    order = np.argsort(-vals, kind="stable")
    ids, vals = ids[order], vals[order]
    t = max(params.temperature, 1e-6)
    z = (vals - vals[0]) / t
    p = np.exp(z)
    p /= p.sum()
    keep = p.size
    if params.top_p < 1.0:
        c = np.cumsum(p)
        keep = min(keep, int(np.searchsorted(c, params.top_p, side="left")) + 1)
    if params.min_p > 0.0:
        keep = min(keep, max(1, int(np.count_nonzero(p >= params.min_p * p[0]))))
    ids, p = ids[:keep], p[:keep]
    p = p / p.sum()
    return Dist(ids.astype(np.int64), p)


def residual(p: Dist, q: Dist) -> Dist:
    """norm(max(p - q, 0)): where to resample after a rejected draft (support within p's)."""
    qv = np.zeros(p.ids.size)
    if q.ids.size:
        sorter = np.argsort(q.ids)
        pos = np.searchsorted(q.ids, p.ids, sorter=sorter)
        pos = np.clip(pos, 0, q.ids.size - 1)
        hit = q.ids[sorter[pos]] == p.ids
        qv[hit] = q.p[sorter[pos[hit]]]
    r = np.maximum(p.p - qv, 0.0)
    s = r.sum()
    if s <= 0.0:  # p == q up to rounding: any p-sample is exact
        return p
    return Dist(p.ids, r / s)


def choose(logits: np.ndarray, history, params: SamplingParams, rng: np.random.Generator) -> int:
    """One token as plain decoding would choose it."""
    if params.greedy:
        return greedy_token(logits, history, params)
    return distribution(logits, history, params).sample(rng)


@dataclass
class Verdict:
    """What the target made of one step's drafts: how many it accepted, and its own next token."""

    accepted: int
    next_token: int


def accept_drafts(
    drafts: list[int],
    logits: np.ndarray,
    history,
    params: SamplingParams,
    rng: np.random.Generator,
    q: list[Dist] | None = None,
    *,
    bonus: bool = True,
) -> Verdict:
    """The acceptance rule of one speculative step, a pure function of the target's logits.

    logits[j] is the target's row for the position draft j would take (row len(drafts): the one
    after the last draft); history is the penalty's view before the step, extended here by each
    accepted draft. Greedy: accept the longest prefix where each draft is the target's own choice.
    Sampled (q[j]: the distribution draft j was drawn from, a point mass when None): accept draft j
    with probability min(1, p/q), else resample from norm(max(p - q, 0)) and stop; when every draft
    is accepted the next token is drawn from the last row. Either way the tokens follow plain
    decoding's distribution exactly. bonus=False: logits has no row after the last draft (a probe
    that did not verify it, runtime/speculative.py); when every draft is accepted the next token is
    the last draft itself.
    """
    window = list(history)
    for j, d in enumerate(drafts):
        if params.greedy:
            t = greedy_token(logits[j], window, params)
            if t != d:
                return Verdict(j, t)
        else:
            p = distribution(logits[j], window, params)
            qj = q[j] if q is not None else Dist(np.array([d], dtype=np.int64), np.ones(1))
            pd, qd = p.prob(d), qj.prob(d)
            if not (qd > 0 and rng.random() < min(1.0, pd / qd)):
                return Verdict(j, residual(p, qj).sample(rng))
        window.append(d)
    if not bonus:
        return Verdict(len(drafts), drafts[-1])
    return Verdict(len(drafts), choose(logits[len(drafts)], window, params, rng))
