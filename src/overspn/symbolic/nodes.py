"""The nodes of a symbolic SPN structure, and the walks over them: topological order, paths and scopes.

A structure is a rooted DAG of :class:`Node` objects; sub-networks may be shared. Nothing here touches torch: the
compiled tensor program that evaluates a structure lives in :mod:`overspn.engine.compiled`, and transforms in
:mod:`overspn.symbolic.transforms` are functions from structure to structure.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence

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
