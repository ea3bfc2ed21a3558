"""A compiled program back to its structure, with the current parameters: as symbolic nodes, or as the column
form that model files store (written from the arrays, no nodes built).

Every node's parameters are found through where the program placed it (its output and column; see
:mod:`overspn.engine.program`).
"""

from __future__ import annotations

import sys
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from overspn.engine.layers import SumLayer
from overspn.structure_columns import to_columns
from overspn.symbolic.csr import edges_of
from overspn.symbolic.flat import BERNOULLI, CATEGORICAL, GAUSSIAN, INDICATOR, PRODUCT, SUM
from overspn.symbolic.nodes import Bernoulli, Categorical, Gaussian, Indicator, Node, Product, Sum

if TYPE_CHECKING:
    from overspn.engine.compiled import CompiledSPN

__all__ = ["structure_nodes", "structure_columns"]


@torch.no_grad()
def structure_nodes(model: CompiledSPN) -> Node:
    """The symbolic structure with the current parameters (a new graph; sharing is preserved)."""
    flat = model._structure
    kind, ptr, child, names = flat.kind.tolist(), flat.ptr.tolist(), flat.child.tolist(), flat.names
    layer_of, col_of = model._layer_of.tolist(), model._col_of.tolist()
    discrete_weights = None
    if model.discrete is not None and model.discrete.num_indicator_sums:
        discrete_weights = model.discrete.indicator_sum_weights.weights().double().cpu().numpy()
    layer_weights = {i + model._first_inner_output: layer.weights.weights().double().cpu().numpy()
                     for i, layer in enumerate(model.layers) if isinstance(layer, SumLayer)}
    if model.discrete is not None and model.discrete.num_bernoulli:
        bernoulli_p = torch.sigmoid(model.discrete.bernoulli_logit.double()).cpu().numpy()
    if model.discrete is not None and model.discrete.num_categorical:
        table = model.discrete.table().double()
    if model.gaussian is not None:
        mean = model.gaussian.mean.double().cpu().numpy()
        std = torch.exp(model.gaussian.log_std.double()).cpu().numpy()
    num_indicators = num_bernoulli = 0
    if model.discrete is not None:
        num_indicators, num_bernoulli = model.discrete.num_indicators, model.discrete.num_bernoulli
    var, value = flat.var.tolist(), flat.value.tolist()
    built: list[Node] = []
    for i, node_kind in enumerate(kind):
        row, name = col_of[i], names[i]
        if node_kind == INDICATOR:
            new: Node = Indicator(var[i], value[i], name=name)
        elif node_kind == BERNOULLI:
            new = Bernoulli(var[i], float(bernoulli_p[row - num_indicators]), name=name)
        elif node_kind == CATEGORICAL:
            size = len(flat.probs[row - num_indicators - num_bernoulli])
            new = Categorical(var[i], torch.softmax(table[row, :size], dim=0).cpu().numpy(), name=name)
        elif node_kind == GAUSSIAN:
            new = Gaussian(var[i], float(mean[row]), float(std[row]), name=name)
        else:
            children = [built[c] for c in child[ptr[i]: ptr[i + 1]]]
            if node_kind == PRODUCT:
                new = Product(children, name=name)
            elif layer_of[i] == 0:
                assert discrete_weights is not None, "a sum among the inputs is an indicator sum"
                new = Sum(children, discrete_weights[row - model._first_indicator_sum, : len(children)],
                          name=name)
            else:
                new = Sum(children, layer_weights[layer_of[i]][row, : len(children)], name=name)
        built.append(new)
    return built[-1]



@torch.no_grad()
def structure_columns(model: CompiledSPN) -> dict[str, Any]:
    """The structure with its current parameters in the column form of model files, written from the arrays
    (no nodes built). Its leaf parameters only shape the model (the exact values are the stored tensors), so
    values that rounded onto the edge of their range (p = 1 from a large logit, std = 0 from a very negative
    log-std) are moved just inside it, where the structure validates."""
    from overspn.serialization import BELOW_ONE, SMALLEST

    flat = model._structure
    kind, ptr, n = flat.kind, flat.ptr, len(flat)
    layer_of, col_of = model._layer_of, model._col_of
    # the current weight of every edge of a sum
    weights = np.zeros(len(flat.child))
    if model.discrete is not None and model.discrete.num_indicator_sums:
        sums = np.flatnonzero((kind == SUM) & (layer_of == 0))
        edges, owner = edges_of(ptr, sums)
        table = model.discrete.indicator_sum_weights.weights().double().cpu().numpy()
        weights[edges] = table[col_of[sums][owner] - model._first_indicator_sum, edges - ptr[sums][owner]]
    for output, layer in enumerate(model.layers, start=model._first_inner_output):
        if isinstance(layer, SumLayer):
            sums = np.flatnonzero(layer_of == output)
            edges, owner = edges_of(ptr, sums)
            table = layer.weights.weights().double().cpu().numpy()
            weights[edges] = table[col_of[sums][owner], edges - ptr[sums][owner]]
    p, mean, std = np.full(n, np.nan), np.full(n, np.nan), np.full(n, np.nan)
    probs: list[np.ndarray] = []
    if model.discrete is not None and model.discrete.num_bernoulli:
        rows = col_of[kind == BERNOULLI] - model.discrete.num_indicators
        p[kind == BERNOULLI] = torch.sigmoid(model.discrete.bernoulli_logit.double()).cpu().numpy()[rows]
        np.clip(p, SMALLEST, BELOW_ONE, out=p)
    if model.discrete is not None and model.discrete.num_categorical:
        log_table = model.discrete.table().double()
        for number, i in enumerate(np.flatnonzero(kind == CATEGORICAL).tolist()):
            values = torch.softmax(log_table[col_of[i], : len(flat.probs[number])], dim=0).cpu().numpy()
            values = np.maximum(values, SMALLEST)
            probs.append(values / values.sum())
    if model.gaussian is not None:
        rows = col_of[kind == GAUSSIAN]
        mean[kind == GAUSSIAN] = model.gaussian.mean.double().cpu().numpy()[rows]
        spread = np.exp(model.gaussian.log_std.double().cpu().numpy()[rows])
        std[kind == GAUSSIAN] = np.clip(spread, SMALLEST, sys.float_info.max)
    return to_columns(kind, ptr, flat.child, flat.var, flat.value, weights, p, mean, std, probs, flat.names)

