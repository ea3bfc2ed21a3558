"""A structure as JSON, the form model files store it in: ``{"nodes": [...]}``, one object per node in topological
order, children as the numbers of earlier nodes (shared nodes are stored once).

Reading is strict: anything malformed raises :class:`ModelFileError` naming the node. A plainly well-formed and valid
description is read straight into the flat form with numpy (:func:`flat_structure_from_dict`), without building nodes.
"""

from __future__ import annotations

import sys
from collections.abc import Iterable
from itertools import chain, compress, repeat
from typing import Any

import numpy as np

from overspn.errors import ModelFileError, OverspnError
from overspn.symbolic.csr import permute, postorder
from overspn.symbolic.flat import BERNOULLI, CATEGORICAL, GAUSSIAN, INDICATOR, PRODUCT, SUM, FlatStructure, NodeFields
from overspn.symbolic.nodes import Bernoulli, Categorical, Gaussian, Indicator, Node, Product, Sum, topological_order
from overspn.symbolic.validation import check_flat

__all__ = ["structure_to_dict", "structure_from_dict", "flat_structure_from_dict", "structure_for_file",
           "SMALLEST", "BELOW_ONE"]

#: the nearest floats inside (0, 1): where leaf parameters that rounded onto the edge of their range are moved
SMALLEST = float(np.nextafter(0.0, 1.0))
BELOW_ONE = float(np.nextafter(1.0, 0.0))


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


def structure_for_file(root: Node) -> dict[str, Any]:
    """The structure for a file header. Its leaf parameters only shape the model (the exact values are the stored
    tensors), so values that rounded onto the edge of their range (p = 1 from a large logit, std = 0 from a very
    negative log-std) are moved just inside it, where the structure validates."""
    description = structure_to_dict(root)
    for entry in description["nodes"]:
        if entry["type"] == "Bernoulli":
            entry["p"] = min(max(entry["p"], SMALLEST), BELOW_ONE)
        elif entry["type"] == "Categorical":
            probs = np.maximum(np.asarray(entry["probs"]), SMALLEST)
            entry["probs"] = (probs / probs.sum()).tolist()
        elif entry["type"] == "Gaussian":
            entry["std"] = min(max(entry["std"], SMALLEST), sys.float_info.max)
    return description


# -- reading node by node --------------------------------------------------------------------------------------------

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
    if not all(is_number(item) for item in items):
        raise ModelFileError(f"node {number}: {field} must be numbers, got {shorten(value)}")
    if not all(in_float_range(item) for item in items):
        raise ModelFileError(f"node {number}: {field} holds a number beyond the range of a float: {shorten(value)}")
    return value


def is_number(value: Any) -> bool:
    """Whether a JSON value is a number (JSON booleans are not)."""
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def in_float_range(value: int | float) -> bool:
    """Whether a float holds ``value`` (a JSON integer may be far larger)."""
    try:
        float(value)
    except OverflowError:
        return False
    return True


def shorten(value: Any, limit: int = 80) -> str:
    """The repr of a JSON value for an error message, cut at ``limit`` characters."""
    text = repr(value)
    return text if len(text) <= limit else f"{text[:limit]}... ({len(text)} characters)"


# -- reading straight into the flat form ----------------------------------------------------------------------------

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
    kind = np.fromiter(map(_KIND_CODES.get, _column(entries, "type"), repeat(-1)), np.int8, n)
    names = _column(entries, "name")
    if (kind < 0).any() or not set(map(type, names)) <= {type(None), str}:
        return None
    table = _Entries(entries, kind)
    children, fields = _children(table), _fields(table, names)
    if children is None or fields is None:
        return None
    ptr, child = children
    # the nodes reachable from the last one, in the order topological_order gives the structure it describes
    order = postorder(ptr, child, n - 1)
    if order is None:
        return None
    if len(order) != n or not np.array_equal(order, np.arange(n)):
        ptr, child = permute(ptr, child, order)
        kind, fields = kind[order], _reordered(fields, kind, order)
    for values in fields.probs:
        values.setflags(write=False)
    flat = FlatStructure.from_fields(kind, ptr, child, fields)
    return flat if check_flat(flat, None) else None


class _Entries:
    """The node entries of a description with their kind codes, read one column at a time."""

    def __init__(self, entries: list[dict[str, Any]], kind: np.ndarray) -> None:
        self.entries, self.kind = entries, kind

    def column(self, key: str, *codes: int) -> list[Any]:
        """The values of ``key`` (None where absent) in the entries of the given kinds, in order."""
        return _column(compress(self.entries, np.isin(self.kind, codes).tolist()), key)


def _column(rows: Iterable[dict[str, Any]], key: str) -> list[Any]:
    return list(map(dict.get, rows, repeat(key)))


def _numbers_array(values: list[Any], integer: bool = False) -> np.ndarray | None:
    """``values`` as an int64 (``integer``) or float64 array; None when some value is not a number of that kind."""
    accepted = {int} if integer else {int, float}
    if not set(map(type, values)) <= accepted:
        return None
    return np.array(values, dtype=np.int64 if integer else np.float64).reshape(len(values))


def _lists(values: list[Any]) -> bool:
    return not values or set(map(type, values)) == {list}


def _children(table: _Entries) -> tuple[np.ndarray, np.ndarray] | None:
    """The children as CSR; None unless every child is the number of an earlier node."""
    n, inner = len(table.kind), table.kind >= SUM
    children = table.column("children", SUM, PRODUCT)
    if not _lists(children):
        return None
    count = np.zeros(n, np.int64)
    count[inner] = np.fromiter(map(len, children), np.int64, len(children))
    ptr = np.zeros(n + 1, np.int64)
    np.cumsum(count, out=ptr[1:])
    child = _numbers_array(list(chain.from_iterable(children)), integer=True)
    if child is None or ((child < 0) | (child >= np.repeat(np.arange(n), count))).any():
        return None
    return ptr, child


def _fields(table: _Entries, names: list[str | None]) -> NodeFields | None:
    """The per-node arrays; None when a field holds anything but numbers of the right kind."""
    kind, n = table.kind, len(table.kind)
    weight_lists = table.column("weights", SUM)
    probs_lists = table.column("probs", CATEGORICAL)
    if not _lists(weight_lists) or not _lists(probs_lists):
        return None
    weight_count = np.zeros(n, np.int64)
    weight_count[kind == SUM] = np.fromiter(map(len, weight_lists), np.int64, len(weight_lists))
    weight_ptr = np.zeros(n + 1, np.int64)
    np.cumsum(weight_count, out=weight_ptr[1:])
    own = _numbers_array(list(chain.from_iterable(weight_lists)))
    leaf_var = _numbers_array(table.column("var", INDICATOR, BERNOULLI, CATEGORICAL, GAUSSIAN), integer=True)
    indicator_value = _numbers_array(table.column("value", INDICATOR), integer=True)
    bernoulli_p = _numbers_array(table.column("p", BERNOULLI))
    gaussian_mean = _numbers_array(table.column("mean", GAUSSIAN))
    gaussian_std = _numbers_array(table.column("std", GAUSSIAN))
    probs = [_numbers_array(values) for values in probs_lists]
    if (own is None or leaf_var is None or indicator_value is None or bernoulli_p is None or gaussian_mean is None
            or gaussian_std is None or any(values is None for values in probs)):
        return None
    if (leaf_var < 0).any() or (indicator_value < 0).any():
        return None
    var, value = np.full(n, -1, np.int64), np.full(n, -1, np.int64)
    p, mean, std = np.full(n, np.nan), np.full(n, np.nan), np.full(n, np.nan)
    var[kind < SUM], value[kind == INDICATOR], p[kind == BERNOULLI] = leaf_var, indicator_value, bernoulli_p
    mean[kind == GAUSSIAN], std[kind == GAUSSIAN] = gaussian_mean, gaussian_std
    return NodeFields(var, value, own, weight_ptr, p, mean, std, [v for v in probs if v is not None], names)


def _reordered(fields: NodeFields, kind: np.ndarray, order: np.ndarray) -> NodeFields:
    """``fields`` for the nodes ``order`` (a subset of the nodes, renumbered in that order)."""
    own_parts = np.split(fields.own_weights, fields.weight_ptr[1:-1])
    kept = order.tolist()
    own = np.concatenate([own_parts[i] for i in kept]) if len(fields.own_weights) else fields.own_weights
    weight_ptr = np.zeros(len(order) + 1, np.int64)
    np.cumsum(np.diff(fields.weight_ptr)[order], out=weight_ptr[1:])
    is_categorical = (kind == CATEGORICAL).tolist()
    categorical_number = np.cumsum(kind == CATEGORICAL) - 1
    probs = [fields.probs[categorical_number[i]] for i in kept if is_categorical[i]]
    names = [fields.names[i] for i in kept]
    f = fields
    return NodeFields(f.var[order], f.value[order], own, weight_ptr, f.p[order], f.mean[order], f.std[order], probs,
                      names)
