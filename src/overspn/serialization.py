"""Saving and loading models without pickle.

A model file is a zip archive holding ``model.json`` (format name, version, the model's ``kind``, its dtype and the
arguments that rebuild its layout: for a compiled structure the compile options and the structure as a list of nodes
in topological order, for a tensorised model its configuration) and one ``.npy`` array per parameter, read with
``allow_pickle=False``. Loading therefore never executes code from the file; anything unexpected raises
:class:`ModelFileError`. Every model class of the engine registers its kind, so what loads back is a model of the
same class, with the same behaviour (training, EM, queries).
"""

from __future__ import annotations

import io
import json
import math
import os
import sys
import zipfile
from collections.abc import Callable, Iterable
from itertools import chain, compress, repeat
from pathlib import Path
from typing import Any, TypeGuard

import numpy as np
import torch

from overspn.atomic import atomic_write_bytes
from overspn.engine.base import MODEL_KINDS, SPNModule
from overspn.engine.weights import WEIGHT_PARAMETRISATIONS
from overspn.errors import ModelFileError, OverspnError
from overspn.limits import (
    check_arrays,
    check_estimate,
    describe_bytes,
    json_limit_check,
    layout_estimate,
    load_limit,
)
from overspn.symbolic.csr import permute, postorder
from overspn.symbolic.flat import BERNOULLI, CATEGORICAL, GAUSSIAN, INDICATOR, PRODUCT, SUM, FlatStructure
from overspn.symbolic.nodes import Bernoulli, Categorical, Gaussian, Indicator, Node, Product, Sum, topological_order
from overspn.symbolic.validation import check_flat

__all__ = ["save", "load", "read_header", "structure_to_dict", "structure_from_dict"]

FORMAT = "overspn-model"
VERSION = 2  # version 1: compiled structures only, without "kind"
_DTYPES = {"float32": torch.float32, "float64": torch.float64}


def structure_to_dict(root: Node) -> dict[str, Any]:
    """A JSON-compatible description of a structure (shared nodes are stored once)."""
    order = topological_order(root)
    number = {node: i for i, node in enumerate(order)}
    nodes = []
    for node in order:
        entry: dict[str, Any] = {"type": type(node).__name__}
        if node.name is not None:
            entry["name"] = node.name
        if isinstance(node, (Sum, Product)):
            entry["children"] = [number[c] for c in node.children]
        if isinstance(node, Sum):
            entry["weights"] = node.weights.tolist()
        elif isinstance(node, Indicator):
            entry.update(var=node.var, value=node.value)
        elif isinstance(node, Bernoulli):
            entry.update(var=node.var, p=node.p)
        elif isinstance(node, Categorical):
            entry.update(var=node.var, probs=node.probs.tolist())
        elif isinstance(node, Gaussian):
            entry.update(var=node.var, mean=node.mean, std=node.std)
        nodes.append(entry)
    return {"nodes": nodes}


def structure_from_dict(description: dict[str, Any]) -> Node:
    """Rebuild a structure from :func:`structure_to_dict`'s output; raises ModelFileError when malformed."""
    if not isinstance(description, dict) or not isinstance(description.get("nodes"), list):
        raise ModelFileError("malformed structure description: expected an object with a list of 'nodes'")
    entries = description["nodes"]
    if not entries:
        raise ModelFileError("the structure description has no nodes")
    built: list[Node] = []
    for number, entry in enumerate(entries):
        try:
            built.append(_node_from_entry(entry, number, built))
        except ModelFileError:
            raise
        except OverspnError as error:
            raise ModelFileError(f"node {number}: {error}") from error
        except OverflowError as error:
            raise ModelFileError(f"node {number} holds a number out of range ({error})") from error
        except (KeyError, TypeError, AttributeError, ValueError) as error:
            raise ModelFileError(f"node {number} is malformed ({type(error).__name__}: {error})") from error
    return built[-1]


_KIND_CODES = {"Indicator": INDICATOR, "Bernoulli": BERNOULLI, "Categorical": CATEGORICAL, "Gaussian": GAUSSIAN,
               "Sum": SUM, "Product": PRODUCT}


def flat_structure_from_dict(description: Any) -> FlatStructure | None:
    """The flat form of a valid structure description, read with numpy over all entries at once; None when the
    description is anything but plainly well-formed and valid (:func:`structure_from_dict` and ``validate`` then
    find and name the problem node by node)."""
    try:
        return _flat_from_dict(description)
    except (TypeError, ValueError, OverflowError, KeyError, IndexError):
        return None


def _flat_from_dict(description: Any) -> FlatStructure | None:
    if not isinstance(description, dict) or not isinstance(description.get("nodes"), list):
        return None
    entries = description["nodes"]
    n = len(entries)
    if not n or set(map(type, entries)) != {dict}:
        return None

    def column(rows: Iterable[dict[str, Any]], key: str) -> list[Any]:
        return list(map(dict.get, rows, repeat(key)))

    def numbers(values: list[Any], integer: bool = False) -> np.ndarray | None:
        accepted = {int} if integer else {int, float}
        if not set(map(type, values)) <= accepted:
            return None
        return np.array(values, dtype=np.int64 if integer else np.float64).reshape(len(values))

    kind = np.fromiter(map(_KIND_CODES.get, column(entries, "type"), repeat(-1)), np.int8, n)
    names = column(entries, "name")
    if (kind < 0).any() or not set(map(type, names)) <= {type(None), str}:
        return None

    def rows(*codes: int) -> list[dict[str, Any]]:
        return list(compress(entries, np.isin(kind, codes).tolist()))

    inner = kind >= SUM
    children = column(rows(SUM, PRODUCT), "children")
    if children and set(map(type, children)) != {list}:
        return None
    count = np.zeros(n, np.int64)
    count[inner] = np.fromiter(map(len, children), np.int64, len(children))
    ptr = np.zeros(n + 1, np.int64)
    np.cumsum(count, out=ptr[1:])
    child = numbers(list(chain.from_iterable(children)), integer=True)
    if child is None or ((child < 0) | (child >= np.repeat(np.arange(n), count))).any():
        return None
    weight_lists = column(rows(SUM), "weights")
    if weight_lists and set(map(type, weight_lists)) != {list}:
        return None
    weight_count = np.zeros(n, np.int64)
    weight_count[kind == SUM] = np.fromiter(map(len, weight_lists), np.int64, len(weight_lists))
    weight_ptr = np.zeros(n + 1, np.int64)
    np.cumsum(weight_count, out=weight_ptr[1:])
    own = numbers(list(chain.from_iterable(weight_lists)))
    leaves = ~inner
    var = np.full(n, -1, np.int64)
    leaf_var = numbers(column(rows(INDICATOR, BERNOULLI, CATEGORICAL, GAUSSIAN), "var"), integer=True)
    value = np.full(n, -1, np.int64)
    indicator_value = numbers(column(rows(INDICATOR), "value"), integer=True)
    p = np.full(n, np.nan)
    bernoulli_p = numbers(column(rows(BERNOULLI), "p"))
    mean, std = np.full(n, np.nan), np.full(n, np.nan)
    gaussian_mean, gaussian_std = numbers(column(rows(GAUSSIAN), "mean")), numbers(column(rows(GAUSSIAN), "std"))
    probs_lists = column(rows(CATEGORICAL), "probs")
    if (own is None or leaf_var is None or indicator_value is None or bernoulli_p is None or gaussian_mean is None
            or gaussian_std is None or (probs_lists and set(map(type, probs_lists)) != {list})):
        return None
    if (leaf_var < 0).any() or (indicator_value < 0).any():
        return None
    probs: list[np.ndarray] = []
    for values in probs_lists:
        vector = numbers(values)
        if vector is None:
            return None
        probs.append(vector)
    var[leaves], value[kind == INDICATOR], p[kind == BERNOULLI] = leaf_var, indicator_value, bernoulli_p
    mean[kind == GAUSSIAN], std[kind == GAUSSIAN] = gaussian_mean, gaussian_std
    # the nodes reachable from the last one, in the order topological_order gives the structure it describes
    order = postorder(ptr, child, n - 1)
    if order is None:
        return None
    if len(order) != n or not np.array_equal(order, np.arange(n)):
        ptr, child = permute(ptr, child, order)
        own_parts = np.split(own, weight_ptr[1:-1])
        kept = order.tolist()
        own = np.concatenate([own_parts[i] for i in kept]) if len(own) else own
        weight_count = weight_count[order]
        weight_ptr = np.zeros(len(order) + 1, np.int64)
        np.cumsum(weight_count, out=weight_ptr[1:])
        is_categorical = (kind == CATEGORICAL).tolist()
        categorical_number = np.cumsum(kind == CATEGORICAL) - 1
        probs = [probs[categorical_number[i]] for i in kept if is_categorical[i]]
        names = [names[i] for i in kept]
        kind, var, value, p, mean, std = kind[order], var[order], value[order], p[order], mean[order], std[order]
    for values in probs:
        values.setflags(write=False)
    flat = FlatStructure(kind, ptr, child, var, value, own, weight_ptr, p, mean, std, probs, names, None)
    return flat if check_flat(flat, None) else None


def _node_from_entry(entry: Any, number: int, built: list[Node]) -> Node:
    if not isinstance(entry, dict):
        raise ModelFileError(f"node {number} is not an object: {entry!r}")
    kind, name = entry.get("type"), entry.get("name")
    if name is not None and not isinstance(name, str):
        raise ModelFileError(f"node {number} has a name that is not a string: {name!r}")
    if kind in ("Sum", "Product"):
        children = []
        for child in entry["children"]:
            if isinstance(child, bool) or not isinstance(child, int) or not 0 <= child < number:
                raise ModelFileError(f"node {number} refers to child {child!r}, which is not an earlier node")
            children.append(built[child])
        if kind == "Sum":
            return Sum(children, _numbers(entry["weights"], number, "weights"), name=name)
        return Product(children, name=name)
    if kind == "Indicator":
        return Indicator(entry["var"], entry["value"], name=name)
    if kind == "Bernoulli":
        return Bernoulli(entry["var"], _numbers(entry["p"], number, "p"), name=name)
    if kind == "Categorical":
        return Categorical(entry["var"], _numbers(entry["probs"], number, "probs"), name=name)
    if kind == "Gaussian":
        return Gaussian(entry["var"], _numbers(entry["mean"], number, "mean"), _numbers(entry["std"], number, "std"),
                        name=name)
    raise ModelFileError(f"node {number} has unknown type {kind!r}")


def _numbers(value: Any, number: int, field: str) -> Any:
    """``value`` when it is a number or a flat list of numbers (JSON booleans are not numbers) that a float holds."""
    items = value if isinstance(value, list) else [value]
    if not all(_is_number(item) for item in items):
        raise ModelFileError(f"node {number}: {field} must be numbers, got {_shorten(value)}")
    if not all(_float_range(item) for item in items):
        raise ModelFileError(f"node {number}: {field} holds a number beyond the range of a float: {_shorten(value)}")
    return value


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _float_range(value: int | float) -> bool:
    try:
        float(value)
    except OverflowError:
        return False
    return True


def _shorten(value: Any, limit: int = 80) -> str:
    text = repr(value)
    return text if len(text) <= limit else f"{text[:limit]}... ({len(text)} characters)"


def save(model: SPNModule, path: str | os.PathLike[str], metadata: dict[str, Any] | None = None) -> None:
    """Write ``model`` (its layout, options and exact parameter values) to ``path`` atomically.

    ``metadata``: JSON-compatible facts to keep with the model (e.g. the data and settings it was trained with);
    :func:`read_header` returns them without building the model.

    Raises ModelFileError, writing nothing, when the parameters are not those of a usable model (NaN, a negative
    raw weight, a zero partition function: e.g. after training diverged), since such a file could not be loaded.
    """
    if not isinstance(model, SPNModule) or not model.kind:
        raise ModelFileError(f"cannot save a {type(model).__name__}: only overspn models can be saved")
    problem = _parameter_problem(model)
    if problem is not None:
        raise ModelFileError(f"cannot save the model to {path}: {problem}")
    if metadata is not None and not isinstance(metadata, dict):
        raise ModelFileError(f"metadata must be a dict, got {type(metadata).__name__}")
    header = {"format": FORMAT, "version": VERSION, "kind": model.kind,
              "dtype": str(model.dtype).removeprefix("torch."), **model.file_config(), "metadata": metadata or {}}
    try:
        text = json.dumps(header, allow_nan=False)
    except (TypeError, ValueError) as error:
        raise ModelFileError(f"cannot save the model to {path}: metadata is not plain JSON ({error})") from error
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", compression=zipfile.ZIP_DEFLATED) as archive:
        archive.writestr("model.json", text)
        for key, tensor in model.state_dict().items():
            array = io.BytesIO()
            np.save(array, tensor.detach().cpu().numpy(), allow_pickle=False)
            archive.writestr(f"tensors/{key}.npy", array.getvalue())
    atomic_write_bytes(Path(path), buffer.getvalue())


def load(path: str | os.PathLike[str]) -> SPNModule:
    """Read a model written by :func:`save`. Never unpickles; raises ModelFileError for a bad file.

    Beyond the format and version, every field of the header is type-checked and the parameters must be floats of
    the expected shapes that make a usable model (no NaN, no negative raw weight, a finite partition function, a
    Gaussian standard deviation that is neither 0 nor infinite), so a damaged file cannot load into a model that
    silently returns NaN. Before anything is built, the memory the declared layout needs is estimated from the header
    and the stored arrays' headers alone and compared with the limit of :mod:`overspn.limits`, so a small crafted
    file cannot exhaust memory. Every other failure (out of memory, a number out of range, a structure too deep, a
    path the operating system refuses) is reported as a ModelFileError naming the file as well.
    """
    path = Path(path)
    load_limit(0)  # a malformed $OVERSPN_MEMORY_BUDGET is the caller's ConfigurationError, not the file's
    try:
        return _load(path)
    except ModelFileError:
        raise
    except OverspnError as error:
        raise ModelFileError(f"{path}: the stored model is invalid: {error}") from error
    except MemoryError as error:
        raise ModelFileError(f"{path}: loading the model needs more memory than is available; set "
                             "OVERSPN_MEMORY_BUDGET to refuse such files before they are read") from error
    except RecursionError as error:
        raise ModelFileError(f"{path}: the model file is nested too deeply to be read ({error})") from error
    except OverflowError as error:
        raise ModelFileError(f"{path}: the model file holds a number out of range ({error})") from error
    except OSError as error:
        raise ModelFileError(f"{path}: cannot read the model file ({error.strerror or error})") from error
    except Exception as error:  # zipfile, zlib, json and numpy raise many types for damaged input
        raise ModelFileError(f"{path}: corrupted or truncated model file ({type(error).__name__}: {error})") from error


def _load(path: Path) -> SPNModule:
    if not path.is_file():
        raise ModelFileError(f"{path}: no such model file")
    with open(path, "rb") as stream:
        magic = stream.read(4)
        size = os.fstat(stream.fileno()).st_size
    if not magic.startswith(b"PK"):
        raise ModelFileError(f"{path}: not an overspn model file (it is not a zip archive)" if magic
                             else f"{path}: the model file is empty")
    limit = load_limit(size)
    with zipfile.ZipFile(path) as archive:
        return _load_archive(path, archive, limit)


def read_header(path: str | os.PathLike[str]) -> dict[str, Any]:
    """The header of a model file (format, version, kind, dtype, layout arguments, metadata) and its number of
    parameters; the whole file is checked first, like :func:`load` does. Raises ModelFileError."""
    path = Path(path)
    model = load(path)  # the header is only trusted once the whole file has been checked
    try:
        with zipfile.ZipFile(path) as archive:
            header = json.loads(archive.read("model.json"))
    except Exception as error:  # the file changed since it was loaded
        raise ModelFileError(f"{path}: the model file changed while it was read ({type(error).__name__}: "
                             f"{error})") from error
    header["num_parameters"] = model.num_parameters()
    header.setdefault("metadata", {})
    return header


def _load_archive(path: Path, archive: zipfile.ZipFile, limit: tuple[int, str]) -> SPNModule:
    names = set(archive.namelist())
    if "model.json" not in names:
        raise ModelFileError(f"{path}: not an overspn model file (no model.json inside)")
    try:
        json_limit_check(archive.getinfo("model.json"), limit)
    except ModelFileError as error:
        raise ModelFileError(f"{path}: {error}") from error
    header = json.loads(archive.read("model.json"))
    if not isinstance(header, dict) or header.get("format") != FORMAT:
        found = header.get("format") if isinstance(header, dict) else type(header).__name__
        raise ModelFileError(f"{path}: not an overspn model file (format {found!r}, expected {FORMAT!r})")
    version = header.get("version")
    if version not in (1, VERSION) or isinstance(version, bool):
        newer = _is_int(version) and version > VERSION
        raise ModelFileError(f"{path}: model file version {version!r} is not supported (this overspn reads versions "
                             f"1 to {VERSION}{'; the file was written by a newer overspn' if newer else ''})")
    kind = header.get("kind", "compiled") if version == 1 else header.get("kind")
    if kind not in MODEL_KINDS:
        raise ModelFileError(f"{path}: unknown model kind {kind!r} (known: {', '.join(sorted(MODEL_KINDS))})")
    if not isinstance(header.get("metadata", {}), dict):
        raise ModelFileError(f"{path}: header field 'metadata' must be an object, got {header['metadata']!r}")
    fields = {"dtype": _HEADER_FIELDS["dtype"], **(_COMPILED_FIELDS if kind == "compiled" else {})}
    for field, accepted in fields.items():
        if field not in header:
            raise ModelFileError(f"{path}: the header has no field {field!r}")
        if not accepted(header[field]):
            raise ModelFileError(f"{path}: header field {field!r} has an invalid value {_shorten(header[field])}")
    dtype = _DTYPES[header["dtype"]]
    try:
        # budgets before allocation: the stored arrays' headers and the declared layout, read without building
        arrays, stored_bytes = check_arrays(archive)
        estimate = layout_estimate(kind, header, dtype.itemsize)
        if estimate is not None:
            check_estimate(estimate, stored_bytes, limit)
            stored = sum(array.size for array in arrays.values())
            # a small shortfall is reported precisely, parameter by parameter, once the (small) model is built
            if estimate.parameters > 2 * stored + 4096:
                raise ModelFileError(f"its layout declares at least {estimate.parameters} parameters, but the file "
                                     f"stores {stored} values")
        elif stored_bytes > limit[0]:
            raise ModelFileError(f"its parameters take {describe_bytes(stored_bytes)}, more than the limit of "
                                 f"{limit[1]}")
        model = MODEL_KINDS[kind].from_file_config(header, dtype)
    except ModelFileError as error:
        raise ModelFileError(f"{path}: {error}") from error
    state = {}
    for key, expected in model.state_dict().items():
        entry = f"tensors/{key}.npy"
        if entry not in names or key not in arrays:
            raise ModelFileError(f"{path}: parameter {key!r} is missing")
        if arrays[key].shape != tuple(expected.shape):
            raise ModelFileError(
                f"{path}: parameter {key!r} has shape {arrays[key].shape}, expected {tuple(expected.shape)}")
        array = np.load(io.BytesIO(archive.read(entry)), allow_pickle=False)
        if array.dtype.kind != "f":
            raise ModelFileError(f"{path}: parameter {key!r} has dtype {array.dtype}, expected floating point")
        if tuple(array.shape) != tuple(expected.shape):
            raise ModelFileError(
                f"{path}: parameter {key!r} has shape {array.shape}, expected {tuple(expected.shape)}")
        state[key] = torch.from_numpy(array).to(expected.dtype)
    model.load_state_dict(state)
    problem = _parameter_problem(model)
    if problem is not None:
        raise ModelFileError(f"{path}: the stored parameters do not make a usable model: {problem}")
    return model


def structure_for_file(root: Node) -> dict[str, Any]:
    """The structure for a file header. Its leaf parameters only shape the model (the exact values are the stored
    tensors), so values that rounded onto the edge of their range (p = 1 from a large logit, std = 0 from a very
    negative log-std) are moved just inside it, where the structure validates."""
    description = structure_to_dict(root)
    for entry in description["nodes"]:
        if entry["type"] == "Bernoulli":
            entry["p"] = min(max(entry["p"], _SMALLEST), _BELOW_ONE)
        elif entry["type"] == "Categorical":
            probs = np.maximum(np.asarray(entry["probs"]), _SMALLEST)
            entry["probs"] = (probs / probs.sum()).tolist()
        elif entry["type"] == "Gaussian":
            entry["std"] = min(max(entry["std"], _SMALLEST), sys.float_info.max)
    return description


_SMALLEST = SMALLEST = float(np.nextafter(0.0, 1.0))
_BELOW_ONE = BELOW_ONE = float(np.nextafter(1.0, 0.0))


def _parameter_problem(model: SPNModule) -> str | None:
    """What makes the parameters of ``model`` unusable, or None: NaN or +inf anywhere, -inf outside log-weights,
    negative raw weights, a Gaussian log standard deviation whose exponential is 0 or infinite in the model's dtype,
    a partition function that is zero or not finite, or a log-likelihood of the all-missing row that is not finite
    (it is 0 for every usable model)."""
    weights = {id(parameter) for parameter in model.sum_weight_parameters()}
    for name, parameter in model.named_parameters():
        values = parameter.detach()
        if bool(torch.isnan(values).any()) or bool((values == math.inf).any()):
            return f"parameter {name!r} holds NaN or +inf values"
        if id(parameter) in weights:
            if model.parametrisation == "raw" and bool((values < 0).any()):
                return f"parameter {name!r} holds negative weights (raw weights must be >= 0)"
        elif bool((values == -math.inf).any()):
            return f"parameter {name!r} holds -inf values"
        if name.rsplit(".", 1)[-1] == "log_std" and values.numel():
            std = torch.exp(values)
            if not bool(((std > 0) & torch.isfinite(std)).all()):
                low, high = float(values.min()), float(values.max())
                return (f"parameter {name!r} holds Gaussian log standard deviations from {low} to {high}, whose "
                        f"standard deviation is 0 or infinite in {values.dtype}")
    with torch.no_grad():
        log_partition = float(model.log_partition())
        if not math.isfinite(log_partition):
            return (f"its log partition function is {log_partition} (a sum node whose weights are all zero, or "
                    "parameters that overflow)")
        missing = float(model.log_likelihood(torch.full((1, model.num_vars), math.nan, dtype=model.dtype))[0])
    if not math.isfinite(missing):
        return f"the log-likelihood of a row of missing values is {missing}, not 0"
    return None


def _is_int(value: Any) -> TypeGuard[int]:
    return isinstance(value, int) and not isinstance(value, bool)


_HEADER_FIELDS: dict[str, Callable[[Any], bool]] = {"dtype": lambda value: value in _DTYPES}
_COMPILED_FIELDS: dict[str, Callable[[Any], bool]] = {
    "weights": lambda value: value in WEIGHT_PARAMETRISATIONS,
    "floor": lambda value: _is_number(value) and _float_range(value) and math.isfinite(value) and value >= 0,
    "num_vars": lambda value: _is_int(value) and value >= 1,
    "fast": lambda value: isinstance(value, bool),
    "structure": lambda value: isinstance(value, dict),
}
