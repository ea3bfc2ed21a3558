"""Symbolic SPN structures: nodes, scopes, traversal and validation, under one public name.

A structure is a rooted DAG of :class:`Node` objects; sub-networks may be shared. Nothing here touches torch: the
compiled tensor program that evaluates a structure lives in :mod:`overspn.engine.compiled`, and transforms in
:mod:`overspn.symbolic.transforms` are functions from structure to structure.

The parts live in their own modules: the nodes and the walks over them in :mod:`overspn.symbolic.nodes`, the flat
form (a structure as arrays) in :mod:`overspn.symbolic.flat` with its vectorised checks in
:mod:`overspn.symbolic.flat_checks`, and the rules of a valid structure in :mod:`overspn.symbolic.validation`.
"""

from __future__ import annotations

# the flat form and its checks, re-exported for code that imports them from here (new code imports their modules)
from overspn.symbolic.flat import (  # noqa: F401
    BERNOULLI,
    CATEGORICAL,
    GAUSSIAN,
    INDICATOR,
    PRODUCT,
    SUM,
    FlatStructure,
)
from overspn.symbolic.nodes import (
    Bernoulli,
    Categorical,
    Gaussian,
    Indicator,
    Leaf,
    Node,
    Product,
    Sum,
    describe,
    num_parameters,
    path_to,
    scopes,
    topological_order,
)
from overspn.symbolic.validation import check_flat, flatten, validate  # noqa: F401 (check_flat, flatten)

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

