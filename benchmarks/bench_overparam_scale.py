"""Overparametrized training of benchmark-sized RAT-SPNs: does training each sum weight as a product speed learning up?

Trapp, Peharz & Pernkopf (2019) train small SPNs whose sum weights are products of factors along extra layers and
report faster optimisation. This benchmark asks the same question at the size of real benchmark models: a RAT-SPN
(:class:`overspn.rat.RatSPN`, depth 3 or less, 10 repetitions, 10 sums and 10 inputs per region, Bernoulli inputs,
raw unnormalised sum weights with the exact partition function, about 10^4 - 10^5 parameters) on binary benchmark
data sets, trained by plain mini-batch gradient ascent on the mean log-likelihood in three arms with the same step
size, batches, initial model and number of epochs:

* ``plain``: gradient ascent on the weights themselves (``Overparametrized`` with depth 1, which is plain gradient
  descent on the negative log-likelihood);
* ``elementwise-2``: every sum weight trained as the product of 2 factors of its own, initialised balanced
  (each factor the square root of the weight);
* ``tree-2``: every sum node's weight vector trained as a two-layer tree of factors, the structure
  :func:`overspn.overparametrize` builds: inner sums group their ``C x C`` cross products by left child
  (branching ``(C, C)``), the root groups its children by repetition (branching ``(R, K*K)``); initialised as that
  transform does (top factors carry the group totals, bottom factors the ratios).

In every arm the input distributions' logits are trained by plain gradient ascent.
:class:`overspn.optim.Overparametrized` writes the product of the factors back into each weight after every step, so
the model always has its original size: the trained model *is* the collapsed one (checked: each weight equals the
product of its factors at the end).

Per run (data set x seed x arm): the validation log-likelihood after every epoch and the training seconds spent
(evaluation excluded); the test log-likelihood of the parameters with the best validation log-likelihood. Per data
set three fixed validation targets, computed from the plain arm's runs only: with ``start`` the validation
log-likelihood of the initial model (the same in every arm of a seed) and ``end`` the median over seeds of the plain
runs' best, "50%" and "90%" are ``start + 0.5 (end - start)`` and ``start + 0.9 (end - start)``, and "plain" is
``end`` itself (reached by about half the plain runs). Reported: epochs and training seconds to reach each target
(null where a run does not reach it), the median validation curve, and the test log-likelihood, medians over seeds.

Runs are written to the JSON file as they finish; an interrupted benchmark resumes where it stopped (runs with the
same settings are reused).

    OVERSPN_DATA=../shared/datasets python benchmarks/bench_overparam_scale.py [--datasets nltcs plants baudio]
        [--seeds 0 1 2] [--epochs 10] [--time-budget 600] [--lr 0.5]
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import statistics
from pathlib import Path
from typing import Any

import numpy as np
import torch
from provenance import source_revision

from overspn.atomic import atomic_write_json
from overspn.data import load_dataset
from overspn.engine.rat import RatConfig, RatSPN
from overspn.errors import DivergenceError
from overspn.learn.fit import evaluate, fit
from overspn.learn.optim import Overparametrized

REPO = Path(__file__).resolve().parents[1]
ARMS = ("plain", "elementwise-2", "tree-2")
FLOOR = 1e-6  # raw weights' floor; the factor floors follow from it (factor ** depth >= floor)


def build_model(num_vars: int, seed: int, train: np.ndarray, args: argparse.Namespace) -> RatSPN:
    depth = min(args.depth, int(math.log2(num_vars)))
    config = RatConfig(num_vars, depth, args.repetitions, args.sums, args.inputs, "bernoulli", seed=seed)
    model = RatSPN(config, weights="raw", floor=FLOOR)
    model.initialise_from_data(train, seed=seed)
    return model


def sum_weight_groups(model: RatSPN, arm: str, lr: float) -> list[dict[str, Any]]:
    """Parameter groups of the optimiser for ``arm``: sum weights overparametrized, input logits plain."""
    inputs = [p for name, p in model.named_parameters() if "weights" not in name]
    groups: list[dict[str, Any]] = [{"params": inputs, "depth": 1}]
    weights = [*model.sum_weights, model.root_weights]
    if arm == "plain":
        groups.append({"params": weights, "depth": 1})
    elif arm == "elementwise-2":
        groups.append({"params": weights, "depth": 2, "init": "balanced"})
    elif arm == "tree-2":
        for parameter in model.sum_weights:
            children = parameter.shape[-1]
            side = math.isqrt(children)  # the children of an inner sum are the cross product C x C
            groups.append({"params": [parameter], "branching": (side, side), "init": "overparametrize"})
        repetitions = model.config.num_repetitions
        groups.append({"params": [model.root_weights], "branching": (repetitions, model.root_weights.numel()
                                                                     // repetitions), "init": "overparametrize"})
    else:
        raise ValueError(f"unknown arm {arm!r}")
    for group in groups:
        group["lr"] = lr
    return groups


def collapse_error(model: RatSPN, optimizer: Overparametrized) -> float:
    """Largest relative gap between a weight and the product of its factors (0 up to rounding: collapsed)."""
    worst = 0.0
    for group in optimizer.param_groups:
        for parameter in group["params"]:
            factors = optimizer.factors(parameter)
            if len(factors) < 2:
                continue
            size = factors[-1].shape[1]
            product = torch.ones_like(factors[-1])
            for factor in factors:
                product = product * factor.repeat_interleave(size // factor.shape[1], dim=1)
            gap = (product.view_as(parameter) - parameter).abs() / parameter.abs().clamp_min(FLOOR)
            worst = max(worst, float(gap.detach().max()))
    return worst


class _LastEpoch:
    """Callback of :func:`overspn.fit`: the collapse error of the factors after the latest epoch."""

    def __init__(self, optimizer: Overparametrized) -> None:
        self.optimizer, self.collapse_error = optimizer, 0.0

    def on_epoch(self, model: RatSPN, entry: dict[str, Any]) -> None:
        self.collapse_error = collapse_error(model, self.optimizer)


def run(name: str, data: Any, seed: int, arm: str, args: argparse.Namespace) -> dict[str, Any]:
    train = torch.from_numpy(data.train).float()
    model = build_model(train.shape[1], seed, data.train, args)
    optimizer = Overparametrized(sum_weight_groups(model, arm, args.lr), lr=args.lr,
                                 floors=model.raw_weight_floors())
    last = _LastEpoch(optimizer)
    try:
        result = fit(model, train, data.valid, test=data.test, optimizer=optimizer, batch_size=args.batch_size,
                     epochs=args.epochs, time_budget=args.time_budget, seed=seed, callbacks=[last])
    except DivergenceError as error:  # the model holds the last finite parameters, the history the finite epochs
        result = error.history
    history = [{"epoch": e["epoch"], "seconds": e["seconds"], "valid": e["valid_llh"]} for e in result.entries]
    model_parameters = sum(p.numel() for p in model.parameters())
    extra = sum(f.numel() for g in optimizer.param_groups for p in g["params"]
                for f in optimizer.factors(p)) - model_parameters
    return {"dataset": name, "seed": seed, "arm": arm, "history": history, "best_valid": result.best_valid_llh,
            "test_at_best_valid": evaluate(model, data.test), "final_test": result.entries[-1]["test_llh"],
            "parameters": model.num_parameters(), "optimiser_extra_entries": extra,
            "collapse_max_relative_error": last.collapse_error, "epochs_run": result.epochs,
            "train_seconds": result.seconds}


def first_reaching(history: list[dict[str, Any]], target: float) -> tuple[int | None, float | None]:
    for entry in history:
        if entry["valid"] is not None and entry["valid"] >= target:
            return entry["epoch"], entry["seconds"]
    return None, None


TARGETS = {"50%": 0.5, "90%": 0.9, "plain": 1.0}
CURVE_EPOCHS = (1, 2, 3, 5, 10, 15, 20, 25)


def summarise(runs: list[dict[str, Any]], datasets: list[str]) -> dict[str, Any]:
    summary: dict[str, Any] = {}
    for name in datasets:
        plain = [r for r in runs if r["dataset"] == name and r["arm"] == "plain"]
        if not plain:
            continue
        start = statistics.median(r["history"][0]["valid"] for r in plain)
        end = statistics.median(r["best_valid"] for r in plain)
        targets = {label: start + fraction * (end - start) for label, fraction in TARGETS.items()}
        per_arm: dict[str, Any] = {"targets": targets, "initial_valid": start}
        for arm in ARMS:
            arm_runs = [r for r in runs if r["dataset"] == name and r["arm"] == arm]
            if not arm_runs:
                continue
            entry: dict[str, Any] = {"seeds": [r["seed"] for r in arm_runs]}
            for label, target in targets.items():
                reached = [first_reaching(r["history"], target) for r in arm_runs]
                entry[f"epochs_to_{label}"] = [e for e, _ in reached]
                entry[f"seconds_to_{label}"] = [s for _, s in reached]
                done = [e for e, _ in reached if e is not None]
                entry[f"reached_{label}"] = f"{len(done)}/{len(arm_runs)}"
                # medians over seeds, a run that never reaches the target counting as slower than every other
                epochs_median = statistics.median(e if e is not None else math.inf for e, _ in reached)
                seconds_median = statistics.median(t if t is not None else math.inf for _, t in reached)
                entry[f"median_epochs_to_{label}"] = None if math.isinf(epochs_median) else epochs_median
                entry[f"median_seconds_to_{label}"] = None if math.isinf(seconds_median) else seconds_median
            epochs = min(len(r["history"]) for r in arm_runs)
            entry["median_valid_curve"] = {e: statistics.median(r["history"][e]["valid"] for r in arm_runs)
                                           for e in range(epochs) if all(r["history"][e]["valid"] is not None
                                                                         for r in arm_runs)}
            tests = [r["test_at_best_valid"] for r in arm_runs]
            entry["test_at_best_valid"] = tests
            entry["median_test"] = statistics.median(tests)
            entry["test_spread"] = [min(tests), max(tests)]
            entry["median_best_valid"] = statistics.median(r["best_valid"] for r in arm_runs)
            entry["seconds_per_epoch"] = statistics.median(r["train_seconds"] / max(1, r["epochs_run"])
                                                           for r in arm_runs)
            per_arm[arm] = entry
        summary[name] = per_arm
    return summary


def markdown(summary: dict[str, Any]) -> str:
    def fmt(value: Any, digits: int = 0) -> str:
        return "-" if value is None else f"{value:.{digits}f}"

    lines = ["| data set | arm | epochs to 50% / 90% / plain (reached) | s to 50% / 90% / plain | s/epoch | "
             "valid LL at epochs " + ", ".join(map(str, CURVE_EPOCHS)) + " | test LL median [min, max] |",
             "|---|---|---|---|---|---|---|"]
    for name, per_arm in summary.items():
        t = per_arm["targets"]
        for arm in ARMS:
            if arm not in per_arm:
                continue
            e = per_arm[arm]
            curve = e["median_valid_curve"]
            lines.append(
                f"| {name} (targets {t['50%']:.2f} / {t['90%']:.2f} / {t['plain']:.2f}) | {arm} | "
                + " / ".join(f"{fmt(e[f'median_epochs_to_{k}'])} ({e[f'reached_{k}']})" for k in TARGETS) + " | "
                + " / ".join(fmt(e[f"median_seconds_to_{k}"]) for k in TARGETS)
                + f" | {e['seconds_per_epoch']:.1f} | "
                + ", ".join(f"{curve[c]:.2f}" for c in CURVE_EPOCHS if c in curve)
                + f" | {e['median_test']:.3f} [{e['test_spread'][0]:.3f}, {e['test_spread'][1]:.3f}] |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--datasets", nargs="+", default=["nltcs", "plants", "baudio"])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--arms", nargs="+", choices=ARMS, default=list(ARMS))
    parser.add_argument("--epochs", type=int, default=10, help="epochs per run, the same for every arm")
    parser.add_argument("--time-budget", type=float, default=600.0, help="safety cap on training seconds per run")
    parser.add_argument("--lr", type=float, default=0.5, help="the project's default SGD step size")
    parser.add_argument("--batch-size", type=int, default=200)
    parser.add_argument("--depth", type=int, default=3)
    parser.add_argument("--repetitions", type=int, default=10)
    parser.add_argument("--sums", type=int, default=10)
    parser.add_argument("--inputs", type=int, default=10)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--out", type=Path, default=REPO / "benchmarks" / "results" / "overparam_scale.json")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    settings = {k: v for k, v in vars(args).items() if k not in ("datasets", "seeds", "arms", "out", "threads")}

    runs: list[dict[str, Any]] = []
    if args.out.exists():
        previous = json.loads(args.out.read_text())
        if previous.get("settings") == settings:
            runs = previous["runs"]
    done = {(r["dataset"], r["seed"], r["arm"]) for r in runs}

    def write() -> dict[str, Any]:
        summary = summarise(runs, args.datasets)
        atomic_write_json(args.out, {
            "benchmark": "overparametrized vs plain gradient training of RAT-SPNs",
            "machine": {"platform": platform.platform(), "cpus": os.cpu_count(),
                        "torch_threads": torch.get_num_threads(), "load_average": os.getloadavg()},
            "source": source_revision(), "torch": torch.__version__, "settings": settings, "runs": runs,
            "summary": summary})
        return summary

    for name in args.datasets:
        data = load_dataset(name)
        for seed in args.seeds:
            for arm in args.arms:
                if (name, seed, arm) in done:
                    continue
                result = run(name, data, seed, arm, args)
                runs.append(result)
                write()
                print(f"{name} seed {seed} {arm}: best valid {result['best_valid']:.4f}, test "
                      f"{result['test_at_best_valid']:.4f}, {result['epochs_run']} epochs in "
                      f"{result['train_seconds']:.0f} s", flush=True)
    summary = write()
    print()
    print(markdown(summary))
    print(f"\nwritten to {args.out}")


if __name__ == "__main__":
    main()
