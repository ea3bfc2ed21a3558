"""The steps that lay out a compiled program: which nodes are inputs, which products are tabular, how the other
inner nodes group into layers, and where every node's value lives.

All steps work with numpy over the flat form of the structure (no per-node Python); :class:`CompiledSPN` calls
them in order from its ``_build`` (:mod:`overspn.engine.compiled` describes the program they produce).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from overspn.engine.inputs import DiscreteInputs, GaussianInputs
from overspn.engine.layers import Gather, ProductLayer, SumLayer, TabularProductLayer
from overspn.engine.weights import SumWeights
from overspn.symbolic.csr import edges_of
from overspn.symbolic.flat import BERNOULLI, CATEGORICAL, GAUSSIAN, INDICATOR, PRODUCT, SUM, FlatStructure

__all__ = ["InputGroups", "Placement", "discrete_inputs", "gaussian_inputs", "inner_layers", "input_groups",
           "tabular_layer", "tabular_products"]


@dataclass(frozen=True)
class InputGroups:
    """The nodes evaluated as inputs, by kind (node indices), and every node's variable."""

    indicators: np.ndarray
    bernoulli: np.ndarray
    categorical: np.ndarray
    #: sums whose children are indicators of one variable: discrete inputs with a log-table of their own
    indicator_sums: np.ndarray
    gaussians: np.ndarray
    #: every node's variable; an indicator sum's is that of its children
    var_of: np.ndarray

    @property
    def discrete(self) -> np.ndarray:
        """The discrete inputs in the order of the rows of their log-table."""
        return np.concatenate([self.indicators, self.bernoulli, self.categorical, self.indicator_sums])

    def mask(self, size: int) -> np.ndarray:
        """``(size,)`` True at every input node."""
        inputs = np.zeros(size, bool)
        inputs[self.discrete] = True
        inputs[self.gaussians] = True
        return inputs


def _indicator_sums(flat: FlatStructure) -> np.ndarray:
    """``(n,)`` True at sums whose children are all indicators of one variable."""
    kind, ptr, child, parent, count = flat.kind, flat.ptr, flat.child, flat.parent, flat.count
    n = len(flat)
    child_var = flat.var[child]
    not_indicator = np.bincount(parent, kind[child] != INDICATOR, minlength=n) > 0
    nonempty = np.flatnonzero(count > 0)
    same_var = np.zeros(n, bool)
    if len(nonempty):
        low = np.minimum.reduceat(child_var, ptr[nonempty])
        high = np.maximum.reduceat(child_var, ptr[nonempty])
        same_var[nonempty] = low == high
    return (kind == SUM) & (count > 0) & ~not_indicator & same_var


def input_groups(flat: FlatStructure) -> InputGroups:
    kind = flat.kind
    indicator_sum = _indicator_sums(flat)
    var_of = flat.var.copy()
    var_of[indicator_sum] = flat.var[flat.child[flat.ptr[:-1][indicator_sum]]]
    return InputGroups(np.flatnonzero(kind == INDICATOR), np.flatnonzero(kind == BERNOULLI),
                       np.flatnonzero(kind == CATEGORICAL), np.flatnonzero(indicator_sum),
                       np.flatnonzero(kind == GAUSSIAN), var_of)


def discrete_inputs(flat: FlatStructure, groups: InputGroups, cardinality: int, parametrisation: str,
                    dtype: torch.dtype) -> DiscreteInputs | None:
    if not len(groups.discrete):
        return None
    edges, owner = edges_of(flat.ptr, groups.indicator_sums)
    return DiscreteInputs(
        cardinality, parametrisation, dtype, indicator_values=flat.value[groups.indicators],
        bernoulli_p=flat.p[groups.bernoulli], categorical_probs=flat.probs,
        sum_owner=owner, sum_values=flat.value[flat.child[edges]], sum_weights=flat.weights[edges],
        num_sums=len(groups.indicator_sums))


def gaussian_inputs(flat: FlatStructure, groups: InputGroups, dtype: torch.dtype) -> GaussianInputs | None:
    nodes = groups.gaussians
    return GaussianInputs(flat.mean[nodes], flat.std[nodes], flat.var[nodes], dtype) if len(nodes) else None


class Placement:
    """Where every node's value lives: the index of the output holding it and its column there (-1 until the node
    is placed), and the width of every output so far. Outputs are numbered in the order they are placed."""

    def __init__(self, size: int):
        self.layer_of = np.full(size, -1, np.int64)
        self.col_of = np.full(size, -1, np.int64)
        self.widths: list[int] = []

    def place(self, nodes: np.ndarray) -> int:
        """Make ``nodes`` the next output, in this order; returns its index."""
        output = len(self.widths)
        self.layer_of[nodes], self.col_of[nodes] = output, np.arange(len(nodes))
        self.widths.append(len(nodes))
        return output

    def position(self, node: int) -> tuple[int, int]:
        return int(self.layer_of[node]), int(self.col_of[node])

    def gather(self, flat: FlatStructure, nodes: np.ndarray) -> Gather:
        """The gather that reads the children of ``nodes`` (all placed) into an ``(N, len(nodes), arity)`` tensor."""
        edges, owner = edges_of(flat.ptr, nodes)
        children = flat.child[edges]
        source_layer = self.layer_of[children]
        sources = np.unique(source_layer).tolist()
        offset_of = np.zeros(len(self.widths), np.int64)
        offset = 0
        for source in sources:
            offset_of[source] = offset
            offset += self.widths[source]
        count = flat.count[nodes]
        arity = int(count.max())
        index = np.zeros((len(nodes), arity), dtype=np.int64)
        pad = np.ones((len(nodes), arity), dtype=bool)
        column = np.arange(len(edges)) - (np.cumsum(count) - count)[owner]
        index[owner, column] = offset_of[source_layer] + self.col_of[children]
        pad[owner, column] = False
        return Gather(sources, index, pad, offset, [self.widths[source] for source in sources])


def tabular_products(flat: FlatStructure, inner: np.ndarray, placement: Placement) -> np.ndarray:
    """The inner products whose children are all discrete inputs (output 0): evaluated as one matrix product."""
    candidates = inner & (flat.kind == PRODUCT)
    reads_other = np.bincount(flat.parent, placement.layer_of[flat.child] != 0, minlength=len(flat))
    return np.flatnonzero(candidates & (reads_other == 0))


def tabular_layer(flat: FlatStructure, nodes: np.ndarray, groups: InputGroups, placement: Placement,
                  num_vars: int, cardinality: int) -> TabularProductLayer:
    """The matrix-product layer of the products ``nodes`` (see :func:`tabular_products`), not yet placed."""
    edges, owner = edges_of(flat.ptr, nodes)
    children = flat.child[edges]
    generic = ProductLayer(placement.gather(flat, nodes))
    return TabularProductLayer(num_vars, cardinality, len(groups.discrete), placement.col_of[children],
                               groups.var_of[children], owner, len(nodes), generic)


def _layer_groups(flat: FlatStructure, nodes: np.ndarray, height: np.ndarray) -> list[np.ndarray]:
    """``nodes`` grouped by (height, type), products before sums of one height, nodes in order within a group."""
    kind = flat.kind
    is_sum = (kind[nodes] == SUM).astype(np.int64)
    nodes = nodes[np.lexsort((nodes, is_sum, height[nodes]))]
    key = height[nodes] * 2 + (kind[nodes] == SUM)
    bounds = np.flatnonzero(np.diff(key)) + 1
    return np.split(nodes, bounds) if len(nodes) else []


def inner_layers(flat: FlatStructure, nodes: np.ndarray, height: np.ndarray, placement: Placement,
                 parametrisation: str, dtype: torch.dtype) -> list[nn.Module]:
    """One sum or product layer per group of ``nodes`` (see :func:`_layer_groups`), each placed as built."""
    layers: list[nn.Module] = []
    for group in _layer_groups(flat, nodes, height):
        gather = placement.gather(flat, group)
        if flat.kind[group[0]] == SUM:
            edges, _ = edges_of(flat.ptr, group)
            weights = np.split(flat.weights[edges], np.cumsum(flat.count[group])[:-1])
            layers.append(SumLayer(gather, SumWeights(weights, parametrisation, dtype)))
        else:
            layers.append(ProductLayer(gather))
        placement.place(group)
    return layers
