"""Data sets: the standard binary density-estimation splits, users' CSV files, scikit-learn's continuous sets.

Binary benchmarks are read from ``data_dir``, else from the folder named by the ``OVERSPN_DATA`` environment
variable (layout ``NAME/NAME.{train,valid,test}.data``), else from a user cache, downloading the public files there
on first use. Split sizes are checked against the published ones.
"""

from __future__ import annotations

import math
import os
import urllib.error
import urllib.request
import warnings
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .atomic import atomic_write_bytes
from .errors import DataError

__all__ = [
    "Dataset",
    "BINARY_DATASETS",
    "DATA_KINDS",
    "check_continuous",
    "check_splits",
    "data_folder",
    "load_binary",
    "load_csv",
    "load_dataset",
    "load_sklearn",
    "load_user_data",
]

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
DATA_KINDS = ("binary", "discrete", "continuous")
_DOWNLOAD_URL = "https://raw.githubusercontent.com/UCLA-StarAI/Density-Estimation-Datasets/master/datasets"


@dataclass(frozen=True)
class Dataset:
    """Train, validation and test splits as float arrays ``(rows, variables)``; the splits must agree in width."""

    name: str
    train: np.ndarray
    valid: np.ndarray | None
    test: np.ndarray | None

    def __post_init__(self) -> None:
        check_splits(self)

    @property
    def num_vars(self) -> int:
        return self.train.shape[1]


def check_splits(dataset: Dataset) -> None:
    """Check that every split of ``dataset`` is a 2-D float array with rows and as many columns as the train split.

    Raises DataError naming the data set, the split and the mismatch.
    """
    widths = {}
    for split in ("train", "valid", "test"):
        array = getattr(dataset, split)
        if array is None and split != "train":
            continue
        if not isinstance(array, np.ndarray) or array.ndim != 2:
            found = f"shape {array.shape}" if isinstance(array, np.ndarray) else type(array).__name__
            raise DataError(f"data set {dataset.name!r}: the {split} split must be a 2-D array, got {found}")
        if array.shape[0] == 0:
            raise DataError(f"data set {dataset.name!r}: the {split} split has no rows")
        widths[split] = array.shape[1]
        if widths[split] != widths["train"]:
            raise DataError(f"data set {dataset.name!r}: the {split} split has {widths[split]} columns but the train "
                            f"split has {widths['train']}")


def data_folder(data_dir: str | os.PathLike[str] | None = None) -> Path | None:
    """The folder holding the binary splits: ``data_dir``, else ``$OVERSPN_DATA``, else None (use the cache)."""
    chosen = data_dir if data_dir is not None else os.environ.get("OVERSPN_DATA") or None
    return Path(chosen) if chosen is not None else None


def _cache_folder() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "overspn" / "datasets"


def _split_path(name: str, split: str, data_dir: str | os.PathLike[str] | None, shape: tuple[int, int]) -> Path:
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
                content = response.read()
        except (urllib.error.URLError, OSError) as error:
            raise DataError(
                f"cannot download {url} ({error}); set OVERSPN_DATA to a folder holding {name}/{name}.{split}.data "
                "or pass data_dir"
            ) from error
        # Check before caching, so that an error page or a cut-off download is not kept as the data set.
        array = _parse_lines(content.decode("utf-8", errors="replace").splitlines(), url, binary=True,
                             allow_missing=False, discrete=True)
        _check_shape(array, shape, f"{url} (not cached)", name, split)
        atomic_write_bytes(path, content)
    return path


def _check_shape(array: np.ndarray, shape: tuple[int, int], source: str, name: str, split: str) -> None:
    if array.shape != shape:
        raise DataError(f"{source}: the {split} split of {name} has {array.shape[0]} rows and {array.shape[1]} "
                        f"columns, expected {shape[0]} rows and {shape[1]} columns")


def load_binary(name: str, data_dir: str | os.PathLike[str] | None = None) -> Dataset:
    """One of the twenty standard binary benchmarks, by name, with its split sizes checked."""
    if name not in BINARY_DATASETS:
        raise DataError(f"unknown data set {name!r}; known: {', '.join(sorted(BINARY_DATASETS))}")
    num_vars, *sizes = BINARY_DATASETS[name]
    splits = []
    for split, size in zip(("train", "valid", "test"), sizes):
        path = _split_path(name, split, data_dir, (size, num_vars))
        array = load_csv(path, binary=True)
        _check_shape(array, (size, num_vars), str(path), name, split)
        splits.append(array)
    return Dataset(name, *splits)


MISSING_TOKENS = ("", "?", "nan", "NaN", "NA")


def load_csv(path: str | os.PathLike[str], binary: bool = False, allow_missing: bool = False,
             discrete: bool = False) -> np.ndarray:
    """Read a comma-separated numeric table without header into a float64 array ``(rows, columns)``.

    ``binary``: every value must be 0 or 1; ``discrete``: every value a non-negative integer (a state index);
    ``allow_missing``: the fields ``""``, ``?``, ``nan`` and ``NA`` are missing values, read as NaN (otherwise they
    are errors). Infinite values are always errors. Blank lines are skipped. Errors name the file, line and column.
    """
    path = Path(path)
    if path.is_dir():
        raise DataError(f"{path}: is a folder, not a data file")
    if not path.is_file():
        raise DataError(f"{path}: no such file")
    try:
        # the fast reader; anything it rejects or reads as non-finite is re-read line by line to name the problem
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)  # "input contained no data": reported below as empty
            array = np.loadtxt(path, delimiter=",", ndmin=2, dtype=np.float64, comments=None, encoding="utf-8-sig")
    except (ValueError, UnicodeDecodeError):
        array = None
    if array is not None and array.size and np.all(np.isfinite(array)) and (
            not (binary or discrete) or _first_bad_state(array, binary) is None):
        return array
    with open(path, encoding="utf-8-sig", errors="replace") as stream:  # "-sig": skip the mark some editors write
        return _parse_lines(stream, str(path), binary, allow_missing, discrete)


def _first_bad_state(array: np.ndarray, binary: bool) -> tuple[int, int] | None:
    """(row, column) of the first observed value that is not 0/1 (``binary``) or not a non-negative integer."""
    observed = ~np.isnan(array)
    if binary:
        bad = observed & (array != 0) & (array != 1)
    else:
        bad = observed & ((array < 0) | (array != np.round(array)))
    if not bad.any():
        return None
    row, column = np.argwhere(bad)[0]
    return int(row), int(column)


def _parse_lines(lines: Iterable[str], source: str, binary: bool, allow_missing: bool,
                 discrete: bool) -> np.ndarray:
    rows: list[list[float]] = []
    width = None
    for line_number, line in enumerate(lines, start=1):
        text = line.strip()
        if not text:
            continue
        fields = text.split(",")
        if width is None:
            width = len(fields)
        elif len(fields) != width:
            raise DataError(f"{source}, line {line_number}: {len(fields)} columns, expected {width} as on the first "
                            "row")
        row = []
        for column, field in enumerate(fields):
            token = field.strip()
            where = f"{source}, line {line_number}, column {column}"
            if token in MISSING_TOKENS:
                if not allow_missing:
                    shown = "an empty field" if not token else f"{token!r}"
                    raise DataError(f"{where}: missing value ({shown}) not allowed here")
                row.append(math.nan)
                continue
            try:
                value = float(token)
            except ValueError:
                raise DataError(f"{where}: {token!r} is not a number{_hint(token, rows)}") from None
            if math.isnan(value):
                if not allow_missing:
                    raise DataError(f"{where}: missing value ({token!r}) not allowed here")
            elif math.isinf(value):
                raise DataError(f"{where}: value {token!r} is not finite")
            elif binary and value not in (0.0, 1.0):
                raise DataError(f"{where}: value {token!r} is not binary (0 or 1)")
            elif discrete and (value < 0 or value != round(value)):
                raise DataError(f"{where}: value {token!r} is not a state (a non-negative integer)")
            row.append(value)
        rows.append(row)
    if not rows:
        raise DataError(f"{source}: the file is empty")
    return np.asarray(rows, dtype=np.float64)


def _hint(token: str, rows: list[list[float]]) -> str:
    """Why a field may not be a number: another separator, or a header row."""
    if any(separator in token for separator in (";", "\t", "|")):
        return " (fields must be separated by commas)"
    if not rows:
        return " (the file must not have a header row)"
    return ""


def _line_of_row(path: Path, row: int) -> int:
    """The 1-based line number of data row ``row`` of a CSV file (blank lines are not rows)."""
    seen = -1
    with open(path, encoding="utf-8", errors="replace") as stream:
        for line_number, line in enumerate(stream, start=1):
            if line.strip():
                seen += 1
                if seen == row:
                    return line_number
    raise DataError(f"{path}: has no row {row}")


def check_continuous(array: np.ndarray, source: str) -> None:
    """Check that every column of ``array`` varies (ignoring missing values), as a Gaussian leaf needs.

    A constant column would drive the leaf's standard deviation to zero and the log-likelihood to infinity; the
    DataError names the column and its value.
    """
    for column in range(array.shape[1]):
        values = array[:, column]
        observed = values[~np.isnan(values)]
        if observed.size == 0:
            raise DataError(f"{source}: column {column} has no observed value")
        if observed.min() == observed.max():
            raise DataError(f"{source}: column {column} is constant (every value is {float(observed[0])!r}): a "
                            "Gaussian leaf would need zero variance; drop the column or model it as discrete")


def load_user_data(train: str | os.PathLike[str], valid: str | os.PathLike[str] | None = None,
                   test: str | os.PathLike[str] | None = None, *, kind: str = "binary",
                   allow_missing: bool = False, name: str | None = None) -> Dataset:
    """A :class:`Dataset` from the user's CSV files (no header; comma-separated; one row per sample).

    ``kind``: "binary" (0/1 values), "discrete" (non-negative integer states; a state that never occurs in the
    train split is an error in the valid or test split, since no leaf learnt from train could give it mass) or
    "continuous" (real values; every train column must vary, for Gaussian leaves). ``allow_missing``: empty fields,
    ``?``, ``nan`` and ``NA`` are missing values (NaN). Every error names the file and, where there is one, the line,
    column and value; the splits must have the same number of columns.
    """
    if kind not in DATA_KINDS:
        raise DataError(f"kind must be one of {DATA_KINDS}, got {kind!r}")
    binary, discrete = kind == "binary", kind == "discrete"
    paths = {"train": train, "valid": valid, "test": test}
    arrays: dict[str, np.ndarray | None] = {}
    for split, path in paths.items():
        if path is None:
            arrays[split] = None
            continue
        array = load_csv(path, binary=binary, allow_missing=allow_missing, discrete=discrete)
        arrays[split] = array
        width = arrays["train"].shape[1]  # type: ignore[union-attr]
        if array.shape[1] != width:
            raise DataError(f"{path}: {array.shape[1]} columns, but the train file {train} has {width}")
    if kind == "continuous":
        check_continuous(arrays["train"], f"{train}")  # type: ignore[arg-type]
    if discrete:
        states = np.nanmax(arrays["train"], axis=0)  # type: ignore[arg-type]
        for split in ("valid", "test"):
            array = arrays[split]
            if array is None:
                continue
            unseen = ~np.isnan(array) & (array > states)
            if unseen.any():
                row, column = (int(i) for i in np.argwhere(unseen)[0])
                path = Path(paths[split])  # type: ignore[arg-type]
                raise DataError(f"{path}, line {_line_of_row(path, row)}, column {column}: state "
                                f"{int(array[row, column])} never occurs in column {column} of the train file {train} "
                                f"(states 0..{int(states[column])})")
    return Dataset(name if name is not None else Path(train).stem, arrays["train"],  # type: ignore[arg-type]
                   arrays["valid"], arrays["test"])


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
    if name not in BINARY_DATASETS:
        raise DataError(f"unknown data set {name!r}; known binary sets: {', '.join(sorted(BINARY_DATASETS))}; "
                        f"continuous sets: {', '.join(SKLEARN_DATASETS)}")
    return load_binary(name, data_dir)
