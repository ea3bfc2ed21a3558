"""A structure as JSON with one object per node (``{"nodes": [...]}``, topological order, children as the numbers
of earlier nodes, shared nodes stored once): :func:`osp.structure_to_dict`, and the form model files of format
versions 1 and 2 store.

Reading node by node is strict: anything malformed raises :class:`ModelFileError` naming the node. Model files read a
well-formed description through its column form (:func:`overspn.structure_columns.columns_from_entries`), with numpy.
"""

from __future__ import annotations

import sys
from typing import Any

import numpy as np

from overspn.errors import ModelFileError, OverspnError
from overspn.symbolic.nodes import Bernoulli, Categorical, Gaussian, Indicator, Node, Product, Sum, topological_order

__all__ = ["structure_to_dict", "structure_from_dict", "structure_for_file", "SMALLEST", "BELOW_ONE"]

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
