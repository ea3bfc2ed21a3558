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

import json
import math
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tqdm.auto import tqdm

from overspn.atomic import (
    atomic_write_json,
    output_lock,
    sweep_stale_temporaries,
)
from overspn.data import BINARY_DATASETS, SKLEARN_DATASETS, Dataset, load_binary, load_csv, load_sklearn
from overspn.engine.compiled import CompiledSPN, compile
from overspn.errors import ConfigurationError, DataError, DivergenceError
from overspn.learn.fit import History, fit

# the summary and outputs of a study live in depth_summary.py; re-exported here, where callers import them
from overspn.studies.depth_summary import CURVE_COLUMNS as CURVE_COLUMNS
from overspn.studies.depth_summary import DEFAULT_TARGETS as DEFAULT_TARGETS
from overspn.studies.depth_summary import METRICS as METRICS
from overspn.studies.depth_summary import TARGET_GAP, curves_table, plot_study, summarise
from overspn.studies.depth_summary import default_target as default_target
from overspn.studies.depth_summary import format_summary as format_summary
from overspn.studies.depth_summary import reach_statistics as reach_statistics
from overspn.studies.depth_summary import speedup_statistics as speedup_statistics
from overspn.studies.depth_summary import write_outputs as write_outputs
from overspn.symbolic.structure import Gaussian
from overspn.symbolic.transforms import MIXTURE_LEAVES, mixture, overparametrize

__all__ = ["Study", "PROTOCOLS", "BRANCHINGS", "protocol_study", "build_model", "load_study_data", "run_study",
           "curves_table", "summarise", "plot_study", "TARGET_GAP"]

BRANCHINGS: dict[int, tuple[int, ...]] = {1: (8,), 2: (2, 4), 3: (2, 2, 2)}
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
