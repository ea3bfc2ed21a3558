"""What a depth study's runs amount to: ``curves.csv``, the summary (final log-likelihoods, when the runs reach a
target level, speed-ups over depth 1, with the statistics of :mod:`overspn.studies.statistics`), its printed lines
and one figure per data set; :func:`write_outputs` writes them all.

The study and its runs are defined in :mod:`overspn.studies.depth`, which re-exports these names.
"""

from __future__ import annotations

import csv
import io
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from overspn.atomic import atomic_write_json, atomic_write_text
from overspn.errors import ConfigurationError
from overspn.studies.report import figure, save_figure
from overspn.studies.statistics import binomial_interval, speedup, summarise_reach

if TYPE_CHECKING:  # depth.py imports this module at its top, so only the type checker imports depth.py here
    from overspn.studies.depth import RunResult, Study

__all__ = ["CURVE_COLUMNS", "DEFAULT_TARGETS", "METRICS", "TARGET_GAP", "curves_table", "default_target",
           "format_summary", "plot_study", "reach_statistics", "speedup_statistics", "summarise", "write_outputs"]

TARGET_GAP = 0.05  # nats below the best final value that count as "reached the plateau"


def _branching(depth: int) -> tuple[int, ...]:
    # imported when called: depth.py imports this module at its top (to re-export it), so not the other way round
    from overspn.studies.depth import BRANCHINGS

    return BRANCHINGS[depth]


CURVE_COLUMNS = ("protocol", "dataset", "depth", "run", "iteration", "train_llh", "test_llh")


def curves_table(study: Study, results: Sequence[RunResult]) -> str:
    """``curves.csv``: one row per run and iteration (iteration 0 = before the first update), exact floats."""
    stream = io.StringIO()
    writer = csv.writer(stream, lineterminator="\n")
    writer.writerow(CURVE_COLUMNS)
    for result in results:
        test = result.history.test_llh
        for iteration, value in enumerate(result.history.train_llh):
            writer.writerow([study.protocol, result.dataset, result.depth, result.run, iteration, repr(value),
                             "" if test is None else repr(test[iteration])])
    return stream.getvalue()


DEFAULT_TARGETS: dict[str, float] = {"nltcs": -7.10}  # the README's level: 0.05 nats below the -7.05 plateau
METRICS = ("train", "test")


def default_target(name: str, curves: dict[int, np.ndarray]) -> tuple[float, str]:
    """The target level of data set ``name`` and how it was chosen: ``DEFAULT_TARGETS`` where given (NLTCS: -7.10),
    otherwise ``TARGET_GAP`` nats below the best final mean over depths of the curves given."""
    if name in DEFAULT_TARGETS:
        return DEFAULT_TARGETS[name], f"fixed default for {name}"
    best = max(float(c[:, -1].mean()) for c in curves.values())
    return best - TARGET_GAP, f"best final mean over depths ({best:.4f}) minus {TARGET_GAP} nats"


def _stats(values: Sequence[float] | np.ndarray) -> dict[str, Any]:
    array = np.asarray(values, dtype=np.float64)
    return {"mean": float(array.mean()), "std": float(array.std(ddof=1)) if len(array) > 1 else 0.0,
            "per_run": [float(v) for v in array]}


def reach_statistics(curves: Sequence[np.ndarray] | np.ndarray, target: float, seed: int = 0) -> dict[str, Any]:
    """When a group of runs reaches ``target``: fraction (with its 95 % Wilson interval), median and quartiles of
    the iterations of the runs that reach it, and the Kaplan-Meier median over all runs (non-reaching runs
    right-censored at their budget; None: not reached by half of the runs)."""
    reach = summarise_reach(list(curves), target)
    low, high = binomial_interval(reach.reached, reach.runs)
    return {"runs": reach.runs, "reached": reach.reached, "fraction_reached": reach.fraction_reached,
            "fraction_reached_ci95": [low, high], "median_reached": reach.median_reached,
            "q25_reached": reach.q25_reached, "q75_reached": reach.q75_reached, "km_median": reach.km_median,
            "budget": reach.budget, "per_run": reach.iterations}


def speedup_statistics(baseline: Sequence[np.ndarray] | np.ndarray, other: Sequence[np.ndarray] | np.ndarray,
                       target: float, seed: int = 0, resamples: int = 2000) -> dict[str, Any]:
    """KM median of ``baseline`` / KM median of ``other`` with a 95 % percentile bootstrap interval over seeds."""
    estimate = speedup(summarise_reach(list(baseline), target), summarise_reach(list(other), target), seed=seed,
                       resamples=resamples)
    return {"ratio": estimate.ratio, "ci95": [estimate.low, estimate.high],
            "baseline_km_median": estimate.baseline_median, "other_km_median": estimate.other_median,
            "resamples": estimate.resamples, "defined_fraction": estimate.defined_fraction}


def _curves_of(results: Sequence[RunResult], name: str, depth: int, metric: str, budget: int | None) -> np.ndarray:
    selected = [r for r in results if r.dataset == name and r.depth == depth]
    if metric == "test" and any(r.history.test_llh is None for r in selected):
        raise ConfigurationError(f"metric 'test' needs test curves, and {name} has no test split")
    rows = [r.history.train_llh if metric == "train" else r.history.test_llh for r in selected]
    array = np.array(rows, dtype=np.float64)
    return array if budget is None else array[:, :budget + 1]


def summarise(study: Study, results: Sequence[RunResult], target: float | dict[str, float] | None = None,
              metric: str = "train", budget: int | None = None) -> dict[str, Any]:
    """Per data set and depth: final log-likelihoods, when the runs reach the target level, speed-ups.

    ``target``: the level (one number, or one per data set); default :func:`default_target`. ``metric``: the curve
    compared with it, "train" (the README's) or "test". ``budget``: count only the first ``budget`` iterations
    (default: all). A run *reaches* the target at the first iteration whose value is >= the target; one that never
    does is censored at the budget. Speed-up of depth d: KM median of depth 1 / KM median of depth d, with a
    bootstrap interval over seeds (resampled within each depth).
    """
    if metric not in METRICS:
        raise ConfigurationError(f"metric must be one of {METRICS}, got {metric!r}")
    if budget is not None and not 1 <= budget <= study.iterations:
        raise ConfigurationError(f"budget must lie in [1, {study.iterations}], got {budget}")
    summary: dict[str, Any] = {"protocol": study.protocol, "settings": study.settings(), "runs": study.runs,
                               "metric": metric, "budget": budget or study.iterations, "datasets": {}}
    for name in study.datasets:
        curves = {d: _curves_of(results, name, d, metric, budget) for d in study.depths}
        finals = {d: _curves_of(results, name, d, "train", None)[:, -1] for d in study.depths}
        tests = {d: [r.history.test_llh[-1] for r in results if r.dataset == name and r.depth == d
                     and r.history.test_llh is not None] for d in study.depths}
        seconds = {d: [r.seconds for r in results if r.dataset == name and r.depth == d] for d in study.depths}
        if target is None:
            level, rule = default_target(name, curves)
        else:
            level = target[name] if isinstance(target, dict) else float(target)
            rule = "given"
        entry: dict[str, Any] = {"initial_llh": float(curves[study.depths[0]][:, 0].mean()), "target": level,
                                 "target_rule": rule, "depths": {}}
        for depth in study.depths:
            entry["depths"][str(depth)] = {
                "branching": list(_branching(depth)),
                "runs": int(curves[depth].shape[0]),
                "final_train_llh": _stats(finals[depth]),
                "final_test_llh": _stats(tests[depth]) if tests[depth] else None,
                "reach": reach_statistics(curves[depth], level),
                "speedup_vs_depth1": (speedup_statistics(curves[1], curves[depth], level, seed=study.seed)
                                      if 1 in curves and depth != 1 else None),
                "seconds_per_run": _stats(seconds[depth]),
            }
        summary["datasets"][name] = entry
    return summary


def format_summary(summary: dict[str, Any]) -> list[str]:
    """The lines ``overspn reproduce`` prints for a summary."""

    def number(value: float | None, spec: str = ".0f") -> str:
        return "not reached" if value is None else format(value, spec)

    lines = []
    for name, entry in summary["datasets"].items():
        lines.append(f"{name}: initial {summary['metric']} log-likelihood {entry['initial_llh']:.4f}; target "
                     f"{entry['target']:.4f} ({entry['target_rule']}) on the {summary['metric']} curve within "
                     f"{summary['budget']} iterations")
        for depth, values in entry["depths"].items():
            final, test, reach = values["final_train_llh"], values["final_test_llh"], values["reach"]
            low, high = reach["fraction_reached_ci95"]
            test_text = f", test {test['mean']:.4f} ± {test['std']:.4f}" if test else ""
            quartiles = (f"median {number(reach['median_reached'])} (quartiles {number(reach['q25_reached'])}–"
                         f"{number(reach['q75_reached'])})" if reach["reached"] else "none")
            lines.append(f"  depth {depth} {tuple(values['branching'])}, {values['runs']} runs: final train "
                         f"{final['mean']:.4f} ± {final['std']:.4f}{test_text}; reached the target "
                         f"{reach['reached']}/{reach['runs']} (95 % CI {low:.2f}–{high:.2f}); iterations of those "
                         f"that reached: {quartiles}; Kaplan–Meier median over all runs "
                         f"{number(reach['km_median'])}")
            speed = values["speedup_vs_depth1"]
            if speed is not None:
                ci = speed["ci95"]
                interval = f" (95 % bootstrap CI {ci[0]:.2f}–{ci[1]:.2f})" if ci[0] is not None else " (no CI)"
                medians = (speed["baseline_km_median"], speed["other_km_median"])
                value = (number(speed["ratio"], ".2f") + interval if speed["ratio"] is not None
                         else "undefined (a median of 0)" if None not in medians else "not reached")
                lines.append(f"    speed-up vs depth 1 (KM medians {number(medians[0])} / {number(medians[1])}): "
                             f"{value}")
    return lines


def plot_study(study: Study, results: Sequence[RunResult], name: str, path: str | Path) -> None:
    """The figure of one data set: mean train log-likelihood with a +-1 std band over runs (test dashed), and the
    paper's view, the best run (highest final train log-likelihood) of every depth."""
    made, (left, right) = figure(10, 3.8, 1, 2, sharey=True)
    colours = {1: "tab:blue", 2: "tab:orange", 3: "tab:green"}
    for depth in study.depths:
        runs = [r for r in results if r.dataset == name and r.depth == depth]
        curves = np.array([r.history.train_llh for r in runs])
        steps = np.arange(curves.shape[1])
        mean, std = curves.mean(axis=0), curves.std(axis=0)
        label = f"{depth} layer{'s' if depth > 1 else ''} {_branching(depth)}"
        colour = colours.get(depth)
        left.plot(steps, mean, color=colour, label=f"{label} train")
        left.fill_between(steps, mean - std, mean + std, color=colour, alpha=0.25, linewidth=0)
        if all(r.history.test_llh is not None for r in runs):
            tests = np.array([r.history.test_llh for r in runs])
            left.plot(steps, tests.mean(axis=0), color=colour, linestyle="--", linewidth=1, label=f"{label} test")
        right.plot(steps, curves[int(np.argmax(curves[:, -1]))], color=colour, label=label)
    title = f"{name}, {study.protocol} protocol ({study.weights} weights, lr {study.lr}, {study.leaf} leaves)"
    left.set_title(f"mean and ±1 std over {study.runs} runs", fontsize=9)
    right.set_title("best run of each depth (final train log-likelihood)", fontsize=9)
    for axes in (left, right):
        axes.set_xlabel("iteration")
        axes.grid(alpha=0.3)
        axes.legend(fontsize=7)
    left.set_ylabel("mean log-likelihood (nats)")
    made.suptitle(title, fontsize=10)
    save_figure(made, path, dpi=110)


def write_outputs(study: Study, results: Sequence[RunResult], out: str | Path,
                  target: float | dict[str, float] | None = None, metric: str = "train",
                  budget: int | None = None) -> dict[str, Any]:
    """``curves.csv``, ``summary.json`` and ``NAME.png`` per data set, all written atomically; returns the summary."""
    out = Path(out)
    atomic_write_text(out / "curves.csv", curves_table(study, results))
    summary = summarise(study, results, target, metric, budget)
    atomic_write_json(out / "summary.json", summary)
    for name in study.datasets:
        plot_study(study, results, name, out / f"{name}.png")
    return summary
