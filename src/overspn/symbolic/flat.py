"""The flat form of a structure: its nodes as numpy arrays in topological order.

Every pass over the flat form is a numpy operation over all nodes or edges, so building, checking
(:mod:`overspn.symbolic.flat_checks`) and compiling a structure cost time linear in its edges.
"""

from __future__ import annotations

from itertools import chain, compress
from operator import attrgetter
from typing import NamedTuple

import numpy as np

from overspn.symbolic.csr import edges_of, permute, postorder, tree_postorder
from overspn.symbolic.nodes import Bernoulli, Categorical, Gaussian, Indicator, Node, Product, Sum

__all__ = ["INDICATOR", "BERNOULLI", "CATEGORICAL", "GAUSSIAN", "SUM", "PRODUCT", "FlatStructure", "NodeFields"]

#: node kinds of the flat form (exact classes; a subclass is checked node by node)
INDICATOR, BERNOULLI, CATEGORICAL, GAUSSIAN, SUM, PRODUCT = range(6)
_KIND_OF: dict[type, int] = {Indicator: INDICATOR, Bernoulli: BERNOULLI, Categorical: CATEGORICAL,
                             Gaussian: GAUSSIAN, Sum: SUM, Product: PRODUCT}


class FlatStructure:
    """A structure as numpy arrays, nodes numbered in topological order (the order of
    :func:`~overspn.symbolic.nodes.topological_order`, root last): ``kind`` ``(n,)``, children as CSR (``ptr``
    ``(n + 1,)``, ``child`` ``(E,)``), ``var`` and ``value`` (indicators) per node (-1 where absent), sum weights per
    edge (``weights`` ``(E,)``, 0 under products; ``weight_ptr`` delimits each sum's own weights, which a malformed
    sum may have in another number), Bernoulli ``p``, Gaussian ``mean`` and ``std`` per node, categorical ``probs``
    (one array per categorical leaf, in order), ``names``, and the ``nodes`` themselves when built from nodes (None
    when read from a file).

    Every pass over it is a numpy operation over all nodes or edges, so building, checking and compiling a structure
    cost time linear in its edges and memory independent of the size of its scopes.
    """

    def __init__(self, kind: np.ndarray, ptr: np.ndarray, child: np.ndarray, var: np.ndarray, value: np.ndarray,
                 own_weights: np.ndarray, weight_ptr: np.ndarray, p: np.ndarray, mean: np.ndarray, std: np.ndarray,
                 probs: list[np.ndarray], names: list[str | None], nodes: list[Node] | None):
        self.kind, self.ptr, self.child, self.var, self.value = kind, ptr, child, var, value
        self.own_weights, self.weight_ptr, self.p, self.mean, self.std = own_weights, weight_ptr, p, mean, std
        self.weights = _edge_weights(kind, ptr, own_weights, weight_ptr)
        self.probs, self.names, self.nodes = probs, names, nodes
        self.count = np.diff(ptr)
        self.parent = np.repeat(np.arange(len(kind)), self.count)  # (E,): the parent of every edge

    def __len__(self) -> int:
        return len(self.kind)

    @classmethod
    def from_root(cls, root: Node) -> FlatStructure | None:
        """The flat form of the structure under ``root``; None when it is not a graph of known node types (not a
        node, a cycle, a child that is not a node, a subclass): :func:`~overspn.symbolic.nodes.topological_order` and
        the node-by-node checks then describe the problem."""
        if not isinstance(root, Node):
            return None
        found = _discover(root)
        if found is None:
            return None
        nodes, kids, bounds = found
        ptr, child = _children_csr(nodes, kids)
        del kids
        order = tree_postorder(ptr, child, bounds)
        if order is None:
            order = postorder(ptr, child, 0)
        if order is None:
            return None
        ptr, child = permute(ptr, child, order)
        nodes = list(map(nodes.__getitem__, order.tolist()))
        kind = np.fromiter(map(_KIND_OF.__getitem__, map(type, nodes)), np.int8, len(nodes))
        return cls.from_fields(kind, ptr, child, _node_fields(nodes, kind), nodes)

    @classmethod
    def from_fields(cls, kind: np.ndarray, ptr: np.ndarray, child: np.ndarray, fields: NodeFields,
                    nodes: list[Node] | None = None) -> FlatStructure:
        """The flat form from its kinds, CSR children and per-node arrays."""
        f = fields
        return cls(kind, ptr, child, f.var, f.value, f.own_weights, f.weight_ptr, f.p, f.mean, f.std, f.probs,
                   f.names, nodes)

    def levels(self, source: np.ndarray) -> np.ndarray:
        """Longest path from every node down to a node of ``source`` (a mask; 0 there), children before parents.

        Kahn's algorithm one level at a time: each level is a few numpy operations over its nodes' edges."""
        n = len(self)
        level = np.zeros(n, np.int64)
        # the edges of non-source nodes, grouped by child
        live = ~source[self.parent]
        parent, child = self.parent[live], self.child[live]
        waiting = np.bincount(parent, minlength=n)
        by_child = np.argsort(child, kind="stable")
        parents_sorted = parent[by_child]
        starts = np.searchsorted(child[by_child], np.arange(n + 1))
        frontier = np.flatnonzero(source | (waiting == 0))
        depth = 0
        while len(frontier):
            level[frontier] = depth
            depth += 1
            lo, hi = starts[frontier], starts[frontier + 1]
            sizes = hi - lo
            if not sizes.sum():
                break
            edges = np.repeat(lo - np.cumsum(np.concatenate([[0], sizes[:-1]])), sizes) + np.arange(sizes.sum())
            touched = np.sort(parents_sorted[edges])
            first = np.concatenate([[True], touched[1:] != touched[:-1]])
            unique = touched[first]
            hits = np.diff(np.concatenate([np.flatnonzero(first), [len(touched)]]))
            waiting[unique] -= hits
            frontier = unique[waiting[unique] == 0]
        return level


def _discover(root: Node) -> tuple[list[Node], list[tuple[Node, ...]], list[int]] | None:
    """The nodes under ``root`` breadth-first, numbered as found level by level (level ``k``: nodes ``bounds[k]`` to
    ``bounds[k + 1]``), and their children; None when a node is not of a known type."""
    get_children = attrgetter("children")
    seen: set[Node] = {root}
    nodes: list[Node] = [root]
    kids: list[tuple[Node, ...]] = []
    bounds = [0]
    frontier = [root]
    try:
        while frontier:
            if not set(map(type, frontier)) <= _KIND_OF.keys():
                return None
            level = list(map(get_children, frontier))
            kids.extend(level)
            frontier = list(set(chain.from_iterable(level)).difference(seen))
            seen.update(frontier)
            bounds.append(len(nodes))
            nodes.extend(frontier)
    except (AttributeError, TypeError):
        return None
    return nodes, kids, bounds


def _children_csr(nodes: list[Node], kids: list[tuple[Node, ...]]) -> tuple[np.ndarray, np.ndarray]:
    """The children of ``nodes`` as CSR ``(ptr, child)``, numbered through the nodes' identities, sorted once."""
    n = len(nodes)
    count = np.fromiter(map(len, kids), np.int64, n)
    identity = np.fromiter(map(id, nodes), np.int64, n)
    sorter = np.argsort(identity)
    child_identity = np.fromiter(map(id, chain.from_iterable(kids)), np.int64, int(count.sum()))
    child = sorter[np.searchsorted(identity[sorter], child_identity)]
    ptr = np.zeros(n + 1, np.int64)
    np.cumsum(count, out=ptr[1:])
    return ptr, child


class NodeFields(NamedTuple):
    """The per-node arrays of the flat form besides its kinds and children."""

    var: np.ndarray
    value: np.ndarray
    own_weights: np.ndarray
    weight_ptr: np.ndarray
    p: np.ndarray
    mean: np.ndarray
    std: np.ndarray
    probs: list[np.ndarray]
    names: list[str | None]


def _node_fields(nodes: list[Node], kind: np.ndarray) -> NodeFields:
    """The per-node arrays of the flat form, read from ``nodes`` (in order) one kind at a time."""
    n = len(nodes)

    def pick(code: int) -> list[Node]:
        return list(compress(nodes, (kind == code).tolist()))

    var = np.full(n, -1, np.int64)
    leaves = kind < SUM
    var[leaves] = np.fromiter(map(attrgetter("var"), compress(nodes, leaves.tolist())), np.int64,
                              int(leaves.sum()))
    value = np.full(n, -1, np.int64)
    value[kind == INDICATOR] = np.fromiter(map(attrgetter("value"), pick(INDICATOR)), np.int64)
    weight_list = list(map(attrgetter("weights"), pick(SUM)))
    weight_count = np.zeros(n, np.int64)
    weight_count[kind == SUM] = np.fromiter(map(len, weight_list), np.int64, len(weight_list))
    weight_ptr = np.zeros(n + 1, np.int64)
    np.cumsum(weight_count, out=weight_ptr[1:])
    own = np.concatenate(weight_list) if weight_list else np.zeros(0)
    p = np.full(n, np.nan)
    p[kind == BERNOULLI] = np.fromiter(map(attrgetter("p"), pick(BERNOULLI)), np.float64)
    mean, std = np.full(n, np.nan), np.full(n, np.nan)
    gaussians = pick(GAUSSIAN)
    mean[kind == GAUSSIAN] = np.fromiter(map(attrgetter("mean"), gaussians), np.float64, len(gaussians))
    std[kind == GAUSSIAN] = np.fromiter(map(attrgetter("std"), gaussians), np.float64, len(gaussians))
    probs = list(map(attrgetter("probs"), pick(CATEGORICAL)))
    names = list(map(attrgetter("name"), nodes))
    return NodeFields(var, value, own, weight_ptr, p, mean, std, probs, names)


def _edge_weights(kind: np.ndarray, ptr: np.ndarray, own: np.ndarray, weight_ptr: np.ndarray) -> np.ndarray:
    """Sum weights per edge (0 under products); when some sum has as many weights as children."""
    weights = np.zeros(int(ptr[-1]))
    sums = np.flatnonzero(kind == SUM)
    count = ptr[sums + 1] - ptr[sums]
    fits = (weight_ptr[sums + 1] - weight_ptr[sums]) == count
    if fits.all():
        edges, _ = edges_of(ptr, sums)
        weights[edges] = own
    return weights
