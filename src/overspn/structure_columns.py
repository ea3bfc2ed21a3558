"""A structure as columns, the form model files (format version 3) store it in: one JSON object of flat lists that
numpy reads in time linear in the structure, so that a file of millions of nodes loads in seconds. (Versions 1 and 2
stored one object per node, :mod:`overspn.structure_json`; they still load.)

``{"types": "IIS...P", "arity": [...], "children": [...], "weights": [...], "var": [...], "value": [...],
"p": [...], "mean": [...], "std": [...], "probs": [[...], ...], "names": {"NODE": "name"}}``: one letter per node in
topological order, root last (``I`` indicator, ``B`` Bernoulli, ``C`` categorical, ``G`` Gaussian, ``S`` sum, ``P``
product); the number of children of every sum and product, in node order; their children (numbers of earlier nodes)
one node after another; one weight per child of every sum; the variable of every leaf; the state of every indicator;
the Bernoulli ``p``; the Gaussian ``mean`` and ``std``; the probabilities of every categorical leaf; the names of the
nodes that have one.

Reading (:func:`read_columns`) checks every field's type, length and range and raises :class:`ModelFileError` naming
the field and the node; it does not check the rules of a valid SPN (completeness, decomposability, weights), which
:func:`overspn.symbolic.validation.check_flat` does once the memory the layout needs has been checked
(:mod:`overspn.limits`).
"""

from __future__ import annotations

from typing import Any

import numpy as np

from overspn.errors import ModelFileError
from overspn.limits import MAX_INDEX, short_int
from overspn.structure_json import in_float_range, shorten
from overspn.symbolic.csr import permute, postorder
from overspn.symbolic.flat import BERNOULLI, CATEGORICAL, GAUSSIAN, INDICATOR, PRODUCT, SUM, FlatStructure, NodeFields

__all__ = ["is_columns", "to_columns", "read_columns", "columns_from_entries", "to_entries"]

_LETTER = {INDICATOR: "I", BERNOULLI: "B", CATEGORICAL: "C", GAUSSIAN: "G", SUM: "S", PRODUCT: "P"}
_NAMES = {INDICATOR: "Indicator", BERNOULLI: "Bernoulli", CATEGORICAL: "Categorical", GAUSSIAN: "Gaussian",
          SUM: "Sum", PRODUCT: "Product"}
LETTERS = "".join(_LETTER[code] for code in sorted(_LETTER))
_CODE = np.full(256, -1, np.int8)  # kind code by letter (ASCII)
_CODE[np.frombuffer(LETTERS.encode(), np.uint8)] = sorted(_LETTER)


def is_columns(description: Any) -> bool:
    """Whether a file's structure description is in the column form."""
    return isinstance(description, dict) and "types" in description


def to_columns(kind: np.ndarray, ptr: np.ndarray, child: np.ndarray, var: np.ndarray, value: np.ndarray,
               edge_weights: np.ndarray, p: np.ndarray, mean: np.ndarray, std: np.ndarray, probs: list[np.ndarray],
               names: list[str | None]) -> dict[str, Any]:
    """The column form of a structure given as flat arrays (per node ``var``, ``value``, ``p``, ``mean``, ``std``;
    per edge ``edge_weights``; one array of ``probs`` per categorical leaf)."""
    inner, leaves = kind >= SUM, kind < SUM
    sum_edge = np.repeat(kind == SUM, np.diff(ptr))
    return {"types": np.frombuffer(LETTERS.encode(), np.uint8)[kind].tobytes().decode(),
            "arity": np.diff(ptr)[inner].tolist(), "children": child.tolist(),
            "weights": edge_weights[sum_edge].tolist(), "var": var[leaves].tolist(),
            "value": value[kind == INDICATOR].tolist(), "p": p[kind == BERNOULLI].tolist(),
            "mean": mean[kind == GAUSSIAN].tolist(), "std": std[kind == GAUSSIAN].tolist(),
            "probs": [np.asarray(values, np.float64).tolist() for values in probs],
            "names": {str(i): name for i, name in enumerate(names) if name is not None}}


def read_columns(description: dict[str, Any]) -> FlatStructure:
    """The flat form of a column description, nodes renumbered in the order ``topological_order`` gives (only the
    nodes the last one reaches); raises ModelFileError for a malformed description, naming the field and node."""
    kind = _kinds(description.get("types"))
    n = len(kind)
    inner = np.flatnonzero(kind >= SUM)
    arity = _integers(description, "arity", inner, kind, "its number of children")
    count = np.zeros(n, np.int64)
    count[inner] = arity
    ptr = np.zeros(n + 1, np.int64)
    np.cumsum(count, out=ptr[1:])
    _values(description, "children", int(ptr[-1]))  # the counts are checked before they size anything
    parent = np.repeat(np.arange(n), count)
    child = _integers(description, "children", parent, kind, "a child")
    late = np.flatnonzero(child >= parent)
    if len(late):
        node = int(parent[late[0]])
        raise ModelFileError(f"node {node} ({_NAMES[kind[node]]}) refers to child {int(child[late[0]])}, which is "
                             "not an earlier node")
    sum_edges = parent[kind[parent] == SUM]
    own = _floats(description, "weights", sum_edges, kind)
    weight_ptr = np.zeros(n + 1, np.int64)
    np.cumsum(np.where(kind == SUM, count, 0), out=weight_ptr[1:])
    var, value = np.full(n, -1, np.int64), np.full(n, -1, np.int64)
    p, mean, std = np.full(n, np.nan), np.full(n, np.nan), np.full(n, np.nan)
    leaves = np.flatnonzero(kind < SUM)
    var[leaves] = _integers(description, "var", leaves, kind, "its variable")
    for field, code, target in (("value", INDICATOR, value), ("p", BERNOULLI, p), ("mean", GAUSSIAN, mean),
                                ("std", GAUSSIAN, std)):
        nodes = np.flatnonzero(kind == code)
        target[nodes] = (_integers(description, field, nodes, kind, "its value") if field == "value"
                         else _floats(description, field, nodes, kind))
    probs = _probs(description.get("probs", []), np.flatnonzero(kind == CATEGORICAL))
    names = _names(description.get("names", {}), n)
    fields = NodeFields(var, value, own, weight_ptr, p, mean, std, probs, names)
    order = postorder(ptr, child, n - 1)
    if order is None:  # pragma: no cover (children are earlier nodes: there is no cycle)
        raise ModelFileError("the structure has a cycle")
    if len(order) != n or not np.array_equal(order, np.arange(n)):
        ptr, child = permute(ptr, child, order)
        kind, fields = kind[order], reordered_fields(fields, kind, order)
    return FlatStructure.from_fields(kind, ptr, child, fields)


def reordered_fields(fields: NodeFields, kind: np.ndarray, order: np.ndarray) -> NodeFields:
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


def _kinds(types: Any) -> np.ndarray:
    if not isinstance(types, str) or not types:
        raise ModelFileError(f"the structure's 'types' must be a non-empty string of node letters ({LETTERS}), got "
                             f"{shorten(types)}")
    kind = _CODE[np.frombuffer(types.encode("ascii"), np.uint8)] if types.isascii() else None
    if kind is None or (kind < 0).any():
        bad = next(i for i, letter in enumerate(types) if letter not in LETTERS)
        raise ModelFileError(f"node {bad} has unknown type {repr(types[bad])} (expected one of {LETTERS})")
    return kind


def _values(description: dict[str, Any], field: str, length: int) -> list[Any]:
    values = description.get(field, [])
    if not isinstance(values, list):
        raise ModelFileError(f"the structure's {field!r} must be a list, got {shorten(values)}")
    if len(values) != length:
        raise ModelFileError(f"the structure's {field!r} holds {len(values)} values, but its nodes need {length}")
    return values


def _integers(description: dict[str, Any], field: str, owner: np.ndarray, kind: np.ndarray, what: str) -> np.ndarray:
    """Field ``field``, one int in [0, MAX_INDEX] per entry of ``owner`` (the node each belongs to)."""
    values = _values(description, field, len(owner))
    if not values:
        return np.zeros(0, np.int64)
    if not set(map(type, values)) <= {int} or min(values) < 0 or max(values) > MAX_INDEX:
        k = next(i for i, v in enumerate(values) if type(v) is not int or not 0 <= v <= MAX_INDEX)
        node = int(owner[k])
        problem = (f"is {short_int(values[k])}, beyond the largest accepted value {MAX_INDEX}"
                   if type(values[k]) is int and values[k] > MAX_INDEX else
                   f"must be an integer >= 0, got {shorten(values[k])}")
        raise ModelFileError(f"node {node} ({_NAMES[kind[node]]}): {what} {problem}")
    return np.array(values, np.int64)


def _floats(description: dict[str, Any], field: str, owner: np.ndarray, kind: np.ndarray) -> np.ndarray:
    """Field ``field``, one number (not a JSON boolean, within the range of a float) per entry of ``owner``."""
    values = _values(description, field, len(owner))
    return _numbers(values, lambda k: f"node {int(owner[k])} ({_NAMES[kind[owner[k]]]}): {field}")


def _numbers(values: list[Any], where: Any) -> np.ndarray:
    if not set(map(type, values)) <= {int, float}:
        k = next(i for i, v in enumerate(values) if type(v) not in (int, float))
        raise ModelFileError(f"{where(k)} must be numbers, got {shorten(values[k])}")
    try:
        return np.array(values, np.float64).reshape(len(values))
    except OverflowError:
        k = next(i for i, v in enumerate(values) if not in_float_range(v))
        raise ModelFileError(f"{where(k)} holds a number beyond the range of a float: {short_int(values[k])}"
                             ) from None


def _probs(values: Any, nodes: np.ndarray) -> list[np.ndarray]:
    if not isinstance(values, list) or len(values) != len(nodes):
        raise ModelFileError(f"the structure's 'probs' must be a list of {len(nodes)} lists (one per categorical "
                             f"leaf), got {shorten(values)}")
    probs = []
    for node, row in zip(nodes.tolist(), values):
        if not isinstance(row, list):
            raise ModelFileError(f"node {node} (Categorical): probs must be a list, got {shorten(row)}")
        array = _numbers(row, lambda k, node=node: f"node {node} (Categorical): probs")
        array.setflags(write=False)
        probs.append(array)
    return probs


def _names(values: Any, n: int) -> list[str | None]:
    names: list[str | None] = [None] * n
    if not isinstance(values, dict):
        raise ModelFileError(f"the structure's 'names' must be an object, got {shorten(values)}")
    for key, name in values.items():
        if not (key.isascii() and key.isdigit() and int(key) < n) or not isinstance(name, str):
            raise ModelFileError(f"the structure's 'names' holds {key!r}: {shorten(name)}; expected node numbers "
                                 f"below {n} with string names")
        names[int(key)] = name
    return names


def columns_from_entries(description: Any) -> dict[str, Any] | None:
    """The column form of a node-per-object description (format versions 1 and 2), so that both forms are read,
    estimated and compiled the same way; None when an entry is not plainly well-formed (not an object of a known
    type with the fields of its type, a sum with as many weights as children): the node-by-node reader of
    :mod:`overspn.structure_json` then names the problem before anything is built."""
    entries = description.get("nodes") if isinstance(description, dict) else None
    if not isinstance(entries, list) or not entries:
        return None
    codes = {name: code for code, name in _NAMES.items()}
    columns: dict[str, Any] = {key: [] for key in ("arity", "children", "weights", "var", "value", "p", "mean", "std",
                                                   "probs")}
    types, names = [], {}
    for number, entry in enumerate(entries):
        code = codes.get(str(entry.get("type"))) if isinstance(entry, dict) else None
        if code is None or not isinstance(entry.get("name"), (str, type(None))):
            return None
        fields = {SUM: ("children", "weights"), PRODUCT: ("children",), INDICATOR: ("var", "value"),
                  BERNOULLI: ("var", "p"), CATEGORICAL: ("var", "probs"), GAUSSIAN: ("var", "mean", "std")}[code]
        if any(field not in entry for field in fields):
            return None
        if code >= SUM:
            if not isinstance(entry["children"], list) or (code == SUM and not (
                    isinstance(entry["weights"], list) and len(entry["weights"]) == len(entry["children"]))):
                return None
            columns["arity"].append(len(entry["children"]))
        for field in fields:
            if field in ("children", "weights"):
                columns[field].extend(entry[field])
            else:
                columns[field].append(entry[field])
        types.append(_LETTER[code])
        if entry.get("name") is not None:
            names[str(number)] = entry["name"]
    return {"types": "".join(types), **columns, "names": names}


def to_entries(flat: FlatStructure) -> dict[str, Any]:
    """The node-per-object description (:mod:`overspn.structure_json`) of a flat form read from columns: the form
    whose reader names the node that breaks a rule of a valid SPN (used only for a structure that is not valid)."""
    entries: list[dict[str, Any]] = []
    categorical = iter(flat.probs)
    for i, code in enumerate(flat.kind.tolist()):
        entry: dict[str, Any] = {"type": _NAMES[code]}
        if flat.names[i] is not None:
            entry["name"] = flat.names[i]
        if code >= SUM:
            entry["children"] = flat.child[flat.ptr[i]: flat.ptr[i + 1]].tolist()
        if code == SUM:
            entry["weights"] = flat.own_weights[flat.weight_ptr[i]: flat.weight_ptr[i + 1]].tolist()
        elif code == INDICATOR:
            entry.update(var=int(flat.var[i]), value=int(flat.value[i]))
        elif code == BERNOULLI:
            entry.update(var=int(flat.var[i]), p=float(flat.p[i]))
        elif code == CATEGORICAL:
            entry.update(var=int(flat.var[i]), probs=next(categorical).tolist())
        elif code == GAUSSIAN:
            entry.update(var=int(flat.var[i]), mean=float(flat.mean[i]), std=float(flat.std[i]))
        entries.append(entry)
    return {"nodes": entries}
