"""The study behind ``overspn compare``: implicit acceleration by depth against explicit momentum, Adam and depth
as an optimizer (the command, :mod:`overspn.cli.compare`, parses its arguments and writes the tables).

Every method trains the paper's mixture of 8 products of indicator sums by full-batch gradient ascent on the mean
log-likelihood, from the same start, for a fixed number of iterations:

* ``gd``: the shallow SPN with plain gradient ascent; ``momentum``: heavy ball (SGD momentum 0.9); ``adam``: Adam;
* ``depth2``, ``depth3``, ``depth4``: the shallow SPN, its root weights trained by :class:`Overparametrized` as
  products of L independent factors (leaf weights by plain gradient ascent);
* ``depth3-shared``: the same with factors shared along the branching (2, 2, 2), which is the deep SPN ``deep3``
  collapsed (raw weights only);
* ``deep2``, ``deep3``: the overparametrized SPNs themselves (branching (2, 4) and (2, 2, 2)).

Protocols: ``paper`` (raw weights, lr 0.01, floor 1e-4, every weight or factor starting at 1e-4, perturbation 1e-12,
500 iterations, NLTCS) and ``log`` (log-weights, lr 0.1, 1000 iterations, NLTCS, plants, baudio; under log-weights
the depth optimizer factors the log-weight parameters themselves). For each protocol and data set the target
log-likelihood is the mean final train log-likelihood of plain gradient ascent (or ``--target``); every run reports
the iterations it took to reach it. Seconds to the target are those iterations times the median cost of one step,
measured separately with all methods interleaved in one process (so that a load change on the machine hits every
method alike); the wall time inside each run is kept in the CSV as ``seconds_to_target_in_run``. Each finished run
is stored under ``OUT/runs`` so that an interrupted comparison resumes where it stopped; the summary is written to
``comparison.csv``, ``comparison.json`` and ``comparison.md``.
"""

from __future__ import annotations

import itertools
import json
import math
import statistics
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from overspn.atomic import atomic_write_json
from overspn.engine.compiled import CompiledSPN
from overspn.engine.compiled import compile as compile_spn
from overspn.errors import ConfigurationError, DivergenceError
from overspn.learn.callbacks import StepTimes
from overspn.learn.fit import fit
from overspn.learn.optim import Overparametrized, root_weight_parameter
from overspn.studies.report import figure as new_figure
from overspn.studies.report import legend_beside, line_styles, save_figure
from overspn.symbolic.transforms import mixture, overparametrize

__all__ = ["COMPONENTS", "DEEP_BRANCHING", "METHODS", "METHOD_LABELS", "PROTOCOLS", "Protocol", "build",
           "cached_runs", "cached_step_seconds", "comparison_target", "markdown", "plot_curves", "reach", "run_one",
           "summarise", "time_steps"]


COMPONENTS = 8


@dataclass(frozen=True)
class Protocol:
    weights: str
    lr: float
    floor: float
    init: float
    perturbation: float
    iterations: int
    datasets: tuple[str, ...]


PROTOCOLS = {
    "paper": Protocol("raw", 0.01, 1e-4, 1e-4, 1e-12, 500, ("nltcs",)),
    "log": Protocol("log", 0.1, 1e-4, 1e-4, 1e-12, 1000, ("nltcs", "plants", "baudio")),
}

METHODS = ("gd", "momentum", "adam", "depth2", "depth3", "depth4", "depth3-shared", "deep2", "deep3")
METHOD_LABELS = {
    "gd": "gradient ascent",
    "momentum": "heavy ball (momentum 0.9)",
    "adam": "Adam",
    "depth2": "depth optimizer L=2",
    "depth3": "depth optimizer L=3",
    "depth4": "depth optimizer L=4",
    "depth3-shared": "depth optimizer L=3, shared (2,2,2)",
    "deep2": "deep SPN L=2 (2,4)",
    "deep3": "deep SPN L=3 (2,2,2)",
}
DEEP_BRANCHING = {"deep2": (2, 4), "deep3": (2, 2, 2)}


def build(method: str, protocol: Protocol, num_vars: int, seed: int) -> tuple[CompiledSPN, torch.optim.Optimizer]:
    """The model and optimizer of one method, started as the protocol says (optimizers minimise: :func:`fit` hands
    them the negative log-likelihood)."""
    raw = protocol.weights == "raw"
    lr, init, floor = protocol.lr, protocol.init, protocol.floor

    def shallow(root_weight: float, model_floor: float) -> CompiledSPN:
        root = mixture(num_vars, COMPONENTS, "indicator", seed, root_weight=root_weight,
                       perturbation=protocol.perturbation)
        return compile_spn(root, protocol.weights, floor=model_floor, dtype=torch.float64)

    if method in ("gd", "momentum", "adam"):
        model = shallow(init, floor)
        if method == "adam":
            return model, torch.optim.Adam(model.parameters(), lr=lr)
        momentum = 0.9 if method == "momentum" else 0.0
        return model, torch.optim.SGD(model.parameters(), lr=lr, momentum=momentum)
    if method in DEEP_BRANCHING:
        root = mixture(num_vars, COMPONENTS, "indicator", seed, root_weight=init, perturbation=protocol.perturbation)
        deep = overparametrize(root, DEEP_BRANCHING[method], init=init)
        model = compile_spn(deep, protocol.weights, floor=floor, dtype=torch.float64)
        return model, torch.optim.SGD(model.parameters(), lr=lr)
    if method.startswith("depth"):
        shared = method.endswith("-shared")
        depth = int(method[len("depth")]) if not shared else 3
        if shared and not raw:
            raise ConfigurationError(f"{method} is defined for raw weights only (it equals deep3 there)")
        if raw:
            # every factor starts at init, so the product starts at init ** depth; the model's floor must let it
            model = shallow(init**depth, floor**depth)
            root_parameter = root_weight_parameter(model)
            others = [p for p in model.parameters() if p is not root_parameter]
            # the leaf weights keep the protocol's floor
            floors: dict[torch.Tensor, float] = {parameter: floor for parameter in others}
            floors[root_parameter] = floor**depth
            root_group: dict[str, Any] = {"params": [root_parameter], "depth": depth, "init": init,
                                          "factor_floor": floor}
        else:
            model = shallow(init, floor)
            root_parameter = root_weight_parameter(model)
            others = [p for p in model.parameters() if p is not root_parameter]
            root_group = {"params": [root_parameter], "depth": depth, "init": "balanced"}
            floors = {}
        if shared:
            root_group["branching"] = DEEP_BRANCHING["deep3"]
        optimizer = Overparametrized([root_group, {"params": others, "depth": 1}], lr=lr, floors=floors)
        return model, optimizer
    raise ConfigurationError(f"unknown method {method!r}; choose from {METHODS}")


def run_one(method: str, protocol: Protocol, dataset: Any, seed: int, iterations: int) -> dict[str, Any]:
    """Train one method; the train log-likelihood before every step and after the last, cumulative step seconds."""
    model, optimizer = build(method, protocol, dataset.num_vars, seed)
    timer = StepTimes()
    diverged = False
    try:  # every row counted (no merging of repeated rows), as the stored comparisons were computed
        history = fit(model, dataset.train, optimizer=optimizer, epochs=iterations, callbacks=[timer],
                      deduplicate=False).train_llh
    except DivergenceError as error:
        assert error.history is not None, "fit attaches its history to a divergence"
        diverged, history = True, error.history.train_llh
    seconds = [0.0, *itertools.accumulate(timer.seconds)][: len(history) + 1]
    with torch.no_grad():
        final_test = model.log_likelihood(model.encode(dataset.test)).mean().item()
    return {"method": method, "seed": seed, "iterations": iterations, "history": history, "seconds": seconds,
            "final_train": history[-1] if not diverged else math.nan,
            "final_test": final_test if not diverged else math.nan, "diverged": diverged}


def reach(run: dict[str, Any], target: float) -> tuple[float, float]:
    """Iterations (steps taken) and training seconds until the train log-likelihood first reaches ``target``."""
    for steps, value in enumerate(run["history"]):
        if value >= target:
            return float(steps), run["seconds"][steps]
    return math.nan, math.nan


def time_steps(methods: Sequence[str], protocol: Protocol, dataset: Any, steps: int,
               rounds: int) -> dict[str, float]:
    """Median seconds per training step of every method: ``rounds`` rounds of ``steps`` steps, methods interleaved
    within each round, after a warm-up."""
    trainers = []
    for method in methods:
        model, optimizer = build(method, protocol, dataset.num_vars, 0)
        trainers.append((method, model, optimizer, model.encode(dataset.train)))

    def seconds_per_step(model: CompiledSPN, optimizer: torch.optim.Optimizer, data: Any, count: int) -> float:
        timer = StepTimes()
        fit(model, data, optimizer=optimizer, epochs=count, callbacks=[timer], deduplicate=False)
        return sum(timer.seconds) / count

    for _, model, optimizer, data in trainers:
        seconds_per_step(model, optimizer, data, 3)
    samples: dict[str, list[float]] = {method: [] for method in methods}
    for _ in range(rounds):
        for method, model, optimizer, data in trainers:
            samples[method].append(seconds_per_step(model, optimizer, data, steps))
    return {method: statistics.median(values) for method, values in samples.items()}


def _spread(values: list[float]) -> tuple[float, float]:
    finite = [v for v in values if math.isfinite(v)]
    if not finite:
        return math.nan, math.nan
    return statistics.fmean(finite), statistics.stdev(finite) if len(finite) > 1 else 0.0


def summarise(runs: list[dict[str, Any]], target: float, step_seconds: dict[str, float]) -> list[dict[str, Any]]:
    rows = []
    methods = [m for m in METHODS if any(r["method"] == m for r in runs)]
    for method in methods:
        mine = [r for r in runs if r["method"] == method]
        reached = [reach(r, target) for r in mine]
        step_ms = [1000 * r["seconds"][-1] / max(1, len(r["seconds"]) - 1) for r in mine]
        its, its_sd = _spread([steps for steps, _ in reached])
        secs, secs_sd = _spread([steps * step_seconds[method] for steps, _ in reached])
        in_run, in_run_sd = _spread([s for _, s in reached])
        train, train_sd = _spread([r["final_train"] for r in mine])
        test, test_sd = _spread([r["final_test"] for r in mine])
        rows.append({
            "method": method, "label": METHOD_LABELS[method], "runs": len(mine),
            "reached": sum(math.isfinite(steps) for steps, _ in reached),
            "diverged": sum(bool(r["diverged"]) for r in mine),
            "iterations_to_target": its, "iterations_to_target_sd": its_sd,
            "seconds_to_target": secs, "seconds_to_target_sd": secs_sd,
            "seconds_to_target_in_run": in_run, "seconds_to_target_in_run_sd": in_run_sd,
            "final_train": train, "final_train_sd": train_sd, "final_test": test, "final_test_sd": test_sd,
            "ms_per_iteration": 1000 * step_seconds[method],
            "ms_per_iteration_in_run_median": statistics.median(step_ms),
        })
    return rows


def _fmt(mean: float, sd: float, digits: int) -> str:
    if not math.isfinite(mean):
        return "-"
    return f"{mean:.{digits}f} ± {sd:.{digits}f}"


def markdown(sections: list[dict[str, Any]]) -> str:
    lines = []
    for section in sections:
        lines.append(f"### {section['protocol']} protocol, {section['dataset']} ({section['seeds']} seeds, "
                     f"{section['iterations']} iterations; target train LL {section['target']:.4f})")
        lines.append("")
        lines.append("| method | reached | iterations to target | seconds to target (interleaved timing) | "
                     "final train LL | final test LL | ms / iteration |")
        lines.append("|---|---|---|---|---|---|---|")
        for row in section["rows"]:
            lines.append(
                f"| {row['label']} | {row['reached']}/{row['runs']} | "
                f"{_fmt(row['iterations_to_target'], row['iterations_to_target_sd'], 1)} | "
                f"{_fmt(row['seconds_to_target'], row['seconds_to_target_sd'], 2)} | "
                f"{_fmt(row['final_train'], row['final_train_sd'], 4)} | "
                f"{_fmt(row['final_test'], row['final_test_sd'], 4)} | {row['ms_per_iteration']:.1f} |")
        lines.append("")
    return "\n".join(lines)


def plot_curves(path: Path, runs: list[dict[str, Any]], title: str, target: float) -> None:
    made, axis = new_figure(8.5, 4.5)
    styles = line_styles(markevery=max(1, max((len(r["history"]) for r in runs), default=1) // 8))
    for method, style in zip(METHODS, styles):
        histories = [r["history"] for r in runs if r["method"] == method and not r["diverged"]]
        if not histories:
            continue
        length = min(len(h) for h in histories)
        mean = np.mean([h[:length] for h in histories], axis=0)
        axis.plot(np.arange(length), mean, label=METHOD_LABELS[method], **style)
    axis.axhline(target, color="grey", linestyle=":", linewidth=1, label=f"target {target:.3f}")
    finite = [v for r in runs for v in r["history"] if math.isfinite(v)]
    if finite:
        top = max(finite)
        axis.set_ylim(max(min(finite), top - 3 * max(1e-3, top - target) - 1.0), top + 0.05 * abs(top - target) + 0.05)
    axis.set_xlabel("iteration (full-batch update)")
    axis.set_ylabel("mean train log-likelihood (nats)")
    axis.set_title(title, fontsize=10)
    axis.grid(alpha=0.3)
    legend_beside(axis)
    save_figure(made, path)


def cached_runs(runs_dir: Path, name: str, dataset_name: str, protocol: Protocol, dataset: Any,
                methods: Sequence[str], seeds: range, iterations: int,
                say: Callable[[str], None]) -> list[dict[str, Any]]:
    """Every run of ``methods`` and ``seeds`` on one protocol and data set: read from ``runs_dir`` where stored with
    the same settings, otherwise trained and stored there (so that an interrupted comparison resumes)."""
    runs = []
    config = {"protocol": asdict(protocol), "iterations": iterations}
    for method in methods:
        if method == "depth3-shared" and protocol.weights != "raw":
            continue
        for seed in seeds:
            path = runs_dir / f"{name}-{dataset_name}-{method}-seed{seed}.json"
            if path.is_file():
                stored = json.loads(path.read_text())
                if stored.get("config") == json.loads(json.dumps(config)):
                    runs.append(stored)
                    continue
            result = run_one(method, protocol, dataset, seed, iterations)
            result["config"] = config
            atomic_write_json(path, result)
            runs.append(result)
            say(f"{name} {dataset_name} {method} seed {seed}: final train {result['final_train']:.4f} "
                f"test {result['final_test']:.4f} ({result['seconds'][-1]:.1f} s)")
    return runs


def comparison_target(runs: list[dict[str, Any]], given: float | None) -> float:
    """``given``, else the mean final train log-likelihood of the gradient-ascent runs that did not diverge."""
    if given is not None:
        return given
    baseline = [r["final_train"] for r in runs if r["method"] == "gd" and math.isfinite(r["final_train"])]
    if not baseline:
        raise ConfigurationError("no finished gradient-ascent run to set the target; pass --target")
    return statistics.fmean(baseline)


def cached_step_seconds(timing_path: Path, methods: Sequence[str], protocol: Protocol, dataset: Any, steps: int,
                        rounds: int, say: Callable[[str], None], what: str) -> dict[str, float]:
    """:func:`time_steps` of the methods the protocol runs, read from ``timing_path`` where stored with the same
    settings, otherwise measured and stored there."""
    timed = [m for m in methods if m != "depth3-shared" or protocol.weights == "raw"]
    timing_config = {"methods": timed, "steps": steps, "rounds": rounds}
    stored_timing = json.loads(timing_path.read_text()) if timing_path.is_file() else {}
    if stored_timing.get("config") == timing_config:
        seconds: dict[str, float] = stored_timing["seconds_per_step"]
        return seconds
    say(f"{what}: timing {rounds} interleaved rounds of {steps} steps per method ...")
    seconds = time_steps(timed, protocol, dataset, steps, rounds)
    atomic_write_json(timing_path, {"config": timing_config, "seconds_per_step": seconds})
    return seconds
