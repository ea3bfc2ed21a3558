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

from overspn.atomic import atomic_write_bytes
from overspn.csv_reader import MISSING_TOKENS, read_csv, scan_csv  # noqa: F401 (MISSING_TOKENS: data's name for them)
from overspn.csv_reader import parse_lines as _parse_lines
from overspn.errors import ConfigurationError, DataError

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
    "memory_budget",
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


_GIB = 1 << 30


def memory_budget() -> int:
    """Bytes a single data array may take: ``$OVERSPN_MEMORY_BUDGET`` if set, else the smaller of 75% of the
    physical memory (or of the container's limit) and 16 GiB.

    Checked before allocating, so that a file too large for the machine fails at once with its size named, rather
    than after minutes of swapping or at the hands of the out-of-memory killer.
    """
    setting = os.environ.get("OVERSPN_MEMORY_BUDGET", "").strip()
    if setting:
        try:
            budget = int(float(setting))  # float() too, so that "8e9" works
        except (ValueError, OverflowError):
            budget = 0
        if budget <= 0:
            raise ConfigurationError(f"OVERSPN_MEMORY_BUDGET must be a positive number of bytes, got {setting!r}")
        return budget
    physical = _physical_memory()
    return min(int(0.75 * physical), 16 * _GIB) if physical else 16 * _GIB


def _physical_memory() -> int:
    """Bytes of memory this process can use: MemTotal, lowered by a cgroup v2 limit; 0 if unknown."""
    total = 0
    try:
        with open("/proc/meminfo") as stream:
            for line in stream:
                if line.startswith("MemTotal:"):
                    total = int(line.split()[1]) * 1024  # the file says kB and means KiB
                    break
    except (OSError, ValueError, IndexError):
        try:
            total = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
        except (AttributeError, ValueError, OSError):
            total = 0
    try:
        limit = Path("/sys/fs/cgroup/memory.max").read_text().strip()  # "max" when unlimited
        if limit.isdigit():
            total = min(total, int(limit)) if total else int(limit)
    except OSError:
        pass
    return total


def load_csv(path: str | os.PathLike[str], binary: bool = False, allow_missing: bool = False,
             discrete: bool = False) -> np.ndarray:
    """Read a comma-separated numeric table without header into a float64 array ``(rows, columns)``.

    ``binary``: every value must be 0 or 1; ``discrete``: every value a non-negative integer (a state index);
    ``allow_missing``: the fields ``""``, ``?``, ``nan`` and ``NA`` are missing values, read as NaN (otherwise they
    are errors). Infinite values are always errors. Blank lines are skipped. Errors name the file, line and column.
    The size (lines x columns of the first row, 8 bytes each) is checked against :func:`memory_budget` before the
    array is allocated; reading then takes about that much memory plus a few megabytes.
    """
    path = Path(path)
    if path.is_dir():
        raise DataError(f"{path}: is a folder, not a data file")
    if not path.is_file():
        raise DataError(f"{path}: no such file")
    lines, width = scan_csv(path)
    if width == 0:
        raise DataError(f"{path}: the file is empty")
    needed, budget = lines * width * 8, memory_budget()
    if needed > budget:
        raise DataError(f"{path}: {lines:,} lines x {width:,} columns need {needed / 1e9:.3g} GB as float64, more "
                        f"than the memory budget of {budget / 1e9:.3g} GB ({needed:,} > {budget:,} bytes); set "
                        "OVERSPN_MEMORY_BUDGET (bytes) to change it")
    return read_csv(path, lines, width, binary, allow_missing, discrete)


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
    train_array = load_csv(train, binary=binary, allow_missing=allow_missing, discrete=discrete)
    width = train_array.shape[1]
    arrays: dict[str, np.ndarray | None] = {"valid": None, "test": None}
    paths: dict[str, str | os.PathLike[str]] = {}
    for split, path in (("valid", valid), ("test", test)):
        if path is None:
            continue
        array = load_csv(path, binary=binary, allow_missing=allow_missing, discrete=discrete)
        arrays[split], paths[split] = array, path
        if array.shape[1] != width:
            raise DataError(f"{path}: {array.shape[1]} columns, but the train file {train} has {width}")
    if kind == "continuous":
        check_continuous(train_array, f"{train}")
    if discrete:
        states = np.nanmax(train_array, axis=0)
        for split in ("valid", "test"):
            other = arrays[split]
            if other is None:
                continue
            unseen = ~np.isnan(other) & (other > states)
            if unseen.any():
                row, column = (int(i) for i in np.argwhere(unseen)[0])
                source = Path(paths[split])
                raise DataError(f"{source}, line {_line_of_row(source, row)}, column {column}: state "
                                f"{int(other[row, column])} never occurs in column {column} of the train file {train} "
                                f"(states 0..{int(states[column])})")
    return Dataset(name if name is not None else Path(train).stem, train_array, arrays["valid"], arrays["test"])


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
