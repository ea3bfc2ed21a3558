"""Limits on what a model file may make :func:`overspn.load` allocate, checked before anything is allocated.

A model file is small, but the layout it declares decides how much memory the model takes: ten million variables,
an indicator of state 10^8 or a ``.npy`` header declaring 10^12 values are a few bytes of JSON that would take
gigabytes. :func:`layout_estimate` computes, from the parsed header alone (a compiled structure read into arrays by
:mod:`overspn.structure_columns`, which bounds every index), a generous estimate of the bytes that building and
checking the declared model allocates (its largest term named), and :func:`check_arrays` reads the
header of every stored ``.npy`` array without loading it and checks that the values it declares are present.

The limit (:func:`load_limit`) is ``$OVERSPN_MEMORY_BUDGET`` when set; otherwise the smaller of
:func:`overspn.data.memory_budget` and an allowance derived from the file's size (``FILE_RATIO`` times its bytes, at
least ``MIN_FILE_ALLOWANCE``), so that a tiny crafted file cannot claim most of the machine. A legitimate model
beyond it loads once ``OVERSPN_MEMORY_BUDGET`` allows it; the error says so.
"""

from __future__ import annotations

import math
import os
import zipfile
from dataclasses import dataclass
from typing import Any

import numpy as np

from overspn.data import memory_budget
from overspn.errors import ConfigurationError, ModelFileError
from overspn.symbolic.flat import BERNOULLI, CATEGORICAL, GAUSSIAN, INDICATOR, PRODUCT, SUM, FlatStructure

__all__ = ["Estimate", "StoredArray", "load_limit", "layout_estimate", "check_arrays", "check_estimate",
           "json_limit_check", "describe_bytes", "short_int", "MAX_INDEX", "MIN_FILE_ALLOWANCE", "FILE_RATIO"]

MIN_FILE_ALLOWANCE = 256 * 2**20
FILE_RATIO = 1024
#: bytes of Python objects per byte of JSON text at most (``[{},{},...]`` is about 3 text bytes for 72)
JSON_OBJECT_FACTOR = 40
#: bytes of Python objects per structure node and per edge while a compiled structure is built and checked
NODE_OVERHEAD = 2048  # measured: about 1.1 kB (traced) to 1.7 kB (peak RSS) per node
EDGE_OVERHEAD = 256
#: the largest variable index, state or count accepted in a layout (int64 indices and products stay exact)
MAX_INDEX = 2**31 - 1
_ENV = "OVERSPN_MEMORY_BUDGET"


@dataclass(frozen=True)
class Estimate:
    """Bytes the declared layout allocates, a lower bound on its parameter count, and its largest term."""

    bytes: int
    parameters: int
    largest: str


@dataclass(frozen=True)
class StoredArray:
    """What a stored ``.npy`` entry declares, read from its header only."""

    shape: tuple[int, ...]
    dtype: np.dtype
    size: int  # number of values


def describe_bytes(count: int) -> str:
    if count < 2**20:
        return f"{count} bytes"
    for unit, scale in (("TiB", 2**40), ("GiB", 2**30), ("MiB", 2**20)):
        if count >= scale:
            value = count / scale
            return f"{value:.3g} {unit}" if value < 1e6 else f"{float(value):.3e} {unit}"
    return f"{count} bytes"  # pragma: no cover


def load_limit(file_size: int) -> tuple[int, str]:
    """The bytes a model file of ``file_size`` bytes may make load allocate, and where that limit comes from."""

    budget = memory_budget()
    if os.environ.get(_ENV, "").strip():
        return budget, f"{describe_bytes(budget)} ({_ENV})"
    allowance = max(MIN_FILE_ALLOWANCE, FILE_RATIO * file_size)
    if allowance < budget:
        return allowance, (f"{describe_bytes(allowance)} allowed for a file of {file_size} bytes; set {_ENV} "
                           "to allow more")
    return budget, f"{describe_bytes(budget)}, the memory budget (set {_ENV} to change it)"


def check_estimate(estimate: Estimate, stored_bytes: int, limit: tuple[int, str]) -> None:
    total = estimate.bytes + stored_bytes
    if total > limit[0]:
        raise ModelFileError(f"loading it would need about {describe_bytes(total)} of memory ({estimate.largest}), "
                             f"more than the limit of {limit[1]}")


def json_limit_check(info: zipfile.ZipInfo, limit: tuple[int, str]) -> None:
    """Refuse a ``model.json`` whose declared size would parse into more Python objects than the limit."""
    need = info.file_size * JSON_OBJECT_FACTOR
    if need > limit[0]:
        raise ModelFileError(f"its header model.json declares {info.file_size} bytes, which would need about "
                             f"{describe_bytes(need)} of memory to read, more than the limit of {limit[1]}")


# -- stored arrays --------------------------------------------------------------------------------------------------


def check_arrays(archive: zipfile.ZipFile, prefix: str = "tensors/") -> tuple[dict[str, StoredArray], int]:
    """Every ``prefix*.npy`` entry's declared shape and dtype, read from its header without loading the data, and
    the total bytes of those entries. Raises ModelFileError when a header is malformed, declares a non-float dtype
    or an object array, or declares more (or fewer) values than the entry holds."""
    arrays: dict[str, StoredArray] = {}
    total = 0
    for info in archive.infolist():
        name = info.filename
        if not (name.startswith(prefix) and name.endswith(".npy")):
            continue
        key = name[len(prefix):-len(".npy")]
        with archive.open(info) as stream:
            try:
                major, minor = np.lib.format.read_magic(stream)
                if (major, minor) == (1, 0):
                    shape, fortran, dtype = np.lib.format.read_array_header_1_0(stream)
                elif (major, minor) == (2, 0):
                    shape, fortran, dtype = np.lib.format.read_array_header_2_0(stream)
                else:
                    raise ModelFileError(f"parameter {key!r}: unsupported .npy format version {major}.{minor}")
            except ModelFileError:
                raise
            except (ValueError, TypeError, SyntaxError, EOFError, OverflowError, MemoryError) as error:
                raise ModelFileError(f"parameter {key!r} has a malformed .npy header ({type(error).__name__}: "
                                     f"{error})") from error
            header_bytes = stream.tell()
        if dtype.hasobject or dtype.kind != "f":
            raise ModelFileError(f"parameter {key!r} has dtype {dtype}, expected floating point")
        if not all(isinstance(n, int) and 0 <= n <= MAX_INDEX**2 for n in shape):
            raise ModelFileError(f"parameter {key!r} declares the invalid shape {shape!r}")
        size = math.prod(shape)
        data_bytes = size * dtype.itemsize
        if header_bytes + data_bytes != info.file_size:
            raise ModelFileError(
                f"parameter {key!r} declares shape {shape} ({describe_bytes(data_bytes)} of {dtype} values), but "
                f"its entry holds {describe_bytes(max(info.file_size - header_bytes, 0))} of data")
        arrays[key] = StoredArray(tuple(shape), dtype, size)
        total += info.file_size
    return arrays, total


# -- layouts --------------------------------------------------------------------------------------------------------


def _count(value: Any, what: str, where: str = "the header") -> int | None:
    """``value`` when it is a usable int (None when it is not an int: the model's own checks report that); raises
    ModelFileError when it is an int too large to be meant."""
    if isinstance(value, bool) or not isinstance(value, int):
        return None
    if value > MAX_INDEX:
        raise ModelFileError(f"{where}: {what} is {short_int(value)}, beyond the largest accepted value {MAX_INDEX}")
    return value


def short_int(value: int) -> str:
    """An int for a message: its digits, or its first and last digits and their count when it is long."""
    text = str(value)
    return text if len(text) <= 24 else f"{text[:8]}...{text[-4:]} ({len(text)} digits)"


class _Terms:
    def __init__(self) -> None:
        self.terms: list[tuple[int, str]] = []

    def add(self, count: int, text: str) -> None:
        self.terms.append((int(count), text))

    def estimate(self, parameters: int) -> Estimate:
        total = sum(count for count, _ in self.terms)
        count, text = max(self.terms, default=(0, "nothing"))
        return Estimate(total, parameters, f"{text}: {describe_bytes(count)}")


def layout_estimate(kind: str, header: dict[str, Any], itemsize: int) -> Estimate | None:
    """The memory building the layout of ``header`` allocates, or None for a kind without an estimate (or a header
    too malformed to estimate, which the model's own checks then reject). Raises ModelFileError for values out of
    range (a variable, state or count beyond ``MAX_INDEX``), naming the field or node."""
    estimator = _ESTIMATORS.get(kind)
    return None if estimator is None else estimator(header, itemsize)


def _compiled(header: dict[str, Any], itemsize: int) -> Estimate | None:
    """What compiling the structure allocates, grouping nodes as :mod:`overspn.engine.program` does (discrete
    inputs, indicator sums, tabular products, layers by height and type), with numpy over all nodes and edges; the
    loader has read the structure into arrays (None when it could not: the node-by-node reader then rejects it)."""
    flat, num_vars = header.get("structure"), _count(header.get("num_vars"), "num_vars")
    if not isinstance(flat, FlatStructure) or num_vars is None:
        return None
    kind, child, count, parent = flat.kind, flat.child, flat.count, flat.parent
    n = len(kind)
    leaves, indicators, sums = kind < SUM, kind == INDICATOR, kind == SUM
    if leaves.any():
        num_vars = max(num_vars, int(flat.var[leaves].max()) + 1)  # the model refuses it; estimate as if it did not
    card = max(2, int(flat.value[indicators].max(initial=1)) + 1, max(map(len, flat.probs), default=0))
    filled = np.flatnonzero(count > 0)
    # indicator sums: sums whose children are all indicators of one variable
    others = np.bincount(parent, ~indicators[child], minlength=n)
    lowest, highest = np.zeros(n, np.int64), np.zeros(n, np.int64)
    if len(filled):
        lowest[filled] = np.minimum.reduceat(flat.var[child], flat.ptr[filled])
        highest[filled] = np.maximum.reduceat(flat.var[child], flat.ptr[filled])
    indicator_sums = sums & (count > 0) & (others == 0) & (lowest == highest)
    discrete = (leaves & (kind != GAUSSIAN)) | indicator_sums
    tabular = np.zeros(n, bool)
    if header.get("fast") is not False:
        tabular = (kind == PRODUCT) & (count > 0) & (np.bincount(parent, ~discrete[child], minlength=n) == 0)
    source = leaves | indicator_sums | tabular | (count == 0)
    layered = np.flatnonzero(~source)
    groups, group_of = np.unique(flat.levels(source)[layered] * 2 + sums[layered], return_inverse=True)
    widest = np.zeros(len(groups), np.int64)
    np.maximum.at(widest, group_of, count[layered])
    padded = int((np.bincount(group_of, minlength=len(groups)) * widest).sum())
    counts = {code: int((kind == code).sum()) for code in (INDICATOR, BERNOULLI, CATEGORICAL, GAUSSIAN)}
    width, categorical, num_sums = card + 1, counts[CATEGORICAL], int(indicator_sums.sum())
    table_rows = counts[INDICATOR] + counts[BERNOULLI] + categorical + num_sums
    num_tabular = int(tabular.sum())
    terms = _Terms()
    terms.add(num_vars * (5 * 8 + width * itemsize), f"{num_vars} variables")
    terms.add(table_rows * width * (4 * 8), f"the input table: {table_rows} inputs x {width} states")
    terms.add(categorical * card * 3 * 8, f"categorical leaves: {categorical} x {card} states")
    terms.add(num_sums * (card + int(count[indicator_sums].max(initial=0))) * 3 * 8,
              f"indicator sums: {num_sums} x {card} states")
    terms.add(num_tabular * num_vars * width * (8 + 2 * itemsize + 1),
              f"products of inputs: {num_tabular} products x {num_vars} variables x {width} states")
    terms.add(padded * (8 + 1 + 3 * itemsize), f"sum and product layers: {padded} padded children")
    terms.add(n * NODE_OVERHEAD + len(child) * EDGE_OVERHEAD, f"the structure: {n} nodes")
    return terms.estimate(int(count[sums].sum()) + counts[BERNOULLI] + categorical * card + 2 * counts[GAUSSIAN])


def _config(header: dict[str, Any], names: tuple[str, ...]) -> dict[str, int] | None:
    settings = header.get("config")
    if not isinstance(settings, dict):
        return None
    values = {}
    for name in names:
        value = _count(settings.get(name), name, "the model configuration")
        if value is None or value < 1:
            return None
        values[name] = value
    return values


def _rat(header: dict[str, Any], itemsize: int) -> Estimate | None:
    values = _config(header, ("num_vars", "depth", "num_repetitions", "num_sums", "num_input"))
    if values is None:
        return None
    settings = header["config"]
    leaf = settings.get("leaf")
    states = _count(settings.get("cardinality"), "cardinality", "the model configuration") or 2
    num_vars, depth = values["num_vars"], values["depth"]
    reps, sums, inputs = values["num_repetitions"], values["num_sums"], values["num_input"]
    if depth > 62 or 2**depth > num_vars:
        raise ModelFileError(f"the model configuration: depth {depth} splits the variables into more regions than "
                             f"there are variables ({num_vars})")
    regions = 2**depth
    per_leaf = {"bernoulli": 1, "categorical": states, "gaussian": 2}.get(leaf, 2)
    card = {"bernoulli": 2, "categorical": states}.get(leaf, 0)
    leaves = num_vars * reps * inputs * per_leaf
    parameters, here, channels = leaves, regions, inputs
    while here > 2:
        here //= 2
        parameters += reps * here * sums * channels * channels
        channels = sums
    parameters += reps * channels * channels
    terms = _Terms()
    terms.add(parameters * itemsize * 4, f"{parameters} parameters")
    terms.add(num_vars * reps * regions * (8 + itemsize),
              f"the region graph: {num_vars} variables x {reps} repetitions x {regions} regions")
    terms.add(num_vars * max(card, 1) * reps * inputs * itemsize * 3,
              f"the input layer: {num_vars} variables x {max(card, 1)} states x {reps} repetitions x {inputs} "
              "inputs")
    return terms.estimate(parameters)


def _hclt(header: dict[str, Any], itemsize: int) -> Estimate | None:
    values = _config(header, ("num_vars", "latent", "cardinality"))
    if values is None:
        return None
    num_vars, latent, card = values["num_vars"], values["latent"], values["cardinality"]
    leaf = header["config"].get("leaf")
    per_leaf = card if leaf == "categorical" else 1
    parameters = num_vars * latent * per_leaf + (num_vars - 1) * latent * latent + latent
    terms = _Terms()
    terms.add(parameters * itemsize * 4, f"{parameters} parameters")
    terms.add(num_vars * (card + 1) * latent * itemsize * 3,
              f"the leaf table: {num_vars} variables x {card + 1} states x {latent} latent states")
    terms.add(num_vars * (6 * 8 + 200), f"{num_vars} variables")
    return terms.estimate(parameters)


def _mixture(header: dict[str, Any], itemsize: int) -> Estimate | None:
    """The sum of the components' estimates (None when one has none: the mixture's own checks reject it)."""
    entries = header.get("components")
    if not isinstance(entries, list) or not all(isinstance(e, dict) and e.get("kind") in ("hclt", "rat")
                                                 for e in entries):
        return None
    found = [_ESTIMATORS[entry["kind"]](entry, itemsize) for entry in entries]
    estimates = [estimate for estimate in found if estimate is not None]
    if not estimates or len(estimates) < len(found):
        return None
    largest = max(estimates, key=lambda estimate: estimate.bytes)
    return Estimate(sum(e.bytes for e in estimates), sum(e.parameters for e in estimates),
                    f"{len(estimates)} components, the largest {largest.largest}")


_ESTIMATORS = {"compiled": _compiled, "rat": _rat, "hclt": _hclt, "mixture": _mixture}


def check_compile_memory(num_nodes: int, num_products: int, num_vars: int, cardinality: int, fast: bool) -> None:
    """Refuse, before allocating, a layout whose tables would not fit the memory budget: the discrete input table
    holds ``C + 1`` columns per input node, and the matrix form of products over discrete inputs (``fast``) an index
    of ``D (C + 1)`` entries per product; a single indicator of state 10^8, or 10^7 variables, make these huge."""
    width = cardinality + 1
    estimate = 8 * width * (num_nodes + (num_products * num_vars if fast else 0))
    limit = memory_budget()
    if estimate > limit:
        raise ConfigurationError(
            f"compiling this structure needs about {estimate / 2**30:.1f} GiB for its tables ({num_nodes} nodes, "
            f"{num_products} products, "
            f"{num_vars} variables, up to {cardinality} states), more than the memory budget of "
            f"{limit / 2**30:.1f} GiB (set OVERSPN_MEMORY_BUDGET in bytes to allow more)")
