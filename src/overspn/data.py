"""Data sets: the standard binary density-estimation splits, users' CSV files, scikit-learn's continuous sets.

Binary benchmarks are read from ``data_dir``, else from the folder named by the ``OVERSPN_DATA`` environment
variable (layout ``NAME/NAME.{train,valid,test}.data``), else from a user cache, downloading the public files there
on first use. Split sizes are checked against the published ones.
"""

from __future__ import annotations

import os
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .atomic import atomic_write_bytes
from .errors import DataError

__all__ = ["Dataset", "BINARY_DATASETS", "load_dataset", "load_binary", "load_csv", "load_sklearn", "data_folder"]

# (variables, train, valid, test) of the twenty standard binary data sets
BINARY_DATASETS: dict[str, tuple[int, int, int, int]] = {
    "nltcs": (16, 16181, 2157, 3236),
    "msnbc": (17, 291326, 38843, 58265),
    "kdd": (64, 180092, 19907, 34955),
    "plants": (69, 17412, 2321, 3482),
    "baudio": (100, 15000, 2000, 3000),
    "jester": (100, 9000, 1000, 4116),
    "bnetflix": (100, 15000, 2000, 3000),
    "accidents": (111, 12758, 1700, 2551),
    "tretail": (135, 22041, 2938, 4408),
    "pumsb_star": (163, 12262, 1635, 2452),
    "dna": (180, 1600, 400, 1186),
    "kosarek": (190, 33375, 4450, 6675),
    "msweb": (294, 29441, 3270, 5000),
    "book": (500, 8700, 1159, 1739),
    "tmovie": (500, 4524, 1002, 591),
    "cwebkb": (839, 2803, 558, 838),
    "cr52": (889, 6532, 1028, 1540),
    "c20ng": (910, 11293, 3764, 3764),
    "bbc": (1058, 1670, 225, 330),
    "ad": (1556, 2461, 327, 491),
}
SKLEARN_DATASETS = ("wine", "breast_cancer", "iris", "diabetes")
_DOWNLOAD_URL = "https://raw.githubusercontent.com/UCLA-StarAI/Density-Estimation-Datasets/master/datasets"


@dataclass(frozen=True)
class Dataset:
    """Train, validation and test splits as float arrays ``(rows, variables)``."""

    name: str
    train: np.ndarray
    valid: np.ndarray | None
    test: np.ndarray | None

    @property
    def num_vars(self) -> int:
        return self.train.shape[1]


def data_folder(data_dir: str | os.PathLike[str] | None = None) -> Path | None:
    """The folder holding the binary splits: ``data_dir``, else ``$OVERSPN_DATA``, else None (use the cache)."""
    chosen = data_dir if data_dir is not None else os.environ.get("OVERSPN_DATA") or None
    return Path(chosen) if chosen is not None else None


def _cache_folder() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "overspn" / "datasets"


def _split_path(name: str, split: str, data_dir: str | os.PathLike[str] | None) -> Path:
    folder = data_folder(data_dir)
    if folder is not None:
        path = folder / name / f"{name}.{split}.data"
        if not path.is_file():
            raise DataError(f"{path}: no such file (the data folder {folder} has no {split} split of {name!r})")
        return path
    path = _cache_folder() / name / f"{name}.{split}.data"
    if not path.is_file():
        url = f"{_DOWNLOAD_URL}/{name}/{name}.{split}.data"
        try:
            with urllib.request.urlopen(url, timeout=60) as response:
                atomic_write_bytes(path, response.read())
        except (urllib.error.URLError, OSError) as error:
            raise DataError(
                f"cannot download {url} ({error}); set OVERSPN_DATA to a folder holding {name}/{name}.{split}.data "
                "or pass data_dir"
            ) from error
    return path


def load_binary(name: str, data_dir: str | os.PathLike[str] | None = None) -> Dataset:
    """One of the twenty standard binary benchmarks, by name, with its split sizes checked."""
    if name not in BINARY_DATASETS:
        raise DataError(f"unknown data set {name!r}; known: {', '.join(sorted(BINARY_DATASETS))}")
    num_vars, *sizes = BINARY_DATASETS[name]
    splits = []
    for split, size in zip(("train", "valid", "test"), sizes):
        array = load_csv(_split_path(name, split, data_dir), binary=True)
        if array.shape != (size, num_vars):
            raise DataError(f"{name} {split} split has shape {array.shape}, expected {(size, num_vars)}")
        splits.append(array)
    return Dataset(name, *splits)


def load_csv(path: str | os.PathLike[str], binary: bool = False, allow_missing: bool = False) -> np.ndarray:
    """Read a comma-separated numeric table without header. Errors name the file, line and column."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path}: no such file")
    try:
        array = np.loadtxt(path, delimiter=",", ndmin=2, dtype=np.float64)
    except ValueError:
        array = None  # the line-by-line reader below finds and names the problem
    if array is not None and array.size and np.all(np.isfinite(array)) and (
            not binary or np.all((array == 0) | (array == 1))):
        return array
    return _read_csv_checked(path, binary, allow_missing)


def _read_csv_checked(path: Path, binary: bool, allow_missing: bool) -> np.ndarray:
    rows: list[list[float]] = []
    width = None
    with open(path, encoding="utf-8", errors="replace") as stream:
        for line_number, line in enumerate(stream, start=1):
            text = line.strip()
            if not text:
                continue
            fields = text.split(",")
            if width is None:
                width = len(fields)
            elif len(fields) != width:
                raise DataError(f"{path}, line {line_number}: {len(fields)} columns, expected {width} as on the first "
                                "row")
            row = []
            for column, field in enumerate(fields):
                try:
                    value = float(field)
                except ValueError:
                    raise DataError(f"{path}, line {line_number}, column {column}: {field.strip()!r} is not a "
                                    "number") from None
                if np.isnan(value) and not allow_missing:
                    raise DataError(f"{path}, line {line_number}, column {column}: missing value (NaN) not allowed")
                if np.isinf(value):
                    raise DataError(f"{path}, line {line_number}, column {column}: value {field.strip()!r} is not "
                                    "finite")
                if binary and not np.isnan(value) and value not in (0.0, 1.0):
                    raise DataError(f"{path}, line {line_number}, column {column}: value {field.strip()!r} is not "
                                    "binary (0 or 1)")
                row.append(value)
            rows.append(row)
    if not rows:
        raise DataError(f"{path}: the file is empty")
    return np.asarray(rows, dtype=np.float64)


def load_sklearn(name: str, seed: int = 0, valid_fraction: float = 0.15, test_fraction: float = 0.15) -> Dataset:
    """A continuous data set bundled with scikit-learn, standardised with train statistics and split by ``seed``."""
    try:
        from sklearn import datasets as sk
    except ImportError as error:
        raise DataError("continuous data sets need scikit-learn: pip install 'overspn[data]'") from error
    loaders = {"wine": sk.load_wine, "breast_cancer": sk.load_breast_cancer, "iris": sk.load_iris,
               "diabetes": sk.load_diabetes}
    if name not in loaders:
        raise DataError(f"unknown continuous data set {name!r}; known: {', '.join(SKLEARN_DATASETS)}")
    data = np.asarray(loaders[name]().data, dtype=np.float64)
    order = np.random.default_rng(seed).permutation(len(data))
    num_valid, num_test = int(len(data) * valid_fraction), int(len(data) * test_fraction)
    test, valid, train = np.split(data[order], [num_test, num_test + num_valid])
    mean, std = train.mean(axis=0), train.std(axis=0)
    if np.any(std == 0):
        raise DataError(f"{name}: column {int(np.argmax(std == 0))} is constant in the train split")
    return Dataset(name, (train - mean) / std, (valid - mean) / std, (test - mean) / std)


def load_dataset(name: str, data_dir: str | os.PathLike[str] | None = None, seed: int = 0) -> Dataset:
    """A data set by name: a binary benchmark or one of scikit-learn's continuous sets."""
    if name in SKLEARN_DATASETS:
        return load_sklearn(name, seed=seed)
    return load_binary(name, data_dir)
