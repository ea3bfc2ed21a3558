"""Overparametrized gradient ascent on hidden Chow-Liu trees: does training each sum weight as a product speed it up?

The question of Trapp, Peharz & Pernkopf (2019) at the size of a real benchmark model: an HCLT
(:meth:`overspn.engine.hclt.HCLT.from_data`: the Chow-Liu tree of the training data, K = 16 latent states, leaves
started from clusters of the data, float64) trained on binary benchmark data in six arms, every arm of a seed from
the same initial function (the same ``from_data`` seed; the initial log-likelihoods are checked equal):

* ``sgd``: plain mini-batch gradient ascent on the raw (unnormalised, floored, exact partition function) weights;
* ``elementwise-2`` / ``elementwise-3``: every sum weight trained as the product of 2 / 3 factors of its own
  (:class:`overspn.learn.optim.Overparametrized`, init "balanced");
* ``tree-4x4``: every sum node's 16 weights trained as a two-layer factor tree with branching (4, 4) (init
  "overparametrize", the factorisation :func:`overspn.overparametrize` builds);
* ``adam``: Adam on the raw weights;
* ``em``: the recipe's full-batch EM (softmax weights, step size 1, pseudocount 0.01, step halved after an epoch
  without a better validation LL; :func:`overspn.learn.recipes.train_model`) -- one update per epoch, so its epochs
  are passes over the data like the others' but not updates.

In the gradient arms the leaves' logits are trained by plain gradient ascent with the ``sgd`` arm's learning rate;
the sum weights (or their factors) with the arm's own. Mini-batches of 200 rows (as the RAT-SPN study), a fixed
number of epochs per run (with a safety cap on seconds). Learning rates: chosen once per arm from a grid of three
on seed 0 of nltcs, by the best VALIDATION log-likelihood within the study's epochs (``--tune``); the test split is
never used to choose anything.

Per run: exact train, validation and test log-likelihood after every epoch and the seconds since the start (fit's
clock: training plus the per-epoch evaluations). Targets per data set and seed: with ``start`` the initial train LL
and ``end`` the final train LL of the best arm (the arm with the highest mean final train LL over seeds),
``start + f (end - start)`` for f = 50 %, 90 %, 99 %. Reported: epochs and seconds to each target (mean and
[min, max] over seeds; runs that never reach it are counted), final train / valid LL.

    OVERSPN_DATA=../shared/datasets python benchmarks/bench_hclt_overparam.py --tune --out tune.json
    OVERSPN_DATA=../shared/datasets python benchmarks/bench_hclt_overparam.py --datasets nltcs jester \\
        --lrs tune.json --out part1.json          # and plants in a second process
    python benchmarks/bench_hclt_overparam.py --merge part1.json part2.json --out benchmarks/results/hclt_overparam.json
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import statistics
import sys
from pathlib import Path
from typing import Any

import numpy as np
import torch

from overspn.engine.hclt import HCLT
from overspn.errors import DivergenceError
from overspn.learn.fit import fit
from overspn.learn.optim import Overparametrized
from overspn.learn.recipes import EMSchedule, train_model

REPO = Path(__file__).resolve().parents[1]
ARMS = ("sgd", "elementwise-2", "elementwise-3", "tree-4x4", "adam", "em")
GRADIENT_ARMS = ARMS[:-1]
# three learning rates per arm; overparametrized factors move a weight w by about eta * L * w^(2 (L-1) / L) per unit
# gradient (w ~ 1/16 here), so their grids sit higher than plain ascent's
GRIDS = {"sgd": (0.1, 0.3, 1.0), "elementwise-2": (1.0, 3.0, 10.0), "elementwise-3": (1.0, 3.0, 10.0),
         "tree-4x4": (1.0, 3.0, 10.0), "adam": (0.003, 0.01, 0.03)}
FRACTIONS = {"50%": 0.5, "90%": 0.9, "99%": 0.99}
LATENT, DTYPE, BATCH = 16, torch.float64, 200


def build(train: np.ndarray, seed: int, weights: str) -> HCLT:
    return HCLT.from_data(train, latent=LATENT, weights=weights, dtype=DTYPE, seed=seed)


def make_optimizer(model: HCLT, arm: str, lr: float, leaf_lr: float) -> torch.optim.Optimizer:
    weights = model.sum_weight_parameters()
    leaves = [p for p in model.parameters() if all(p is not w for w in weights)]
    if arm == "adam":
        return torch.optim.Adam(model.parameters(), lr=lr)
    groups: list[dict[str, Any]] = [{"params": leaves, "depth": 1, "lr": leaf_lr}]
    if arm == "sgd":
        groups.append({"params": weights, "depth": 1, "lr": lr})
    elif arm.startswith("elementwise-"):
        groups.append({"params": weights, "depth": int(arm.split("-")[1]), "init": "balanced", "lr": lr})
    elif arm == "tree-4x4":
        side = math.isqrt(LATENT)
        assert side * side == LATENT, "the tree arm needs a square number of latent states"
        groups.append({"params": weights, "branching": (side, side), "init": "overparametrize", "lr": lr})
    else:
        raise ValueError(f"unknown arm {arm!r}")
    return Overparametrized(groups, lr=lr, floors=model.raw_weight_floors())


def run(name: str, data: Any, seed: int, arm: str, lr: float | None, leaf_lr: float | None, epochs: int,
        time_budget: float) -> dict[str, Any]:
    """One training run; the per-epoch history (entry 0: the initial model)."""
    diverged = None
    if arm == "em":
        model = build(data.train, seed, "softmax")
        schedule = EMSchedule(full_epochs=epochs, patience=None, time_budget=time_budget, pseudocount=0.01)
        history = train_model(model, data.train, data.valid, optimizer="em", schedule=schedule, lr_decay=0.5,
                              test=data.test, seed=seed)
    else:
        model = build(data.train, seed, "raw")
        optimizer = make_optimizer(model, arm, lr, leaf_lr)
        try:
            history = fit(model, data.train, data.valid, test=data.test, optimizer=optimizer, batch_size=BATCH,
                          epochs=epochs, time_budget=time_budget, seed=seed, evaluate_train=True)
        except DivergenceError as error:
            history, diverged = error.history, str(error).split(";")[0]
    entries = [{"epoch": int(e["epoch"]), "seconds": float(e["seconds"]), "train": float(e["train_llh"]),
                "valid": float(e["valid_llh"]), "test": float(e["test_llh"])} for e in history.entries]
    return {"dataset": name, "seed": seed, "arm": arm, "lr": lr, "leaf_lr": leaf_lr, "history": entries,
            "diverged": diverged, "final_train": entries[-1]["train"], "final_valid": entries[-1]["valid"],
            "best_valid": max(e["valid"] for e in entries), "epochs_run": entries[-1]["epoch"],
            "seconds": entries[-1]["seconds"]}


def tune(data: Any, epochs: int, time_budget: float, arms: tuple[str, ...] = GRADIENT_ARMS) -> dict[str, Any]:
    """Each gradient arm's learning rate from its grid, by the best validation LL on this data, seed 0.
    ``sgd`` first: its rate is then the leaves' rate in every other arm."""
    trials, chosen = [], {}
    for arm in arms:
        leaf_lr = None
        best = (-math.inf, None)
        for lr in GRIDS[arm]:
            leaf_lr = lr if arm in ("sgd", "adam") else chosen["sgd"]
            result = run("tune", data, 0, arm, lr, None if arm == "adam" else leaf_lr, epochs, time_budget)
            trials.append({"arm": arm, "lr": lr, "best_valid": result["best_valid"], "diverged": result["diverged"]})
            print(f"tune {arm} lr {lr}: best valid {result['best_valid']:.4f}"
                  + (f" ({result['diverged']})" if result["diverged"] else ""), flush=True)
            if result["best_valid"] > best[0]:
                best = (result["best_valid"], lr)
        chosen[arm] = best[1]
    return {"chosen": chosen, "trials": trials}


def first_reaching(history: list[dict[str, Any]], target: float) -> tuple[int | None, float | None]:
    for entry in history:
        if entry["train"] >= target:
            return entry["epoch"], entry["seconds"]
    return None, None


def _stats(values: list[float | None]) -> dict[str, Any]:
    done = [v for v in values if v is not None]
    return {"values": values, "reached": f"{len(done)}/{len(values)}",
            "mean": statistics.fmean(done) if done else None,
            "spread": [min(done), max(done)] if done else None}


def summarise(runs: list[dict[str, Any]]) -> dict[str, Any]:
    summary: dict[str, Any] = {}
    for name in dict.fromkeys(r["dataset"] for r in runs):
        mine = [r for r in runs if r["dataset"] == name]
        arms = [a for a in ARMS if any(r["arm"] == a for r in mine)]
        seeds = sorted({r["seed"] for r in mine})
        final = {a: statistics.fmean(r["final_train"] for r in mine if r["arm"] == a) for a in arms}
        best_arm = max(final, key=final.get)
        per_seed_targets = {}
        for seed in seeds:
            start = [r["history"][0]["train"] for r in mine if r["seed"] == seed]
            ends = [r["final_train"] for r in mine if r["seed"] == seed and r["arm"] == best_arm]
            if not ends:
                continue
            per_seed_targets[seed] = {k: start[0] + f * (ends[0] - start[0]) for k, f in FRACTIONS.items()}
            per_seed_targets[seed]["initial"] = start[0]
            per_seed_targets[seed]["initial_spread_across_arms"] = max(start) - min(start)
        entry: dict[str, Any] = {"best_arm": best_arm, "targets_per_seed": per_seed_targets, "arms": {}}
        for arm in arms:
            arm_runs = [r for r in mine if r["arm"] == arm and r["seed"] in per_seed_targets]
            a: dict[str, Any] = {"seeds": [r["seed"] for r in arm_runs], "lr": arm_runs[0]["lr"] if arm_runs else None,
                                 "diverged": sum(r["diverged"] is not None for r in arm_runs)}
            for label in FRACTIONS:
                reached = [first_reaching(r["history"], per_seed_targets[r["seed"]][label]) for r in arm_runs]
                a[f"epochs_to_{label}"] = _stats([e for e, _ in reached])
                a[f"seconds_to_{label}"] = _stats([s for _, s in reached])
            for key in ("final_train", "final_valid", "best_valid"):
                a[key] = _stats([r[key] for r in arm_runs])
            a["seconds_per_epoch"] = statistics.fmean(r["seconds"] / max(1, r["epochs_run"]) for r in arm_runs)
            entry["arms"][arm] = a
        summary[name] = entry
    return summary


def markdown(summary: dict[str, Any]) -> str:
    def cell(stats: dict[str, Any], digits: int) -> str:
        if stats["mean"] is None:
            return f"– ({stats['reached']})"
        lo, hi = stats["spread"]
        reached = "" if stats["reached"].split("/")[0] == stats["reached"].split("/")[1] else f" ({stats['reached']})"
        return f"{stats['mean']:.{digits}f} [{lo:.{digits}f}, {hi:.{digits}f}]{reached}"

    lines = ["| data set | arm (lr) | epochs to 50 % / 90 % / 99 % | seconds to 50 % / 90 % / 99 % | final train LL | "
             "final valid LL |", "|---|---|---|---|---|---|"]
    for name, entry in summary.items():
        for arm, a in entry["arms"].items():
            label = f"{arm} ({a['lr']:g})" if a["lr"] is not None else arm
            if entry["best_arm"] == arm:
                label += " *"
            lines.append(f"| {name} | {label} | "
                         + " / ".join(cell(a[f"epochs_to_{k}"], 1) for k in FRACTIONS) + " | "
                         + " / ".join(cell(a[f"seconds_to_{k}"], 1) for k in FRACTIONS) + " | "
                         + cell(a["final_train"], 3) + " | " + cell(a["final_valid"], 3) + " |")
    return "\n".join(lines)


def study(datasets: dict[str, Any], seeds: list[int], lrs: dict[str, float], epochs: int, time_budget: float,
          arms: tuple[str, ...] = ARMS, out: Path | None = None, extra: dict[str, Any] | None = None,
          runs: list[dict[str, Any]] | None = None) -> dict[str, Any]:
    """Every (data set, seed, arm) run not already in ``runs``; the JSON document (written to ``out`` after each)."""
    runs = list(runs or [])
    done = {(r["dataset"], r["seed"], r["arm"]) for r in runs}

    def document() -> dict[str, Any]:
        return {"benchmark": "overparametrized vs plain gradient ascent, Adam and EM on HCLTs",
                "machine": {"platform": platform.platform(), "cpus": os.cpu_count(),
                            "torch_threads": torch.get_num_threads(), "load_average": os.getloadavg()},
                "torch": torch.__version__,
                "settings": {"latent": LATENT, "dtype": str(DTYPE), "batch_size": BATCH, "epochs": epochs,
                             "time_budget": time_budget,
                             "weights": "raw (floor 1e-4) for gradient arms, softmax for em",
                             "lrs": lrs, "grids": GRIDS, "fractions": FRACTIONS, "seeds": seeds},
                **(extra or {}), "runs": runs, "summary": summarise(runs)}

    for name, data in datasets.items():
        for seed in seeds:
            for arm in arms:
                if (name, seed, arm) in done:
                    continue
                leaf_lr = None if arm in ("adam", "em") else lrs["sgd"]
                result = run(name, data, seed, arm, lrs.get(arm), leaf_lr, epochs, time_budget)
                runs.append(result)
                if out is not None:
                    _write(out, document())
                print(f"{name} seed {seed} {arm}: train {result['history'][0]['train']:.4f} -> "
                      f"{result['final_train']:.4f}, valid {result['final_valid']:.4f}, {result['epochs_run']} "
                      f"epochs in {result['seconds']:.1f} s" + (f" [{result['diverged']}]" if result["diverged"]
                                                                 else ""), flush=True)
    doc = document()
    if out is not None:
        _write(out, doc)
    return doc


def _write(path: Path, doc: dict[str, Any]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(json.dumps(doc, indent=1))
    tmp.replace(path)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--datasets", nargs="+", default=["nltcs", "plants", "jester"])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--arms", nargs="+", choices=ARMS, default=list(ARMS))
    parser.add_argument("--epochs", type=int, default=15)
    parser.add_argument("--time-budget", type=float, default=120.0, help="safety cap on seconds per run")
    parser.add_argument("--tune", action="store_true", help="choose the learning rates on nltcs seed 0 (validation)")
    parser.add_argument("--lrs", type=Path, help="a --tune output to take the learning rates from")
    parser.add_argument("--merge", nargs="+", type=Path, help="combine the runs of these outputs into --out")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--out", type=Path, default=REPO / "benchmarks" / "results" / "hclt_overparam.json")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    from overspn.data import load_dataset

    if args.tune:
        result = tune(load_dataset("nltcs"), args.epochs, args.time_budget)
        _write(args.out, {"tuned_on": "nltcs seed 0, validation LL", "epochs": args.epochs, "grids": GRIDS, **result})
        print(json.dumps(result["chosen"]))
        return
    if args.merge:
        docs = [json.loads(p.read_text()) for p in args.merge]
        runs = [r for d in docs for r in d["runs"]]
        base = max(docs, key=lambda d: len(d["settings"]["lrs"]))  # a part with the gradient arms' rates
        doc = {**base, "runs": runs, "summary": summarise(runs)}
        doc["settings"]["seeds"] = sorted({r["seed"] for r in runs})
        _write(args.out, doc)
        print(markdown(doc["summary"]))
        return
    tuned = json.loads(args.lrs.read_text()) if args.lrs else {"chosen": {}}  # em alone needs no rates
    runs = []
    if args.out.exists():
        previous = json.loads(args.out.read_text())
        if previous.get("settings", {}).get("lrs") == tuned["chosen"]:
            runs = previous["runs"]
    datasets = {name: load_dataset(name) for name in args.datasets}
    doc = study(datasets, args.seeds, tuned["chosen"], args.epochs, args.time_budget, tuple(args.arms), args.out,
                {"tuning": tuned}, runs)
    print(markdown(doc["summary"]), file=sys.stdout)


if __name__ == "__main__":
    main()
