"""Perturbation sweeps of the depth study: how the speed-up of depth depends on the size of the symmetry breaking.

One study per perturbation (:mod:`overspn.studies.depth`), each in its own folder ``OUT/pLABEL``; the sweep summary
compares, per perturbation, when the runs of each depth reach the target level: at the full run length and, with
``budgets``, within shorter budgets (e.g. the paper's 500 iterations inside 1200-iteration runs, whose first 500
iterations are those of a 500-iteration run). Speed-ups are ratios of Kaplan–Meier medians (slow runs censored)
with bootstrap intervals over seeds (:mod:`overspn.studies.statistics`).
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from overspn.atomic import atomic_write_json
from overspn.errors import ConfigurationError
from overspn.learn.fit import History
from overspn.studies.depth import BRANCHINGS, RunResult, Study, summarise
from overspn.studies.report import figure, save_figure
from overspn.studies.statistics import kaplan_meier_curve, summarise_reach

__all__ = ["perturbation_label", "load_results", "sweep_summary", "write_sweep", "format_sweep", "plot_sweep"]


def perturbation_label(value: float) -> str:
    """The folder name of a perturbation: ``p0``, ``p1e-4``, ``p2.5e-8``, ``p0.3``."""
    if value == 0:
        return "p0"
    exponent = math.floor(math.log10(value))
    mantissa = value / 10.0**exponent
    if abs(mantissa - round(mantissa)) < 1e-9:
        mantissa = round(mantissa)
    if exponent >= -1:
        return f"p{value:g}"
    return f"p{mantissa:g}e{exponent}"


def load_results(folder: str | Path) -> tuple[Study, list[RunResult]]:
    """Every finished run in a study folder (``study.json`` and ``runs/*.json``), whatever number of runs each depth
    got: the study's ``runs_by_depth`` is set to the number of consecutive runs 0, 1, ... found per depth."""
    folder = Path(folder)
    settings = json.loads((folder / "study.json").read_text())
    found: dict[tuple[str, int], dict[int, RunResult]] = {}
    for path in sorted((folder / "runs").glob("[!.]*.json")):
        value = json.loads(path.read_text())
        history = History.from_dict(value["history"])
        if history.epochs != settings["iterations"]:
            continue
        key = (value["dataset"], int(value["depth"]))
        found.setdefault(key, {})[int(value["run"])] = RunResult(value["dataset"], int(value["depth"]),
                                                                 int(value["run"]), history, float(value["seconds"]))
    if not found:
        raise ConfigurationError(f"{folder} holds no finished runs")
    datasets = tuple(sorted({name for name, _ in found}))
    depths = tuple(sorted({depth for _, depth in found}))
    counts = []
    for depth in depths:
        runs = found.get((datasets[0], depth), {})
        count = 0
        while count in runs:
            count += 1
        counts.append(count)
    if min(counts) < 1:
        raise ConfigurationError(f"{folder}: some depth has no run 0")
    study = Study(datasets=datasets, depths=depths, runs=max(counts), runs_by_depth=tuple(counts), **settings)
    results = [found[(name, depth)][run] for name in datasets for depth, count in zip(depths, counts)
               for run in range(count)]
    return study, results


def sweep_summary(outcomes: Sequence[tuple[Study, Sequence[RunResult]]], target: float | None = None,
                  metric: str = "train", budgets: Sequence[int] | None = None) -> dict[str, Any]:
    """Per perturbation, per budget: the depth study's summary (reach statistics and speed-ups against depth 1)."""
    if not outcomes:
        raise ConfigurationError("a sweep needs at least one study")
    iterations = min(study.iterations for study, _ in outcomes)
    budgets = sorted(set(budgets or ()) | {iterations})
    if budgets[0] < 1 or budgets[-1] > iterations:
        raise ConfigurationError(f"budgets must lie in [1, {iterations}], got {budgets}")
    rows = []
    for study, results in sorted(outcomes, key=lambda item: -item[0].perturbation):
        row: dict[str, Any] = {"perturbation": study.perturbation, "budgets": {}}
        for budget in budgets:
            summary = summarise(study, results, target, metric, budget)
            row["budgets"][str(budget)] = summary["datasets"]
        rows.append(row)
    first = outcomes[0][0]
    return {"protocol": first.protocol, "settings": {k: v for k, v in first.settings().items() if k != "perturbation"},
            "metric": metric, "budgets": budgets, "perturbations": rows}


def format_sweep(summary: dict[str, Any]) -> list[str]:
    """The sweep table: per data set, budget and perturbation, runs, fraction reached, KM medians and speed-ups."""

    def cell(value: float | None, spec: str) -> str:
        return "—" if value is None else format(value, spec)

    lines = []
    for budget in summary["budgets"]:
        lines.append(f"sweep, target reached within {budget} iterations ({summary['metric']} curve):")
        for row in summary["perturbations"]:
            for name, entry in row["budgets"][str(budget)].items():
                parts = []
                for depth, values in entry["depths"].items():
                    reach = values["reach"]
                    text = (f"depth {depth}: {reach['reached']}/{reach['runs']} reached, KM median "
                            f"{cell(reach['km_median'], '.0f')}")
                    speed = values["speedup_vs_depth1"]
                    if speed is not None:
                        low, high = speed["ci95"]
                        text += (f", speed-up {cell(speed['ratio'], '.2f')} [{cell(low, '.2f')}, "
                                 f"{cell(high, '.2f')}]")
                    parts.append(text)
                lines.append(f"  perturbation {row['perturbation']:g}, {name} (target {entry['target']:.3f}): "
                             + "; ".join(parts))
    return lines


def plot_sweep(outcomes: Sequence[tuple[Study, Sequence[RunResult]]], summary: dict[str, Any],
               path: str | Path) -> None:
    """Left: speed-up (depth 1 / depth d, KM medians) against the perturbation with 95 % bootstrap intervals, per
    budget. Right: Kaplan–Meier curves, the fraction of runs not yet at the target against the iteration."""
    made, (left, right) = figure(11, 4.2, 1, 2)
    name = outcomes[0][0].datasets[0]
    markers = {2: "s", 3: "o"}
    for b, budget in enumerate(summary["budgets"]):
        for depth in (2, 3):
            xs, ys, lows, highs = [], [], [], []
            for row in summary["perturbations"]:
                values = row["budgets"][str(budget)][name]["depths"].get(str(depth))
                if values is None or values["speedup_vs_depth1"]["ratio"] is None:
                    continue
                speed = values["speedup_vs_depth1"]
                low, high = (speed["ci95"][0] or speed["ratio"]), (speed["ci95"][1] or speed["ratio"])
                xs.append(row["perturbation"] * (1.15 if depth == 2 else 1.0) * (1.3 ** b))
                ys.append(speed["ratio"])
                lows.append(speed["ratio"] - low)
                highs.append(high - speed["ratio"])
            if xs:
                left.errorbar(xs, ys, yerr=[lows, highs], marker=markers[depth], capsize=3, linestyle="-",
                              label=f"1 layer / {depth} layers, budget {budget}")
    left.set_xscale("log")
    left.axhline(1.0, color="grey", linewidth=0.8)
    left.axhline(2.0, color="grey", linewidth=0.8, linestyle=":")
    left.set_xlabel("relative perturbation of the initial leaf weights")
    left.set_ylabel("speed-up (ratio of Kaplan–Meier medians)")
    left.set_title("speed-up of depth, 95 % bootstrap CI over seeds", fontsize=9)
    if left.get_legend_handles_labels()[0]:
        left.legend(fontsize=7)
    left.grid(alpha=0.3)
    from matplotlib import colormaps

    colours = colormaps["viridis"](np.linspace(0, 0.9, len(outcomes)))
    target = summary["perturbations"][0]["budgets"][str(summary["budgets"][-1])][name]["target"]
    for colour, (study, results) in zip(colours, sorted(outcomes, key=lambda o: -o[0].perturbation)):
        for depth, style in ((1, "-"), (3, "--")):
            curves = [np.array(r.history.train_llh if summary["metric"] == "train" else r.history.test_llh)
                      for r in results if r.depth == depth and r.dataset == name]
            if not curves:
                continue
            times, observed = summarise_reach(curves, target).times_observed()
            steps, survival = kaplan_meier_curve(times, observed)
            right.step(np.concatenate([[0], steps]), np.concatenate([[1.0], survival]), where="post", color=colour,
                       linestyle=style, label=f"p {study.perturbation:g}, {depth} layer{'s' if depth > 1 else ''} "
                                          f"({len(curves)} runs)")
    for budget in summary["budgets"]:
        right.axvline(budget, color="grey", linewidth=0.6, linestyle=":")
    right.set_xlabel("iteration")
    right.set_ylabel(f"fraction of runs not yet at {target:.2f}")
    right.set_title("Kaplan–Meier: runs still below the target", fontsize=9)
    right.legend(fontsize=6, ncol=2)
    right.grid(alpha=0.3)
    depths = sorted({depth for study, _ in outcomes for depth in study.depths})
    made.suptitle(f"{name}: perturbation sweep ({summary['protocol']} protocol, "
                    f"{', '.join(f'{d} {BRANCHINGS[d]}' for d in depths)})", fontsize=10)
    save_figure(made, path, dpi=100)


def write_sweep(outcomes: Sequence[tuple[Any, ...]],
                out: str | Path, target: float | None = None, metric: str = "train",
                budget: int | None = None, budgets: Sequence[int] | None = None) -> dict[str, Any]:
    """``sweep.json`` and ``sweep.png`` in ``out`` from ``(study, results, ...)`` tuples; returns the summary."""
    pairs = [(item[0], item[1]) for item in outcomes]
    chosen = list(budgets or ())
    if budget is not None:
        chosen.append(budget)
    summary = sweep_summary(pairs, target, metric, chosen)
    atomic_write_json(Path(out) / "sweep.json", summary)
    plot_sweep(pairs, summary, Path(out) / "sweep.png")
    return summary
