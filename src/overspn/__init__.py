"""overspn: sum-product networks trained with gradients, overparametrized, collapsed and studied.

The symbolic layer (:mod:`overspn.symbolic.structure`) builds and validates structures; :func:`compile` turns one into a
layered tensor program (:mod:`overspn.engine.compiled`) that evaluates, trains, samples and completes data;
:func:`fit` (:mod:`overspn.learn.fit`) is the training loop.
"""

from overspn.data import load_dataset
from overspn.engine.base import SPNModule
from overspn.engine.compiled import CompiledSPN, compile, compile_structure
from overspn.engine.encoding import EncodedData
from overspn.engine.hclt import HCLT, HCLTConfig
from overspn.engine.mixture import ModelMixture
from overspn.engine.rat import RatConfig, RatSPN, rat_spn
from overspn.errors import (
    ConfigurationError,
    DataError,
    DivergenceError,
    ModelFileError,
    OverspnError,
    StructureError,
)
from overspn.learn.fit import History, fit
from overspn.learn.floor import keep_floor
from overspn.learn.recipes import EMSchedule, Structure, build_model, default_structure, parse_structure, train_model
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
    "HCLT",
    "HCLTConfig",
    "ModelMixture",
    "RatConfig",
    "RatSPN",
    "SPNModule",
    "ConfigurationError",
    "DataError",
    "DivergenceError",
    "EncodedData",
    "EMSchedule",
    "Structure",
    "build_model",
    "default_structure",
    "parse_structure",
    "train_model",
    "History",
    "Gaussian",
    "Indicator",
    "Leaf",
    "ModelFileError",
    "Node",
    "OverspnError",
    "Product",
    "StructureError",
    "Sum",
    "collapse",
    "count_induced_trees",
    "induced_trees",
    "keep_floor",
    "mixture",
    "overparametrize",
    "phi",
    "compile",
    "compile_structure",
    "load_dataset",
    "rat_spn",
    "describe",
    "fit",
    "load",
    "num_parameters",
    "save",
    "scopes",
    "structure_from_dict",
    "structure_to_dict",
    "topological_order",
    "validate",
]
