"""overspn: sum-product networks trained with gradients, overparametrized, collapsed and studied.

The symbolic layer (:mod:`overspn.symbolic.structure`) builds and validates structures; :func:`compile` turns one into a
layered tensor program (:mod:`overspn.engine.compiled`) that evaluates, trains, samples and completes data.
"""

from overspn.engine.compiled import CompiledSPN, EncodedData, clamp_to_floor, compile
from overspn.errors import (
    ConfigurationError,
    DataError,
    DivergenceError,
    ModelFileError,
    OverspnError,
    StructureError,
)
from overspn.serialization import load, save, structure_from_dict, structure_to_dict
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
    num_parameters,
    scopes,
    topological_order,
    validate,
)
from overspn.symbolic.transforms import collapse, count_induced_trees, induced_trees, mixture, overparametrize, phi

__version__ = "0.1.0"

__all__ = [
    "Bernoulli",
    "Categorical",
    "CompiledSPN",
    "ConfigurationError",
    "DataError",
    "DivergenceError",
    "EncodedData",
    "Gaussian",
    "Indicator",
    "Leaf",
    "ModelFileError",
    "Node",
    "OverspnError",
    "Product",
    "StructureError",
    "Sum",
    "clamp_to_floor",
    "collapse",
    "count_induced_trees",
    "induced_trees",
    "mixture",
    "overparametrize",
    "phi",
    "compile",
    "describe",
    "load",
    "num_parameters",
    "save",
    "scopes",
    "structure_from_dict",
    "structure_to_dict",
    "topological_order",
    "validate",
]
