"""Symbolic SPN structures: nodes, scopes, traversal and validation.

A structure is a rooted DAG of :class:`Node` objects; sub-networks may be shared. Nothing here touches torch: the
compiled tensor program that evaluates a structure lives in :mod:`overspn.engine.compiled`, and transforms in
:mod:`overspn.symbolic.transforms` are functions from structure to structure.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Sequence
from itertools import chain, compress
from operator import attrgetter

import numpy as np

from overspn.errors import StructureError

__all__ = [
    "Node",
    "Leaf",
    "Indicator",
    "Bernoulli",
    "Categorical",
    "Gaussian",
    "Product",
    "Sum",
    "topological_order",
    "scopes",
    "validate",
    "describe",
    "path_to",
    "num_parameters",
]


class Node:
    """Base class of every node. ``children`` is a tuple (empty for leaves); ``name`` is optional, used in errors."""

    __slots__ = ("name",)

    def __init__(self, name: str | None = None) -> None:
        self.name = name

    @property
    def children(self) -> tuple[Node, ...]:
        return ()

    @property
    def scope(self) -> frozenset[int]:
        """The set of variables this node is a function of."""
        return scopes(self)[self]

    def __repr__(self) -> str:
        return describe(self)


class Leaf(Node):
    """A univariate input distribution over variable ``var`` (a column index of the data)."""

    __slots__ = ("var",)
    is_discrete = True

    def __init__(self, var: int, name: str | None = None) -> None:
        super().__init__(name)
        if isinstance(var, bool) or not isinstance(var, (int, np.integer)) or var < 0:
            raise StructureError(f"{type(self).__name__} leaf: variable must be a non-negative int, got {var!r}")
        self.var = int(var)

    @property
    def scope(self) -> frozenset[int]:
        return frozenset((self.var,))

    def check(self) -> str | None:
        """Return a description of what is wrong with the leaf's parameters, or None when they are valid."""
        return None


class Indicator(Leaf):
    """The indicator [x_var == value] of a discrete variable; marginalised it is 1."""

    __slots__ = ("value",)

    def __init__(self, var: int, value: int, name: str | None = None) -> None:
        super().__init__(var, name)
        if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 0:
            raise StructureError(f"Indicator leaf on variable {var}: value must be a non-negative int, got {value!r}")
        self.value = int(value)

    @property
    def cardinality(self) -> int:
        return self.value + 1


class Bernoulli(Leaf):
    """Bernoulli leaf: P(x_var = 1) = p, with 0 < p < 1 (use indicators for deterministic leaves)."""

    __slots__ = ("p",)
    cardinality = 2

    def __init__(self, var: int, p: float = 0.5, name: str | None = None) -> None:
        super().__init__(var, name)
        self.p = _number(p, "p", self)

    def check(self) -> str | None:
        if not 0.0 < self.p < 1.0:
            return f"p must lie in (0, 1), got {self.p!r}"
        return None


class Categorical(Leaf):
    """Categorical leaf over states 0..len(probs)-1; probs are positive and sum to 1."""

    __slots__ = ("probs",)

    def __init__(self, var: int, probs: Sequence[float] | np.ndarray, name: str | None = None) -> None:
        super().__init__(var, name)
        self.probs = _frozen_vector(probs, "probs", self)

    @property
    def cardinality(self) -> int:
        return len(self.probs)

    def check(self) -> str | None:
        if len(self.probs) < 1:
            return "probs must not be empty"
        if not np.all(np.isfinite(self.probs)) or np.any(self.probs <= 0):
            return f"probs must be finite and > 0, got {self.probs.tolist()}"
        if abs(float(self.probs.sum()) - 1.0) > 1e-6 * max(1, len(self.probs)):
            return f"probs must sum to 1, got sum {float(self.probs.sum())!r}"
        return None


class Gaussian(Leaf):
    """Gaussian leaf with mean and standard deviation std > 0 over a continuous variable."""

    __slots__ = ("mean", "std")
    is_discrete = False

    def __init__(self, var: int, mean: float = 0.0, std: float = 1.0, name: str | None = None) -> None:
        super().__init__(var, name)
        self.mean = _number(mean, "mean", self)
        self.std = _number(std, "std", self)

    def check(self) -> str | None:
        if not math.isfinite(self.mean):
            return f"mean must be finite, got {self.mean!r}"
        if not (math.isfinite(self.std) and self.std > 0):
            return f"std must be finite and > 0, got {self.std!r}"
        return None


class Product(Node):
    """Product node: the product of its children, whose scopes must be disjoint (decomposability)."""

    __slots__ = ("children",)
    children: tuple[Node, ...]

    def __init__(self, children: Iterable[Node], name: str | None = None) -> None:
        super().__init__(name)
        self.children = _node_tuple(children, self)


class Sum(Node):
    """Sum node: sum_k weights[k] * children[k], non-negative and possibly unnormalised weights.

    Children must all have the same scope (completeness). ``weights`` defaults to all ones.
    """

    __slots__ = ("children", "weights")
    children: tuple[Node, ...]

    def __init__(self, children: Iterable[Node], weights: Sequence[float] | np.ndarray | None = None,
                 name: str | None = None):
        super().__init__(name)
        self.children = _node_tuple(children, self)
        self.weights = _frozen_vector(np.ones(len(self.children)) if weights is None else weights, "weights", self)


def _node_tuple(children: Iterable[Node], owner: Node) -> tuple[Node, ...]:
    result = tuple(children)
    for child in result:
        if not isinstance(child, Node):
            raise StructureError(f"{type(owner).__name__} node: children must be nodes, got {type(child).__name__}")
    return result


def _number(value: float, what: str, owner: Node) -> float:
    if isinstance(value, (str, bytes)):
        raise StructureError(f"{describe(owner)}: {what} must be a number, got {value!r}")
    try:
        return float(value)
    except (TypeError, ValueError) as error:
        raise StructureError(f"{describe(owner)}: {what} must be a number, got {value!r}") from error


def _frozen_vector(values: Sequence[float] | np.ndarray, what: str, owner: Node) -> np.ndarray:
    if isinstance(values, (str, bytes)):
        raise StructureError(f"{describe(owner)}: {what} must be a sequence of numbers, got {values!r}")
    try:
        vector = np.array(values, dtype=np.float64)
    except (TypeError, ValueError) as error:
        raise StructureError(f"{describe(owner)}: {what} must be a sequence of numbers, got {values!r}") from error
    if vector.ndim != 1:
        raise StructureError(f"{describe(owner)}: {what} must be one-dimensional, got shape {vector.shape}")
    vector.setflags(write=False)
    return vector


def describe(node: Node) -> str:
    """A short human-readable name of a node for error messages."""
    kind = type(node).__name__
    if node.name is not None:
        return f"{kind} {node.name!r}"
    if isinstance(node, Indicator):
        return f"Indicator[x{node.var}={node.value}]"
    if isinstance(node, Leaf):
        return f"{kind} leaf on x{node.var}"
    return f"{kind} node at 0x{id(node):x} with {len(node.children)} children"


def _label(node: Node) -> str:
    """Like :func:`describe`, without the memory address of an unnamed inner node (its path identifies it)."""
    if node.name is None and not isinstance(node, Leaf):
        return f"{type(node).__name__} node with {len(node.children)} children"
    return describe(node)


def topological_order(root: Node) -> list[Node]:
    """All nodes reachable from ``root``, each exactly once, children before parents (root last).

    Raises StructureError naming a node on the cycle, and the path to it, when the graph is not acyclic.
    """
    if not isinstance(root, Node):
        raise StructureError(f"the root must be a node, got {type(root).__name__}")
    order: list[Node] = []
    state: dict[int, int] = {}  # id -> 1 while on the DFS stack, 2 when finished
    stack: list[tuple[Node, int]] = [(root, 0)]
    state[id(root)] = 1
    while stack:
        node, next_child = stack[-1]
        children = node.children
        if next_child < len(children):
            stack[-1] = (node, next_child + 1)
            child = children[next_child]
            if not isinstance(child, Node):
                raise StructureError(f"{describe(node)} at {_stack_path(stack)} has a child that is not a node: "
                                     f"{type(child).__name__}")
            mark = state.get(id(child))
            if mark == 1:
                raise StructureError(f"{describe(child)} is part of a cycle (reached again at {_stack_path(stack)}): "
                                     "the structure must be acyclic")
            if mark is None:
                state[id(child)] = 1
                stack.append((child, 0))
        else:
            stack.pop()
            state[id(node)] = 2
            order.append(node)
    return order


def _stack_path(stack: list[tuple[Node, int]]) -> str:
    """The path of the child just taken from the top of a depth-first stack, e.g. ``root.children[1].children[0]``."""
    return "root" + "".join(f".children[{next_child - 1}]" for _, next_child in stack)


def path_to(root: Node, target: Node) -> str:
    """The shortest path from ``root`` to ``target`` as ``root.children[i].children[j]...`` (for error messages)."""
    parents: dict[int, tuple[Node, int] | None] = {id(root): None}
    frontier = [root]
    while frontier and id(target) not in parents:
        following = []
        for node in frontier:
            for index, child in enumerate(node.children):
                if id(child) not in parents:
                    parents[id(child)] = (node, index)
                    following.append(child)
        frontier = following
    if id(target) not in parents:
        return "a node not reachable from the root"
    steps = []
    link = parents[id(target)]
    while link is not None:
        parent, index = link
        steps.append(f".children[{index}]")
        link = parents[id(parent)]
    return "root" + "".join(reversed(steps))


def scopes(root: Node, order: list[Node] | None = None) -> dict[Node, frozenset[int]]:
    """The scope of every node reachable from ``root``.

    Equal scopes are one shared frozenset (a sum whose children share a scope, leaves of one variable), so a valid
    structure's scopes take memory per distinct scope, not per node."""
    result: dict[Node, frozenset[int]] = {}
    singletons: dict[int, frozenset[int]] = {}
    for node in order if order is not None else topological_order(root):
        if isinstance(node, Leaf):
            scope = singletons.get(node.var)
            if scope is None:
                scope = singletons[node.var] = frozenset((node.var,))
            result[node] = scope
        else:
            children = [result[child] for child in node.children]
            if children and all(c is children[0] or c == children[0] for c in children[1:]):
                result[node] = children[0] if isinstance(node, Sum) or len(children) == 1 else \
                    frozenset().union(*children)
            else:
                result[node] = frozenset().union(*children)
    return result


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


def num_parameters(root: Node) -> int:
    """Number of free parameters: sum weights plus leaf parameters (indicators have none)."""
    total = 0
    for node in topological_order(root):
        if isinstance(node, Sum):
            total += len(node.weights)
        elif isinstance(node, Bernoulli):
            total += 1
        elif isinstance(node, Categorical):
            total += len(node.probs)
        elif isinstance(node, Gaussian):
            total += 2
    return total


# -- the flat form: a structure as arrays in topological order ----------------------------------------------------

#: node kinds of the flat form (exact classes; a subclass is checked node by node)
INDICATOR, BERNOULLI, CATEGORICAL, GAUSSIAN, SUM, PRODUCT = range(6)
_KIND_OF: dict[type, int] = {Indicator: INDICATOR, Bernoulli: BERNOULLI, Categorical: CATEGORICAL,
                             Gaussian: GAUSSIAN, Sum: SUM, Product: PRODUCT}
_CLASSES = (Indicator, Bernoulli, Categorical, Gaussian, Sum, Product)


class FlatStructure:
    """A structure as numpy arrays, nodes numbered in topological order (the order of :func:`topological_order`,
    root last): ``kind`` ``(n,)``, children as CSR (``ptr`` ``(n + 1,)``, ``child`` ``(E,)``), ``var`` and
    ``value`` (indicators) per node (-1 where absent), sum weights per edge (``weights`` ``(E,)``, 0 under products;
    ``weight_ptr`` delimits each sum's own weights, which a malformed sum may have in another number), Bernoulli
    ``p``, Gaussian ``mean`` and ``std`` per node, categorical ``probs`` (one array per categorical leaf, in order),
    ``names``, and the ``nodes`` themselves when built from nodes (None when read from a file).

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
        node, a cycle, a child that is not a node, a subclass): :func:`topological_order` and the node-by-node
        checks then describe the problem."""
        if not isinstance(root, Node):
            return None
        get_children = attrgetter("children")
        # breadth-first discovery, numbering nodes as found level by level; the order comes after
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
        del seen
        n = len(nodes)
        count = np.fromiter(map(len, kids), np.int64, n)
        # children numbered through the nodes' identities, sorted once
        identity = np.fromiter(map(id, nodes), np.int64, n)
        sorter = np.argsort(identity)
        child_identity = np.fromiter(map(id, chain.from_iterable(kids)), np.int64, int(count.sum()))
        child = sorter[np.searchsorted(identity[sorter], child_identity)]
        del kids, identity, child_identity, sorter
        ptr = np.zeros(n + 1, np.int64)
        np.cumsum(count, out=ptr[1:])
        order = _tree_postorder(ptr, child, bounds)
        if order is None:
            order = _postorder(ptr, child, 0)
        if order is None:
            return None
        ptr, child = _permute(ptr, child, order)
        nodes = list(map(nodes.__getitem__, order.tolist()))
        kind = np.fromiter(map(_KIND_OF.__getitem__, map(type, nodes)), np.int8, n)

        def pick(code: int) -> list[Node]:
            return list(compress(nodes, (kind == code).tolist()))

        var = np.full(n, -1, np.int64)
        leaves = kind < SUM
        var[leaves] = np.fromiter(map(attrgetter("var"), compress(nodes, leaves.tolist())), np.int64,
                                  int(leaves.sum()))
        value = np.full(n, -1, np.int64)
        value[kind == INDICATOR] = np.fromiter(map(attrgetter("value"), pick(INDICATOR)), np.int64)
        sums = kind == SUM
        weight_list = list(map(attrgetter("weights"), pick(SUM)))
        weight_count = np.zeros(n, np.int64)
        weight_count[sums] = np.fromiter(map(len, weight_list), np.int64, len(weight_list))
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
        return cls(kind, ptr, child, var, value, own, weight_ptr, p, mean, std, probs, names, nodes)

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

    def problems(self) -> np.ndarray:
        """Indices of nodes that may break a rule of :func:`validate`, in order (a superset: every node that does
        is among them; each is confirmed node by node), and the scope of every node as ``(sid, bits)``."""
        kind, n = self.kind, len(self)
        bad = np.zeros(n, bool)
        leaves = kind < SUM
        inner = ~leaves
        bad |= inner & (self.count == 0)
        # leaf parameters
        p = self.p
        bad |= (kind == BERNOULLI) & ~((p > 0) & (p < 1))
        bad |= (kind == GAUSSIAN) & ~(np.isfinite(self.mean) & np.isfinite(self.std) & (self.std > 0))
        if self.probs:
            lengths = np.fromiter(map(len, self.probs), np.int64, len(self.probs))
            flat = np.concatenate(self.probs)
            starts = np.concatenate([[0], np.cumsum(lengths)[:-1]])
            ok = lengths >= 1
            with np.errstate(invalid="ignore"):
                positive = np.logical_and.reduceat(np.isfinite(flat) & (flat > 0), starts[ok])
                totals = np.add.reduceat(np.where(np.isfinite(flat), flat, np.inf), starts[ok])
            fine = np.zeros(len(lengths), bool)
            fine[ok] = positive & (np.abs(totals - 1.0) <= 0.5e-6 * np.maximum(1, lengths[ok]))
            bad[np.flatnonzero(kind == CATEGORICAL)[~fine]] = True
        # a variable has discrete and continuous leaves: every leaf unlike the first leaf of its variable
        leaf_index = np.flatnonzero(leaves)
        if len(leaf_index):
            leaf_var = self.var[leaf_index]
            continuous = kind[leaf_index] == GAUSSIAN
            first = np.full(int(leaf_var.max()) + 1, -1, np.int64)
            first[leaf_var[::-1]] = leaf_index[::-1]
            bad[leaf_index[continuous != (kind[first[leaf_var]] == GAUSSIAN)]] = True
        # sum weights
        sums = np.flatnonzero(kind == SUM)
        own = np.diff(self.weight_ptr)
        bad[sums[own[sums] != self.count[sums]]] = True
        nonempty = sums[own[sums] > 0]
        if len(nonempty):
            w = self.own_weights
            starts = self.weight_ptr[nonempty]
            with np.errstate(invalid="ignore"):
                finite = np.logical_and.reduceat(np.isfinite(w), starts)
                negative = np.logical_or.reduceat(w < 0, starts)
                positive = np.logical_or.reduceat(w > 0, starts)
            bad[nonempty[~finite | negative | ~positive]] = True
        bad[sums[own[sums] == 0]] = True
        bad |= self._scope_problems()
        return np.flatnonzero(bad)

    def _scope_problems(self) -> np.ndarray:
        """Incomplete sums and non-decomposable products, given the scopes of their children (exact for every node
        whose descendants are valid). Scopes are canonical ids: a variable for a one-variable scope, else ``D`` +
        the row of a bitset ``(scopes, ceil(D / 64))`` of uint64, shared by every node of the same scope."""
        kind, n = self.kind, len(self)
        bad = np.zeros(n, bool)
        leaves = kind < SUM
        num_vars = int(self.var.max()) + 1 if leaves.any() else 1
        words = (num_vars + 63) // 64
        sid = np.where(leaves, self.var, -1)
        size = np.zeros(n, np.int64)
        size[leaves] = 1
        table = np.zeros((16, words), np.uint64)  # the bitsets of multi-variable scopes, rows 0 .. used - 1
        used = 0
        canonical: dict[bytes, int] = {}
        level = self.levels(leaves | (self.count == 0))
        inner = np.flatnonzero(~leaves & (self.count > 0))
        by_level = inner[np.argsort(level[inner], kind="stable")]
        bounds = np.searchsorted(level[by_level], np.arange(1, int(level.max(initial=0)) + 2))
        bit = np.left_shift(np.uint64(1), (np.arange(64, dtype=np.uint64)))
        for lo, hi in zip(bounds[:-1], bounds[1:]):
            nodes = by_level[lo:hi]
            if not len(nodes):
                continue
            sums = nodes[kind[nodes] == SUM]
            if len(sums):
                edges, owner = _edges_of(self.ptr, sums)
                first = sid[self.child[self.ptr[sums]]]
                differ = sid[self.child[edges]] != np.repeat(first, self.count[sums])
                bad[sums[np.bincount(owner, differ, minlength=len(sums)) > 0]] = True
                sid[sums] = first
                size[sums] = size[self.child[self.ptr[sums]]]
            products = nodes[kind[nodes] == PRODUCT]
            if not len(products):
                continue
            edges, owner = _edges_of(self.ptr, products)
            children = self.child[edges]
            child_sid = sid[children]
            expected = np.bincount(owner, size[children], minlength=len(products)).astype(np.int64)
            bits = np.zeros((len(products), words), np.uint64)
            single = (child_sid >= 0) & (child_sid < num_vars)  # (-1: a node without children, itself invalid)
            v = child_sid[single]
            np.bitwise_or.at(bits, (owner[single], v >> 6), bit[v & 63])
            composite = np.flatnonzero(child_sid >= num_vars)
            if len(composite):
                step = max(1, (1 << 22) // words)
                for start in range(0, len(composite), step):
                    part = composite[start: start + step]
                    np.bitwise_or.at(bits, owner[part], table[child_sid[part] - num_vars])
            actual = np.bitwise_count(bits).sum(axis=1, dtype=np.int64)
            bad[products[actual != expected]] = True
            size[products] = actual
            ids = np.empty(len(products), np.int64)
            for row, (values, pop) in enumerate(zip(bits, actual.tolist())):
                if pop == 1:
                    word = int(np.flatnonzero(values)[0])
                    ids[row] = word * 64 + int(values[word]).bit_length() - 1
                    continue
                key = values.tobytes()
                found = canonical.get(key)
                if found is None:
                    found = canonical[key] = num_vars + used
                    if used == len(table):
                        table = np.concatenate([table, np.zeros_like(table)])
                    table[used] = values
                    used += 1
                ids[row] = found
            sid[products] = ids
        self._sid, self._rows, self._num_vars = sid, table[:used], num_vars
        return bad

    def scope_of(self, index: int) -> frozenset[int]:
        """The scope of node ``index`` as :meth:`problems` computed it."""
        s = int(self._sid[index])
        if s < self._num_vars:
            return frozenset((s,))
        row = self._rows[s - self._num_vars]
        return frozenset(np.flatnonzero(np.unpackbits(row.view(np.uint8), bitorder="little")).tolist())


def _edges_of(ptr: np.ndarray, nodes: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The edge indices of ``nodes`` (CSR ``ptr``) in order, and for each the position of its node in ``nodes``."""
    lo, count = ptr[nodes], ptr[nodes + 1] - ptr[nodes]
    total = int(count.sum())
    owner = np.repeat(np.arange(len(nodes)), count)
    starts = np.cumsum(count) - count
    return lo[owner] + np.arange(total) - starts[owner], owner


def _edge_weights(kind: np.ndarray, ptr: np.ndarray, own: np.ndarray, weight_ptr: np.ndarray) -> np.ndarray:
    """Sum weights per edge (0 under products); when some sum has as many weights as children."""
    weights = np.zeros(int(ptr[-1]))
    sums = np.flatnonzero(kind == SUM)
    count = ptr[sums + 1] - ptr[sums]
    fits = (weight_ptr[sums + 1] - weight_ptr[sums]) == count
    if fits.all():
        edges, _ = _edges_of(ptr, sums)
        weights[edges] = own
    return weights


def _permute(ptr: np.ndarray, child: np.ndarray, order: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """CSR children renumbered so that node ``order[i]`` becomes node ``i``."""
    rank = np.empty(len(order), np.int64)
    rank[order] = np.arange(len(order))
    edges, _ = _edges_of(ptr, order)
    count = ptr[order + 1] - ptr[order]
    new_ptr = np.zeros(len(order) + 1, np.int64)
    np.cumsum(count, out=new_ptr[1:])
    return new_ptr, rank[child[edges]]


def _tree_postorder(ptr: np.ndarray, child: np.ndarray, bounds: list[int]) -> np.ndarray | None:
    """:func:`_postorder` from node 0 of a tree numbered breadth-first (level ``k``: nodes ``bounds[k]`` to
    ``bounds[k + 1]``), with numpy one level at a time: subtree sizes bottom-up, then each node's first position
    top-down; None when some node has two parents (a DAG: the first visit decides, which needs the walk)."""
    n = len(ptr) - 1
    parents = np.bincount(child, minlength=n)
    if parents[0] or (parents > 1).any():  # the root has a parent: a cycle
        return None
    count = np.diff(ptr)
    parent = np.repeat(np.arange(n), count)
    size = np.ones(n, np.int64)
    for lo, hi in zip(bounds[-2::-1], bounds[:0:-1]):
        e_lo, e_hi = ptr[lo], ptr[hi]
        if e_lo < e_hi:
            size[lo:hi] += np.bincount(parent[e_lo:e_hi] - lo, size[child[e_lo:e_hi]], minlength=hi - lo
                                       ).astype(np.int64)
    start = np.zeros(n, np.int64)
    for lo, hi in zip(bounds[:-1], bounds[1:]):
        e_lo, e_hi = ptr[lo], ptr[hi]
        if e_lo == e_hi:
            continue
        c, p = child[e_lo:e_hi], parent[e_lo:e_hi]
        before = np.cumsum(size[c]) - size[c]
        start[c] = start[p] + before - before[ptr[p] - e_lo]
    order = np.empty(n, np.int64)
    order[start + size - 1] = np.arange(n)
    return order


def _postorder(ptr: np.ndarray, child: np.ndarray, root: int) -> np.ndarray | None:
    """Depth-first post-order from ``root`` (children in order, each node at its first visit), as
    :func:`topological_order` visits nodes; None when there is a cycle."""
    n = len(ptr) - 1
    count = np.diff(ptr)
    # nodes whose children are all leaves with no other parent: their block of the order is known at once
    single_leaf = ((count == 0) & (np.bincount(child, minlength=n) == 1))[child]
    parent = np.repeat(np.arange(n), count)
    simple = (count > 0) & (np.bincount(parent, ~single_leaf, minlength=n) == 0)
    simple_list = simple.tolist()
    starts, targets = ptr.tolist(), child.tolist()
    state = bytearray(n)  # 0 new, 1 on the stack, 2 done
    order: list[int] = []
    append, extend = order.append, order.extend
    if simple_list[root]:
        return np.array(targets[starts[root]: starts[root + 1]] + [root], np.int64)
    stack, position = [root], [starts[root]]
    state[root] = 1
    while stack:
        node = stack[-1]
        k, end = position[-1], starts[node + 1]
        while k < end:
            c = targets[k]
            k += 1
            s = state[c]
            if s == 0:
                if starts[c] == starts[c + 1]:  # a leaf: done at once
                    state[c] = 2
                    append(c)
                    continue
                if simple_list[c]:  # its children are its own leaves: done at once
                    extend(targets[starts[c]: starts[c + 1]])
                    state[c] = 2
                    append(c)
                    continue
                break
            if s == 1:
                return None
        else:
            stack.pop()
            position.pop()
            state[node] = 2
            append(node)
            continue
        position[-1] = k
        state[c] = 1
        stack.append(c)
        position.append(starts[c])
    return np.array(order, np.int64)


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
    candidates = flat.problems()
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
        _check_node(root, nodes[index], lambda node: flat.scope_of(position[id(node)]), dict(kinds))
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
