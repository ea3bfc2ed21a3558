"""Validation of a structure: the rules a valid SPN obeys, checked on its flat form and confirmed node by node.

Rules: acyclic; every inner node has children; sum weights finite, non-negative, not all zero and as many as
children; sums complete (children share one scope); products decomposable (children have disjoint scopes); leaf
parameters in range; a variable is either discrete or continuous.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from overspn.errors import StructureError
from overspn.symbolic.flat import SUM, FlatStructure
from overspn.symbolic.flat_checks import candidate_problems
from overspn.symbolic.nodes import Leaf, Node, Product, Sum, describe, path_to, scopes, topological_order

__all__ = ["validate", "flatten", "check_flat"]


def _label(node: Node) -> str:
    """Like :func:`describe`, without the memory address of an unnamed inner node (its path identifies it)."""
    if node.name is None and not isinstance(node, Leaf):
        return f"{type(node).__name__} node with {len(node.children)} children"
    return describe(node)


def _validate_slow(root: Node) -> list[Node]:
    """Check that ``root`` is a valid SPN and return its nodes in topological order.

    Rules: acyclic; every inner node has children; sum weights finite, non-negative, not all zero and as many as
    children; sums complete (children share one scope); products decomposable (children have disjoint scopes); leaf
    parameters in range; a variable is either discrete or continuous. The error names the offending node, its path
    from the root and the rule it breaks.
    """
    order = topological_order(root)
    scope = scopes(root, order)
    kinds: dict[int, tuple[bool, Node]] = {}
    for node in order:
        _check_node(root, node, scope.__getitem__, kinds)
    return order


def _check_node(root: Node, node: Node, scope_of: Callable[[Node], frozenset[int]],
                kinds: dict[int, tuple[bool, Node]]) -> None:
    """Raise the StructureError of the first rule ``node`` breaks (``kinds``: the first leaf of every variable)."""

    def fail(node: Node, problem: str) -> StructureError:
        return StructureError(f"{_label(node)} at {path_to(root, node)}: {problem}")

    if isinstance(node, Leaf):
        problem = node.check()
        if problem is not None:
            raise fail(node, problem)
        previous = kinds.setdefault(node.var, (node.is_discrete, node))
        if previous[0] != node.is_discrete:
            raise fail(node, f"variable x{node.var} has both discrete and continuous leaves (also "
                             f"{_label(previous[1])} at {path_to(root, previous[1])})")
        return
    if not isinstance(node, (Sum, Product)):
        raise fail(node, f"unknown node type {type(node).__name__}")
    if not node.children:
        raise fail(node, "no children: every sum and product needs at least one")
    if isinstance(node, Sum):
        weights = node.weights
        if len(weights) != len(node.children):
            raise fail(node, f"{len(weights)} weights for {len(node.children)} children: expected one weight "
                             "per child")
        if not np.all(np.isfinite(weights)):
            index = int(np.argmin(np.isfinite(weights)))
            raise fail(node, f"non-finite weight {float(weights[index])!r} for child {index}: weights must be "
                             "finite")
        if np.any(weights < 0):
            index = int(np.argmax(weights < 0))
            raise fail(node, f"negative weight {float(weights[index])!r} for child {index}: weights must be >= 0")
        if not np.any(weights > 0):
            raise fail(node, "all weights are zero: the node would be identically zero and the network "
                             "unnormalisable")
        first = scope_of(node.children[0])
        for index, child in enumerate(node.children[1:], start=1):
            if scope_of(child) != first:
                raise fail(node, f"not complete: child 0 has scope {sorted(first)} but child {index} has scope "
                                 f"{sorted(scope_of(child))}")
    else:
        seen: set[int] = set()
        for index, child in enumerate(node.children):
            overlap = seen & scope_of(child)
            if overlap:
                raise fail(node, f"not decomposable: variables {sorted(overlap)} of child {index} also appear "
                                 "in an earlier child")
            seen |= scope_of(child)


def flatten(root: Node) -> FlatStructure:
    """Check ``root`` like :func:`validate` and return its flat form (raises StructureError)."""
    flat = FlatStructure.from_root(root)
    if flat is None:
        _validate_slow(root)
        raise StructureError(f"{describe(root)}: the structure holds node types that cannot be compiled")
    check_flat(flat, root)
    return flat


def check_flat(flat: FlatStructure, root: Node | None) -> bool:
    """Raise the StructureError :func:`validate` raises for the first invalid node (needs ``root``, whose nodes
    ``flat`` was built from); without ``root``, return whether the structure is valid."""
    candidates, flat_scopes = candidate_problems(flat)
    if not len(candidates):
        return True
    if root is None or flat.nodes is None:
        return False
    nodes = flat.nodes
    position = {id(node): i for i, node in enumerate(nodes)}
    kinds: dict[int, tuple[bool, Node]] = {}
    for i in np.flatnonzero(flat.kind < SUM)[::-1].tolist():
        kinds[nodes[i].var] = (nodes[i].is_discrete, nodes[i])
    for index in candidates.tolist():
        _check_node(root, nodes[index], lambda node: flat_scopes.scope_of(position[id(node)]), dict(kinds))
    return True


def validate(root: Node) -> list[Node]:
    """Check that ``root`` is a valid SPN and return its nodes in topological order.

    Rules: acyclic; every inner node has children; sum weights finite, non-negative, not all zero and as many as
    children; sums complete (children share one scope); products decomposable (children have disjoint scopes); leaf
    parameters in range; a variable is either discrete or continuous. The error names the offending node, its path
    from the root and the rule it breaks.

    The checks run on the flat form (time linear in the edges, scopes as shared bitsets); a structure of node
    subclasses is checked node by node.
    """
    flat = FlatStructure.from_root(root)
    if flat is None:
        return _validate_slow(root)
    check_flat(flat, root)
    assert flat.nodes is not None, "from_root keeps the nodes"
    return flat.nodes
