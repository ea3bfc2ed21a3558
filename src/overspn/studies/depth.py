"""The paper's experiment: does overparametrizing the root of a mixture SPN accelerate gradient ascent?

A *study* trains, for every data set, depth and run, the paper's mixture of ``K = 8`` products of per-variable
leaves whose root sum is replaced by ``depth`` sum layers (:func:`overspn.overparametrize`, branchings (8), (2, 4),
(2, 2, 2)), and records the train and test log-likelihood after every update. Two protocols:

* ``paper`` (Trapp, Peharz & Pernkopf 2019): NLTCS; raw weights, every weight of the sum hierarchy starting at 1e-4
  and every indicator weight at 0.5; plain gradient ascent with rate 0.01 for 500 iterations, weights clamped to
  the floor 1e-4 after every step; 2 runs; float64.
* ``log``: the same models with log-parametrised weights (``w = exp(p)``), rate 0.1, 1000 iterations, 5 runs, on
  NLTCS, Plants and Audio. The initial weights are those of the paper protocol (log-weights log 1e-4 in the sum
  hierarchy, log 0.5 at the leaves). With log-weights this choice is immaterial: scaling all weights of one sum
  node scales f(x) and f(*) alike, and the gradient with respect to log-weights is invariant to that scaling, so
  any constant initial value per sum node (0 included) gives the same trajectory up to rounding.

Started exactly like that the K components are identical, and stay identical under gradient ascent (the model is
a product of independent leaves, and depth changes nothing). Run ``r`` breaks the symmetry with a relative
perturbation of the initial leaf parameters of size ``perturbation`` (default 1e-12, floating-point noise level),
drawn from seed ``seed + r``; all depths of one run start from the same leaves, hence from the same function.

:func:`run_study` writes to its output folder, atomically, ``study.json`` (the settings), one result file per
finished run under ``runs/`` and, while a run is in progress, a checkpoint (model parameters and history) every
``checkpoint_every`` iterations under ``checkpoints/``. Called again with the same settings after being killed, it
skips finished runs and continues the interrupted ones from their checkpoints; the update is deterministic, so the
curves equal those of an uninterrupted study. At the end it writes ``curves.csv``, ``summary.json`` and one figure
per data set.
"""

from __future__ import annotations

import csv
import io
import json
import math
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tqdm.auto import tqdm

from overspn.atomic import (
    atomic_write_bytes,
    atomic_write_json,
    atomic_write_text,
    output_lock,
    sweep_stale_temporaries,
)
from overspn.data import BINARY_DATASETS, SKLEARN_DATASETS, Dataset, load_binary, load_csv, load_sklearn
from overspn.engine.compiled import CompiledSPN, compile
from overspn.errors import ConfigurationError, DataError, DivergenceError
from overspn.learn.fit import History, fit
from overspn.studies.statistics import binomial_interval, speedup, summarise_reach
from overspn.symbolic.structure import Gaussian
from overspn.symbolic.transforms import MIXTURE_LEAVES, mixture, overparametrize

__all__ = ["Study", "PROTOCOLS", "BRANCHINGS", "protocol_study", "build_model", "load_study_data", "run_study",
           "curves_table", "summarise", "plot_study", "TARGET_GAP"]

BRANCHINGS: dict[int, tuple[int, ...]] = {1: (8,), 2: (2, 4), 3: (2, 2, 2)}
TARGET_GAP = 0.05  # nats below the best final value that count as "reached the plateau"
CONTINUOUS_DEFAULT_DATASETS = ("wine", "breast_cancer")
# How Gaussian components start. "perturb": mean perturbation * z, std 1 (mixture's own; on standardised data every
# component is then the maximum-likelihood single Gaussian, a stationary point). "jitter": mean perturbation * z,
# std exp(perturbation * z'), the continuous analogue of the indicator study's relative perturbation. "kmeans":
# means and spreads of a k-means clustering (seed + run) of the training rows, then jittered like "jitter".
GAUSSIAN_INITS = ("perturb", "jitter", "kmeans")
GAUSSIAN_DEFAULTS: dict[str, Any] = {"gaussian_init": "kmeans", "perturbation": 1e-4, "iterations": 2000}


@dataclass(frozen=True)
class Study:
    """Everything that determines the curves of a study (and nothing else: threads, output, progress are apart)."""

    protocol: str
    datasets: tuple[str, ...]
    depths: tuple[int, ...] = (1, 2, 3)
    components: int = 8
    weights: str = "raw"
    lr: float = 0.01
    iterations: int = 500
    runs: int = 2
    seed: int = 0
    leaf: str = "indicator"
    perturbation: float = 1e-12
    init: float = 1e-4
    leaf_weight: float = 0.5
    floor: float = 1e-4
    max_rows: int | None = None
    gaussian_init: str | None = None
    checkpoint_every: int = field(default=50, compare=False)
    runs_by_depth: tuple[int, ...] | None = field(default=None, compare=False)

    def __post_init__(self) -> None:
        if not self.datasets:
            raise ConfigurationError("a study needs at least one data set")
        for depth in self.depths:
            if depth not in BRANCHINGS:
                raise ConfigurationError(f"depth must be one of {sorted(BRANCHINGS)}, got {depth}")
        if self.components != 8:
            raise ConfigurationError(f"the branchings are those of K = 8 components, got {self.components}")
        if self.weights not in ("raw", "log"):
            raise ConfigurationError(f"weights must be 'raw' or 'log', got {self.weights!r}")
        if self.leaf not in MIXTURE_LEAVES:
            raise ConfigurationError(f"leaf must be one of {MIXTURE_LEAVES}, got {self.leaf!r}")
        if not (math.isfinite(self.lr) and self.lr > 0):
            raise ConfigurationError(f"learning rate must be a finite number > 0, got {self.lr!r}")
        if self.iterations < 1 or self.runs < 1 or self.checkpoint_every < 1:
            raise ConfigurationError("iterations, runs and checkpoint_every must be >= 1, got "
                                     f"{self.iterations}, {self.runs} and {self.checkpoint_every}")
        if not (math.isfinite(self.perturbation) and 0 <= self.perturbation < 1):
            raise ConfigurationError(f"perturbation must lie in [0, 1), got {self.perturbation!r}")
        if self.max_rows is not None and self.max_rows < 1:
            raise ConfigurationError(f"max_rows must be >= 1, got {self.max_rows}")
        if self.gaussian_init is not None and (self.leaf != "gaussian" or self.gaussian_init not in GAUSSIAN_INITS):
            raise ConfigurationError(f"gaussian_init must be one of {GAUSSIAN_INITS} and needs leaf='gaussian', got "
                                     f"{self.gaussian_init!r} with leaf {self.leaf!r}")
        if self.runs_by_depth is not None and (len(self.runs_by_depth) != len(self.depths)
                                               or min(self.runs_by_depth) < 1):
            raise ConfigurationError(f"runs_by_depth needs one count >= 1 per depth {self.depths}, got "
                                     f"{self.runs_by_depth}")

    def runs_for(self, depth: int) -> int:
        """Runs of ``depth``: ``runs_by_depth`` where given, else ``runs``."""
        if self.runs_by_depth is None:
            return self.runs
        return self.runs_by_depth[self.depths.index(depth)]

    def settings(self) -> dict[str, Any]:
        """The settings that determine one run's curve (the data sets and number of runs only select runs)."""
        values = asdict(self)
        for key in ("datasets", "depths", "runs", "checkpoint_every", "runs_by_depth"):
            values.pop(key)
        if values["gaussian_init"] is None:  # absent for the discrete leaves: folders of earlier versions stay valid
            values.pop("gaussian_init")
        return values


PROTOCOLS: dict[str, Study] = {
    "paper": Study("paper", ("nltcs",), weights="raw", lr=0.01, iterations=500, runs=2),
    "log": Study("log", ("nltcs", "plants", "baudio"), weights="log", lr=0.1, iterations=1000, runs=5),
}


def protocol_study(protocol: str, **overrides: Any) -> Study:
    """The study of ``protocol`` ("paper" or "log") with some settings replaced (None values are ignored).

    With ``leaf="gaussian"`` and no data sets given, the data sets are scikit-learn's wine and breast cancer.
    """
    if protocol not in PROTOCOLS:
        raise ConfigurationError(f"protocol must be one of {tuple(PROTOCOLS)}, got {protocol!r}")
    overrides = {key: value for key, value in overrides.items() if value is not None}
    if overrides.get("leaf") == "gaussian":
        overrides.setdefault("datasets", CONTINUOUS_DEFAULT_DATASETS)
        for key, value in GAUSSIAN_DEFAULTS.items():
            overrides.setdefault(key, value)
    if "datasets" in overrides:
        overrides["datasets"] = tuple(overrides["datasets"])
    return replace(PROTOCOLS[protocol], **overrides)


# ----------------------------------------------------------------------------------------------------------------
# Data and models
# ----------------------------------------------------------------------------------------------------------------


def load_study_data(name: str, data_dir: str | Path | None = None, max_rows: int | None = None) -> Dataset:
    """A binary benchmark, a scikit-learn continuous set (standardised), or ``data_dir/NAME/NAME.{train,test}.data``.

    ``max_rows`` keeps the first rows of the train and test splits (quick runs and tests).
    """
    if name in BINARY_DATASETS:
        dataset = load_binary(name, data_dir)
    elif name in SKLEARN_DATASETS:
        dataset = load_sklearn(name)
    else:
        folder = Path(data_dir) / name if data_dir is not None else None
        if folder is None or not (folder / f"{name}.train.data").is_file():
            raise DataError(f"unknown data set {name!r}: not a standard binary benchmark "
                            f"({', '.join(sorted(BINARY_DATASETS))}), not one of scikit-learn's "
                            f"({', '.join(SKLEARN_DATASETS)}), and no {name}/{name}.train.data under --data-dir")
        test_path = folder / f"{name}.test.data"
        test = load_csv(test_path) if test_path.is_file() else None
        dataset = Dataset(name, load_csv(folder / f"{name}.train.data"), None, test)
    if max_rows is not None:
        dataset = Dataset(dataset.name, dataset.train[:max_rows], dataset.valid,
                          None if dataset.test is None else dataset.test[:max_rows])
    return dataset


def _check_leaf(study: Study, dataset: Dataset) -> None:
    values = dataset.train
    integral = bool(np.all(values == np.round(values)) and np.all(values >= 0))
    if study.leaf != "gaussian" and not integral:
        raise ConfigurationError(f"leaf {study.leaf!r} needs discrete data, but {dataset.name} has non-integer values;"
                                 " use --leaf gaussian")
    if study.leaf in ("indicator", "bernoulli") and np.any(values > 1):
        raise ConfigurationError(f"leaf {study.leaf!r} needs binary data, but {dataset.name} has values above 1; "
                                 "use --leaf categorical")


def kmeans(data: np.ndarray, k: int, seed: int, iterations: int = 50) -> tuple[np.ndarray, np.ndarray]:
    """Lloyd's k-means with k-means++ seeding: ``(k, D)`` centres and per-cluster standard deviations (at least 0.1,
    and 1 for clusters of fewer than two rows)."""
    rng = np.random.default_rng(seed)
    x = np.asarray(data, dtype=np.float64)
    centres = [x[rng.integers(len(x))]]
    for _ in range(1, k):
        distance = np.min(((x[:, None, :] - np.array(centres)[None]) ** 2).sum(-1), axis=1)
        centres.append(x[rng.choice(len(x), p=distance / distance.sum())] if distance.sum() > 0
                       else x[rng.integers(len(x))])
    c = np.array(centres)
    for _ in range(iterations):
        label = np.argmin(((x[:, None, :] - c[None]) ** 2).sum(-1), axis=1)
        moved = np.array([x[label == j].mean(axis=0) if np.any(label == j) else c[j] for j in range(k)])
        if np.array_equal(moved, c):
            break
        c = moved
    label = np.argmin(((x[:, None, :] - c[None]) ** 2).sum(-1), axis=1)
    spread = np.array([np.maximum(x[label == j].std(axis=0), 0.1) if np.sum(label == j) > 1
                       else np.ones(x.shape[1]) for j in range(k)])
    return c, spread


def build_model(study: Study, num_vars: int, depth: int, run: int, cardinality: int = 2,
                train: np.ndarray | None = None) -> CompiledSPN:
    """The model of run ``run`` at ``depth``: the perturbed mixture, overparametrized, compiled in float64.

    Gaussian leaves start as ``study.gaussian_init`` says (``GAUSSIAN_INITS``; "kmeans" needs ``train``).
    """
    shallow = mixture(num_vars, study.components, leaf=study.leaf, seed=study.seed + run, root_weight=study.init,
                      leaf_weight=study.leaf_weight, perturbation=study.perturbation, cardinality=cardinality)
    if study.leaf == "gaussian" and study.gaussian_init not in (None, "perturb"):
        rng = np.random.default_rng([study.seed + run, 1])
        if study.gaussian_init == "kmeans":
            if train is None:
                raise ConfigurationError("gaussian_init 'kmeans' needs the training rows")
            centres, spreads = kmeans(train, study.components, study.seed + run)
        else:
            centres = np.zeros((study.components, num_vars))
            spreads = np.ones((study.components, num_vars))
        for k, component in enumerate(shallow.children):
            for leaf in component.children:
                assert isinstance(leaf, Gaussian), "a mixture with gaussian leaves"
                leaf.mean = float(centres[k, leaf.var] + study.perturbation * rng.standard_normal())
                leaf.std = float(spreads[k, leaf.var] * math.exp(study.perturbation * rng.standard_normal()))
    deep = overparametrize(shallow, BRANCHINGS[depth], init=study.init)
    return compile(deep, study.weights, floor=study.floor, dtype=torch.float64, num_vars=num_vars)


# ----------------------------------------------------------------------------------------------------------------
# Running, with resumption
# ----------------------------------------------------------------------------------------------------------------


@dataclass
class RunResult:
    """One finished run: its curves and the seconds spent training it."""

    dataset: str
    depth: int
    run: int
    history: History
    seconds: float


def _run_name(dataset: str, depth: int, run: int) -> str:
    return f"{dataset}-depth{depth}-run{run}"


def _check_settings(out: Path, study: Study) -> None:
    path = out / "study.json"
    settings = study.settings()
    if path.is_file():
        try:
            stored = json.loads(path.read_text())
        except (OSError, ValueError) as error:
            raise ConfigurationError(f"{path} is unreadable ({error}); remove it or use another output folder") \
                from None
        if stored != json.loads(json.dumps(settings)):
            differing = sorted(k for k in set(stored) | set(settings) if stored.get(k) != settings.get(k))
            raise ConfigurationError(
                f"{out} holds results of other settings (differing: {', '.join(differing)}); use another output "
                "folder or remove it")
    else:
        atomic_write_json(path, settings)


def _read_result(path: Path, dataset: str, depth: int, run: int, iterations: int) -> RunResult | None:
    try:
        value = json.loads(path.read_text())
        history = History.from_dict(value["history"])
    except (OSError, ValueError, KeyError, TypeError):
        return None
    if history.epochs != iterations:
        return None
    return RunResult(dataset, depth, run, history, float(value["seconds"]))


def run_study(study: Study, out: str | Path, data_dir: str | Path | None = None, progress: bool = True,
              log: Callable[[str], None] | None = None) -> list[RunResult]:
    """Run (or resume) every run of ``study``, writing into ``out``; returns the results in a fixed order."""
    out = Path(out)
    datasets = {name: load_study_data(name, data_dir, study.max_rows) for name in study.datasets}
    for dataset in datasets.values():
        _check_leaf(study, dataset)
    _check_settings(out, study)  # after the checks of the data, so that a mistyped command leaves no folder behind
    units = [(name, depth, run) for name in study.datasets for depth in study.depths
             for run in range(study.runs_for(depth))]
    results: dict[tuple[str, int, int], RunResult] = {}
    for unit in units:
        found = _read_result(out / "runs" / f"{_run_name(*unit)}.json", *unit, study.iterations)
        if found is not None:
            results[unit] = found
            # a kill between writing the result and removing the checkpoint leaves a stale checkpoint
            (out / "checkpoints" / f"{_run_name(*unit)}.pt").unlink(missing_ok=True)
    pending = [unit for unit in units if unit not in results]
    bar = tqdm(total=len(pending) * (study.iterations + 1), disable=not progress, desc=f"reproduce {study.protocol}",
               unit="it", dynamic_ncols=True)
    # one study at a time per folder; temporaries of writes killed in an earlier attempt are removed
    sweep_stale_temporaries(out, recursive=True)
    try:
        with output_lock(out, f"overspn reproduce --protocol {study.protocol}"):
            for unit in pending:
                results[unit] = _run_one(study, datasets[unit[0]], *unit, out, bar)
    finally:
        bar.close()
    if log is not None and len(pending) < len(units):
        log(f"reused {len(units) - len(pending)} finished runs from {out / 'runs'}")
    return [results[unit] for unit in units]


class _BarUpdates:
    """Advances the study's progress bar by one per history entry (a resumed run catches up at its first entry)."""

    def __init__(self, bar: Any) -> None:
        self.bar, self.shown = bar, 0

    def on_epoch(self, model: CompiledSPN, entry: dict[str, Any]) -> None:
        self.bar.update(entry["epoch"] + 1 - self.shown)
        self.shown = entry["epoch"] + 1


def _run_one(study: Study, dataset: Dataset, name: str, depth: int, run: int, out: Path, bar: Any) -> RunResult:
    splits = [dataset.train] if dataset.test is None else [dataset.train, dataset.test]
    cardinality = max(2, max(int(np.nanmax(split)) for split in splits) + 1) if study.leaf == "categorical" else 2
    model = build_model(study, dataset.num_vars, depth, run, cardinality, dataset.train)
    checkpoint_path = out / "checkpoints" / f"{_run_name(name, depth, run)}.pt"
    for folder in (out / "runs", out / "checkpoints"):
        # temporary files of this run's atomic writes interrupted by a kill (".NAME.SUFFIX.RANDOM.tmp.SUFFIX"),
        # never read; only this run's, as other processes may be running other runs into the same folder
        for leftover in folder.glob(f".{_run_name(name, depth, run)}.*.tmp*") if folder.is_dir() else ():
            leftover.unlink(missing_ok=True)
    bar.set_postfix_str(f"{name} depth {depth} run {run}")
    # the paper's update: full batch, plain gradient ascent (SGD on the negative objective), floor after each step
    try:
        history = fit(model, dataset.train, test=dataset.test, optimizer="sgd", lr=study.lr, epochs=study.iterations,
                      checkpoint=checkpoint_path, checkpoint_every=study.checkpoint_every,
                      fingerprint={**study.settings(), "dataset": name, "depth": depth, "run": run},
                      callbacks=[_BarUpdates(bar)])
    except DivergenceError as error:
        raise DivergenceError(f"{name}, depth {depth}, run {run}: {error}", error.iteration, error.history) from None
    seconds = history.seconds
    atomic_write_json(out / "runs" / f"{_run_name(name, depth, run)}.json",
                      {"dataset": name, "depth": depth, "run": run, "seconds": seconds, "history": history.to_dict()})
    checkpoint_path.unlink(missing_ok=True)
    return RunResult(name, depth, run, history, seconds)


# ----------------------------------------------------------------------------------------------------------------
# Outputs
# ----------------------------------------------------------------------------------------------------------------


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
                "branching": list(BRANCHINGS[depth]),
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
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib import pyplot as plt

    figure, (left, right) = plt.subplots(1, 2, figsize=(10, 3.8), sharey=True)
    colours = {1: "tab:blue", 2: "tab:orange", 3: "tab:green"}
    for depth in study.depths:
        runs = [r for r in results if r.dataset == name and r.depth == depth]
        curves = np.array([r.history.train_llh for r in runs])
        steps = np.arange(curves.shape[1])
        mean, std = curves.mean(axis=0), curves.std(axis=0)
        label = f"{depth} layer{'s' if depth > 1 else ''} {BRANCHINGS[depth]}"
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
    figure.suptitle(title, fontsize=10)
    figure.tight_layout()
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=110)
    plt.close(figure)
    atomic_write_bytes(path, buffer.getvalue())


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
