"""The report's statistics against published table values and cases worked by hand."""

from __future__ import annotations

import math

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from preflab.compare import stats


@pytest.mark.parametrize("df, quantile", [(1, 12.7062), (2, 4.3027), (3, 3.1824), (4, 2.7764),
                                          (10, 2.2281), (30, 2.0423), (1e7, 1.9600)])
def test_t_quantiles_match_the_tables(df, quantile):
    assert stats.t_ppf(0.975, df) == pytest.approx(quantile, abs=1e-4)
    assert stats.t_ppf(0.025, df) == pytest.approx(-quantile, abs=1e-4)


@pytest.mark.parametrize("d1, d2, q, value", [(2, 2, 0.975, 39.000), (4, 4, 0.975, 9.6045),
                                              (3, 7, 0.95, 4.3468), (1, 10, 0.95, 4.9646)])
def test_f_quantiles_match_the_tables(d1, d2, q, value):
    assert stats.f_ppf(q, d1, d2) == pytest.approx(value, abs=1e-3)


def test_closed_forms():
    """I_x(1, 1) = x; I_x(a, 1) = x^a; t with 1 df is Cauchy: P(T > t) = 1/2 - atan(t)/pi;
    F(2, 2): P(F > f) = 1 / (1 + f)."""
    assert stats.betainc(1, 1, 0.3) == pytest.approx(0.3)
    assert stats.betainc(3, 1, 0.5) == pytest.approx(0.125)
    assert stats.betainc(2, 3, 0.4) == pytest.approx(0.5248)
    for t in (0.1, 1.0, 3.0, 30.0):
        assert stats.t_sf(t, 1) == pytest.approx(0.5 - math.atan(t) / math.pi)
    assert stats.f_sf(4.0, 2, 2) == pytest.approx(0.2)


def test_welch_by_hand():
    """[1, 2, 3] against [4, 5, 6, 7]: difference -3.5, se sqrt(1/3 + 1.6667/4) = 0.866,
    t = -4.041, df = 0.75^2 / ((1/3)^2 / 2 + (5/12)^2 / 3) = 4.959 (Welch-Satterthwaite),
    two-sided p = 0.0101."""
    test = stats.welch([1, 2, 3], [4, 5, 6, 7])
    assert test.statistic == pytest.approx(-4.0415, abs=1e-4)
    assert test.p == pytest.approx(0.01008, abs=1e-4)
    assert test.significant
    assert test.difference.method == "Welch t, 5.0 df"
    half = stats.t_ppf(0.975, 0.5625 / ((1 / 3) ** 2 / 2 + (5 / 12) ** 2 / 3)) * math.sqrt(0.75)
    assert test.difference.low == pytest.approx(-3.5 - half, abs=1e-6)
    assert half == pytest.approx(2.5770 * 0.8660, abs=1e-3)


def test_one_run_is_never_tested():
    test = stats.welch([0.5], [0.4, 0.41])
    assert test.p is None and not test.significant
    assert stats.mean_ci([0.5]).low is None
    assert stats.paired([0.5], [0.4]).p is None
    assert stats.variance_test([1.0], [1.0, 2.0]).p is None


def test_fisher_exact_by_hand():
    """3 of 3 against 0 of 3: the observed table has probability 1/20 and so does its mirror;
    the two-sided p is 0.1. 1 of 9 against 1 of 9 is the most likely table: p = 1."""
    assert stats.fisher_exact(3, 3, 0, 3).p == pytest.approx(0.1)
    assert stats.fisher_exact(1, 9, 1, 9).p == pytest.approx(1.0)
    assert stats.fisher_exact(8, 9, 1, 9).p == pytest.approx(0.003373, abs=1e-5)


def test_the_interval_covers_at_its_level():
    """Normal samples of 3: the t interval covers the true mean about 95% of the time."""
    import random

    rng = random.Random(0)
    trials = 4000
    covered = 0
    for _ in range(trials):
        ci = stats.mean_ci([rng.gauss(1.0, 0.3) for _ in range(3)])
        covered += ci.low <= 1.0 <= ci.high
    assert abs(covered / trials - 0.95) < 0.015


@settings(max_examples=60, deadline=None)
@given(st.lists(st.floats(-1e3, 1e3), min_size=2, max_size=8),
       st.lists(st.floats(-1e3, 1e3), min_size=2, max_size=8))
def test_tests_never_fail_on_any_numbers(a, b):
    """Equal values, zero spread, huge gaps: every test returns a p in [0, 1] or none."""
    for test in (stats.welch(a, b), stats.variance_test(a, b),
                 stats.paired(a, b[: len(a)] + a[len(b):])):
        assert test.p is None or 0.0 <= test.p <= 1.0
    ci = stats.mean_ci(a)
    assert ci.low <= ci.mean <= ci.high


def test_no_spread_and_non_finite_values_are_never_called_significant():
    """0.1 + 0.2 against 0.3, three times each: rounding noise, not a difference. A constant
    sample has no variance to compare. A NaN or inf pair is left out of a paired test."""
    assert stats.welch([0.1 + 0.2] * 3, [0.3] * 3).p is None
    assert stats.welch([1.0] * 3, [2.0] * 3).p is None  # no spread: nothing says how it varies
    assert stats.variance_test([1.0, 1.0, 1.0], [1.0, 2.0, 3.0]).p is None
    test = stats.paired([1.0, 2.0, float("nan"), 4.0, float("inf")], [0.5, 1.0, 1.0, 3.0, 1.0])
    assert test.difference.n == 3 and test.p is not None


def test_bonferroni_multiplies_by_the_pairs_picked_from():
    test = stats.welch([1, 2, 3], [4, 5, 6, 7])
    assert stats.bonferroni(test, 9).p == pytest.approx(min(1.0, 9 * test.p))
    assert not stats.bonferroni(stats.welch([0.50, 0.55, 0.60], [0.40, 0.45, 0.50]), 9).significant
    assert stats.bonferroni(test, 1) is test
