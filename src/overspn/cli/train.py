"""``overspn train``: fit a RAT-SPN to a benchmark data set or CSV files by mini-batch training.

Writes ``metrics.json``, ``curves.csv``, ``curves.png`` and ``model.ospn`` (loadable with :func:`overspn.load`) to
``--out``, all atomically, plus ``checkpoint.pt`` after every epoch: a run that is killed resumes when the same
command is run again, and ends with the same results.
"""

from __future__ import annotations

import argparse
import os
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from overspn import __version__
from overspn.atomic import atomic_write_json, atomic_write_text, output_lock, sweep_stale_temporaries
from overspn.cli.argtypes import non_negative_float, non_negative_int, output_path, positive_float, positive_int
from overspn.cli.options import (
    add_data_dir,
    add_quiet,
    add_restart,
    add_seed,
    add_threads,
    default_out,
    set_threads,
)
from overspn.data import BINARY_DATASETS, check_continuous, load_csv, load_dataset
from overspn.engine.mixture import ModelMixture
from overspn.engine.rat import LEAF_KINDS
from overspn.errors import ConfigurationError, DataError, DivergenceError
from overspn.learn.checkpoint import content_digest
from overspn.learn.fit import DEFAULT_LEARNING_RATES, OPTIMIZERS, evaluate
from overspn.learn.recipes import EMSchedule, build_model, default_optimizer, parse_rat_structure, train_model
from overspn.learn.recipes import parse_structure as parse_spec
from overspn.serialization import save

MAX_CATEGORICAL_STATES = 64


# the RAT spec (keys depth, repetitions, sums, inputs) into RatConfig arguments; kept for the old spec
parse_structure = parse_rat_structure


def infer_leaf(*arrays: np.ndarray | None) -> tuple[str, int]:
    """Leaf family and number of states from the data: binary, small non-negative integers, or anything else."""
    values = np.concatenate([a[~np.isnan(a)] for a in arrays if a is not None])
    if np.all((values == 0) | (values == 1)):
        return "bernoulli", 2
    if np.all(values == np.round(values)) and values.min() >= 0 and values.max() < MAX_CATEGORICAL_STATES:
        return "categorical", max(2, int(values.max()) + 1)
    return "gaussian", 2


def _num_states(*arrays: np.ndarray | None) -> int:
    """Number of states of categorical data: one more than its largest value (at least 2)."""
    observed = [a[~np.isnan(a)] for a in arrays if a is not None]
    if not any(len(values) for values in observed):
        raise DataError("the data has no observed value: every entry is missing, so there is nothing to learn "
                        "the states of a categorical variable from")
    return max(2, int(max(values.max() for values in observed if len(values))) + 1)


def _load_data(args: argparse.Namespace) -> tuple[str, np.ndarray, np.ndarray | None, np.ndarray | None]:
    if (args.dataset is None) == (args.train is None):
        raise ConfigurationError("give either --dataset NAME or --train FILE.csv (not both)")
    if args.dataset is not None:
        given = [option for option, value in (("--valid", args.valid), ("--test", args.test)) if value is not None]
        if given:
            raise ConfigurationError(f"{' and '.join(given)} cannot be combined with --dataset, which brings its own "
                                     "validation and test splits; use --train with your own files instead")
        data = load_dataset(args.dataset, args.data_dir, seed=args.seed)
        return data.name, data.train, data.valid, data.test
    train = load_csv(args.train, allow_missing=True)
    others = [load_csv(path, allow_missing=True) if path is not None else None for path in (args.valid, args.test)]
    for name, array in zip(("--valid", "--test"), others):
        if array is not None and array.shape[1] != train.shape[1]:
            raise DataError(f"{name} has {array.shape[1]} columns but --train has {train.shape[1]}")
    return Path(args.train).stem, train, others[0], others[1]


def _write_curves(out: Path, history: list[dict[str, Any]], name: str = "", best_epoch: int | None = None,
                  test_llh: float | None = None) -> list[Path]:
    """``curves.csv`` and ``curves.png`` of the history entries (epoch 0: the initial model); the paths written."""
    lines = ["epoch,train_llh,valid_llh,cpu_seconds,seconds"]
    for entry in history:
        valid = "" if entry["valid_llh"] is None else f"{entry['valid_llh']:.6f}"
        lines.append(f"{entry['epoch']},{entry['train_llh']:.6f},{valid},{entry['cpu_seconds']:.3f},"
                     f"{entry['seconds']:.3f}")
    atomic_write_text(out / "curves.csv", "\n".join(lines) + "\n")
    from overspn.studies.report import NATS, figure, legend_beside, save_figure

    made, axes = figure(8, 4.2)
    epochs = [entry["epoch"] for entry in history]
    marker = "o" if len(epochs) <= 30 else None
    axes.plot(epochs, [entry["train_llh"] for entry in history], color="#0072B2", linestyle="-", marker=marker,
              markersize=3, label="train (epoch 0: exact;\nlater: mean over the epoch's batches)")
    if history and history[0]["valid_llh"] is not None:
        axes.plot(epochs, [entry["valid_llh"] for entry in history], color="#D55E00", linestyle="--", marker=marker,
                  markersize=3, label="validation")
    if best_epoch is not None and history:
        axes.axvline(best_epoch, color="grey", linestyle=":", linewidth=1, label=f"best epoch ({best_epoch}), kept")
        if test_llh is not None:
            axes.plot([best_epoch], [test_llh], linestyle="none", marker="*", markersize=11, color="#009E73",
                      label=f"test, kept model: {test_llh:.3f}")
    axes.set_xlabel("epoch (passes over the training data)")
    axes.set_ylabel(NATS)
    axes.set_title(f"overspn train{': ' + name if name else ''}")
    axes.grid(alpha=0.3)
    legend_beside(axes)
    save_figure(made, out / "curves.png", dpi=100)
    return [out / "curves.csv", out / "curves.png"]


# the options that decide what a run computes: a run that changes one of them gets its own default folder
OUT_KEYS = ("structure", "leaf", "weights", "dtype", "optimizer", "lr", "batch_size", "lr_decay", "seed")


def _default_out(args: argparse.Namespace, name: str) -> Path:
    """``results/train/NAME`` (NAME: the data set, or the stem of the --train file), with a short hash of the settings
    that differ from the defaults and ``-distributed`` for runs under torchrun."""
    words = name + ("-distributed" if args.distributed else "")
    return default_out("train", words, args, args.option_defaults)


def run(args: argparse.Namespace) -> int:
    if not args.distributed:
        return _run(args)
    if "RANK" not in os.environ:
        raise ConfigurationError("--distributed runs under torchrun, e.g. torchrun --standalone --nproc-per-node 2 "
                                 "-m overspn.cli train ... --distributed")
    import torch.distributed as dist

    dist.init_process_group("gloo")
    try:
        return _run(args)
    finally:
        # leave together: a process that tears down its connections while another still holds them aborts
        try:
            dist.barrier()
        finally:
            dist.destroy_process_group()


def _run(args: argparse.Namespace) -> int:
    set_threads(args.threads)
    name, train_data, valid_data, test_data = _load_data(args)
    leaf = args.leaf or infer_leaf(train_data, valid_data, test_data)[0]
    if leaf == "gaussian":
        check_continuous(train_data, f"the train split of {name}")
    cardinality = _num_states(train_data, valid_data, test_data) if leaf == "categorical" else 2
    structure = parse_spec(args.structure, leaf)  # no --structure: the default of the data type (recipes)
    dtype = torch.float64 if args.dtype == "float64" else torch.float32
    optimizer = args.optimizer or default_optimizer(structure)
    recipe = structure.kind == "hclt" and optimizer == "em"  # the EM schedule of recipes.EMSchedule
    settings = {"optimizer": optimizer, "lr": args.lr,
                "batch_size": args.batch_size or (EMSchedule.batch_size if recipe else 100), "epochs": args.epochs,
                "time_budget": args.time_budget, "patience": args.patience, "lr_decay": args.lr_decay,
                "seed": args.seed}
    model = build_model(structure, train_data, leaf=leaf, cardinality=cardinality, seed=args.seed,
                        weights=args.weights, dtype=dtype)
    splits = (train_data, valid_data, test_data)
    _check_splits(model, args, name, *splits)
    layout = {"spec": structure.spec, **_layout(model)}  # the full spec and the model's layout
    out = Path(args.out) if args.out is not None else _default_out(args, name)
    out.mkdir(parents=True, exist_ok=True)
    first = not args.distributed or int(os.environ["RANK"]) == 0
    if not first:
        return _train(args, out, model, structure, settings, recipe, name, leaf, layout, splits)
    sweep_stale_temporaries(out)
    with output_lock(out, f"overspn train on {name}"):
        return _train(args, out, model, structure, settings, recipe, name, leaf, layout, splits)


def _layout(model: Any) -> dict[str, Any]:
    """The layout of a model as JSON: its configuration, or its components' ones for a mixture."""
    if isinstance(model, ModelMixture):
        return {"components": [_layout(component) for component in model.parts]}
    return model.config.as_dict()


def _check_splits(model: Any, args: argparse.Namespace, name: str, *splits: np.ndarray | None) -> None:
    """Every split checked against the model before any time is spent training; errors name the file."""
    files = (args.train, args.valid, args.test) if args.dataset is None else (None, None, None)
    for split, rows, path in zip(("train", "valid", "test"), splits, files):
        if rows is None:
            continue
        try:
            model.check_data(rows)
        except DataError as error:
            where = str(path) if path is not None else f"the {split} split of {name}"
            raise DataError(f"{where}: {error} (rows count from 0, blank lines skipped)") from error


def _train(args: argparse.Namespace, out: Path, model: Any, structure: Any, settings: dict[str, Any], recipe: bool,
           name: str, leaf: str, layout: dict[str, Any], splits: tuple[Any, Any, Any]) -> int:
    train_data, valid_data, test_data = splits
    checkpoint = out / "checkpoint.pt"
    first = not args.distributed or int(os.environ["RANK"]) == 0
    if args.restart and first and checkpoint.exists():
        checkpoint.unlink()
    if args.distributed:
        import torch.distributed as dist

        dist.barrier()  # no process reads the checkpoint before the first one has removed it
    fingerprint = {"data": name, "rows": int(len(train_data)), "train_sha256": content_digest(train_data),
                   "valid_sha256": content_digest(valid_data), "structure": layout,
                   "weights": args.weights, "dtype": args.dtype}
    try:
        history = train_model(model, train_data, valid_data, structure=structure, **settings, checkpoint=checkpoint,
                              fingerprint=fingerprint, progress=not args.quiet, distributed=args.distributed)
    except DivergenceError as error:
        if first and error.history is not None:
            _write_curves(out, error.history.entries, name)
        raise
    if not first:
        return 0  # every process holds the same parameters; the first one writes the results
    started = time.perf_counter()
    metrics = {
        "data": name,
        "train_llh": evaluate(model, train_data),
        "valid_llh": evaluate(model, valid_data),
        "test_llh": evaluate(model, test_data),
        "seconds": history.seconds,
        "cpu_seconds": history.cpu_seconds,
        "epochs": history.epochs,
        "best_epoch": history.best_epoch,
        "stop_reason": history.stop_reason,
        "num_params": model.num_parameters(),
        "processes": int(os.environ.get("WORLD_SIZE", 1)) if args.distributed else 1,
        "structure": layout,
        "weights": args.weights,
        "dtype": args.dtype,
        "settings": {**settings,
                     "lr": settings["lr"] or (1.0 if recipe else DEFAULT_LEARNING_RATES[settings["optimizer"]]),
                     "threads": torch.get_num_threads()},
    }
    written = _write_curves(out, history.entries, name, history.best_epoch, metrics["test_llh"])
    source = ({"dataset": args.dataset, "data_dir": None if args.data_dir is None else str(args.data_dir)}
              if args.dataset is not None else {"train": str(args.train), "valid": args.valid and str(args.valid),
                                                 "test": args.test and str(args.test)})
    save(model, out / "model.ospn", metadata={
        "trained_by": f"overspn train {__version__}", "data": {"name": name, **source,
                                                               "rows": [int(len(a)) if a is not None else 0
                                                                        for a in (train_data, valid_data, test_data)]},
        "settings": {**metrics["settings"], "structure": structure.spec, "leaf": leaf, "weights": args.weights,
                     "dtype": args.dtype},
        "results": {key: metrics[key] for key in ("train_llh", "valid_llh", "test_llh", "epochs", "best_epoch",
                                                  "stop_reason")}})
    metrics["evaluation_seconds"] = time.perf_counter() - started
    atomic_write_json(out / "metrics.json", metrics)
    if not args.quiet:
        test = "n/a" if metrics["test_llh"] is None else f"{metrics['test_llh']:.4f}"
        valid = "n/a" if metrics["valid_llh"] is None else f"{metrics['valid_llh']:.4f}"
        print(f"{name}: test llh {test}, valid llh {valid}, train llh {metrics['train_llh']:.4f} after "
              f"{history.epochs} epochs ({history.stop_reason}; best epoch {history.best_epoch}), "
              f"{history.seconds:.1f} s, {metrics['num_params']} parameters")
        for path in (out / "model.ospn", out / "metrics.json", *written):
            print(f"wrote {path}")
    return 0


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "train", help="train a RAT-SPN on a data set (mini-batch Adam, SGD or EM)",
        description="Fit a RAT-SPN to a benchmark data set or CSV files by mini-batch training. Writes metrics.json, "
                    "curves.csv, curves.png and model.ospn (loadable with overspn.load; it records the data and "
                    "settings, see 'overspn info') to --out; running the same command again resumes an interrupted "
                    "run from its checkpoint.")
    source = parser.add_argument_group("data")
    source.add_argument("--dataset", metavar="NAME",
                        help=f"a benchmark by name ({', '.join(BINARY_DATASETS)}; or wine, ...); give this or --train "
                             "(default: none)")
    add_data_dir(source)
    source.add_argument("--train", metavar="FILE", help="training data, a CSV file without header (NaN or empty = "
                                                        "missing); give this or --dataset (default: none)")
    source.add_argument("--valid", metavar="FILE", help="validation data for early stopping (CSV; default: none, no "
                                                        "early stopping)")
    source.add_argument("--test", metavar="FILE", help="test data, evaluated once at the end (CSV; default: none)")
    model = parser.add_argument_group("model")
    model.add_argument("--leaf", choices=LEAF_KINDS,
                       help="input distributions (default: inferred; binary -> bernoulli, small integers -> "
                            "categorical, otherwise gaussian)")
    model.add_argument("--structure", help="hclt[,latent=K,pseudocount=A,softening=B,bags=M] (hidden Chow-Liu tree; "
                                           "bags=M: a mixture of M trees, each learned from a bootstrap sample) or "
                                           "rat[,depth=..,"
                                           "repetitions=..,sums=..,inputs=..] (RAT-SPN; 'rat,' may be left out); "
                                           "default: hclt,latent=32,pseudocount=0.01 for discrete data, "
                                           "rat,depth=1,repetitions=20,sums=10,inputs=20 for continuous data")
    model.add_argument("--weights", choices=("softmax", "log", "raw"), default="softmax",
                       help="sum-weight parametrisation (default: softmax, normalised)")
    model.add_argument("--dtype", choices=("float32", "float64"), default="float32", help="floating-point type")
    training = parser.add_argument_group("training")
    training.add_argument("--optimizer", choices=OPTIMIZERS,
                          help="training method (default: em for hclt -- full-batch EM, or mini-batch EM from --lr "
                               "on, then full-batch EM; adam for rat)")
    training.add_argument("--lr", type=positive_float,
                          help="learning rate (default: adam 0.02, sgd 0.5, em step size 0.05)")
    training.add_argument("--batch-size", type=positive_int,
                          help="rows per update (default: 512 for hclt with em, otherwise 100)")
    training.add_argument("--epochs", type=non_negative_int, default=200, help="most epochs (default: 200)")
    training.add_argument("--time-budget", type=positive_float,
                          help="start no epoch after this many seconds; the last one may end past them (default: "
                               "no limit)")
    training.add_argument("--patience", type=positive_int, default=10,
                          help="stop after this many epochs without a better validation log-likelihood (default: 10)")
    training.add_argument("--lr-decay", type=non_negative_float, default=0.5,
                          help="multiply the learning rate by this after an epoch without validation improvement "
                               "(default: 0.5; 1 keeps it fixed)")
    add_seed(training, "seed of the structure, the initialisation and the batch order, an integer >= 0")
    add_threads(training, default=None)
    parser.add_argument("--out", type=output_path, metavar="DIR",
                        help="output folder (default: results/train/NAME, NAME the data set or the --train file's "
                             "stem, with a short hash of the settings that differ from the defaults)")
    add_restart(parser)
    parser.add_argument("--distributed", action="store_true",
                        help="data-parallel over the processes started by torchrun (gloo; adam or sgd)")
    add_quiet(parser)
    parser.set_defaults(handler=run)
    parser.set_defaults(option_defaults={key: parser.get_default(key) for key in OUT_KEYS})
