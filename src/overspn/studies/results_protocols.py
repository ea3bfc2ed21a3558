"""The parts of ``python -m overspn.studies.results`` that summarise the log-weight protocol and the optimizer
comparison (:mod:`overspn.studies.results` writes the others and calls these):

* ``log_protocol.json``, ``log_protocol_NAME.png``: ``overspn reproduce --protocol log`` per data set and depth,
  with when each run leaves the symmetric start;
* ``compare_PROTOCOL.json``, ``compare_PROTOCOL_NAME.png``: ``overspn compare`` per protocol (one file for each
  protocol found in a comparison folder's ``comparison.json``);
* :func:`log_table` and :func:`compare_table`: the README's tables of these files.

Every JSON file states its seeds, iterations, study folder and the command that regenerates it.
"""

from __future__ import annotations

import json
import math
import shutil
import statistics
from pathlib import Path
from typing import Any

import numpy as np

from overspn.atomic import atomic_write_json
from overspn.errors import ConfigurationError
from overspn.studies.depth import PROTOCOLS as DEPTH_PROTOCOLS
from overspn.studies.depth import Study, load_study_data, summarise
from overspn.studies.optimizer_comparison import METHOD_LABELS
from overspn.studies.sweep import load_results

__all__ = ["ESCAPE_MARGIN", "compare_part", "compare_table", "factorised_llh", "log_part", "log_table"]

# While the components of the mixture are equal it is one fully factorised distribution, so its train
# log-likelihood cannot exceed the factorised maximum-likelihood model's; a run has left the symmetric start when
# its curve exceeds that level by this margin (wider than float64 rounding of the mean log-likelihood).
ESCAPE_MARGIN = 1e-3

# The ``overspn reproduce`` options of the settings that one can change from the command line.
REPRODUCE_FLAGS = {"lr": "--lr", "seed": "--seed", "perturbation": "--perturbation", "leaf": "--leaf",
                   "max_rows": "--max-rows", "gaussian_init": "--gaussian-init"}


def factorised_llh(train: np.ndarray) -> float:
    """Mean train log-likelihood of the maximum-likelihood fully factorised model (one categorical distribution per
    variable, fitted to its observed values; a missing value is marginalised and contributes nothing)."""
    total = 0.0
    for column in np.asarray(train, dtype=np.float64).T:
        observed = column[~np.isnan(column)]
        _, counts = np.unique(observed, return_counts=True)
        total += float(np.sum(counts * np.log(counts / len(observed))))
    return total / len(train)


def _escape_statistics(curves: np.ndarray, level: float) -> dict[str, Any]:
    """Per run, the first iteration whose train log-likelihood exceeds ``level`` + ``ESCAPE_MARGIN`` (None: not
    within the run), with the median, least and greatest of those that do."""
    per_run = [int(np.flatnonzero(c > level + ESCAPE_MARGIN)[0]) if np.any(c > level + ESCAPE_MARGIN) else None
               for c in curves]
    left = [t for t in per_run if t is not None]
    return {"per_run": per_run, "runs": len(per_run), "left": len(left),
            "median": float(statistics.median(left)) if left else None,
            "min": min(left) if left else None, "max": max(left) if left else None}


def _reproduce_command(study: Study, folder: Path) -> str:
    counts = [study.runs_for(depth) for depth in study.depths]
    runs = str(counts[0]) if len(set(counts)) == 1 else ",".join(map(str, counts))
    words = ["overspn reproduce", f"--protocol {study.protocol}", *(f"--dataset {n}" for n in study.datasets),
             *(f"--depth {d}" for d in study.depths), f"--runs {runs}", f"--iterations {study.iterations}"]
    default = DEPTH_PROTOCOLS[study.protocol].settings()
    words += [f"{flag} {study.settings()[key]}" for key, flag in REPRODUCE_FLAGS.items()
              if study.settings().get(key) != default.get(key)]
    return " ".join([*words, "--threads 1", f"--out {folder}"])


def log_part(folder: Path, out: Path, data_dir: Path | None = None) -> dict[str, Any]:
    """``log_protocol.json`` (the summary of ``overspn reproduce``, with when the runs leave the symmetric start)
    and ``log_protocol_NAME.png`` from one log-protocol study folder; the data sets are read for the factorised
    model's log-likelihood."""
    study, results = load_results(folder)
    if study.protocol != "log" or study.leaf != "indicator":
        raise ConfigurationError(f"{folder}: the log-protocol summary needs a log-protocol study with indicator "
                                 f"leaves, got the {study.protocol} protocol with {study.leaf} leaves")
    summary = summarise(study, results)
    for name, entry in summary["datasets"].items():
        level = factorised_llh(load_study_data(name, data_dir, study.max_rows).train)
        entry["factorised_train_llh"] = level
        entry["escape_margin"] = ESCAPE_MARGIN
        everyone = []
        for depth in study.depths:
            curves = np.array([r.history.train_llh for r in results if r.dataset == name and r.depth == depth])
            escape = _escape_statistics(curves, level)
            entry["depths"][str(depth)]["escape"] = escape
            everyone.extend(escape["per_run"])
        left = [t for t in everyone if t is not None]
        entry["escape_all_depths"] = {"runs": len(everyone), "left": len(left),
                                      "median": float(statistics.median(left)) if left else None}
        if (folder / f"{name}.png").is_file():
            shutil.copyfile(folder / f"{name}.png", out / f"log_protocol_{name}.png")
    summary["iterations"] = study.iterations
    summary["seeds"] = {str(d): f"{study.seed}..{study.seed + study.runs_for(d) - 1}" for d in study.depths}
    summary["command"] = _reproduce_command(study, folder)
    summary["study_folder"] = str(folder)
    atomic_write_json(out / "log_protocol.json", summary)
    return summary


def compare_part(folder: Path, out: Path) -> list[dict[str, Any]]:
    """``compare_PROTOCOL.json`` and ``compare_PROTOCOL_NAME.png`` for every protocol in ``folder/comparison.json``
    (what ``overspn compare`` wrote there); returns the summaries written."""
    sections = json.loads((folder / "comparison.json").read_text())
    written = []
    for protocol in dict.fromkeys(section["protocol"] for section in sections):
        mine = [section for section in sections if section["protocol"] == protocol]
        # one command gives every data set of a protocol the same seeds and iterations
        seeds, iterations = mine[0]["seeds"], mine[0]["iterations"]
        methods = list(dict.fromkeys(row["method"] for s in mine for row in s["rows"]))
        datasets = [s["dataset"] for s in mine]
        command = (f"overspn compare --protocol {protocol} --dataset {','.join(datasets)} --methods "
                   f"{','.join(methods)} --seeds {seeds} --iterations {iterations} --threads 1 --out {folder}")
        summary = {"protocol": protocol, "seeds": seeds, "iterations": iterations, "command": command,
                   "study_folder": str(folder), "sections": mine}
        atomic_write_json(out / f"compare_{protocol}.json", summary)
        for name in datasets:
            figure = folder / f"curves_{protocol}_{name}.png"
            if figure.is_file():
                shutil.copyfile(figure, out / f"compare_{protocol}_{name}.png")
        written.append(summary)
    return written


# ----------------------------------------------------------------------------------------------------------------
# The README's tables
# ----------------------------------------------------------------------------------------------------------------


def _text(value: float | None, spec: str) -> str:
    """A number as the README writes it (typographic minus); "—" where there is none (None or NaN)."""
    if value is None or not math.isfinite(value):
        return "—"
    return format(value, spec).replace("-", "−")


def _spread(mean: float, sd: float, spec: str) -> str:
    return "—" if not math.isfinite(mean) else f"{_text(mean, spec)} ± {_text(sd, spec)}"


def log_table(log: dict[str, Any]) -> str:
    lines = ["| data set | layers | seeds | final train | final test | factorised model | left the symmetric start "
             "(median, range) | target (rule) | reached | KM median | speed-up vs 1 layer (95 % CI) |",
             "|---|---|---|---|---|---|---|---|---|---|---|"]
    for name, entry in log["datasets"].items():
        for depth, values in entry["depths"].items():
            final, test, escape = values["final_train_llh"], values["final_test_llh"], values["escape"]
            reach, speed = values["reach"], values["speedup_vs_depth1"]
            left = "not within the run"
            if escape["left"]:
                left = f"{_text(escape['median'], '.0f')} ({escape['min']}–{escape['max']})"
                if escape["left"] < escape["runs"]:
                    left += f", {escape['left']}/{escape['runs']} runs"
            speed_text = "—" if speed is None else (
                f"{_text(speed['ratio'], '.2f')} ({_text(speed['ci95'][0], '.2f')}–{_text(speed['ci95'][1], '.2f')})"
                if speed["ratio"] is not None else "not reached")
            lines.append(f"| {name} | {depth} | {values['runs']} | {_spread(final['mean'], final['std'], '.3f')} | "
                         f"{_spread(test['mean'], test['std'], '.3f') if test else '—'} | "
                         f"{_text(entry['factorised_train_llh'], '.3f')} | {left} | {_text(entry['target'], '.3f')} "
                         f"| {reach['reached']}/{reach['runs']} | "
                         f"{_text(reach['km_median'], '.0f') if reach['km_median'] is not None else 'not reached'} "
                         f"| {speed_text} |")
    return "\n".join(lines)


def compare_table(comparison: dict[str, Any]) -> str:
    lines = ["| data set (target) | method | reached | iterations to target (of those reaching it) | seconds to target "
             "| final train | final test | ms / iteration |", "|---|---|---|---|---|---|---|---|"]
    for section in comparison["sections"]:
        for row in section["rows"]:
            lines.append(
                f"| {section['dataset']} ({_text(section['target'], '.3f')}) | {METHOD_LABELS[row['method']]} | "
                f"{row['reached']}/{row['runs']} | "
                f"{_spread(row['iterations_to_target'], row['iterations_to_target_sd'], '.0f')} | "
                f"{_spread(row['seconds_to_target'], row['seconds_to_target_sd'], '.2f')} | "
                f"{_spread(row['final_train'], row['final_train_sd'], '.3f')} | "
                f"{_spread(row['final_test'], row['final_test_sd'], '.3f')} | {row['ms_per_iteration']:.1f} |")
    return "\n".join(lines)
