"""Mixtures of models, ``f(x) = sum_k w_k f_k(x)``: components over the same variables, such as hidden Chow–Liu trees
learned from bootstrap samples of the data (bagging, :mod:`overspn.learn.recipes`), whose average overfits less than
any one of them.

One more model of the engine: every component evaluates the same encoded data once (the partition row included) and
one log-sum-exp combines them, so log-likelihoods, marginals, the partition function and gradients are those of
the symbolic ``Sum`` over the components' structures (:meth:`ModelMixture.to_structure`); saving, loading, sampling and
MPE work as for any model. Components are tensorised models (HCLT, RAT-SPN) of one dtype, parametrisation and
floor, over the same variables and states.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, cast

import numpy as np
import torch
from torch import nn

from overspn.engine.base import MODEL_KINDS, SPNModule
from overspn.engine.encoding import EncodedData
from overspn.engine.semiring import logsumexp
from overspn.engine.weights import actual_weights, checked_weight_options, log_weights, to_parameter
from overspn.errors import ConfigurationError, ModelFileError
from overspn.symbolic.nodes import Node, Sum

__all__ = ["ModelMixture", "COMPONENT_KINDS", "MAX_COMPONENTS"]

#: the model kinds a mixture holds
COMPONENT_KINDS = ("hclt", "rat")
#: the most components a mixture (and a model file) may declare
MAX_COMPONENTS = 4096


class ModelMixture(SPNModule):
    """``f(x) = sum_k w_k f_k(x)`` over ``components``; ``mixture_weights`` (default: equal) in the components'
    parametrisation, which the mixture shares."""

    kind = "mixture"
    #: the rows of the training data each component learns from, when bagged (:mod:`overspn.learn.recipes`; not saved)
    bootstrap_rows: list[np.ndarray] | None = None

    def __init__(self, components: Sequence[SPNModule], mixture_weights: Sequence[float] | np.ndarray | None = None):
        components = list(components)
        if not components or len(components) > MAX_COMPONENTS:
            raise ConfigurationError(f"a mixture holds 1 to {MAX_COMPONENTS} components, got {len(components)}")
        for number, component in enumerate(components):
            if not isinstance(component, SPNModule) or component.kind not in COMPONENT_KINDS:
                raise ConfigurationError(f"component {number} is a {type(component).__name__}; a mixture holds "
                                         f"models of the kinds {', '.join(COMPONENT_KINDS)}")
        first = components[0]
        for number, component in enumerate(components[1:], start=1):
            if (component.num_vars != first.num_vars or component.dtype != first.dtype
                    or component.parametrisation != first.parametrisation or component.floor != first.floor
                    or not torch.equal(component.var_cardinality.cpu(), first.var_cardinality.cpu())):
                raise ConfigurationError(
                    f"component {number} differs from component 0 in its variables, states, dtype, weights or "
                    f"floor ({component.num_vars} variables, {component.dtype}, {component.parametrisation} "
                    f"weights, against {first.num_vars}, {first.dtype}, {first.parametrisation})")
        super().__init__(first.num_vars, first.var_cardinality.cpu().numpy(), first.parametrisation, first.floor,
                         first.dtype)
        self.components = nn.ModuleList(components)
        values = np.full(len(components), 1.0) if mixture_weights is None else np.asarray(mixture_weights, float)
        if values.shape != (len(components),) or not np.all(np.isfinite(values)) or np.any(values < 0) or \
                not values.sum() > 0:
            raise ConfigurationError(f"mixture_weights must be {len(components)} finite numbers >= 0, not all 0; "
                                     f"got {values.tolist()}")
        self.mixture_weights = nn.Parameter(to_parameter(values / values.sum(), self.parametrisation, self.dtype))

    @property
    def parts(self) -> list[SPNModule]:
        """The components, in order."""
        return [cast(SPNModule, component) for component in self.components]

    # -- what the base class asks --------------------------------------------------------------------------------

    @property
    def normalised_by_construction(self) -> bool:
        return self.parametrisation == "softmax" and all(c.normalised_by_construction for c in self.parts)

    def _evaluate(self, data: EncodedData, use_compact: bool = False) -> torch.Tensor:
        values = torch.stack([component._evaluate(data, use_compact) for component in self.parts])  # (K, N)
        weights = log_weights(self.mixture_weights, self.parametrisation)
        return logsumexp(values + weights.unsqueeze(1), dim=0)

    def to_structure(self) -> Node:
        return Sum([component.to_structure() for component in self.parts],
                   actual_weights(self.mixture_weights, self.parametrisation), name="mixture")

    def sum_weight_parameters(self) -> list[nn.Parameter]:
        return [self.mixture_weights, *(p for c in self.parts for p in c.sum_weight_parameters())]

    def file_config(self) -> dict[str, Any]:
        return {"weights": self.parametrisation, "floor": self.floor,
                "components": [{"kind": c.kind, **c.file_config()} for c in self.parts]}

    @classmethod
    def from_file_config(cls, config: dict[str, Any], dtype: torch.dtype) -> ModelMixture:
        entries = component_configs(config)
        weights, floor = checked_weight_options(config.get("weights"), config.get("floor"))
        components = [MODEL_KINDS[entry["kind"]].from_file_config(entry, dtype) for entry in entries]
        for number, component in enumerate(components):
            if component.parametrisation != weights or component.floor != floor:
                raise ModelFileError(f"component {number} has {component.parametrisation} weights with floor "
                                     f"{component.floor}, the mixture {weights} with floor {floor}")
        return cls(components)


def component_configs(config: dict[str, Any]) -> list[dict[str, Any]]:
    """The components' entries of a mixture's file configuration, each checked to name a component kind; raises
    ModelFileError."""
    entries = config.get("components")
    if not isinstance(entries, list) or not 1 <= len(entries) <= MAX_COMPONENTS:
        count = len(entries) if isinstance(entries, list) else type(entries).__name__
        raise ModelFileError(f"a mixture's 'components' must be a list of 1 to {MAX_COMPONENTS} models, got {count}")
    for number, entry in enumerate(entries):
        if not isinstance(entry, dict) or entry.get("kind") not in COMPONENT_KINDS:
            kind = entry.get("kind") if isinstance(entry, dict) else type(entry).__name__
            raise ModelFileError(f"component {number} of the mixture has kind {kind!r}; expected one of "
                                 f"{', '.join(COMPONENT_KINDS)}")
    return entries
