"""Pure pieces of the speculative loop, without llama.cpp: the acceptance rule, the draft-length
cost model and policy, the cost cache, and the output collector's UTF-8 handling."""

from __future__ import annotations

import numpy as np
import pytest

from qwythos.core.drafting import costs as draft_costs
from qwythos.core.drafting.costs import DraftCosts
from qwythos.runtime.draft_policy import (
    PROBE_BUDGET,
    DraftPolicy,
    best_draft,
    break_even,
    expected_tokens,
    predicted_tps,
)
from qwythos.runtime.sampling import GREEDY, Dist, SamplingParams, accept_drafts, distribution

V = 16


def _rows(*argmaxes: int, scale: float = 5.0) -> np.ndarray:
    rows = np.zeros((len(argmaxes), V), dtype=np.float32)
    for i, t in enumerate(argmaxes):
        rows[i, t] = scale
    return rows


# ---- the acceptance rule ----------------------------------------------------------------------
def test_greedy_acceptance_is_the_longest_matching_prefix():
    rng = np.random.default_rng(0)
    logits = _rows(3, 5, 7, 9)  # the target's choices after x, d1, d2, d3
    assert accept_drafts([3, 5, 7], logits, [], GREEDY, rng) == accept_drafts(
        [3, 5, 7], logits, [1], GREEDY, rng
    )
    v = accept_drafts([3, 5, 7], logits, [], GREEDY, rng)
    assert (v.accepted, v.next_token) == (3, 9)  # all accepted: the bonus token from the last row
    v = accept_drafts([3, 6, 7], logits, [], GREEDY, rng)
    assert (v.accepted, v.next_token) == (1, 5)  # d2 wrong: the target's own token replaces it
    v = accept_drafts([4], logits[:2], [], GREEDY, rng)
    assert (v.accepted, v.next_token) == (0, 3)
    v = accept_drafts([], logits[:1], [], GREEDY, rng)
    assert (v.accepted, v.next_token) == (0, 3)  # no drafts: a plain step


def test_greedy_acceptance_sees_the_penalty_window_grow_with_each_draft():
    sp = SamplingParams(temperature=0.0, repeat_penalty=4.0, repeat_last_n=64)
    logits = np.zeros((3, V), dtype=np.float32)
    logits[:, 2] = 4.0  # token 2 leads everywhere ...
    logits[:, 8] = 3.0  # ... until it has been seen once: 4/4 = 1 < 3
    rng = np.random.default_rng(0)
    v = accept_drafts([2, 2], logits, [], sp, rng)
    assert (v.accepted, v.next_token) == (1, 8)  # row 1 already penalises the accepted d1 = 2
    v = accept_drafts([8], logits, [2], sp, rng)
    assert (v.accepted, v.next_token) == (1, 2)  # the history counts too: 2 -> 1.0, then 8 -> 0.75


def test_sampled_acceptance_reproduces_the_target_distribution():
    """Rejection sampling over many draws: the first token's frequencies follow p, not q."""
    sp = SamplingParams(temperature=1.0, top_k=0, top_p=1.0, min_p=0.0, repeat_penalty=1.0)
    target = np.log(np.array([0.5, 0.3, 0.2] + [1e-9] * (V - 3), dtype=np.float64)).astype(np.float32)
    draft = np.log(np.array([0.1, 0.1, 0.8] + [1e-9] * (V - 3), dtype=np.float64)).astype(np.float32)
    logits = np.stack([target, target])
    q = distribution(draft, [], sp)
    rng = np.random.default_rng(7)
    n = 20000
    counts = np.zeros(V)
    accepted = 0
    for _ in range(n):
        d = q.sample(rng)
        v = accept_drafts([d], logits, [], sp, rng, [q])
        counts[d if v.accepted else v.next_token] += 1
        accepted += v.accepted
    freq = counts[:3] / n
    assert np.allclose(freq, [0.5, 0.3, 0.2], atol=0.015), freq
    assert 0.3 < accepted / n < 0.7  # both paths taken (expected sum min(p, q) = 0.1 + 0.1 + 0.2... = 0.4)


def test_point_mass_draft_is_accepted_with_the_targets_probability():
    sp = SamplingParams(temperature=1.0, top_k=0, top_p=1.0, min_p=0.0, repeat_penalty=1.0)
    target = np.log(np.array([0.25, 0.75] + [1e-12] * (V - 2))).astype(np.float32)
    logits = np.stack([target, target])
    rng = np.random.default_rng(3)
    n = 8000
    hits = sum(accept_drafts([1], logits, [], sp, rng).accepted for _ in range(n))
    assert abs(hits / n - 0.75) < 0.02
    point = Dist(np.array([0], dtype=np.int64), np.ones(1))
    rejected_next = {accept_drafts([0], logits, [], sp, rng, [point]).next_token for _ in range(200)}
    assert rejected_next <= {0, 1} and 1 in rejected_next  # a rejection resamples p minus the point


# ---- the cost model and the policy ------------------------------------------------------------
def test_expected_tokens_and_best_draft():
    assert expected_tokens([0.5, 0.5], 2) == pytest.approx(1.75)
    assert expected_tokens([1.0], 3) == pytest.approx(4.0)  # deeper depths reuse the last known rate
    assert expected_tokens([0.9], 0) == 1.0
    # CPU-like: a verify of k tokens costs much more than one token, drafts are not free
    cpu = DraftCosts([1.0, 1.6, 2.2, 2.8, 3.4], 0.15, [0.2, 0.2, 0.2, 0.2])
    assert best_draft(cpu) == 0
    assert predicted_tps(cpu, 0) == pytest.approx(1.0)
    # GPU-like: verify nearly flat, cheap head, good acceptance -> long drafts
    gpu = DraftCosts([1.0, 1.02, 1.04, 1.06, 1.08], 0.05, [0.8, 0.75, 0.7, 0.65])
    assert best_draft(gpu) >= 3
    mid = DraftCosts([1.0, 1.3, 1.6, 1.9, 2.2], 0.08, [0.7, 0.6, 0.5, 0.4])
    n = best_draft(mid)
    assert 1 <= n <= 2 and predicted_tps(mid, n) == max(predicted_tps(mid, k) for k in range(5))


def _drive(policy: DraftPolicy, steps: int, verify, head: float, accept: float, rng) -> list[int]:
    chosen = []
    for _ in range(steps):
        n = policy.choose(8)
        acc = 0
        while acc < n and rng.random() < accept:
            acc += 1
        policy.record(n, acc, verify(n + 1), head * n)
        chosen.append(n)
    return chosen


def test_break_even_acceptance_from_measured_costs():
    # draft 1 on a CPU: a 2-token verify costs 1.6 decodes and a draft 0.1: (1 + a) / 1.7 = 1 at a = 0.7
    cpu = DraftCosts([1.0, 1.6, 2.2], 0.1)
    assert break_even(cpu, 1) == pytest.approx(0.7, abs=1e-6)
    assert predicted_tps(DraftCosts(cpu.verify_s, cpu.head_s, [0.69]), 1) < predicted_tps(cpu, 0)
    assert predicted_tps(DraftCosts(cpu.verify_s, cpu.head_s, [0.71]), 1) > predicted_tps(cpu, 0)
    # a margin asks for more; deeper drafts need more per depth on these costs
    assert break_even(cpu, 1, margin=0.03) > 0.7
    assert break_even(cpu, 2) > break_even(cpu, 1)
    # a GPU-like verify (4 tokens cost one decode) pays at any acceptance; a verify that costs
    # more than two decodes never pays for draft 1, not even at a = 1
    assert break_even(DraftCosts([1.0, 1.0, 1.0, 1.0], 0.0), 1) == 0.0
    assert break_even(DraftCosts([1.0, 2.1], 0.0), 1) is None


def test_policy_measures_then_settles_and_adapts():
    rng = np.random.default_rng(0)
    cpu_verify = lambda k: 1.0 + 0.3 * (k - 1)  # noqa: E731
    p = DraftPolicy(4)
    chosen = _drive(p, 200, cpu_verify, 0.05, 0.0, rng)
    assert chosen[:2] == [0, 1] and 2 not in chosen[:8]  # cold: plain and draft 1, rejected: no deeper
    late = chosen[50:]
    assert late.count(0) > 0.9 * len(late)  # nothing is accepted: plain, with rare probes
    assert p.current == 0 and p.costs().verify(3) == pytest.approx(1.6)
    # the text changes: the head starts to hit; probes notice and the policy drafts again
    chosen = _drive(p, 300, cpu_verify, 0.05, 0.9, rng)
    # within 200 steps: the next probe comes at most PROBE_MAX steps on, then every ~12 (a probe
    # here costs 0.35 of a step: at most 3% of the time) until the hits outweigh the old misses
    assert p.current >= 1 and min(chosen[200:]) >= 1
    assert p.switches and p.explain()["final_choice"] == p.current


def test_policy_says_what_exploring_and_probing_cost():
    p = DraftPolicy(4)
    for _ in range(200):  # nothing accepted; a probe verifies the choice's batch only (the engine's way)
        n = p.choose(8)
        rows = n if p.probing else n + 1
        p.record(n, 0, 1.0 + 0.6 * (rows - 1), 0.2 * n, rows)
    e = p.explain()
    # cold: plain (what plain decoding does anyway), then one draft of 1, rejected: 1.6 + 0.2 seconds
    # for one token, 0.8 lost against plain's 1.0
    assert (e["exploration_steps"], e["exploration_seconds"]) == (1, pytest.approx(1.8))
    assert e["exploration_lost_seconds"] == pytest.approx(0.8)
    # probes from plain: a plain step plus one draft, 0.2 lost each, at most PROBE_BUDGET of the time
    assert e["probe_steps"] == p.histogram[1] - 1 > 0
    assert e["probe_lost_seconds"] == pytest.approx(0.2 * e["probe_steps"])
    assert e["probe_lost_seconds"] <= PROBE_BUDGET * 200
    cached = DraftPolicy(4, DraftCosts([1.0, 1.6, 2.2, 2.8, 3.4], 0.2, [0.0])).explain()
    assert cached["exploration_steps"] == 0 and cached["exploration_lost_seconds"] == 0.0


def test_policy_starts_from_cached_costs_without_exploring():
    c = DraftCosts([1.0, 1.05, 1.1, 1.15, 1.2], 0.02, [0.9, 0.9, 0.9, 0.9])
    p = DraftPolicy(4, c)
    assert p.current == 4 and p.choose(8) == 4 and p.choose(2) == 2
    assert p.explain()["started_from"] == "cache"


def test_hysteresis_keeps_a_near_tie():
    c = DraftCosts([1.0, 1.5, 2.0, 2.5, 3.0], 0.0, [0.6, 0.0, 0.0, 0.0])
    p = DraftPolicy(4, c)
    assert p.current == 1  # 1.6 / 1.5 = 1.067: beats plain by more than the margin
    p.record(1, 0, 1.5, 0.0)  # one miss: acceptance 0.48, plain only 1.3% ahead: below the hysteresis
    assert p.choose(8) == 1


# ---- the cost cache ---------------------------------------------------------------------------
def test_cost_cache_round_trip_and_keys(tmp_path, monkeypatch):
    monkeypatch.setenv("QWYTHOS_DRAFT_COSTS", str(tmp_path / "c" / "costs.json"))
    f = tmp_path / "m.gguf"
    f.write_bytes(b"x" * 10)
    assert draft_costs.lookup(f, 2) is None and draft_costs.recommended_draft(f, 2) is None
    c = DraftCosts([0.1, 0.15], 0.01, [0.6])
    draft_costs.store(f, 2, c, 1)
    assert draft_costs.recommended_draft(f, 2) == 1
    assert draft_costs.lookup(f, 2).costs == c
    assert draft_costs.lookup(f, 4) is None  # another thread count is another measurement
    f.write_bytes(b"y" * 11)  # the file changed: the old measurement no longer applies
    assert draft_costs.lookup(f, 2) is None
    (tmp_path / "c" / "costs.json").write_text("{not json")
    assert draft_costs.lookup(f, 2) is None  # a damaged cache means measuring again, not a crash


# ---- output collection ------------------------------------------------------------------------
class _FakeModel:
    pieces = {1: b"ab", 2: "\u20ac".encode()[:2], 3: "\u20ac".encode()[2:], 9: b""}

    def is_eog(self, t: int) -> bool:
        return t == 9

    def piece(self, t: int) -> bytes:
        return self.pieces[t]


def test_a_character_cut_at_the_end_is_not_dropped():
    from qwythos.runtime.speculative import _Output

    whole = _Output(_FakeModel(), 10, (), None)
    for t in (1, 2, 3):
        whole.emit(t)
    whole.close()
    assert whole.text == "ab\u20ac"
    streamed: list[str] = []
    cut = _Output(_FakeModel(), 2, (), streamed.append)
    assert not cut.emit(1) and cut.emit(2)  # max_tokens reached in the middle of the euro sign
    cut.close()
    assert cut.text == "ab\ufffd" and "".join(streamed) == cut.text


def test_policy_skips_probes_that_could_not_pay():
    """Where a verify of 2 costs more than twice one decode, not even perfect acceptance pays:
    the policy stays plain without probing; where a verify is cheap it keeps probing."""
    from qwythos.runtime.draft_policy import could_pay

    slow = DraftCosts([1.0, 2.3, 3.6, 4.9, 6.2], 0.3, [0.9, 0.9, 0.9, 0.9])
    cheap = DraftCosts([1.0, 1.1, 1.2, 1.3, 1.4], 0.02, [0.0, 0.0, 0.0, 0.0])
    assert not could_pay(slow, 0) and could_pay(cheap, 0)
    for costs, probes in ((slow, False), (cheap, True)):
        p = DraftPolicy(4, costs)
        assert p.current == 0
        chosen = []
        for _ in range(100):
            n = p.choose(8)
            p.record(n, 0, costs.verify(n + 1), costs.head_s * n)
            chosen.append(n)
        assert (max(chosen) > 0) == probes


def test_a_run_keeps_what_it_measured_but_never_replaces_bench(tmp_path):
    f = tmp_path / "m.gguf"
    f.write_bytes(b"x" * 10)
    learned = DraftCosts([0.1, 0.2], 0.01, [0.3])
    rec = draft_costs.store(f, 2, learned, 0, source="run")
    assert rec is not None and draft_costs.lookup(f, 2).source == "run"
    assert draft_costs.recommended_draft(f, 2) is None  # a run's first steps are not a recommendation
    benched = DraftCosts([0.1, 0.12], 0.01, [0.8])
    draft_costs.store(f, 2, benched, 1)  # bench replaces a run's entry
    assert draft_costs.lookup(f, 2).costs == benched and draft_costs.recommended_draft(f, 2) == 1
    assert draft_costs.store(f, 2, learned, 0, source="run") is None  # a run never replaces bench's
    assert draft_costs.lookup(f, 2).costs == benched and draft_costs.lookup(f, 2).source == "bench"


def test_policy_learned_only_after_timing_every_length():
    p = DraftPolicy(2)  # explores 0, 1, 2 while every draft lands
    assert p.learned() is None
    for limit in (8, 8, 1):  # the last step has room for one draft only
        assert p.learned() is None
        n = p.choose(limit)
        p.record(n, n, 0.1 + 0.05 * n, 0.01 * n)
    c = p.learned()  # a batch of 3 was never timed: the last slope
    assert c is not None and c.verify_s == pytest.approx([0.1, 0.15, 0.2]) and c.head_s == pytest.approx(0.01)
    assert DraftPolicy(2, c).learned() is None  # started from costs: nothing new to keep


def test_cold_exploration_stops_at_the_first_rejection():
    p = DraftPolicy(4)
    seen = []
    for accepted in (0, 1, 1):  # plain, draft 1 hits, draft 2 misses its second draft
        n = p.choose(8)
        seen.append(n)
        p.record(n, min(n, accepted), 0.1 + 0.05 * n, 0.01 * n)
    assert seen == [0, 1, 2]
    c = p.learned()  # exploring is over: lengths 3 and 4 were never timed (extrapolated)
    assert c is not None and c.verify_s == pytest.approx([0.1, 0.15, 0.2, 0.25, 0.3])
    assert p.choose(8) in (0, 1, 2)  # from here the policy decides; it never explored 3 or 4


def test_probe_interval_keeps_probes_cheap():
    from qwythos.runtime.draft_policy import PROBE_MIN, probe_floor

    # the 9B shapes on 2 cores; a probe from plain costs one head step (catch-up rows + a draft),
    # not the longer verify: 0.12 / (0.015 * 0.40) = 20 steps
    cpu = DraftCosts([0.40, 0.64, 0.88, 1.12, 1.36], 0.12, [0.0] * 4)
    assert probe_floor(cpu, 0) == 20
    assert probe_floor(cpu, 1) == 11  # 0.12 / (0.015 * (0.64 + 0.12)) = 10.5
    gpu = DraftCosts([0.020, 0.0202, 0.0204, 0.0206, 0.0208], 0.0003, [0.0] * 4)
    assert probe_floor(gpu, 0) == PROBE_MIN and probe_floor(None, 0) == PROBE_MIN
    p = DraftPolicy(4, cpu)
    chosen = [p.choose(8) for _ in range(30)]
    assert chosen.index(1) == 19 and chosen.count(1) == 1  # the first probe after 20 steps, not 8
