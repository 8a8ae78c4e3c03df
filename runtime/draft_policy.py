"""`--draft auto`: the draft length that maximises expected tokens per second, from measurement.

Cost model of one speculative step with N drafts (N = 0 is plain decoding):

    time(N)     = verify(N + 1) + N * head          verify(k): the target's time for a batch of k
    tokens(N)   = 1 + sum_{k=1..N} a_1 * ... * a_k   a_j: acceptance at depth j, given depth j-1 passed
    speed(N)    = tokens(N) / time(N)

`best_draft` picks the N with the highest predicted speed, and 0 unless some N beats plain by a
margin. `DraftPolicy` runs that during generation: it starts from cached costs (`core.drafting.costs`,
written by `qwythos bench` or kept by an earlier run) or, without them, measures as it goes (exploration steps: plain, then
lengths 1, 2, ... for as long as every draft is accepted, so a head that misses costs one wasted
draft, not a step at every length), keeps a window of the acceptance seen so far, switches length only when the predicted
gain passes a hysteresis, and now and then drafts one deeper than the current choice (or at all,
when the choice is 0) so that acceptance it is not measuring can still change its mind: soon
after a probe that hit, twice as late after one that found nothing, never where not even perfect
acceptance at that depth could beat the choice on the measured costs (`could_pay`), and never so
often that probes cost more than a few percent of the time (`probe_floor`). Every
choice only affects speed: a step of any length is exact. `explain` says what exploring and probing
cost: their steps, seconds, and seconds beyond plain decoding of the tokens they gave.
"""

from __future__ import annotations

import math
from collections import deque

from qwythos.core.drafting.costs import DraftCosts
from qwythos.core.drafting.lengths import AUTO_MAX_DRAFT

#: A draft length must beat plain decoding by this much to be chosen over it.
PLAIN_MARGIN = 0.03
#: Switch length only when the new one is predicted this much faster than the current one.
HYSTERESIS = 0.04
#: Acceptance memory: the last WINDOW drafting steps, weighted 1/2 per HALF_LIFE newer drafting
#: steps (counted in drafting steps, so that long plain stretches do not erase what probes found).
WINDOW, HALF_LIFE = 64, 12
#: Probe interval bounds (steps): doubled after a probe that found nothing, reset after a hit.
PROBE_MIN, PROBE_MAX = 8, 128
#: The shortest interval also keeps a probe's cost under this share of the time. A probe drafts
#: one deeper than the choice but verifies only the choice's batch (the extra draft is judged
#: against the last row, runtime/speculative.py), so it costs one head step (from plain: the MTP
#: context's catch-up rows and one draft, ~0.2-0.5 decodes at the 9B shapes on a CPU).
PROBE_BUDGET = 0.015
#: Prior acceptance per depth before anything is known (a trained head at depth 1 is usually 0.6+).
DEFAULT_ACCEPTANCE = 0.5
PRIOR_WEIGHT = 4.0  # pseudo-drafts behind the prior


def expected_tokens(acceptance: list[float], n: int) -> float:
    """Tokens one step yields on average with n drafts: the target's own token plus the accepted run."""
    total, run = 1.0, 1.0
    for j in range(n):
        a = acceptance[j] if j < len(acceptance) else (acceptance[-1] if acceptance else 0.0)
        run *= a
        total += run
    return total


def predicted_tps(costs: DraftCosts, n: int) -> float:
    t = costs.verify(n + 1) + n * costs.head_s
    return expected_tokens(costs.acceptance, n) / t if t > 0 else 0.0


def best_draft(costs: DraftCosts, max_draft: int = AUTO_MAX_DRAFT, margin: float = PLAIN_MARGIN) -> int:
    """The draft length with the highest predicted tokens/s; 0 unless it beats plain by `margin`."""
    plain = predicted_tps(costs, 0)
    best, speed = 0, plain * (1.0 + margin)
    for n in range(1, max_draft + 1):
        s = predicted_tps(costs, n)
        if s > speed:
            best, speed = n, s
    return best


def break_even(costs: DraftCosts, n: int = 1, margin: float = 0.0) -> float | None:
    """The acceptance a (the same at every depth) at which drafting n per step starts to beat plain
    decoding by `margin` on these measured costs: what a head needs to reach on this machine.
    None when not even a = 1 pays (drafting cannot win here at this length)."""

    def gain(a: float) -> float:
        return predicted_tps(DraftCosts(costs.verify_s, costs.head_s, [a] * n), n)

    target = predicted_tps(costs, 0) * (1.0 + margin)
    if gain(1.0) <= target:
        return None
    if gain(0.0) >= target:
        return 0.0
    lo, hi = 0.0, 1.0  # gain rises with a: bisect to a few decimals
    for _ in range(40):
        mid = (lo + hi) / 2
        lo, hi = (mid, hi) if gain(mid) < target else (lo, mid)
    return hi


def could_pay(costs: DraftCosts, current: int, max_draft: int = AUTO_MAX_DRAFT) -> bool:
    """Whether drafting deeper than `current` could beat it by the hysteresis if every draft
    from depth current+1 on were accepted (the optimistic bound; the costs are measured)."""
    acc = list(costs.acceptance) + [costs.acceptance[-1] if costs.acceptance else 0.0] * max_draft
    optimistic = DraftCosts(costs.verify_s, costs.head_s, acc[:current] + [1.0] * (max_draft - current))
    now = predicted_tps(costs, current)
    return any(
        predicted_tps(optimistic, n) > now * (1.0 + HYSTERESIS) for n in range(current + 1, max_draft + 1)
    )


def probe_floor(costs: DraftCosts | None, current: int) -> int:
    """The shortest probe interval (steps) at which a probe one draft deeper than `current` (one
    more head step, the same verify batch) costs at most PROBE_BUDGET of the time; PROBE_MIN..PROBE_MAX."""
    if costs is None:
        return PROBE_MIN
    step = costs.verify(current + 1) + current * costs.head_s
    extra = costs.head_s
    if step <= 0:
        return PROBE_MIN
    return int(min(PROBE_MAX, max(PROBE_MIN, math.ceil(extra / (PROBE_BUDGET * step)))))


def fill_verify(known: dict[int, float], n: int) -> list[float]:
    """Target seconds for batches of 1..n tokens from the measured sizes in `known` (at least two,
    1 among them): linear between measured sizes, beyond the largest the last slope (never negative)."""
    ks = sorted(known)
    slope = max(0.0, (known[ks[-1]] - known[ks[-2]]) / (ks[-1] - ks[-2]))

    def at(k: int) -> float:
        if k in known:
            return known[k]
        lo = max(x for x in ks if x < k)
        hi = min((x for x in ks if x > k), default=None)
        if hi is None:
            return known[lo] + slope * (k - lo)
        return known[lo] + (known[hi] - known[lo]) * (k - lo) / (hi - lo)

    return [at(k) for k in range(1, n + 1)]


class DraftPolicy:
    """Chooses each step's draft length from costs and acceptance measured during generation."""

    def __init__(self, max_draft: int = AUTO_MAX_DRAFT, start: DraftCosts | None = None) -> None:
        self.max_draft = max_draft
        self.start = start
        self._verify: list[deque[float]] = [deque(maxlen=5) for _ in range(max_draft + 1)]
        self._head: deque[float] = deque(maxlen=32)
        self._steps: deque[tuple[int, int]] = deque(maxlen=WINDOW)  # (drafted, accepted) per step
        if start is not None:
            for k in range(1, max_draft + 2):
                self._verify[k - 1].append(start.verify(k))
            self._head.append(start.head_s)
        # cold: time plain, then each length from 1 up while the drafts keep landing (see `record`)
        self._explore = [] if start is not None else list(range(max_draft + 1))
        self.current = best_draft(start, max_draft) if start is not None else max_draft
        self._since_probe = 0
        self._probe_every = probe_floor(start, self.current) if start is not None else PROBE_MIN
        self._probing = False
        self._judge_probe = ""
        self.switches: list[tuple[int, int, int]] = []  # (step, from, to)
        self.steps = 0
        self.histogram = [0] * (max_draft + 1)
        # what exploring and probing cost: steps, their seconds (target + head), the tokens they gave
        self._kind = ""  # this step's kind: "explore" | "probe" | ""
        self.spent = {k: [0, 0.0, 0] for k in ("explore", "probe")}

    # -- measurement -------------------------------------------------------------------------
    def acceptance(self) -> list[float]:
        """Windowed acceptance per depth, shrunk towards the prior (cache, else a default)."""
        drafted = [0.0] * self.max_draft
        accepted = [0.0] * self.max_draft
        for age, (n, a) in enumerate(reversed(self._steps)):
            w = 0.5 ** (age / HALF_LIFE)
            for j in range(min(n, a + 1)):
                drafted[j] += w
                accepted[j] += w if j < a else 0.0
        out = []
        for j in range(self.max_draft):
            if self.start is not None and j < len(self.start.acceptance):
                prior = self.start.acceptance[j]
            else:
                prior = out[-1] if out else DEFAULT_ACCEPTANCE
            out.append((accepted[j] + PRIOR_WEIGHT * prior) / (drafted[j] + PRIOR_WEIGHT))
        return out

    def costs(self) -> DraftCosts | None:
        """The current estimate; None until plain and at least one drafted step were timed."""
        known = {k: sorted(v)[len(v) // 2] for k, v in enumerate(self._verify, 1) if v}
        if not self._head or 1 not in known or len(known) < 2:
            return None
        verify = fill_verify(known, self.max_draft + 1)
        return DraftCosts(verify, sorted(self._head)[len(self._head) // 2], self.acceptance())

    def learned(self) -> DraftCosts | None:
        """What a policy that started without costs has measured, once its exploration steps are
        done (worth keeping for the next run; lengths it could not time, a step cut short by the
        room left, are interpolated as in `costs`); None before that, or when it started from costs."""
        if self.start is not None or self._explore:
            return None
        return self.costs()

    @property
    def probing(self) -> bool:
        """The length just chosen is a probe (one deeper than the choice)."""
        return self._probing

    def record(
        self, n_drafts: int, accepted: int, t_verify: float, t_draft: float, rows: int | None = None
    ) -> None:
        """One step's outcome: drafts made, drafts accepted, seconds in the target and the head;
        rows: the target's batch (n_drafts + 1 unless a probe left its last draft unverified)."""
        rows = n_drafts + 1 if rows is None else rows
        self.steps += 1
        self.histogram[n_drafts] += 1
        if self._kind:
            spent = self.spent[self._kind]
            spent[0] += 1
            spent[1] += t_verify + t_draft
            spent[2] += 1 + min(accepted, rows - 1)
            self._kind = ""
        self._verify[rows - 1].append(t_verify)
        if n_drafts:
            self._head.append(t_draft / n_drafts)
            self._steps.append((n_drafts, accepted))
        if self._explore and 0 < n_drafts and accepted < n_drafts:
            # a cold start stops exploring at the first rejection: a deeper length would mostly
            # time drafts that are thrown away (on a CPU, a step of 4 rejected drafts costs ~3
            # decodes for one token); its batch time is extrapolated, and probes still look deeper
            self._explore = []
        if self._probing:  # judged at the next choice: did what it measured change the decision?
            self._probing = False
            self._judge_probe = "hit" if accepted >= n_drafts else "miss"

    # -- decision ----------------------------------------------------------------------------
    def choose(self, limit: int) -> int:
        """This step's draft length (at most `limit`, the room left)."""
        if self._explore:
            n = min(self._explore.pop(0), limit)
            self._kind = "explore" if n > 0 else ""  # the plain step is what plain decoding does
            return n
        costs = self.costs()
        switched = False
        if costs is not None:
            best = best_draft(costs, self.max_draft)
            if best != self.current:
                gain = predicted_tps(costs, best) / max(predicted_tps(costs, self.current), 1e-12)
                if gain > 1.0 + HYSTERESIS:
                    self.switches.append((self.steps, self.current, best))
                    self.current = best
                    switched = True
        floor = probe_floor(costs, self.current)
        if switched or self._judge_probe == "hit":  # the head hits (again): look again soon
            self._probe_every = floor
        elif self._judge_probe == "miss":  # a probe that found nothing: wait twice as long
            self._probe_every = min(PROBE_MAX, self._probe_every * 2)
        self._probe_every = max(self._probe_every, floor)
        self._judge_probe = ""
        n = self.current
        self._since_probe += 1
        if n < self.max_draft and self._since_probe >= self._probe_every:
            self._since_probe = 0
            if costs is None or could_pay(costs, n, self.max_draft):
                # look one step deeper than the choice: that depth's acceptance is otherwise never seen
                self._probing = True
                self._kind = "probe"
                n += 1
            else:  # not even perfect acceptance there would beat the choice: skip, back off
                self._probe_every = min(PROBE_MAX, self._probe_every * 2)
        n = min(n, limit)
        if n <= self.current:  # the room left cut the probe off
            self._kind = ""
        return n

    def lost_seconds(self, kind: str) -> float | None:
        """Seconds the `kind` steps ("explore" or "probe") cost beyond plain decoding of the same
        tokens (the measured one-token time each); None before plain decoding was timed."""
        plain = sorted(self._verify[0])[len(self._verify[0]) // 2] if self._verify[0] else None
        if plain is None:
            return None
        _, seconds, tokens = self.spent[kind]
        return max(0.0, seconds - tokens * plain)

    def explain(self) -> dict:
        c = self.costs()
        return {
            "exploration_steps": self.spent["explore"][0],
            "exploration_seconds": self.spent["explore"][1],
            "exploration_lost_seconds": self.lost_seconds("explore"),
            "probe_steps": self.spent["probe"][0],
            "probe_seconds": self.spent["probe"][1],
            "probe_lost_seconds": self.lost_seconds("probe"),
            "max_draft": self.max_draft,
            "started_from": "cache" if self.start is not None else "measuring",
            "final_choice": self.current,
            "steps_per_draft_length": list(self.histogram),
            "switches": [{"step": s, "from": a, "to": b} for s, a, b in self.switches],
            "acceptance_per_depth": self.acceptance(),
            "verify_ms": [1e3 * v for v in c.verify_s] if c else None,
            "head_ms": 1e3 * c.head_s if c else None,
            "predicted_tps": [predicted_tps(c, n) for n in range(self.max_draft + 1)] if c else None,
        }
