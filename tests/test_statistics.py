"""Tests of overspn.studies.statistics: time-to-target, Kaplan–Meier medians, bootstrap speedups, Wilson intervals."""

from __future__ import annotations

import json
import math
import time

import numpy as np
import pytest
from scipy import stats

from overspn.errors import ConfigurationError
from overspn.studies.statistics import (
    ReachSummary,
    binomial_interval,
    first_reach,
    kaplan_meier_curve,
    kaplan_meier_median,
    speedup,
    summarise_reach,
)


def step_curve(reach: int | None, budget: int) -> np.ndarray:
    """A log-likelihood curve at -2 that jumps to -1 at iteration ``reach`` (never if None); target -1.5."""
    curve = np.full(budget + 1, -2.0)
    if reach is not None:
        curve[reach:] = -1.0
    return curve


# ---------------------------------------------------------------- first_reach and summarise_reach


def test_first_reach_finds_the_first_index_at_or_above_the_target_and_ignores_nan():
    assert first_reach(np.array([-3.0, np.nan, -1.0, -2.0, 0.0]), -1.0) == 2
    assert first_reach(np.array([-3.0, -2.0]), -1.0) is None
    assert first_reach(np.array([0.0, 1.0]), 0.0) == 0


@pytest.mark.parametrize("curve", [np.array([]), np.zeros((2, 3))])
def test_first_reach_rejects_empty_or_non_vector_curves(curve):
    with pytest.raises(ConfigurationError):
        first_reach(curve, 0.0)


def test_summary_on_synthetic_curves_separates_reached_quantiles_from_the_km_median():
    reaches = [9, 3, None, 7, 5, None]
    summary = summarise_reach([step_curve(r, 10) for r in reaches], -1.5)
    assert (summary.runs, summary.reached, summary.budget, summary.budgets) == (6, 4, 10, [10] * 6)
    assert summary.fraction_reached == pytest.approx(4 / 6)
    assert summary.iterations == reaches
    # Inverse-CDF quantiles of {3, 5, 7, 9}: F(3) = .25, F(5) = .5, F(7) = .75.
    assert (summary.q25_reached, summary.median_reached, summary.q75_reached) == (3.0, 5.0, 7.0)
    # KM over all six, two censored at 10: S(3) = 5/6, S(5) = 4/6, S(7) = 3/6 = 0.5 -> median 7, not the biased 5.
    assert summary.km_median == 7.0
    json.dumps(summary.as_dict())


def test_summary_when_no_run_reaches():
    summary = summarise_reach([step_curve(None, 5)] * 3, -1.5)
    assert (summary.reached, summary.fraction_reached) == (0, 0.0)
    assert summary.median_reached is summary.q25_reached is summary.q75_reached is summary.km_median is None
    times, observed = summary.times_observed()
    assert times.tolist() == [5.0] * 3 and not observed.any()


def test_summary_when_all_runs_reach_the_km_median_is_the_reached_median():
    reaches = [4, 1, 8, 2, 6, 3]
    summary = summarise_reach([step_curve(r, 10) for r in reaches], -1.5)
    assert summary.fraction_reached == 1.0
    assert summary.km_median == summary.median_reached == 3.0  # lower median of 1 2 3 4 6 8


def test_summary_uses_each_curves_own_budget():
    summary = summarise_reach([step_curve(None, 4), step_curve(2, 10), step_curve(None, 10)], -1.5)
    assert summary.budgets == [4, 10, 10] and summary.budget == 10
    times, observed = summary.times_observed()
    assert times.tolist() == [4.0, 2.0, 10.0] and observed.tolist() == [False, True, False]


def test_summary_rejects_no_curves():
    with pytest.raises(ConfigurationError):
        summarise_reach([], 0.0)


# ---------------------------------------------------------------- Kaplan–Meier


def test_km_median_on_a_hand_computed_example():
    times = [2, 3, 3, 5, 6, 8, 9, 10]
    observed = [True, True, False, True, False, True, False, True]
    # t=2:  at risk 8, 1 event               S = 7/8             = 0.875
    # t=3:  at risk 7 (the censored 3 too), 1 event  S = 0.875 * 6/7 = 0.75
    # t=5:  at risk 5, 1 event               S = 0.75 * 4/5      = 0.6
    # t=6:  censored, S stays 0.6; at risk afterwards 3
    # t=8:  at risk 3, 1 event               S = 0.6 * 2/3       = 0.4   <= 0.5 first -> median 8
    # t=9:  censored; t=10: at risk 1, 1 event  S = 0
    distinct, survival = kaplan_meier_curve(times, observed)
    assert distinct.tolist() == [2, 3, 5, 6, 8, 9, 10]
    np.testing.assert_allclose(survival, [0.875, 0.75, 0.6, 0.6, 0.4, 0.4, 0.0])
    assert kaplan_meier_median(times, observed) == 8.0


def test_km_ties_put_events_before_censorings():
    # t=1: 5 at risk, 1 event -> 0.8. t=2: the run censored at 2 is still at risk: 4 at risk, 1 event -> 0.6
    # (censorings first would give 0.8 * 2/3). t=3: 2 at risk, 2 events -> 0.
    _, survival = kaplan_meier_curve([1, 2, 2, 3, 3], [True, True, False, True, True])
    np.testing.assert_allclose(survival, [0.8, 0.6, 0.0])


def test_km_median_is_not_reached_when_survival_stays_above_half():
    assert kaplan_meier_median([1, 2, 5, 5, 5], [True, True, False, False, False]) is None


@pytest.mark.parametrize("n", [1, 2, 5, 10, 11, 40, 101])
def test_km_median_without_censoring_is_the_lower_empirical_median(n):
    x = np.random.default_rng(n).integers(0, 30, size=n).astype(float)
    median = kaplan_meier_median(x, np.ones(n, dtype=bool))
    assert median == np.sort(x)[math.ceil(n / 2) - 1] == np.quantile(x, 0.5, method="inverted_cdf")


@pytest.mark.parametrize("n", [24, 28, 30, 38])
def test_km_median_is_exact_where_the_survival_product_rounds_above_half(n):
    # For these n the float product (1 - 1/n)(1 - 1/(n-1))...(1 - 1/(n/2 + 1)) comes out just above 0.5; exactly it is
    # 0.5, so the lower median of 1..n is n/2.
    assert np.cumprod(1 - 1 / np.arange(n, 0, -1.0))[n // 2 - 1] > 0.5
    assert kaplan_meier_median(np.arange(1, n + 1), np.ones(n, dtype=bool)) == n / 2


@pytest.mark.skipif(not hasattr(stats, "ecdf"), reason="scipy.stats.ecdf needs scipy >= 1.11")
@pytest.mark.parametrize("seed", range(12))
def test_km_matches_scipy_ecdf_on_censored_data_with_ties(seed):
    rng = np.random.default_rng(seed)
    n = int(rng.integers(3, 60))
    times = rng.integers(0, 15, size=n).astype(float)  # few distinct values: many ties between events and censorings
    observed = rng.random(n) < rng.uniform(0.2, 1.0)
    if not observed.any():
        observed[0] = True
    result = stats.ecdf(stats.CensoredData(uncensored=times[observed], right=times[~observed]))
    distinct, survival = kaplan_meier_curve(times, observed)
    np.testing.assert_allclose(survival, result.sf.evaluate(distinct), atol=1e-12)
    below = result.sf.quantiles[result.sf.probabilities <= 0.5 + 1e-10]
    expected = float(below[0]) if below.size else None
    assert kaplan_meier_median(times, observed) == expected


@pytest.mark.parametrize(
    ("times", "observed"),
    [([], []), ([1.0, 2.0], [True]), ([1.0, -1.0], [True, True]), ([1.0, np.nan], [True, True]), ([1.0], [2])],
)
def test_km_rejects_bad_input(times, observed):
    with pytest.raises(ConfigurationError):
        kaplan_meier_median(times, observed)


# ---------------------------------------------------------------- bootstrap speedup


def exponential_group(rng: np.random.Generator, scale: float, runs: int, budget: float) -> tuple[np.ndarray, ...]:
    times = rng.exponential(scale, size=runs)
    return np.minimum(times, budget), times <= budget


def test_speedup_ci_covers_the_true_ratio_in_most_repetitions():
    # Medians 20 ln 2 and 10 ln 2: the true ratio is 2; 13.5% of baseline runs are censored at the budget 40.
    rng = np.random.default_rng(20240601)
    covered = 0
    for repetition in range(20):
        estimate = speedup(
            exponential_group(rng, 20.0, 60, 40.0), exponential_group(rng, 10.0, 60, 40.0), seed=repetition
        )
        assert estimate.defined_fraction == 1.0 and estimate.low <= estimate.ratio <= estimate.high
        covered += estimate.low <= 2.0 <= estimate.high
    assert covered >= 16  # nominal 19 of 20; fixed seeds make this deterministic


def test_speedup_accepts_summaries_and_is_deterministic_per_seed():
    fast = summarise_reach([step_curve(r, 20) for r in [2, 3, 4, 5, 6, None]], -1.5)
    slow = summarise_reach([step_curve(r, 20) for r in [6, 8, 10, 12, None, None]], -1.5)
    first, again = speedup(slow, fast, seed=3), speedup(slow, fast, seed=np.random.default_rng(3))
    assert first == again
    assert (first.baseline_median, first.other_median, first.ratio) == (10.0, 4.0, 2.5)
    assert (first.resamples, first.level) == (2000, 0.95)
    json.dumps(first.as_dict())


def test_speedup_drops_resamples_with_an_undefined_median():
    reached_half = ([1.0] * 5 + [10.0] * 5, [True] * 5 + [False] * 5)  # median 1, undefined in ~38% of resamples
    other = ([1.0] * 10, [True] * 10)
    estimate = speedup(reached_half, other, seed=0)
    assert estimate.ratio == 1.0 and 0.5 <= estimate.defined_fraction < 0.9
    assert estimate.low == estimate.high == 1.0


def test_speedup_has_no_ci_when_most_resamples_are_undefined():
    reached_few = ([1.0] * 4 + [10.0] * 6, [True] * 4 + [False] * 6)  # median not reached, defined in ~37%
    estimate = speedup(reached_few, ([1.0] * 10, [True] * 10), seed=0)
    assert estimate.ratio is None and estimate.baseline_median is None
    assert estimate.defined_fraction < 0.5 and estimate.low is None and estimate.high is None


def test_speedup_is_undefined_when_the_other_median_is_zero():
    estimate = speedup(([3.0] * 4, [True] * 4), ([0.0] * 4, [True] * 4), seed=0)
    assert estimate.ratio is None and estimate.defined_fraction == 0.0 and estimate.low is None


def test_speedup_bootstrap_is_fast():
    rng = np.random.default_rng(0)
    baseline, other = exponential_group(rng, 20.0, 120, 40.0), exponential_group(rng, 10.0, 120, 40.0)
    speedup(baseline, other, seed=0, resamples=10)  # warm-up: imports and first-call costs
    start = time.perf_counter()
    speedup(baseline, other, seed=0, resamples=2000)
    assert time.perf_counter() - start < 1.0


@pytest.mark.parametrize("kwargs", [{"resamples": 0}, {"resamples": 2.5}, {"level": 1.0}, {"level": 0.0}])
def test_speedup_rejects_bad_options(kwargs):
    group = ([1.0, 2.0], [True, True])
    with pytest.raises(ConfigurationError):
        speedup(group, group, **kwargs)


@pytest.mark.parametrize("bad", [([], []), [1.0, 2.0], ([1.0], [True], [0])])
def test_speedup_rejects_bad_groups(bad):
    with pytest.raises(ConfigurationError):
        speedup(bad, ([1.0], [True]))


def test_summary_type_is_frozen():
    summary = summarise_reach([step_curve(1, 3)], -1.5)
    assert isinstance(summary, ReachSummary)
    with pytest.raises(AttributeError):
        summary.runs = 2  # type: ignore[misc]


# ---------------------------------------------------------------- Wilson interval


def test_wilson_interval_at_30_of_120_matches_the_closed_form():
    low, high = binomial_interval(30, 120)
    z, n, p = stats.norm.ppf(0.975), 120, 0.25
    # The Wilson bounds are the roots in pi of (p - pi)^2 = z^2 pi (1 - pi) / n.
    roots = np.sort(np.roots([1 + z * z / n, -(2 * p + z * z / n), p * p]))
    np.testing.assert_allclose([low, high], roots, rtol=1e-12)
    np.testing.assert_allclose([low, high], [0.181098, 0.334411], atol=1e-6)


@pytest.mark.parametrize(("k", "n", "level"), [(30, 120, 0.95), (0, 20, 0.95), (20, 20, 0.9), (7, 13, 0.99)])
def test_wilson_interval_matches_scipy(k, n, level):
    expected = stats.binomtest(k, n).proportion_ci(confidence_level=level, method="wilson")
    np.testing.assert_allclose(binomial_interval(k, n, level), [expected.low, expected.high], atol=1e-12)


def test_wilson_interval_ends_at_the_boundaries_for_all_or_nothing():
    assert binomial_interval(0, 10)[0] == 0.0 and binomial_interval(10, 10)[1] == 1.0


@pytest.mark.parametrize(("k", "n", "level"), [(1, 0, 0.95), (-1, 5, 0.95), (6, 5, 0.95), (2, 5, 1.5), (1.5, 5, 0.9)])
def test_wilson_interval_rejects_bad_input(k, n, level):
    with pytest.raises(ConfigurationError):
        binomial_interval(k, n, level)
