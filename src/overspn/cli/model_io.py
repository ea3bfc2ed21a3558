"""What the commands that use a saved model share: reading the model, the rows to give it, and writing tables."""

from __future__ import annotations

import argparse
import io
from pathlib import Path

import numpy as np

from overspn.atomic import atomic_write_text
from overspn.cli.options import RESULTS, add_data_dir, slug
from overspn.data import load_csv, load_dataset
from overspn.engine.base import SPNModule
from overspn.errors import ConfigurationError
from overspn.serialization import load

SPLITS = ("train", "valid", "test")


def add_model_argument(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("model", type=Path, help="a model file written by 'overspn train' or overspn.save")


def add_data_arguments(parser: argparse.ArgumentParser, required: bool = True) -> None:
    source = parser.add_mutually_exclusive_group(required=required)
    source.add_argument("--data", type=Path, metavar="FILE",
                        help="CSV without header, one row per line; empty, '?', 'nan' or 'NA' fields are missing")
    source.add_argument("--dataset", metavar="NAME", help="a benchmark data set by name (e.g. nltcs)")
    parser.add_argument("--split", choices=SPLITS, default="test", help="split of --dataset (default: test)")
    add_data_dir(parser)


def model_name(path: Path) -> str:
    """A short name of a model file: its stem, or its folder's name for the ``model.ospn`` that train writes."""
    path = Path(path)
    return path.parent.name if path.stem == "model" and path.parent.name else path.stem


def data_name(args: argparse.Namespace) -> str:
    """A short name of the rows given: the CSV file's stem, or ``DATASET-SPLIT``."""
    if getattr(args, "data", None) is not None:
        return Path(args.data).stem
    return f"{args.dataset}-{args.split}"


def default_file(command: str, *words: str, suffix: str) -> Path:
    """``results/COMMAND/WORD-WORD.SUFFIX``: the default output file of a command that uses a saved model."""
    return RESULTS / command / (slug("-".join(words)) + suffix)


def read_model(path: Path) -> SPNModule:
    return load(path)


def read_rows(args: argparse.Namespace, model: SPNModule) -> tuple[np.ndarray, str]:
    """The rows named by ``--data`` or ``--dataset``/``--split``, checked against ``model``; and where they came from.

    A bad value is named by file, line and column (the model's own check names row and column)."""
    if getattr(args, "data", None) is not None:
        rows = load_csv(args.data, allow_missing=True)
        source = str(args.data)
    else:
        dataset = load_dataset(args.dataset, args.data_dir)
        rows = getattr(dataset, args.split)
        source = f"{args.dataset} ({args.split})"
    if rows.ndim != 2 or rows.shape[1] != model.num_vars:
        raise ConfigurationError(f"{source} has {rows.shape[1] if rows.ndim == 2 else 0} columns but the model has "
                                 f"{model.num_vars} variables")
    model.check_data(rows)
    return rows, source


def write_table(path: Path, rows: np.ndarray, header: list[str] | None = None) -> None:
    """Write ``rows`` as CSV atomically: integers where every value is one, NaN as an empty field."""
    buffer = io.StringIO()
    if header:
        buffer.write(",".join(header) + "\n")
    integral = bool(np.all(np.isnan(rows) | (rows == np.round(rows))))
    for row in rows:
        fields = ["" if np.isnan(v) else (str(int(v)) if integral else repr(float(v))) for v in row]
        buffer.write(",".join(fields) + "\n")
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(path, buffer.getvalue())
