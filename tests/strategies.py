"""Random valid SPN structures (hypothesis strategies and a seeded numpy generator) and brute-force ground truth.

Public API (import it from other test modules with ``from strategies import ...``):

* ``structures(**options)`` -- a hypothesis strategy of :class:`RandomStructure`.
* ``selective_structures(**options)`` -- a strategy of selective (deterministic) structures, where at most one
  child of every sum is non-zero for any complete input, so that max-product is the exact MPE.
* ``random_structure(rng, **options)`` and ``random_selective_structure(rng, **options)`` -- the same generators
  driven by a ``numpy.random.Generator`` (for seeded tests and benchmarks outside hypothesis).
* ``all_states(cardinalities)`` -- every complete input, ``(prod(cardinalities), D)`` float64.
* ``reference_log_value(root, x, mode, normalise)`` -- log f(x) of a structure computed node by node in float64
  Python, independent of the compiled engine (NaN = marginalised; ``mode="max"`` is max-product; ``normalise``
  divides every sum's weights by their total, as the "softmax" parametrisation does).

Options of the general generator (all keyword, all optional):

* ``min_vars``, ``max_vars`` (1..8 by default): the root's scope is ``{0, .., num_vars - 1}``;
* ``max_cardinality`` (3): every variable gets 2..max_cardinality states; binary variables may carry Bernoulli
  leaves, all may carry indicators and categorical leaves;
* ``max_depth`` (3): levels of sums/products above the per-variable units;
* ``max_sum_children`` (3);
* ``leaf_kinds``: a subset of ``LEAF_KINDS`` -- "indicator", "bernoulli", "categorical", "indicator_sum" (a sum over
  indicators of one variable, possibly a subset of its states and with repeated indicators) and "leaf_sum" (a sum
  over different leaf kinds of one variable, compiled as an ordinary sum layer);
* ``share`` (True): reuse an already built node with the same scope, so sub-networks are shared (a DAG).

Products partition their scope at random into parts that are built recursively, so products mix leaves and inner
nodes. Sum weights are positive, unnormalised, in [0.1, 2]. Every node gets a unique ``name``.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol

import numpy as np
from hypothesis import strategies as st

import overspn as osp

__all__ = [
    "LEAF_KINDS",
    "RandomStructure",
    "structures",
    "selective_structures",
    "random_structure",
    "random_selective_structure",
    "all_states",
    "reference_log_value",
]

LEAF_KINDS = ("indicator", "bernoulli", "categorical", "indicator_sum", "leaf_sum")


@dataclass(frozen=True)
class RandomStructure:
    """A generated structure: its root and the number of states of every variable 0..num_vars-1.

    ``cardinalities`` are those the compiled model infers (the largest state any leaf of the variable names), so
    enumerating ``itertools.product(*(range(c) for c in cardinalities))`` covers exactly the model's valid inputs.
    """

    root: osp.Node
    cardinalities: tuple[int, ...]

    @property
    def num_vars(self) -> int:
        return len(self.cardinalities)

    @property
    def num_states(self) -> int:
        return int(np.prod(self.cardinalities))


class _Chooser(Protocol):
    def integer(self, low: int, high: int) -> int: ...  # inclusive bounds
    def uniform(self, low: float, high: float) -> float: ...
    def flag(self, probability: float) -> bool: ...
    def permutation(self, items: Sequence[int]) -> list[int]: ...


class _HypothesisChooser:
    def __init__(self, draw: st.DrawFn) -> None:
        self.draw = draw

    def integer(self, low: int, high: int) -> int:
        return self.draw(st.integers(low, high))

    def uniform(self, low: float, high: float) -> float:
        return self.draw(st.floats(low, high, allow_nan=False, allow_infinity=False))

    def flag(self, probability: float) -> bool:
        return self.draw(st.integers(0, 999)) < probability * 1000

    def permutation(self, items: Sequence[int]) -> list[int]:
        return list(self.draw(st.permutations(list(items))))


class _NumpyChooser:
    def __init__(self, rng: np.random.Generator) -> None:
        self.rng = rng

    def integer(self, low: int, high: int) -> int:
        return int(self.rng.integers(low, high + 1))

    def uniform(self, low: float, high: float) -> float:
        return float(self.rng.uniform(low, high))

    def flag(self, probability: float) -> bool:
        return bool(self.rng.random() < probability)

    def permutation(self, items: Sequence[int]) -> list[int]:
        return [int(i) for i in self.rng.permutation(list(items))]


class _Builder:
    def __init__(self, choose: _Chooser, cardinalities: Sequence[int], max_depth: int, max_sum_children: int,
                 leaf_kinds: Sequence[str], share: bool) -> None:
        unknown = set(leaf_kinds) - set(LEAF_KINDS)
        if unknown or not leaf_kinds:
            raise ValueError(f"leaf_kinds must be a non-empty subset of {LEAF_KINDS}, got {leaf_kinds}")
        self.choose = choose
        self.cardinalities = list(cardinalities)
        self.max_depth = max_depth
        self.max_sum_children = max_sum_children
        self.leaf_kinds = list(leaf_kinds)
        self.share = share
        self.built: dict[frozenset[int], list[osp.Node]] = {}
        self.count = 0

    def name(self, kind: str) -> str:
        self.count += 1
        return f"{kind}{self.count}"

    def weights(self, count: int) -> list[float]:
        return [self.choose.uniform(0.1, 2.0) for _ in range(count)]

    def probs(self, count: int) -> list[float]:
        raw = np.array([self.choose.uniform(0.1, 1.0) for _ in range(count)])
        return (raw / raw.sum()).tolist()

    def leaf(self, var: int, kinds: Sequence[str]) -> osp.Node:
        card = self.cardinalities[var]
        allowed = [k for k in kinds if k != "bernoulli" or card == 2]
        kind = allowed[self.choose.integer(0, len(allowed) - 1)]
        if kind == "indicator":
            return osp.Indicator(var, self.choose.integer(0, card - 1), name=self.name("indicator"))
        if kind == "bernoulli":
            return osp.Bernoulli(var, self.choose.uniform(0.05, 0.95), name=self.name("bernoulli"))
        if kind == "categorical":
            return osp.Categorical(var, self.probs(card), name=self.name("categorical"))
        if kind == "indicator_sum":
            # all states, or a random (possibly repeating) selection of them
            if self.choose.flag(0.7):
                values = list(range(card))
            else:
                values = [self.choose.integer(0, card - 1) for _ in range(self.choose.integer(1, card + 1))]
            children = [osp.Indicator(var, v, name=self.name("indicator")) for v in values]
            return osp.Sum(children, self.weights(len(children)), name=self.name("indicator_sum"))
        # leaf_sum: a sum over leaves of other kinds on the same variable
        inner_kinds = [k for k in LEAF_KINDS if k != "leaf_sum"]
        children = [self.leaf(var, inner_kinds) for _ in range(self.choose.integer(1, 3))]
        return osp.Sum(children, self.weights(len(children)), name=self.name("leaf_sum"))

    def node(self, scope: list[int], depth: int) -> osp.Node:
        key = frozenset(scope)
        previous = self.built.get(key, [])
        if self.share and previous and self.choose.flag(0.3):
            return previous[self.choose.integer(0, len(previous) - 1)]
        if len(scope) == 1:
            node = self.leaf(scope[0], self.leaf_kinds)
            if depth < self.max_depth and self.choose.flag(0.15):
                node = osp.Product([node], name=self.name("product"))
        elif depth >= self.max_depth:
            node = osp.Product([self.leaf(v, self.leaf_kinds) for v in scope], name=self.name("product"))
        elif self.choose.flag(0.5):
            count = self.choose.integer(1, self.max_sum_children)
            children = [self.node(scope, depth + 1) for _ in range(count)]
            node = osp.Sum(children, self.weights(count), name=self.name("sum"))
        else:
            order = self.choose.permutation(scope)
            parts = self.choose.integer(2, len(order))
            cuts = sorted(set(self.choose.integer(1, len(order) - 1) for _ in range(parts - 1)))
            pieces = [order[a:b] for a, b in zip([0, *cuts], [*cuts, len(order)])]
            node = osp.Product([self.node(sorted(p), depth + 1) for p in pieces], name=self.name("product"))
        self.built.setdefault(key, []).append(node)
        return node


def _inferred_cardinalities(root: osp.Node, num_vars: int) -> tuple[int, ...]:
    cards = [0] * num_vars
    for node in osp.topological_order(root):
        if isinstance(node, osp.Leaf):
            cards[node.var] = max(cards[node.var], node.cardinality)  # type: ignore[attr-defined]
    return tuple(cards)


def _generate(choose: _Chooser, min_vars: int = 1, max_vars: int = 8, max_cardinality: int = 3, max_depth: int = 3,
              max_sum_children: int = 3, leaf_kinds: Sequence[str] = LEAF_KINDS, share: bool = True
              ) -> RandomStructure:
    num_vars = choose.integer(min_vars, max_vars)
    cardinalities = [choose.integer(2, max_cardinality) for _ in range(num_vars)]
    builder = _Builder(choose, cardinalities, max_depth, max_sum_children, leaf_kinds, share)
    root = builder.node(list(range(num_vars)), 0)
    if isinstance(root, osp.Leaf):  # keep the root an inner node, so every model has at least one layer
        root = osp.Sum([root], [builder.choose.uniform(0.5, 2.0)], name=builder.name("sum"))
    return RandomStructure(root, _inferred_cardinalities(root, num_vars))


def _generate_selective(choose: _Chooser, min_vars: int = 1, max_vars: int = 6, max_cardinality: int = 3,
                        max_depth: int = 3) -> RandomStructure:
    """Sums split on one variable: child c is [x_v = c] times a sub-network over the rest of the scope."""
    num_vars = choose.integer(min_vars, max_vars)
    cardinalities = [choose.integer(2, max_cardinality) for _ in range(num_vars)]
    builder = _Builder(choose, cardinalities, max_depth, 3, ("bernoulli", "categorical"), share=False)

    def node(scope: list[int], depth: int) -> osp.Node:
        if len(scope) == 1 and choose.flag(0.5):
            return builder.leaf(scope[0], ("bernoulli", "categorical"))
        if depth >= max_depth or (len(scope) > 1 and choose.flag(0.3)):
            order = choose.permutation(scope)
            cut = choose.integer(1, len(order)) if len(order) > 1 else 1
            parts = [p for p in (order[:cut], order[cut:]) if p]
            if len(parts) == 1:
                return osp.Product([builder.leaf(v, ("bernoulli", "categorical")) for v in parts[0]],
                                   name=builder.name("product"))
            return osp.Product([node(sorted(p), depth + 1) for p in parts], name=builder.name("product"))
        split = scope[choose.integer(0, len(scope) - 1)]
        rest = [v for v in scope if v != split]
        states = [c for c in range(cardinalities[split]) if c == 0 or choose.flag(0.8)]
        children = []
        for state in states:
            indicator = osp.Indicator(split, state, name=builder.name("indicator"))
            children.append(osp.Product([indicator, node(rest, depth + 1)], name=builder.name("product"))
                            if rest else indicator)
        return osp.Sum(children, builder.weights(len(children)), name=builder.name("selective_sum"))

    root = node(list(range(num_vars)), 0)
    if isinstance(root, osp.Leaf):
        root = osp.Sum([root], [1.0], name=builder.name("sum"))
    return RandomStructure(root, _inferred_cardinalities(root, num_vars))


@st.composite
def structures(draw: st.DrawFn, **options: object) -> RandomStructure:
    """Hypothesis strategy of random valid structures; see the module docstring for ``options``."""
    return _generate(_HypothesisChooser(draw), **options)  # type: ignore[arg-type]


@st.composite
def selective_structures(draw: st.DrawFn, **options: object) -> RandomStructure:
    """Hypothesis strategy of selective structures (options ``min_vars``, ``max_vars``, ``max_cardinality``,
    ``max_depth``)."""
    return _generate_selective(_HypothesisChooser(draw), **options)  # type: ignore[arg-type]


def random_structure(rng: np.random.Generator, **options: object) -> RandomStructure:
    """A random valid structure drawn with ``rng``; same options as :func:`structures`."""
    return _generate(_NumpyChooser(rng), **options)  # type: ignore[arg-type]


def random_selective_structure(rng: np.random.Generator, **options: object) -> RandomStructure:
    """A random selective structure drawn with ``rng``; same options as :func:`selective_structures`."""
    return _generate_selective(_NumpyChooser(rng), **options)  # type: ignore[arg-type]


def all_states(cardinalities: Sequence[int]) -> np.ndarray:
    """Every complete assignment of variables with the given numbers of states, one per row (float64)."""
    return np.array(list(itertools.product(*(range(c) for c in cardinalities))), dtype=np.float64).reshape(
        -1, len(cardinalities))


def _log_sum_exp(values: list[float]) -> float:
    top = max(values)
    if top == -math.inf:
        return -math.inf
    return top + math.log(sum(math.exp(v - top) for v in values))


def _log(value: float) -> float:
    return math.log(value) if value > 0 else -math.inf


def reference_log_value(root: osp.Node, x: Sequence[float], mode: str = "sum", normalise: bool = False) -> float:
    """log f(x) by direct recursion over the symbolic structure (slow, float64, for ground truth only).

    ``x`` is one row; NaN entries are marginalised (``mode="sum"``) or maximised (``mode="max"``, max-product: sums
    become maxima and a missing leaf takes its largest value).
    """
    if mode not in ("sum", "max"):
        raise ValueError(f"mode must be 'sum' or 'max', got {mode!r}")
    values: dict[int, float] = {}
    for node in osp.topological_order(root):
        if isinstance(node, osp.Leaf):
            observed = x[node.var]
            missing = math.isnan(observed)
            if isinstance(node, osp.Indicator):
                value = 0.0 if missing or observed == node.value else -math.inf
            elif isinstance(node, osp.Bernoulli):
                if missing:
                    value = 0.0 if mode == "sum" else math.log(max(node.p, 1 - node.p))
                else:
                    value = _log(node.p if observed == 1 else 1 - node.p if observed == 0 else 0.0)
            elif isinstance(node, osp.Categorical):
                probs = node.probs
                if missing:
                    value = 0.0 if mode == "sum" else math.log(float(probs.max()))
                else:
                    value = _log(float(probs[int(observed)])) if int(observed) < len(probs) else -math.inf
            elif isinstance(node, osp.Gaussian):
                point = node.mean if missing else observed
                value = -0.5 * ((point - node.mean) / node.std) ** 2 - math.log(node.std) - 0.5 * math.log(2 * math.pi)
                if missing and mode == "sum":
                    value = 0.0
            else:
                raise TypeError(f"unknown leaf {node!r}")
        elif isinstance(node, osp.Product):
            value = sum(values[id(c)] for c in node.children)
        else:
            weights = np.asarray(node.weights, dtype=np.float64)  # type: ignore[attr-defined]
            if normalise:
                weights = weights / weights.sum()
            scores = [_log(float(w)) + values[id(c)] for w, c in zip(weights, node.children)]
            value = _log_sum_exp(scores) if mode == "sum" else max(scores)
        values[id(node)] = value
    return values[id(root)]
