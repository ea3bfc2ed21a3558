"""Statistics of time-to-target over training runs, honest about runs that never reach the target.

A study trains many runs (seeds) per configuration and records each run's training log-likelihood per iteration.
The *time to target* of a run is the first iteration at which its curve is >= the target. A run whose curve never
gets there within its budget (``len(curve) - 1`` iterations) is *right-censored* at that budget: we only know its
time exceeds the budget. Dropping such runs, or counting them as reaching at the budget, biases every summary
towards "fast"; the Kaplan–Meier (KM) estimator uses them correctly, and is what :func:`speedup` compares.

Conventions (used throughout, and by the tests):

* KM survival ``S(t) = prod_{t_i <= t} (1 - d_i / n_i)`` over distinct event times ``t_i``, with ``d_i`` events at
  ``t_i`` and ``n_i`` runs whose time (event or censoring) is ``>= t_i``: a run censored at the same time as an
  event still counts as at risk, i.e. events come before censorings at equal times.
* KM median: the smallest time ``t`` with ``S(t) <= 0.5``; ``None`` ("not reached") when ``S`` never drops to 0.5.
  Without censoring this is the *lower* empirical median: the ``ceil(n / 2)``-th smallest time.
* Quantiles of the runs that reached use the same inverse-CDF convention (``numpy`` method ``"inverted_cdf"``), so
  they are always observed iterations and ``median_reached == km_median`` when every run reached.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass
from statistics import NormalDist

import numpy as np

from overspn.errors import ConfigurationError

# Products like (9/10)(8/9)...(5/6) equal 0.5 exactly but may round to 0.5000000000000001; a run must not be
# declared "not at the median" over that. Real survival values closer than this to 0.5 need astronomically many runs.
_HALF = 0.5 + 1e-10

__all__ = [
    "ReachSummary",
    "SpeedupEstimate",
    "binomial_interval",
    "first_reach",
    "kaplan_meier_curve",
    "kaplan_meier_median",
    "speedup",
    "summarise_reach",
]


def first_reach(curve: np.ndarray, target: float) -> int | None:
    """The first iteration index ``i`` with ``curve[i] >= target`` (NaN never counts), or ``None`` if there is none."""
    values = np.asarray(curve, dtype=float)
    if values.ndim != 1 or values.size == 0:
        raise ConfigurationError(f"a curve must be a non-empty 1-D array, got shape {values.shape}")
    if np.isnan(target):
        raise ConfigurationError("the target must not be NaN")
    hits = np.flatnonzero(values >= target)
    return int(hits[0]) if hits.size else None


@dataclass(frozen=True)
class ReachSummary:
    """How a group of runs reached a target.

    ``iterations[k]`` is run ``k``'s first iteration at the target (``None``: not within its budget ``budgets[k]`` =
    ``len(curve) - 1``); ``budget`` is the largest of them. ``median_reached``/``q25_reached``/``q75_reached`` are
    inverse-CDF quantiles over the runs that reached only (``None`` if none did), so they describe the fast runs and
    are biased low whenever some runs are censored. ``km_median`` is the Kaplan–Meier median over all runs, the
    non-reaching ones right-censored at their budget; ``None`` means "not reached": fewer than half of the runs are
    known to reach the target, so the median time lies beyond the data.
    """

    runs: int
    reached: int
    fraction_reached: float
    median_reached: float | None
    q25_reached: float | None
    q75_reached: float | None
    km_median: float | None
    iterations: list[int | None]
    budget: int
    budgets: list[int]

    def as_dict(self) -> dict[str, object]:
        """A JSON-ready dictionary of the fields (lists copied)."""
        return asdict(self)

    def times_observed(self) -> tuple[np.ndarray, np.ndarray]:
        """Time per run (reach iteration, or its budget if censored) and whether the target was reached."""
        observed = np.array([it is not None for it in self.iterations], dtype=bool)
        times = np.array([b if it is None else it for it, b in zip(self.iterations, self.budgets)], dtype=float)
        return times, observed


def summarise_reach(curves: Sequence[np.ndarray], target: float) -> ReachSummary:
    """Summarise when each curve first reaches ``target``; each curve's budget is ``len(curve) - 1`` iterations."""
    if len(curves) == 0:
        raise ConfigurationError("summarise_reach needs at least one curve")
    iterations = [first_reach(curve, target) for curve in curves]
    budgets = [int(np.asarray(curve).shape[0]) - 1 for curve in curves]
    hits = np.array([it for it in iterations if it is not None], dtype=float)

    def quantile(q: float) -> float | None:
        return float(np.quantile(hits, q, method="inverted_cdf")) if hits.size else None

    times = np.array([b if it is None else it for it, b in zip(iterations, budgets)], dtype=float)
    return ReachSummary(
        runs=len(curves),
        reached=int(hits.size),
        fraction_reached=hits.size / len(curves),
        median_reached=quantile(0.5),
        q25_reached=quantile(0.25),
        q75_reached=quantile(0.75),
        km_median=kaplan_meier_median(times, np.array([it is not None for it in iterations])),
        iterations=iterations,
        budget=max(budgets),
        budgets=budgets,
    )


def _validated(times: object, observed: object) -> tuple[np.ndarray, np.ndarray]:
    t = np.asarray(times, dtype=float)
    o = np.asarray(observed)
    if t.ndim != 1 or t.size == 0:
        raise ConfigurationError(f"times must be a non-empty 1-D array, got shape {t.shape}")
    if o.shape != t.shape:
        raise ConfigurationError(f"observed has shape {o.shape}, times has shape {t.shape}")
    if not np.all(np.isfinite(t)) or np.any(t < 0):
        raise ConfigurationError("times must be finite and >= 0")
    if o.dtype != bool and not np.all((o == 0) | (o == 1)):
        raise ConfigurationError("observed must hold booleans (True: the target was reached at that time)")
    return t, o.astype(bool)


def _grouped(times: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Distinct times, and for each run the index of its time among them."""
    distinct, group = np.unique(times, return_inverse=True)
    return distinct, group.reshape(-1)


def _survival(events: np.ndarray, totals: np.ndarray) -> np.ndarray:
    """KM survival at each distinct time, row-wise, from event and run counts per distinct time (shape (B, K))."""
    at_risk = np.cumsum(totals[:, ::-1], axis=1)[:, ::-1]  # runs with time >= t: censorings at t still at risk
    with np.errstate(divide="ignore", invalid="ignore"):
        hazard = np.where(at_risk > 0, events / at_risk, 0.0)
    return np.cumprod(1.0 - hazard, axis=1)


def _medians(distinct: np.ndarray, events: np.ndarray, totals: np.ndarray) -> np.ndarray:
    """Row-wise KM medians (NaN where not reached) from counts per distinct time (shape (B, K))."""
    below = _survival(events, totals) <= _HALF
    first = np.argmax(below, axis=1)
    return np.where(below.any(axis=1), distinct[first], np.nan)


def kaplan_meier_curve(times: object, observed: object) -> tuple[np.ndarray, np.ndarray]:
    """The KM survival function as a step function: distinct times ``t`` (ascending) and ``S(t)`` just after each.

    ``observed[k]`` is True when run ``k`` reached the target at ``times[k]``, False when it was censored there.
    """
    t, o = _validated(times, observed)
    distinct, group = _grouped(t)
    events = np.bincount(group, weights=o, minlength=distinct.size)[None, :]
    totals = np.bincount(group, minlength=distinct.size)[None, :].astype(float)
    return distinct, _survival(events, totals)[0]


def kaplan_meier_median(times: object, observed: object) -> float | None:
    """The KM median time: the smallest ``t`` with ``S(t) <= 0.5``, or ``None`` ("not reached") if there is none."""
    distinct, survival = kaplan_meier_curve(times, observed)
    below = np.flatnonzero(survival <= _HALF)
    return float(distinct[below[0]]) if below.size else None


@dataclass(frozen=True)
class SpeedupEstimate:
    """``ratio`` = KM median of ``baseline`` / KM median of ``other`` (> 1: ``other`` is faster), with a CI.

    ``ratio`` is ``None`` when either median is not reached or ``other``'s median is 0. ``low``/``high`` form a
    percentile bootstrap interval at ``level``: runs are resampled with replacement within each group independently,
    ``resamples`` times. A resample whose ratio is undefined (a median not reached, or 0 in ``other``) is dropped,
    which conditions the interval on the medians being defined; ``defined_fraction`` says how many were kept, and the
    interval is ``None`` when fewer than half were, as it would then describe an unrepresentative minority.
    """

    ratio: float | None
    low: float | None
    high: float | None
    baseline_median: float | None
    other_median: float | None
    resamples: int
    level: float
    defined_fraction: float

    def as_dict(self) -> dict[str, object]:
        """A JSON-ready dictionary of the fields."""
        return asdict(self)


Group = ReachSummary | tuple[object, object]


def _group(group: Group) -> tuple[np.ndarray, np.ndarray]:
    if isinstance(group, ReachSummary):
        return group.times_observed()
    if not isinstance(group, tuple) or len(group) != 2:
        raise ConfigurationError("a group must be a ReachSummary or a (times, observed) pair")
    return _validated(*group)


def _bootstrap_medians(times: np.ndarray, observed: np.ndarray, resamples: int, rng: np.random.Generator) -> np.ndarray:
    """KM medians of ``resamples`` bootstrap resamples of the runs, computed together from per-time counts."""
    distinct, group = _grouped(times)
    n, k = times.size, distinct.size
    picks = rng.integers(0, n, size=(resamples, n))
    # Flattened (resample, distinct time) cell of every pick: one bincount counts all resamples at once.
    cells = (np.arange(resamples)[:, None] * k + group[picks]).ravel()
    totals = np.bincount(cells, minlength=resamples * k).reshape(resamples, k).astype(float)
    events = np.bincount(cells, weights=observed[picks].ravel(), minlength=resamples * k).reshape(resamples, k)
    return _medians(distinct, events, totals)


def _ratio(baseline: np.ndarray, other: np.ndarray) -> np.ndarray:
    with np.errstate(divide="ignore", invalid="ignore"):
        ratio = baseline / other
    return np.where(np.isfinite(ratio), ratio, np.nan)  # NaN marks undefined: a median not reached, or 0 in other


def speedup(
    baseline: Group,
    other: Group,
    *,
    seed: int | np.random.Generator | None = 0,
    resamples: int = 2000,
    level: float = 0.95,
) -> SpeedupEstimate:
    """How many times faster ``other`` reaches the target than ``baseline``, as a ratio of KM medians with a CI.

    Each group is a :class:`ReachSummary` or a ``(times, observed)`` pair (see :func:`kaplan_meier_curve`). ``seed``
    seeds the bootstrap (a Generator is used as is). See :class:`SpeedupEstimate` for the definitions.
    """
    if int(resamples) != resamples or resamples < 1:
        raise ConfigurationError(f"resamples must be a positive integer, got {resamples}")
    if not 0.0 < level < 1.0:
        raise ConfigurationError(f"level must lie in (0, 1), got {level}")
    (bt, bo), (ot, oo) = _group(baseline), _group(other)
    b_median, o_median = kaplan_meier_median(bt, bo), kaplan_meier_median(ot, oo)
    point = _ratio(*(np.array([np.nan if m is None else m]) for m in (b_median, o_median)))
    rng = np.random.default_rng(seed)
    ratios = _ratio(_bootstrap_medians(bt, bo, int(resamples), rng), _bootstrap_medians(ot, oo, int(resamples), rng))
    defined = ratios[~np.isnan(ratios)]
    fraction = defined.size / int(resamples)
    low = high = None
    if fraction >= 0.5:
        low, high = (float(v) for v in np.quantile(defined, [(1.0 - level) / 2.0, (1.0 + level) / 2.0]))
    return SpeedupEstimate(
        ratio=None if np.isnan(point[0]) else float(point[0]),
        low=low,
        high=high,
        baseline_median=b_median,
        other_median=o_median,
        resamples=int(resamples),
        level=float(level),
        defined_fraction=fraction,
    )


def binomial_interval(successes: int, trials: int, level: float = 0.95) -> tuple[float, float]:
    """Wilson score interval for a binomial proportion ``successes / trials`` at confidence ``level``.

    With ``p = successes / trials``, ``n = trials`` and ``z`` the standard normal ``(1 + level) / 2`` quantile, the
    bounds are ``(p + z²/2n ± z sqrt(p(1-p)/n + z²/4n²)) / (1 + z²/n)``. Unlike the Wald interval it stays inside
    [0, 1] and keeps its coverage near 0 and ``trials``, where "fraction of slow runs" statements usually live.
    """
    if int(trials) != trials or trials < 1:
        raise ConfigurationError(f"trials must be a positive integer, got {trials}")
    if int(successes) != successes or not 0 <= successes <= trials:
        raise ConfigurationError(f"successes must be an integer in [0, trials], got {successes}")
    if not 0.0 < level < 1.0:
        raise ConfigurationError(f"level must lie in (0, 1), got {level}")
    z = NormalDist().inv_cdf((1.0 + level) / 2.0)
    n, p = float(trials), successes / trials
    denominator = 1.0 + z * z / n
    centre = (p + z * z / (2.0 * n)) / denominator
    half = z * np.sqrt(p * (1.0 - p) / n + z * z / (4.0 * n * n)) / denominator
    # At 0 (n) successes the lower (upper) bound is exactly 0 (1); the formula gives it only up to rounding.
    low = 0.0 if successes == 0 else max(0.0, float(centre - half))
    high = 1.0 if successes == trials else min(1.0, float(centre + half))
    return low, high
