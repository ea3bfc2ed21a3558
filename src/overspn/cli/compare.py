"""``overspn compare``: implicit acceleration by depth against explicit momentum, Adam and depth as an optimizer.

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

import argparse
import itertools
import json
import math
import shutil
import statistics
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from overspn.atomic import atomic_write_json, atomic_write_text
from overspn.cli.argtypes import finite_float, positive_int
from overspn.cli.options import (
    add_data_dir,
    add_datasets,
    add_quiet,
    add_restart,
    add_seed,
    add_threads,
    default_out,
    set_threads,
)
from overspn.data import load_dataset
from overspn.engine.compiled import CompiledSPN
from overspn.engine.compiled import compile as compile_spn
from overspn.errors import ConfigurationError, DivergenceError
from overspn.learn.callbacks import StepTimes
from overspn.learn.fit import fit
from overspn.learn.optim import Overparametrized, root_weight_parameter
from overspn.studies.report import figure as new_figure
from overspn.studies.report import legend_beside, line_styles, save_figure
from overspn.symbolic.transforms import mixture, overparametrize

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


def handle(args: argparse.Namespace) -> int:
    set_threads(args.threads)
    protocols = list(PROTOCOLS) if args.protocol == "both" else [args.protocol]
    methods = tuple(args.methods.split(",")) if args.methods else METHODS
    for method in methods:
        if method not in METHODS:
            raise ConfigurationError(f"unknown method {method!r}; choose from {', '.join(METHODS)}")
    if args.seeds < 1 or args.timing_steps < 1 or args.timing_rounds < 1:
        raise ConfigurationError("--seeds, --timing-steps and --timing-rounds must be >= 1")
    out = Path(args.out) if args.out is not None else default_out(
        "compare", [args.protocol, *(args.dataset or [])], args, OUT_DEFAULTS)
    if args.restart:
        shutil.rmtree(out / "runs", ignore_errors=True)
    say = (lambda text: None) if args.quiet else (lambda text: print(text, flush=True))
    say(f"compare: {', '.join(methods)}; seeds {args.seed}..{args.seed + args.seeds - 1}; results in {out}")
    sections: list[dict[str, Any]] = []
    rows_csv: list[dict[str, Any]] = []
    figures: list[Path] = []
    for name in protocols:
        protocol = PROTOCOLS[name]
        iterations = args.iterations if args.iterations is not None else protocol.iterations
        if iterations < 1:
            raise ConfigurationError(f"--iterations must be >= 1, got {iterations}")
        datasets = tuple(args.dataset) if args.dataset else protocol.datasets
        for dataset_name in datasets:
            dataset = load_dataset(dataset_name, args.data_dir)
            runs = []
            for method in methods:
                if method == "depth3-shared" and protocol.weights != "raw":
                    continue
                for seed in range(args.seed, args.seed + args.seeds):
                    path = out / "runs" / f"{name}-{dataset_name}-{method}-seed{seed}.json"
                    config = {"protocol": asdict(protocol), "iterations": iterations}
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
            baseline = [r["final_train"] for r in runs if r["method"] == "gd" and math.isfinite(r["final_train"])]
            if args.target is not None:
                target = args.target
            elif baseline:
                target = statistics.fmean(baseline)
            else:
                raise ConfigurationError("no finished gradient-ascent run to set the target; pass --target")
            timing_path = out / "runs" / f"{name}-{dataset_name}-timing.json"
            timed = [m for m in methods if m != "depth3-shared" or protocol.weights == "raw"]
            timing_config = {"methods": timed, "steps": args.timing_steps, "rounds": args.timing_rounds}
            stored_timing = json.loads(timing_path.read_text()) if timing_path.is_file() else {}
            if stored_timing.get("config") == timing_config:
                step_seconds = stored_timing["seconds_per_step"]
            else:
                say(f"{name} {dataset_name}: timing {args.timing_rounds} interleaved rounds of {args.timing_steps} "
                    "steps per method ...")
                step_seconds = time_steps(timed, protocol, dataset, args.timing_steps, args.timing_rounds)
                atomic_write_json(timing_path, {"config": timing_config, "seconds_per_step": step_seconds})
            rows = summarise(runs, target, step_seconds)
            sections.append({"protocol": name, "dataset": dataset_name, "target": target, "seeds": args.seeds,
                             "iterations": iterations, "rows": rows})
            rows_csv.extend({"protocol": name, "dataset": dataset_name, "target": target, **row} for row in rows)
            figures.append(out / f"curves_{name}_{dataset_name}.png")
            plot_curves(figures[-1], runs, f"{name} protocol, {dataset_name}: mean train log-likelihood over "
                        f"{args.seeds} seeds", target)
    columns = list(rows_csv[0])
    lines = [",".join(columns)] + [",".join(_csv(row[c]) for c in columns) for row in rows_csv]
    atomic_write_text(out / "comparison.csv", "\n".join(lines) + "\n")
    atomic_write_json(out / "comparison.json", sections)
    table = markdown(sections)
    atomic_write_text(out / "comparison.md", table + "\n")
    if not args.quiet:
        print(table)
        print(f"compare: {len(sections)} protocol and data set pairs, {len(methods)} methods, {args.seeds} seeds")
        for path in (out / "comparison.csv", out / "comparison.json", out / "comparison.md", *figures):
            print(f"wrote {path}")
    return 0


# the options that change the results: a run that changes one of them gets its own default folder
OUT_DEFAULTS = {"iterations": None, "seeds": 5, "seed": 0, "methods": None, "target": None, "timing_steps": 20,
                "timing_rounds": 7}


def _csv(value: Any) -> str:
    if isinstance(value, float):
        return repr(value)
    text = str(value)
    return f'"{text}"' if "," in text else text


def register(subparsers: Any) -> None:
    parser = subparsers.add_parser(
        "compare", help="depth (implicit acceleration) against momentum, Adam and the depth optimizer",
        description="Implicit acceleration by depth against explicit momentum, Adam and depth as an optimizer: every "
                    "method trains the paper's mixture of 8 products from the same start for a fixed number of "
                    "iterations; reports the iterations and seconds each needs to reach plain gradient ascent's "
                    "mean final train log-likelihood. Writes comparison.csv, comparison.json, comparison.md and one "
                    "figure per protocol and data set to --out; finished runs are kept under OUT/runs, so an "
                    "interrupted comparison resumes.")
    parser.add_argument("--protocol", choices=("paper", "log", "both"), default="paper",
                        help="paper: raw weights, lr 0.01, 500 iterations, nltcs; log: log-weights, lr 0.1, 1000 "
                             "iterations, nltcs, plants, baudio")
    add_datasets(parser, "the protocol's", alias="--datasets")
    add_data_dir(parser)
    parser.add_argument("--iterations", type=positive_int, help="iterations per run (default: the protocol's)")
    parser.add_argument("--seeds", type=positive_int, default=5, help="runs per method, seeds SEED..SEED+N-1")
    add_seed(parser, "the first seed, an integer >= 0")
    parser.add_argument("--methods", help=f"comma-separated subset of {','.join(METHODS)} (default: all)")
    parser.add_argument("--target", type=finite_float,
                        help="target train log-likelihood (default: gradient ascent's mean final value)")
    parser.add_argument("--timing-steps", type=positive_int, default=20,
                        help="steps per method and round of the timing")
    parser.add_argument("--timing-rounds", type=positive_int, default=7, help="interleaved rounds of the timing")
    add_threads(parser, default=1)
    parser.add_argument("--out", type=Path, metavar="DIR",
                        help="output folder (default: results/compare/PROTOCOL[+DATASETS], with a short hash of other "
                             "settings that differ from the defaults)")
    add_restart(parser)
    add_quiet(parser)
    parser.set_defaults(handler=handle)
