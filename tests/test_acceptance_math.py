"""The acceptance arithmetic every report shares (core/drafting/rates.py)."""

from __future__ import annotations

import pytest

from qwythos.core.drafting.rates import depth_rates, expected_accepted, rate, sum_counts


def test_rates_are_conditional_and_zero_safe():
    assert depth_rates([8, 4, 0], [10, 8, 0]) == [0.8, 0.5, 0.0]
    assert rate(0, 0) == 0.0


def test_expected_accepted_is_the_sum_of_cumulative_products():
    # 0.8 + 0.8*0.5 + 0.8*0.5*0.25
    assert expected_accepted([0.8, 0.5, 0.25]) == pytest.approx(0.8 + 0.4 + 0.1)
    assert expected_accepted([]) == 0.0
    assert expected_accepted([1.0, 1.0, 1.0]) == 3.0


def test_sum_counts_pads_short_rows():
    assert sum_counts([[1, 2], [3], [0, 1, 5]], 3) == [4, 3, 5]


def test_unequal_lengths_are_refused():
    with pytest.raises(ValueError):
        depth_rates([1, 2], [3])
