"""``overspn train``: fit a RAT-SPN to a benchmark data set or CSV files by mini-batch training.

Writes ``metrics.json``, ``curves.csv``, ``curves.png`` and ``model.ospn`` (loadable with :func:`overspn.load`) to
``--out``, all atomically, plus ``checkpoint.pt`` after every epoch: a run that is killed resumes when the same
command is run again, and ends with the same results.
"""

from __future__ import annotations

import argparse
import io
import os
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from overspn.atomic import atomic_write_bytes, atomic_write_json, atomic_write_text
from overspn.data import BINARY_DATASETS, check_continuous, load_csv, load_dataset
from overspn.engine.rat import LEAF_KINDS, RatConfig, RatSPN
from overspn.errors import ConfigurationError, DataError, DivergenceError
from overspn.learn.fit import DEFAULT_LEARNING_RATES, OPTIMIZERS, evaluate, fit
from overspn.serialization import save

STRUCTURE_KEYS = {"depth": "depth", "d": "depth", "repetitions": "num_repetitions", "r": "num_repetitions",
                  "sums": "num_sums", "k": "num_sums", "s": "num_sums", "inputs": "num_input", "i": "num_input"}
MAX_CATEGORICAL_STATES = 64


# One split into two halves, 20 repetitions of 20 inputs each (the number of sums only matters from depth 2 on). On
# the binary benchmarks this wide, shallow RAT-SPN reached better validation log-likelihoods within minutes than
# depth 2 or 3 with 10 repetitions, sums and inputs; deeper structures are one --structure away.
DEFAULT_STRUCTURE = {"depth": 1, "num_repetitions": 20, "num_sums": 10, "num_input": 20}


def parse_structure(text: str | None) -> dict[str, int]:
    """``"depth=3,repetitions=20,sums=10,inputs=10"`` (or ``d=3,r=20,k=10,i=10``); unspecified keys take defaults."""
    structure = dict(DEFAULT_STRUCTURE)
    if not text:
        return structure
    for item in text.split(","):
        key, separator, value = item.partition("=")
        key = key.strip().lower()
        if not separator or key not in STRUCTURE_KEYS:
            raise ConfigurationError(f"--structure: cannot read {item!r}; expected comma-separated key=value with "
                                     "keys depth, repetitions, sums, inputs (or d, r, k, i)")
        try:
            structure[STRUCTURE_KEYS[key]] = int(value)
        except ValueError:
            raise ConfigurationError(f"--structure: {key} must be an integer, got {value.strip()!r}") from None
    return structure


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
    return max(2, int(max(np.nanmax(a) for a in arrays if a is not None)) + 1)


def _load_data(args: argparse.Namespace) -> tuple[str, np.ndarray, np.ndarray | None, np.ndarray | None]:
    if (args.dataset is None) == (args.train is None):
        raise ConfigurationError("give either --dataset NAME or --train FILE.csv (not both)")
    if args.dataset is not None:
        data = load_dataset(args.dataset, args.data_dir, seed=args.seed)
        return data.name, data.train, data.valid, data.test
    arrays = [load_csv(path, allow_missing=True) if path is not None else None
              for path in (args.train, args.valid, args.test)]
    for name, array in zip(("--valid", "--test"), arrays[1:]):
        if array is not None and array.shape[1] != arrays[0].shape[1]:
            raise DataError(f"{name} has {array.shape[1]} columns but --train has {arrays[0].shape[1]}")
    return Path(args.train).stem, arrays[0], arrays[1], arrays[2]


def _write_curves(out: Path, history: list[dict[str, Any]]) -> None:
    """``curves.csv`` and ``curves.png`` of the history entries (epoch 0: the initial model)."""
    lines = ["epoch,train_llh,valid_llh,cpu_seconds,seconds"]
    for entry in history:
        valid = "" if entry["valid_llh"] is None else f"{entry['valid_llh']:.6f}"
        lines.append(f"{entry['epoch']},{entry['train_llh']:.6f},{valid},{entry['cpu_seconds']:.3f},"
                     f"{entry['seconds']:.3f}")
    atomic_write_text(out / "curves.csv", "\n".join(lines) + "\n")
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib import pyplot as plt

    figure, axes = plt.subplots(figsize=(6, 4))
    epochs = [entry["epoch"] for entry in history]
    axes.plot(epochs, [entry["train_llh"] for entry in history],
              label="train (epoch 0: exact; then the mean over the epoch's batches)")
    if history and history[0]["valid_llh"] is not None:
        axes.plot(epochs, [entry["valid_llh"] for entry in history], label="validation")
    axes.set_xlabel("epoch")
    axes.set_ylabel("mean log-likelihood (nats)")
    axes.legend()
    figure.tight_layout()
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=100)
    plt.close(figure)
    atomic_write_bytes(out / "curves.png", buffer.getvalue())


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
    if args.threads is not None:
        if args.threads < 1:
            raise ConfigurationError(f"--threads must be >= 1, got {args.threads}")
        torch.set_num_threads(args.threads)
    name, train_data, valid_data, test_data = _load_data(args)
    leaf = args.leaf or infer_leaf(train_data, valid_data, test_data)[0]
    if leaf == "gaussian":
        check_continuous(train_data, f"the train split of {name}")
    cardinality = _num_states(train_data, valid_data, test_data) if leaf == "categorical" else 2
    structure = parse_structure(args.structure)
    config = RatConfig(num_vars=train_data.shape[1], leaf=leaf, cardinality=cardinality, seed=args.seed, **structure)
    dtype = torch.float64 if args.dtype == "float64" else torch.float32
    settings = {"optimizer": args.optimizer, "lr": args.lr, "batch_size": args.batch_size, "epochs": args.epochs,
                "time_budget": args.time_budget, "patience": args.patience, "lr_decay": args.lr_decay,
                "seed": args.seed}
    model = RatSPN(config, args.weights, dtype=dtype)
    model.initialise_from_data(train_data, seed=args.seed)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    checkpoint = out / "checkpoint.pt"
    first = not args.distributed or int(os.environ["RANK"]) == 0
    if args.restart and first and checkpoint.exists():
        checkpoint.unlink()
    if args.distributed:
        import torch.distributed as dist

        dist.barrier()  # no process reads the checkpoint before the first one has removed it
    fingerprint = {"data": name, "rows": int(len(train_data)), "structure": config.as_dict(),
                   "weights": args.weights, "dtype": args.dtype}
    try:
        history = fit(model, train_data, valid_data, **settings, checkpoint=checkpoint, fingerprint=fingerprint,
                      progress=not args.quiet, distributed=args.distributed)
    except DivergenceError as error:
        if first and error.history is not None:
            _write_curves(out, error.history.entries)
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
        "structure": config.as_dict(),
        "weights": args.weights,
        "dtype": args.dtype,
        "settings": {**settings, "lr": DEFAULT_LEARNING_RATES[args.optimizer] if args.lr is None else args.lr,
                     "threads": torch.get_num_threads()},
    }
    _write_curves(out, history.entries)
    save(model.to_compiled(), out / "model.ospn")
    metrics["evaluation_seconds"] = time.perf_counter() - started
    atomic_write_json(out / "metrics.json", metrics)
    if not args.quiet:
        test = "n/a" if metrics["test_llh"] is None else f"{metrics['test_llh']:.4f}"
        valid = "n/a" if metrics["valid_llh"] is None else f"{metrics['valid_llh']:.4f}"
        print(f"{name}: test llh {test}, valid llh {valid}, train llh {metrics['train_llh']:.4f} after "
              f"{history.epochs} epochs ({history.stop_reason}), {history.seconds:.1f} s, {metrics['num_params']} "
              f"parameters; results in {out}")
    return 0


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "train", help="train a RAT-SPN on a data set (mini-batch Adam, SGD or EM)",
        description="Fit a RAT-SPN to a benchmark data set or CSV files by mini-batch training. Writes metrics.json, "
                    "curves.csv, curves.png and model.ospn (loadable with overspn.load) to --out; running the same "
                    "command again resumes an interrupted run from its checkpoint.")
    source = parser.add_argument_group("data")
    source.add_argument("--dataset", help=f"a benchmark by name ({', '.join(BINARY_DATASETS)}; or wine, ...)")
    source.add_argument("--data-dir", help="folder of the benchmark splits (default: $OVERSPN_DATA or a download)")
    source.add_argument("--train", help="training data, a CSV file without header (NaN or empty = missing)")
    source.add_argument("--valid", help="validation data for early stopping (CSV)")
    source.add_argument("--test", help="test data, evaluated once at the end (CSV)")
    model = parser.add_argument_group("model")
    model.add_argument("--leaf", choices=LEAF_KINDS,
                       help="input distributions (default: inferred; binary -> bernoulli, small integers -> "
                            "categorical, otherwise gaussian)")
    model.add_argument("--structure", help="e.g. depth=3,repetitions=10,sums=10,inputs=10 (default: depth=1,"
                                           "repetitions=20,sums=10,inputs=20)")
    model.add_argument("--weights", choices=("softmax", "log", "raw"), default="softmax",
                       help="sum-weight parametrisation (default: softmax, normalised)")
    model.add_argument("--dtype", choices=("float32", "float64"), default="float32")
    training = parser.add_argument_group("training")
    training.add_argument("--optimizer", choices=OPTIMIZERS, default="adam")
    training.add_argument("--lr", type=float, help="learning rate (default: adam 0.02, sgd 0.5, em step size 0.05)")
    training.add_argument("--batch-size", type=int, default=100)
    training.add_argument("--epochs", type=int, default=200, help="most epochs (default: 200)")
    training.add_argument("--time-budget", type=float,
                          help="start no epoch after this many seconds (the last one may end past them)")
    training.add_argument("--patience", type=int, default=10,
                          help="stop after this many epochs without a better validation log-likelihood (default: 10)")
    training.add_argument("--lr-decay", type=float, default=0.5,
                          help="multiply the learning rate by this after an epoch without validation improvement "
                               "(default: 0.5; 1 keeps it fixed)")
    training.add_argument("--seed", type=int, default=0)
    training.add_argument("--threads", type=int, help="torch threads (results are reproducible for a fixed count)")
    parser.add_argument("--out", default="results/train", help="output folder (default: results/train)")
    parser.add_argument("--restart", action="store_true", help="ignore an existing checkpoint in --out")
    parser.add_argument("--distributed", action="store_true",
                        help="data-parallel over the processes started by torchrun (gloo; adam or sgd)")
    parser.add_argument("--quiet", action="store_true", help="no progress bar or summary")
    parser.set_defaults(handler=run)
