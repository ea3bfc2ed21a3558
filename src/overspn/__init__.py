"""overspn: sum-product networks trained with gradients, overparametrized, collapsed and studied.

The symbolic layer (:mod:`overspn.structure`) builds and validates structures; :func:`compile` turns one into a
layered tensor program (:mod:`overspn.compiled`) that evaluates, trains, samples and completes data.
"""

from .compiled import CompiledSPN, EncodedData, clamp_to_floor, compile
from .errors import (
    ConfigurationError,
    DataError,
    DivergenceError,
    ModelFileError,
    OverspnError,
    StructureError,
)
from .serialization import load, save, structure_from_dict, structure_to_dict
from .structure import (
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
from .transforms import collapse, count_induced_trees, induced_trees, mixture, overparametrize, phi

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
