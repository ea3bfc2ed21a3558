"""Structure-to-structure transforms: the paper's shallow mixture, overparametrization, collapse, induced trees.

All transforms are symbolic (no torch) and keep the function the network computes, except where an option asks for
new initial weights (``overparametrize(..., init=value)``). Leaves are shared with the input structure: nodes are
never mutated, so sharing them is safe.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Sequence
from typing import cast

import numpy as np

from overspn.errors import ConfigurationError, StructureError
from overspn.symbolic.structure import (
    Bernoulli,
    Categorical,
    Gaussian,
    Indicator,
    Leaf,
    Node,
    Product,
    Sum,
    describe,
    scopes,
    topological_order,
    validate,
)

__all__ = ["mixture", "overparametrize", "phi", "collapse", "count_induced_trees", "induced_trees", "MIXTURE_LEAVES"]

MIXTURE_LEAVES = ("indicator", "bernoulli", "categorical", "gaussian")


def mixture(num_vars: int, num_components: int, leaf: str = "indicator", seed: int | None = None, *,
            root_weight: float = 1e-4, leaf_weight: float = 0.5, perturbation: float = 0.0,
            cardinality: int = 2) -> Sum:
    """The paper's shallow SPN: a root sum over ``num_components`` products, each over one leaf per variable.

    ``leaf``: "indicator" (a sum over the indicators [x=0], [x=1] with unnormalised, learnable weights
    ``leaf_weight``, as in the paper), "bernoulli" (p = 0.5), "categorical" (uniform over ``cardinality`` states) or
    "gaussian" (mean 0, std 1). Root weights start at ``root_weight``.

    Started like that, all components are identical and gradient ascent keeps them identical. ``perturbation``
    breaks the symmetry: each initial leaf weight or probability is multiplied by ``1 + perturbation * u`` with
    ``u ~ Uniform(-1, 1)`` (probabilities renormalised); Gaussian means become ``perturbation * z``, ``z ~ N(0, 1)``.
    The draws come from ``numpy.random.default_rng(seed)``.
    """
    if leaf not in MIXTURE_LEAVES:
        raise ConfigurationError(f"leaf must be one of {MIXTURE_LEAVES}, got {leaf!r}")
    for label, count in (("num_vars", num_vars), ("num_components", num_components)):
        if isinstance(count, bool) or not isinstance(count, (int, np.integer)) or count < 1:
            raise ConfigurationError(f"{label} must be an int >= 1, got {count!r}")
    if not (0 <= perturbation < 1 or leaf == "gaussian") or not math.isfinite(perturbation):
        raise ConfigurationError(f"perturbation must lie in [0, 1), got {perturbation!r}")
    rng = np.random.default_rng(seed)

    def jitter(size: int) -> np.ndarray:
        return 1.0 + perturbation * rng.uniform(-1.0, 1.0, size)

    components = []
    for k in range(num_components):
        leaves: list[Node] = []
        for var in range(num_vars):
            if leaf == "indicator":
                weights = leaf_weight * jitter(2)
                leaves.append(Sum([Indicator(var, 0), Indicator(var, 1)], weights))
            elif leaf == "bernoulli":
                probs = jitter(2)
                leaves.append(Bernoulli(var, probs[1] / probs.sum()))
            elif leaf == "categorical":
                probs = jitter(cardinality)
                leaves.append(Categorical(var, probs / probs.sum()))
            else:
                leaves.append(Gaussian(var, perturbation * rng.standard_normal(), 1.0))
        components.append(Product(leaves, name=f"component {k}"))
    return Sum(components, np.full(num_components, root_weight), name="root")


def phi(branching: Sequence[int], component: int, layer: int) -> int:
    """The paper's indexing function: which weight of sum layer ``layer`` lies on the path of ``component``.

    Layer ``l`` has ``prod(branching[:l+1])`` weights in total (numbered across its sum nodes, left to right), and
    component ``k`` has collapsed weight ``w_k = prod_l w[l][phi(k, l)]``.
    """
    branching = _check_branching(branching)
    total = math.prod(branching)
    if not 0 <= component < total:
        raise ConfigurationError(f"component must lie in [0, {total}), got {component}")
    if not 0 <= layer < len(branching):
        raise ConfigurationError(f"layer must lie in [0, {len(branching)}), got {layer}")
    return component // math.prod(branching[layer + 1:])


def _check_branching(branching: Sequence[int]) -> tuple[int, ...]:
    result = tuple(int(b) for b in branching)
    if not result or any(b < 1 for b in result):
        raise ConfigurationError(f"branching must be a non-empty sequence of positive ints, got {tuple(branching)}")
    return result


def overparametrize(root: Node, branching: Sequence[int] = (2, 2, 2), init: float | None = None) -> Sum:
    """Replace the root sum over K children by ``len(branching)`` consecutive sum layers (product of branching = K).

    Component ``k`` ends up under the path ``phi(branching, k, 0), ..., phi(branching, k, L-1)``. With ``init=None``
    the new weights factor the old ones exactly: the edge into a sub-tree carries the total weight of the sub-tree
    divided by that of its parent (the top layer carries the totals), so the product along each path is ``w_k`` and
    the function is unchanged. With a number, every new weight starts at that value (the paper uses 1e-4).
    """
    if not isinstance(root, Sum):
        raise StructureError(f"overparametrize needs a sum node at the root, got {describe(root)}")
    branching = _check_branching(branching)
    components, weights = root.children, np.asarray(root.weights, dtype=np.float64)
    if math.prod(branching) != len(components):
        raise ConfigurationError(
            f"the product of branching {branching} is {math.prod(branching)}, but the root has {len(components)} "
            "children")
    if init is not None and not (math.isfinite(init) and init > 0):
        raise ConfigurationError(f"init must be a finite number > 0 (a sum with all weights zero is invalid), got "
                                 f"{init!r}")

    def build(layer: int, first: int, count: int) -> tuple[Node, float]:
        """The sub-tree over components [first, first + count) at ``layer``; returns it with its total weight."""
        if layer == len(branching):
            return components[first], float(weights[first])
        width = count // branching[layer]
        subtrees = [build(layer + 1, first + i * width, width) for i in range(branching[layer])]
        total = sum(mass for _, mass in subtrees)
        if init is not None:
            edge = [init] * len(subtrees)
        elif layer == 0:
            edge = [mass for _, mass in subtrees]
        else:
            edge = [mass / total if total > 0 else 1.0 for _, mass in subtrees]
        name = root.name if layer == 0 else None
        return Sum([node for node, _ in subtrees], edge, name=name), total

    new_root, _ = build(0, 0, len(components))
    assert isinstance(new_root, Sum), "branching is not empty, so the top layer is a sum"
    return new_root


def collapse(root: Node) -> Node:
    """Merge every chain of consecutive sum nodes into one sum: a grandchild's weight is the product of the weights
    along its path, and children reached along several paths get the sum of those products. The function is
    unchanged; sharing of other nodes is preserved.
    """
    collapsed: dict[Node, Node] = {}
    for node in topological_order(root):
        if isinstance(node, Leaf):
            collapsed[node] = node
        elif isinstance(node, Product):
            collapsed[node] = Product([collapsed[c] for c in node.children], name=node.name)
        else:
            merged: dict[Node, float] = {}
            for child, weight in zip(node.children, cast(Sum, node).weights):
                new_child = collapsed[child]
                if isinstance(new_child, Sum):
                    for grandchild, inner in zip(new_child.children, new_child.weights):
                        merged[grandchild] = merged.get(grandchild, 0.0) + float(weight) * float(inner)
                else:
                    merged[new_child] = merged.get(new_child, 0.0) + float(weight)
            collapsed[node] = Sum(list(merged), list(merged.values()), name=node.name)
    return collapsed[root]


def _terminals(root: Node, univariate_leaves: bool) -> tuple[list[Node], set[Node]]:
    """Topological order and the nodes an induced tree stops at (leaves, and univariate sub-networks if asked)."""
    order = validate(root)
    scope = scopes(root, order)
    terminal = {n for n in order if isinstance(n, Leaf) or (univariate_leaves and len(scope[n]) == 1)}
    parents: dict[Node, Node] = {}
    for node in order:
        if node in terminal:
            continue
        for child in node.children:
            if child in terminal:
                continue
            if child in parents:
                raise StructureError(
                    f"the SPN is not a tree: {describe(child)} has more than one parent ({describe(parents[child])} "
                    f"and {describe(node)})")
            parents[child] = node
    return order, terminal


def count_induced_trees(root: Node, univariate_leaves: bool = True) -> int:
    """Number of induced trees of a tree-structured SPN (sums add their children's counts, products multiply)."""
    order, terminal = _terminals(root, univariate_leaves)
    count: dict[Node, int] = {}
    for node in order:
        if node in terminal:
            count[node] = 1
        elif isinstance(node, Sum):
            count[node] = sum(count[c] for c in node.children)
        else:
            count[node] = math.prod(count[c] for c in node.children)
    return count[root]


def induced_trees(root: Node, limit: int = 100_000, univariate_leaves: bool = True) -> Sum:
    """The mixture over induced trees of a tree-structured SPN, as a shallow SPN.

    Returns a sum over one product per induced tree; the product's children are the tree's terminal nodes (leaves,
    or with ``univariate_leaves`` every sub-network over one variable, e.g. the paper's indicator sums), and its
    weight is the product of the sum weights on the tree. Raises StructureError when the SPN is not a tree and
    ConfigurationError when there would be more than ``limit`` trees.
    """
    total = count_induced_trees(root, univariate_leaves)
    if total > limit:
        raise ConfigurationError(f"the SPN has {total} induced trees, more than limit={limit}")
    order, terminal = _terminals(root, univariate_leaves)
    trees: dict[Node, list[tuple[float, tuple[Node, ...]]]] = {}
    for node in order:
        if node in terminal:
            trees[node] = [(1.0, (node,))]
        elif isinstance(node, Sum):
            trees[node] = [(float(w) * weight, leaves) for child, w in zip(node.children, node.weights)
                           for weight, leaves in trees[child]]
        else:
            trees[node] = [
                (math.prod(weight for weight, _ in combination),
                 tuple(leaf for _, leaves in combination for leaf in leaves))
                for combination in itertools.product(*(trees[c] for c in node.children))
            ]
    return Sum([Product(leaves) for _, leaves in trees[root]], [weight for weight, _ in trees[root]])
