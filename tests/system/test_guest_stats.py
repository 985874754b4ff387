"""guest/stats.py: the guest bench's paired comparisons, checked against values worked out
by hand (exact signed-rank tails by counting sign patterns)."""

from __future__ import annotations

import importlib.util
import math
import sys
from pathlib import Path

import pytest

GUEST = Path(__file__).resolve().parents[2] / "guest"


def _load():
    spec = importlib.util.spec_from_file_location("guest_stats", GUEST / "stats.py")
    mod = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = mod            # dataclasses look their module up there
    spec.loader.exec_module(mod)
    return mod


stats = _load()


def test_signed_rank_all_positive_is_the_smallest_exact_tail():
    # one sign pattern of 2^5 gives W+ = 15; two-sided doubles it
    assert stats.signed_rank_p([1, 2, 3, 4, 5]) == pytest.approx(2 / 32)
    assert stats.signed_rank_p([-0.1, -0.2, -0.3, -0.4, -0.5, -0.6, -0.7, -0.8, -0.9, -1.0]) \
        == pytest.approx(2 / 1024)


def test_signed_rank_counts_the_subsets_at_least_as_extreme():
    # W+ = 1+3+4+5 = 13; subsets of {1..5} summing to >= 13: {all}, {2,3,4,5}, {1,3,4,5}
    assert stats.signed_rank_p([1, -2, 3, 4, 5]) == pytest.approx(2 * 3 / 32)


def test_signed_rank_ties_share_their_rank_and_zeros_drop_out():
    # three tied |d| -> ranks 2,2,2; W+ = 4 of {0:1, 2:3, 4:3, 6:1}/8: P(<=4) = 7/8, P(>=4) = 4/8
    assert stats.signed_rank_p([1, 1, -1, 0, 0]) == pytest.approx(1.0)
    assert stats.signed_rank_p([0, 0]) == 1.0


def test_signed_rank_large_samples_use_the_normal_tail():
    n = stats.EXACT_MAX + 20
    p = stats.signed_rank_p([float(i + 1) for i in range(n)])
    # W+ = n(n+1)/2, mean n(n+1)/4, var n(n+1)(2n+1)/24
    z = (n * (n + 1) / 4) / math.sqrt(n * (n + 1) * (2 * n + 1) / 24)
    assert p == pytest.approx(math.erfc(z / math.sqrt(2)))


def test_compare_pairs_by_round_and_orients_by_metric():
    base = {1: 10.0, 2: 20.0, 3: 40.0, 4: 8.0}
    other = {1: 5.0, 2: 10.0, 3: 20.0, 5: 1.0}       # round 4 and 5 unpaired
    c = stats.compare(base, other, higher_is_better=False)
    assert c.n == 3
    assert c.speed == pytest.approx(2.0)
    assert c.median == pytest.approx(2.0)
    assert c.ci == pytest.approx((2.0, 2.0))
    assert c.call == "faster"
    up = stats.compare(base, other, higher_is_better=True)
    assert up.speed == pytest.approx(0.5) and up.call == "slower"


def test_compare_calls_nothing_when_the_interval_spans_one():
    base = {r: 10.0 for r in range(1, 9)}
    other = dict(enumerate([9.0, 11.0, 9.5, 10.5, 9.0, 11.0, 10.2, 9.8], start=1))
    c = stats.compare(base, other)
    assert c.ci[0] < 1.0 < c.ci[1]
    assert c.call == "no call"
    assert c.p > 0.5


def test_bootstrap_interval_lies_within_the_data_and_is_reproducible():
    logs = stats.np.log(stats.np.array([1.0, 1.1, 1.2, 0.9, 1.05]))
    lo, hi = stats.bootstrap_ci(logs)
    assert logs.min() <= lo < logs.mean() < hi <= logs.max()
    assert stats.bootstrap_ci(logs) == (lo, hi)


def test_compare_needs_two_pairs_and_skips_failed_values():
    assert stats.compare({1: 1.0}, {1: 2.0}) is None
    assert stats.compare({1: 1.0, 2: None}, {1: 2.0, 2: 3.0}) is None


def test_spread_is_range_over_median():
    assert stats.spread([1.0, 2.0, 3.0]) == pytest.approx(1.0)
    assert stats.spread([5.0]) is None
