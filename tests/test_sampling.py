"""Sampling transforms over numpy logits: greedy, penalty, top-k/top-p/min-p, residual, seeding."""

from __future__ import annotations

import numpy as np
import pytest

from qwythos.runtime.sampling import (
    GREEDY,
    Dist,
    SamplingParams,
    choose,
    distribution,
    greedy_token,
    penalized,
    residual,
)


def test_greedy_is_argmax_and_penalty_can_flip_it():
    logits = np.array([0.0, 3.0, 2.9, -1.0], dtype=np.float32)
    assert greedy_token(logits, []) == 1
    sp = SamplingParams(temperature=0.0, repeat_penalty=1.2)
    assert greedy_token(logits, [1], sp) == 2  # 3.0 / 1.2 < 2.9
    assert greedy_token(logits, [1], GREEDY) == 1


def test_penalty_divides_positive_and_multiplies_negative_in_window():
    logits = np.array([2.0, -2.0, 1.0], dtype=np.float32)
    sp = SamplingParams(repeat_penalty=2.0, repeat_last_n=2)
    out = penalized(logits, [2, 0, 1], sp)  # window = [0, 1]
    assert out.tolist() == [1.0, -4.0, 1.0]
    assert logits.tolist() == [2.0, -2.0, 1.0]  # input untouched


def test_top_k_top_p_min_p_and_temperature():
    logits = np.log(np.array([0.5, 0.25, 0.15, 0.1], dtype=np.float32))
    base = SamplingParams(temperature=1.0, top_k=0, top_p=1.0, min_p=0.0, repeat_penalty=1.0)
    d = distribution(logits, [], base)
    assert d.ids.tolist() == [0, 1, 2, 3]
    assert np.allclose(d.p, [0.5, 0.25, 0.15, 0.1])
    d = distribution(logits, [], SamplingParams(temperature=1.0, top_k=2, top_p=1.0, repeat_penalty=1.0))
    assert d.ids.tolist() == [0, 1] and np.allclose(d.p, [2 / 3, 1 / 3])
    d = distribution(logits, [], SamplingParams(temperature=1.0, top_k=0, top_p=0.7, repeat_penalty=1.0))
    assert d.ids.tolist() == [0, 1]
    d = distribution(
        logits, [], SamplingParams(temperature=1.0, top_k=0, top_p=1.0, min_p=0.35, repeat_penalty=1.0)
    )
    assert d.ids.tolist() == [0, 1]
    cold = distribution(logits, [], SamplingParams(temperature=0.25, top_k=0, top_p=1.0, repeat_penalty=1.0))
    assert cold.p[0] > 0.9


def test_residual_is_positive_part_of_p_minus_q():
    p = Dist(np.array([3, 5, 7]), np.array([0.5, 0.3, 0.2]))
    q = Dist(np.array([5, 3, 9]), np.array([0.6, 0.2, 0.2]))
    r = residual(p, q)
    expect = {3: 0.3, 5: 0.0, 7: 0.2}
    got = dict(zip(r.ids.tolist(), r.p.tolist(), strict=True))
    for k, v in expect.items():
        assert got[k] == pytest.approx(v / 0.5)
    same = residual(p, Dist(p.ids.copy(), p.p.copy()))
    assert np.allclose(same.p, p.p)


def test_seeded_sampling_is_reproducible_and_follows_probabilities():
    logits = np.log(np.array([0.6, 0.3, 0.1], dtype=np.float32))
    sp = SamplingParams(temperature=1.0, top_k=0, top_p=1.0, repeat_penalty=1.0, seed=7)
    a = [choose(logits, [], sp, np.random.default_rng(7)) for _ in range(3)]
    b = [choose(logits, [], sp, np.random.default_rng(7)) for _ in range(3)]
    assert a == b
    rng = np.random.default_rng(0)
    counts = np.bincount([choose(logits, [], sp, rng) for _ in range(6000)], minlength=3) / 6000
    assert np.allclose(counts, [0.6, 0.3, 0.1], atol=0.03)


def test_large_vocab_is_fast():
    import time

    rng = np.random.default_rng(0)
    logits = rng.standard_normal(248320).astype(np.float32)
    hist = list(rng.integers(0, 248320, 64))
    t = time.perf_counter()
    for _ in range(20):
        greedy_token(logits, hist, SamplingParams(temperature=0.0))
        distribution(logits, hist, SamplingParams())
    assert (time.perf_counter() - t) / 20 < 0.05
