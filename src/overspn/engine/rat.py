"""Random tensorised SPNs (RAT-SPNs): deep, wide structures over a random region graph, evaluated layer by layer.

The region graph of one *repetition* splits the variables, in a random order, into two halves, each half again,
``depth`` times: ``2**depth`` leaf regions per repetition. Every leaf region holds ``num_input`` factorised input
distributions (a product of univariate leaves, one per variable of the region); every inner region holds
``num_sums`` sum nodes, each a mixture over all products of one input of its left and one of its right child region
(the cross product). The root is one sum over the products of the top split of every repetition.

:class:`RatSPN` evaluates this structure with region-major tensors ``(repetitions, regions, batch, channels)``: a
leaf layer (for discrete leaves one batched matrix product of each region's one-hot data columns with its
variables' log-probabilities, for Gaussian leaves per-variable log-densities summed per region), then one "einsum"
layer per level that mixes the cross products of sibling regions without forming them (batched matrix products,
in linear space; see :mod:`overspn.engine.rat_layers`). Without gradients, memory stays that of one level at a
time; training keeps each level's intermediates for the backward pass.
:meth:`RatSPN.to_structure` returns the same network as symbolic nodes, so :func:`overspn.compile` evaluates it
with the generic engine (and :func:`overspn.save` stores it); :func:`rat_spn` builds that symbolic structure
directly.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from overspn.engine.base import SPNModule, layout_from_file
from overspn.engine.encoding import EncodedData
from overspn.engine.rat_config import LEAF_KINDS, RatConfig, region_graph
from overspn.engine.rat_layers import einsum_layer, region_products, region_slots, root_layer, to_linear
from overspn.engine.semiring import gaussian_log_density
from overspn.engine.weights import (
    DEFAULT_FLOOR,
    actual_weights,
    checked_weight_options,
    linear_weights,
    to_parameter,
)
from overspn.errors import ConfigurationError
from overspn.symbolic.structure import Bernoulli, Categorical, Gaussian, Leaf, Node, Product, Sum

# LEAF_KINDS and RatConfig live in rat_config.py and are re-exported here, where callers import them
__all__ = ["LEAF_KINDS", "RatConfig", "RatSPN", "rat_spn"]

#: initialisation from data: the most rows each input's statistics are computed from, and the working memory
INIT_ROWS = 2_000
INIT_MEMORY = 64 * 2**20


class RatSPN(SPNModule):
    """A RAT-SPN as a tensorised ``torch.nn.Module``; see the module docstring for the layout.

    ``weights``: "softmax" (each sum node normalised; the default for training), "log" (w = exp(p)) or "raw"
    (w = p, kept >= ``floor`` after every optimizer step); with the latter two the network is unnormalised and
    :meth:`log_likelihood` subtracts the exact log-partition function (the network at the all-missing row).
    Input distributions are always normalised. NaN entries of the data are marginalised.
    """

    kind = "rat"
    supports_em = True
    region_membership: torch.Tensor
    region_slots: torch.Tensor

    def __init__(self, config: RatConfig, weights: str = "softmax", *, floor: float = DEFAULT_FLOOR,
                 dtype: torch.dtype = torch.float32):
        if not isinstance(config, RatConfig):
            raise ConfigurationError(f"config must be a RatConfig, got {type(config).__name__}")
        states = {"bernoulli": 2, "categorical": config.cardinality, "gaussian": 0}[config.leaf]
        super().__init__(config.num_vars, np.full(config.num_vars, states), weights, floor, dtype)
        self.config = config
        rng = np.random.default_rng(config.seed)
        reps, num_in, num_vars = config.num_repetitions, config.num_input, config.num_vars

        self.regions, membership = region_graph(config, rng)
        self.register_buffer("region_membership", torch.from_numpy(membership).to(dtype), persistent=False)
        self.register_buffer("region_slots", region_slots(self.regions), persistent=False)

        # input distributions, one per (variable, repetition, input)
        shape = (num_vars, reps, num_in)
        if config.leaf == "bernoulli":
            p = rng.uniform(0.25, 0.75, size=shape)
            self.logit = nn.Parameter(torch.from_numpy(np.log(p / (1 - p))).to(dtype))
        elif config.leaf == "categorical":
            probs = rng.dirichlet(np.ones(config.cardinality), size=shape)
            self.logits = nn.Parameter(torch.from_numpy(np.log(probs)).to(dtype))
        else:
            self.mean = nn.Parameter(torch.from_numpy(rng.normal(0.0, 1.0, size=shape)).to(dtype))
            self.log_std = nn.Parameter(torch.zeros(shape, dtype=dtype))

        # sum layers, bottom-up: level with L regions merges pairs into L/2 regions of num_sums sums each
        self.sum_weights = nn.ParameterList()
        regions_here, channels = 2 ** config.depth, num_in
        while regions_here > 2:
            regions_here //= 2
            self.sum_weights.append(self._weights(rng, (reps, regions_here, config.num_sums, channels * channels),
                                                  dtype))
            channels = config.num_sums
        self.root_weights = self._weights(rng, (reps * channels * channels,), dtype)

    def _weights(self, rng: np.random.Generator, shape: tuple[int, ...], dtype: torch.dtype) -> nn.Parameter:
        # normalised random weights: every sum starts as a proper mixture, whatever the parametrisation
        values = rng.uniform(0.5, 1.5, size=shape)
        values /= values.sum(axis=-1, keepdims=True)
        return nn.Parameter(to_parameter(values, self.parametrisation, dtype))

    # -- what the base class asks --------------------------------------------------------------------------------

    @property
    def normalised_by_construction(self) -> bool:
        return self.parametrisation == "softmax"

    def sum_weight_parameters(self) -> list[nn.Parameter]:
        return [*self.sum_weights, self.root_weights]

    def file_config(self) -> dict[str, Any]:
        return {"config": self.config.as_dict(), "weights": self.parametrisation, "floor": self.floor}

    @classmethod
    def from_file_config(cls, config: dict[str, Any], dtype: torch.dtype) -> RatSPN:
        rat_config = layout_from_file(config, RatConfig, "RAT-SPN")
        weights, floor = checked_weight_options(config.get("weights"), config.get("floor"))
        return cls(rat_config, weights, floor=floor, dtype=dtype)

    # -- evaluation ---------------------------------------------------------------------------------------------

    def leaf_log_table(self) -> torch.Tensor:
        """Discrete inputs: ``(D, C, R, I)`` log-probability of state c of variable d under input (r, i)."""
        if self.config.leaf == "bernoulli":
            return torch.stack([F.logsigmoid(-self.logit), F.logsigmoid(self.logit)], dim=1)
        return torch.log_softmax(self.logits, dim=-1).permute(0, 3, 1, 2)

    def _region_inputs(self, x: torch.Tensor, table: torch.Tensor | None,
                       partition_row: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
        """Each leaf region's factorised inputs, the sum of its variables' log-densities, in the scaled linear form
        of :func:`to_linear`, region-major ``(R, L, N, I)`` (``partition_row``: the last row of ``x`` is the
        all-missing row of the partition function).

        Discrete leaves: per region, the one-hot columns of its variables times their log-probabilities
        (:func:`region_products`); a missing value has an all-zero one-hot row, i.e. contributes log 1. Binary data
        without missing values takes half of that product: ``log f(x) = log f(0) + x (log f(1) - log f(0))``, i.e.
        ``x`` against the differences, plus the states 0 as an offset (when the table is finite, so that no
        ``0 * inf`` arises). Gaussian leaves: see :meth:`_gaussian_region_values`.
        """
        if table is None:
            return to_linear(self._gaussian_region_values(x))
        missing = torch.isnan(x)
        card = table.shape[1]
        data_missing = missing[:-1] if partition_row else missing
        if card == 2 and not bool(data_missing.any()) and bool(torch.isfinite(table).all()):
            offset = torch.einsum("dri,drl->rli", table[:, 0], self.region_membership)
            filled = torch.nan_to_num(x, nan=0.0) if partition_row else x
            return region_products(filled, table[:, 1] - table[:, 0], self.region_slots, 1, offset, partition_row)
        filled = torch.where(missing, torch.zeros_like(x), x)
        onehot = F.one_hot(filled.long(), card).to(x.dtype).masked_fill(missing.unsqueeze(2), 0.0)
        rows = table.reshape(len(table) * card, *table.shape[2:])
        return region_products(onehot.view(len(x), -1), rows, self.region_slots, card)

    def _gaussian_region_values(self, x: torch.Tensor) -> torch.Tensor:
        """Gaussian leaves: ``(R, L, N, I)`` log-values of the leaf regions, the ``(N, D, R, I)`` log-densities
        summed per region (0 for a missing value)."""
        missing = torch.isnan(x)
        filled = torch.where(missing, torch.zeros_like(x), x)
        densities = gaussian_log_density(filled[:, :, None, None], self.mean, self.log_std)
        densities = densities.masked_fill(missing[:, :, None, None], 0.0)
        return torch.einsum("ndri,drl->rlni", densities, self.region_membership).contiguous()

    def _evaluate(self, data: EncodedData, use_compact: bool = False) -> torch.Tensor:
        return self._root_values(data.values, partition_row=data.with_partition)

    def _root_values(self, x: torch.Tensor, regions: tuple[torch.Tensor, torch.Tensor] | None = None,
                     layer_weights: list[tuple[torch.Tensor, torch.Tensor]] | None = None,
                     root_weights: tuple[torch.Tensor, torch.Tensor] | None = None,
                     partition_row: bool = False) -> torch.Tensor:
        """Root log-values ``(N,)`` of checked data (``partition_row``: its last row is all missing); EM passes its
        own leaf regions (scaled linear form, see :meth:`_region_inputs`) and weights."""
        if regions is None:
            table = None if self.config.leaf == "gaussian" else self.leaf_log_table()
            regions = self._region_inputs(x, table, partition_row)
        if layer_weights is None:
            layer_weights = [linear_weights(parameter, self.parametrisation) for parameter in self.sum_weights]
        if root_weights is None:
            root_weights = linear_weights(self.root_weights, self.parametrisation)
        linear, log_scale = regions
        for shift, weights in layer_weights:
            shift_or_none = shift if self.parametrisation == "log" else None  # 0 for the other parametrisations
            linear, log_scale = einsum_layer(linear, log_scale, shift_or_none, weights)
        return root_layer(linear, log_scale, *root_weights)

    # -- expectation-maximisation -------------------------------------------------------------------------------

    def em_step(self, x: np.ndarray | torch.Tensor, step_size: float, pseudo_count: float = 1e-6) -> float:
        """One step of online EM on the batch ``x``; returns the batch's mean log-likelihood before the step.

        Expected counts come from autograd: for a sum weight, w times the gradient of the batch log-likelihood with
        respect to w; for an input distribution, the gradient with respect to its log-density (its posterior). The
        batch's maximum-likelihood parameters are mixed into the current ones with weight ``step_size``;
        ``pseudo_count`` is added to every count (Laplace smoothing), so that no weight or probability reaches 0.
        """
        if self.parametrisation != "softmax":
            raise ConfigurationError(f"EM keeps sum weights normalised: use weights='softmax', not "
                                     f"{self.parametrisation!r}")
        values = self.check_data(x)
        # detached copies of the parameters as the leaves of the graph: their gradients are the expected counts
        with torch.no_grad():
            discrete = self.config.leaf != "gaussian"
            leaf_input = self.leaf_log_table() if discrete else self._gaussian_region_values(values)
            weights = [torch.softmax(parameter, dim=-1) for parameter in self.sum_weights]
            root = torch.softmax(self.root_weights, dim=0)
        for tensor in [leaf_input, *weights, root]:
            tensor.requires_grad_()
        with torch.enable_grad():
            regions = self._region_inputs(values, leaf_input) if discrete else to_linear(leaf_input)
            llh = self._root_values(values, regions, [(w.new_zeros(w.shape[:-1] + (1,)), w) for w in weights],
                                    (root.new_zeros(1), root))
            mean = float(llh.detach().mean())
            if not math.isfinite(mean):
                return mean
            grads = torch.autograd.grad(llh.sum(), [leaf_input, *weights, root])
        with torch.no_grad():
            for parameter, w, grad in zip([*self.sum_weights, self.root_weights], [*weights, root], grads[1:]):
                counts = w * grad + pseudo_count
                updated = (1 - step_size) * w + step_size * counts / counts.sum(dim=-1, keepdim=True)
                parameter.copy_(torch.log(updated))
            self._em_inputs(values, grads[0], step_size, pseudo_count)
        return mean

    def _em_inputs(self, x: torch.Tensor, grad: torch.Tensor, step_size: float, pseudo_count: float) -> None:
        if self.config.leaf == "bernoulli":
            counts = grad + pseudo_count  # (D, 2, R, I)
            p = (1 - step_size) * torch.sigmoid(self.logit) + step_size * counts[:, 1] / counts.sum(dim=1)
            self.logit.copy_(torch.logit(p.clamp(1e-6, 1 - 1e-6)))
        elif self.config.leaf == "categorical":
            counts = grad + pseudo_count  # (D, C, R, I)
            probs = ((1 - step_size) * torch.softmax(self.logits, dim=-1)
                     + step_size * (counts / counts.sum(dim=1, keepdim=True)).permute(0, 2, 3, 1))
            self.logits.copy_(torch.log(probs.clamp_min(1e-12)))
        else:
            missing = torch.isnan(x)
            filled = torch.where(missing, torch.zeros_like(x), x)
            # posterior of every (variable, repetition, input) for every row: that of the input's leaf region
            posterior = torch.einsum("rlni,drl->ndri", grad, self.region_membership) * (~missing)[:, :, None, None]
            count = posterior.sum(dim=0) + pseudo_count
            std = torch.exp(self.log_std)
            first = (torch.einsum("ndri,nd->dri", posterior, filled) + pseudo_count * self.mean) / count
            second = (torch.einsum("ndri,nd->dri", posterior, filled * filled)
                      + pseudo_count * (self.mean ** 2 + std ** 2)) / count
            mean = (1 - step_size) * self.mean + step_size * first
            second = (1 - step_size) * (self.mean ** 2 + std ** 2) + step_size * second
            variance = (second - mean ** 2).clamp_min(1e-4)
            self.mean.copy_(mean)
            self.log_std.copy_(0.5 * torch.log(variance))

    # -- initialisation from data -------------------------------------------------------------------------------

    @torch.no_grad()
    def initialise_from_data(self, data: np.ndarray, seed: int = 0, pseudo_count: float = 1.0) -> None:
        """Start each input near the data: its statistics on a random subset of the rows (different per input).

        Breaks the symmetry between inputs like random initialisation does, while starting close to the marginals.
        Each input sees a tenth of the rows, at most :data:`INIT_ROWS`; the inputs are processed in groups so that
        the working memory stays near :data:`INIT_MEMORY` bytes whatever the size of the data.
        """
        values = self.check_data(data).double()
        rng = np.random.default_rng(seed)
        num_vars, reps, num_in = self.num_vars, self.config.num_repetitions, self.config.num_input
        subset = max(1, min(len(values) // 10, INIT_ROWS))
        rows = torch.from_numpy(rng.integers(0, len(values), size=(reps * num_in, subset)))
        per_input = subset * num_vars * 8 * (self.config.cardinality if self.config.leaf == "categorical" else 3)
        group = max(1, INIT_MEMORY // per_input)
        statistics = [self._input_statistics(values[rows[start:start + group]], pseudo_count)
                      for start in range(0, reps * num_in, group)]
        # each statistic is (R*I, D, ...); inputs are ordered repetition-major, like the parameters' (R, I) axes
        merged = [torch.cat(parts) for parts in zip(*statistics)]
        if self.config.leaf == "bernoulli":
            self.logit.copy_(merged[0].T.reshape(num_vars, reps, num_in).to(self.dtype))
        elif self.config.leaf == "categorical":
            probs = merged[0].permute(1, 0, 2).reshape(num_vars, reps, num_in, self.config.cardinality)
            self.logits.copy_(torch.log(probs).to(self.dtype))
        else:
            mean, var = merged
            std = torch.sqrt(var + 0.1 * var.mean(dim=0, keepdim=True) + 1e-6)
            self.mean.copy_(mean.T.reshape(num_vars, reps, num_in).to(self.dtype))
            self.log_std.copy_(torch.log(std).T.reshape(num_vars, reps, num_in).to(self.dtype))

    def _input_statistics(self, sample: torch.Tensor, pseudo_count: float) -> tuple[torch.Tensor, ...]:
        """Smoothed statistics of the rows ``sample`` ``(inputs, rows, D)`` drawn for a group of inputs: the logit
        (Bernoulli), the state probabilities (categorical), or the mean and variance (Gaussian), each ``(inputs, D,
        ...)``."""
        observed = ~torch.isnan(sample)
        filled = torch.where(observed, sample, torch.zeros_like(sample))
        count = observed.sum(dim=1).double()
        if self.config.leaf == "bernoulli":
            p = (filled.sum(dim=1) + pseudo_count) / (count + 2 * pseudo_count)
            return (torch.log(p / (1 - p)),)
        if self.config.leaf == "categorical":
            card = self.config.cardinality
            onehot = F.one_hot(filled.long(), card).double() * observed.unsqueeze(-1)
            return ((onehot.sum(dim=1) + pseudo_count) / (count.unsqueeze(-1) + card * pseudo_count),)
        mean = filled.sum(dim=1) / count.clamp_min(1)
        centred = torch.where(observed, sample - mean.unsqueeze(1), torch.zeros_like(sample))
        return mean, (centred ** 2).sum(dim=1) / count.clamp_min(1)

    # -- back to symbols ----------------------------------------------------------------------------------------

    @torch.no_grad()
    def _input_leaves(self) -> list[list[list[Leaf]]]:
        """leaves[d][r][i]: the symbolic univariate leaf of variable d, repetition r, input i."""
        num_vars, reps, num_in = self.num_vars, self.config.num_repetitions, self.config.num_input
        if self.config.leaf == "bernoulli":
            p = torch.sigmoid(self.logit.double()).cpu().numpy()
            return [[[Bernoulli(d, p[d, r, i]) for i in range(num_in)] for r in range(reps)] for d in range(num_vars)]
        if self.config.leaf == "categorical":
            probs = torch.softmax(self.logits.double(), dim=-1).cpu().numpy()
            return [[[Categorical(d, probs[d, r, i]) for i in range(num_in)] for r in range(reps)]
                    for d in range(num_vars)]
        mean = self.mean.double().cpu().numpy()
        std = torch.exp(self.log_std.double()).cpu().numpy()
        return [[[Gaussian(d, mean[d, r, i], std[d, r, i]) for i in range(num_in)] for r in range(reps)]
                for d in range(num_vars)]

    @torch.no_grad()
    def to_structure(self) -> Node:
        """The same network as symbolic nodes, with the current parameters (weights as the actual weights)."""
        leaves = self._input_leaves()
        reps, num_in = self.config.num_repetitions, self.config.num_input
        # level[r][l][k]: node k of region l of repetition r
        level: list[list[list[Node]]] = []
        for r in range(reps):
            regions_nodes = []
            for region in self.regions[r]:
                if len(region) == 1:
                    regions_nodes.append([leaves[region[0]][r][i] for i in range(num_in)])
                else:
                    regions_nodes.append([Product([leaves[d][r][i] for d in region]) for i in range(num_in)])
            level.append(regions_nodes)
        for parameter in self.sum_weights:
            weights = self._weights_of(parameter)  # (R, L/2, K', K*K)
            merged = []
            for r in range(reps):
                regions_nodes = []
                for l in range(len(level[r]) // 2):  # noqa: E741
                    products = [Product([a, b]) for a in level[r][2 * l] for b in level[r][2 * l + 1]]
                    regions_nodes.append([Sum(products, weights[r, l, k]) for k in range(weights.shape[2])])
                merged.append(regions_nodes)
            level = merged
        products = [Product([a, b]) for r in range(reps) for a in level[r][0] for b in level[r][1]]
        return Sum(products, self._weights_of(self.root_weights))

    def _weights_of(self, parameter: nn.Parameter) -> np.ndarray:
        return actual_weights(parameter, self.parametrisation)


def rat_spn(num_vars: int, depth: int = 1, num_repetitions: int = 20, num_sums: int = 10, num_input: int = 20,
            leaf: str = "bernoulli", seed: int = 0, cardinality: int = 2) -> Node:
    """A RAT-SPN as a symbolic structure with random parameters (from ``seed``): normalised sum weights; the
    defaults are :class:`RatConfig`'s."""
    config = RatConfig(num_vars, depth, num_repetitions, num_sums, num_input, leaf, cardinality, seed)
    return RatSPN(config, dtype=torch.float64).to_structure()
