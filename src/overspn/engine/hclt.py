"""Hidden Chow-Liu trees (HCLT, Liu & Van den Broeck 2021): a tree of latent variables, one per observed variable.

Every observed variable ``X_v`` gets a latent ``Z_v`` with ``K`` states; the latents form the (Chow-Liu) tree given by
``parents`` and each ``X_v`` depends on its own latent only, through ``K`` categorical leaves ``p(x_v | z_v = k)``.
As an SPN: for each non-root node ``v`` and each state ``j`` of its parent's latent a sum node
``S_{v,j} = sum_k W_v[j, k] P_{v,k}`` with ``P_{v,k} = leaf_{v,k}(x_v) * prod_{c child of v} S_{c,k}``, and the root
``sum_k w_root[k] P_{root,k}``.

:class:`HCLT` evaluates it with tensors shaped ``(nodes, batch, K)``, the nodes in breadth-first order so that every
depth of the tree is a contiguous block: all leaf log-probabilities at once (one gather from a ``(D (C+1), K)``
log-table whose extra row per variable is log 1 for a missing value), then one step per depth, deepest first: the
messages ``log sum_k W_v[j, k] exp(m_v(k))`` of all nodes of the depth as one batched matrix product in linear space
(shifted per row and node, as in einsum networks), added into their parents with ``index_add``. Time and memory are
linear in the number of variables; the Python loop runs over depths, never over nodes.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from overspn.engine.base import SPNModule, layout_from_file
from overspn.engine.encoding import EncodedData
from overspn.engine.semiring import finite_max
from overspn.engine.softening import checked_softening, softened_log_table
from overspn.engine.weights import (
    DEFAULT_FLOOR,
    actual_weights,
    checked_weight_options,
    linear_weights,
    to_parameter,
)
from overspn.errors import ConfigurationError, DataError
from overspn.symbolic.structure import Bernoulli, Categorical, Leaf, Node, Product, Sum

__all__ = ["HCLTConfig", "HCLT"]

HCLT_LEAVES = ("bernoulli", "categorical")
_INIT_ROWS = 4096  # rows sampled to initialise the leaves from data
_EM_CHUNK = 1 << 23  # values (node, row, state) per chunk of an EM step: float32 tensors of 32 MiB


def _positive_int(name: str, value: object) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
        raise ConfigurationError(f"{name} must be a positive integer, got {value!r}")


@dataclass(frozen=True)
class HCLTConfig:
    """Everything that fixes an HCLT's layout: ``parents[v]`` is the parent of variable v in the latent tree (-1 at
    the root); None means the chain 0 - 1 - ... - (D-1) rooted at 0. The parameters are initialised from ``seed``."""

    num_vars: int
    latent: int = 16
    cardinality: int = 2
    leaf: str = "bernoulli"
    parents: tuple[int, ...] | None = None
    seed: int = 0

    def __post_init__(self) -> None:
        for name in ("num_vars", "latent", "cardinality"):
            _positive_int(name, getattr(self, name))
            object.__setattr__(self, name, int(getattr(self, name)))  # numpy integers are not JSON
        if isinstance(self.seed, bool) or not isinstance(self.seed, (int, np.integer)):
            raise ConfigurationError(f"seed must be an integer, got {self.seed!r}")
        object.__setattr__(self, "seed", int(self.seed))
        if self.leaf not in HCLT_LEAVES:
            raise ConfigurationError(f"leaf must be one of {HCLT_LEAVES}, got {self.leaf!r}")
        if self.leaf == "bernoulli" and self.cardinality != 2:
            raise ConfigurationError(f"bernoulli leaves have cardinality 2, got {self.cardinality!r}: use "
                                     "leaf='categorical' for more states")
        parents = self.parents if self.parents is not None else range(-1, self.num_vars - 1)
        try:
            parents = tuple(int(p) for p in parents if not isinstance(p, bool) and p == int(p))
        except (TypeError, ValueError) as error:
            raise ConfigurationError(f"parents must be a sequence of integers, got {self.parents!r}") from error
        if len(parents) != self.num_vars:
            raise ConfigurationError(f"parents must hold {self.num_vars} integers (one per variable), got "
                                     f"{self.parents!r}")
        object.__setattr__(self, "parents", parents)
        _breadth_first(parents)  # raises for anything but a tree

    def as_dict(self) -> dict[str, Any]:
        return {**asdict(self), "parents": list(self.parents or ())}


def _breadth_first(parents: tuple[int, ...]) -> tuple[np.ndarray, list[int]]:
    """The nodes ordered by depth (then id) and the start of every depth in that order (plus the end)."""
    num = len(parents)
    roots = [v for v, p in enumerate(parents) if p == -1]
    if len(roots) != 1:
        raise ConfigurationError(f"parents must name exactly one root (-1), got {len(roots)} in {list(parents)}")
    bad = [v for v, p in enumerate(parents) if not -1 <= p < num or p == v]
    if bad:
        raise ConfigurationError(f"parents[{bad[0]}] must be another variable in [0, {num}) or -1, got "
                                 f"{parents[bad[0]]}")
    depth = np.full(num, -1, dtype=np.int64)
    depth[roots[0]] = 0
    for v in range(num):
        path = [v]
        while depth[path[-1]] < 0:
            if len(path) > num:
                raise ConfigurationError(f"parents must form a tree, but variable {v} lies on a cycle")
            path.append(parents[path[-1]])
        for node in reversed(path[:-1]):
            depth[node] = depth[parents[node]] + 1
    order = np.lexsort((np.arange(num), depth))
    starts = [0, *(np.flatnonzero(np.diff(depth[order])) + 1).tolist(), num]
    return order, starts


class HCLT(SPNModule):
    """A hidden Chow-Liu tree as a tensorised ``torch.nn.Module``; see the module docstring for the layout.

    Parameters: ``logit`` ``(D, K)`` (Bernoulli leaves) or ``logits`` ``(D, K, C)`` (categorical leaves), always
    normalised; ``edge_weights`` ``(D-1, K, K)``, the weights ``W_v[j, k]`` of the non-root nodes in the breadth-first
    order ``self.order[1:]``; ``root_weights`` ``(K,)``. ``weights`` is their parametrisation ("softmax", "log",
    "raw", see :mod:`overspn.engine.weights`). Build one from data with :meth:`HCLT.from_data`.
    """

    kind = "hclt"
    supports_em = True
    parent_local: torch.Tensor
    table_offset: torch.Tensor
    order_index: torch.Tensor

    def __init__(self, config: HCLTConfig, weights: str = "softmax", *, floor: float = DEFAULT_FLOOR,
                 dtype: torch.dtype = torch.float32):
        if not isinstance(config, HCLTConfig):
            raise ConfigurationError(f"config must be a HCLTConfig, got {type(config).__name__}")
        super().__init__(config.num_vars, np.full(config.num_vars, config.cardinality), weights, floor, dtype)
        self.config = config
        num, latent, card = config.num_vars, config.latent, config.cardinality
        assert config.parents is not None, "HCLTConfig fills in the default tree"
        parents = np.asarray(config.parents, dtype=np.int64)
        self.order, self.starts = _breadth_first(config.parents)
        self.position = np.empty(num, dtype=np.int64)
        self.position[self.order] = np.arange(num)
        # for every breadth-first position: its parent's offset within the parent's depth (0 for the root)
        level_of = np.searchsorted(self.starts, np.arange(num), side="right") - 1
        parent_pos = np.where(parents[self.order] >= 0, self.position[parents[self.order]], 0)
        local = parent_pos - np.asarray(self.starts)[np.maximum(level_of - 1, 0)]
        self.register_buffer("parent_local", torch.from_numpy(np.where(level_of > 0, local, 0)), persistent=False)
        # row of (variable, state) in the flat leaf table; state C is the missing value (log 1)
        self.register_buffer("table_offset", torch.from_numpy(self.order * (card + 1)), persistent=False)
        self.register_buffer("order_index", torch.from_numpy(self.order), persistent=False)
        rng = np.random.default_rng(config.seed)
        if config.leaf == "bernoulli":
            p = rng.uniform(0.25, 0.75, size=(num, latent))
            self.logit = nn.Parameter(torch.from_numpy(np.log(p / (1 - p))).to(dtype))
        else:
            self.logits = nn.Parameter(torch.from_numpy(np.log(rng.dirichlet(np.ones(card), (num, latent)))).to(dtype))
        self.edge_weights = self._weights(rng.uniform(0.5, 1.5, size=(num - 1, latent, latent)), dtype)
        self.root_weights = self._weights(rng.uniform(0.5, 1.5, size=latent), dtype)

    def _weights(self, values: np.ndarray, dtype: torch.dtype) -> nn.Parameter:
        values = values / values.sum(axis=-1, keepdims=True)
        return nn.Parameter(to_parameter(values, self.parametrisation, dtype))

    @classmethod
    def from_data(cls, data: Any, latent: int = 16, pseudocount: float = 1.0, weights: str = "softmax", *,
                  dtype: torch.dtype = torch.float32, seed: int = 0, init: str = "data", cardinality: int | None = None,
                  floor: float = DEFAULT_FLOOR) -> HCLT:
        """An HCLT over the Chow-Liu tree of ``data`` (``(N, D)`` states, NaN = missing); with ``init="data"`` its
        leaves start from clusters of the data (:meth:`initialise_from_data`), with ``init="random"`` at random.
        ``cardinality``: the number of states (default: the largest state in the data + 1, at least 2)."""
        from overspn.symbolic.chow_liu import chow_liu_tree

        if init not in ("data", "random"):
            raise ConfigurationError(f"init must be 'data' or 'random', got {init!r}")
        array = data.detach().cpu().numpy() if isinstance(data, torch.Tensor) else np.asarray(data)
        if array.ndim != 2 or array.shape[0] == 0:
            raise DataError(f"data must be 2-D (rows, variables) with at least one row, got shape {array.shape}")
        if cardinality is None:
            cardinality = max(2, int(np.nan_to_num(np.fmax.reduce(array, axis=None), nan=0)) + 1)
        tree = chow_liu_tree(array, np.full(array.shape[1], cardinality), pseudocount)
        config = HCLTConfig(array.shape[1], latent, cardinality, "bernoulli" if cardinality == 2 else "categorical",
                            tuple(tree.parents.tolist()), seed)
        model = cls(config, weights, floor=floor, dtype=dtype)
        if init == "data":
            model.initialise_from_data(array, seed=seed, pseudo_count=pseudocount)
        return model

    # -- what the base class asks --------------------------------------------------------------------------------

    @property
    def normalised_by_construction(self) -> bool:
        return self.parametrisation == "softmax"

    def sum_weight_parameters(self) -> list[nn.Parameter]:
        return [self.edge_weights, self.root_weights]

    def file_config(self) -> dict[str, Any]:
        return {"config": self.config.as_dict(), "weights": self.parametrisation, "floor": self.floor}

    @classmethod
    def from_file_config(cls, config: dict[str, Any], dtype: torch.dtype) -> HCLT:
        hclt_config = layout_from_file(config, HCLTConfig, "HCLT")
        weights, floor = checked_weight_options(config.get("weights"), config.get("floor"))
        return cls(hclt_config, weights, floor=floor, dtype=dtype)

    # -- evaluation ---------------------------------------------------------------------------------------------

    def leaf_log_table(self) -> torch.Tensor:
        """``(D, C, K)``: log p(x_d = c | z_d = k)."""
        if self.config.leaf == "bernoulli":
            return torch.stack([F.logsigmoid(-self.logit), F.logsigmoid(self.logit)], dim=1)
        return torch.log_softmax(self.logits, dim=-1).transpose(1, 2)

    def _evaluate(self, data: EncodedData, use_compact: bool = False) -> torch.Tensor:
        return self._root_values(data.codes)

    def softened_log_likelihood(self, x: Any, softening: float) -> torch.Tensor:
        """``(N,)`` log-likelihoods of the rows of ``x`` softened by ``softening`` (:mod:`overspn.engine.softening`):
        every observed value kept with that probability; missing values are marginalised as in :meth:`log_likelihood`.
        """
        table = softened_log_table(self.leaf_log_table(), checked_softening(softening))
        data = self._data_for(x)
        values = self._root_values(data.codes, table)
        rows = values[:-1] if data.with_partition else values
        if self.normalised_by_construction:
            return rows
        return rows - (values[-1] if data.with_partition else self.log_partition())  # softening keeps log f(*)

    def _root_values(self, codes: torch.Tensor, table: torch.Tensor | None = None,
                     edge: tuple[torch.Tensor, torch.Tensor] | None = None,
                     root: tuple[torch.Tensor, torch.Tensor] | None = None) -> torch.Tensor:
        """Root log-values ``(N,)`` of state codes ``(N, D)`` (C = missing); EM passes its own table and weights."""
        table = self.leaf_log_table() if table is None else table
        edge = linear_weights(self.edge_weights, self.parametrisation) if edge is None else edge
        root = linear_weights(self.root_weights, self.parametrisation) if root is None else root
        num, latent = self.num_vars, self.config.latent
        flat = torch.cat([table, table.new_zeros(num, 1, latent)], dim=1).reshape(-1, latent)
        codes = codes.T[self.order_index].clamp(max=self.config.cardinality) + self.table_offset[:, None]
        sizes = np.diff(self.starts).tolist()
        # one tensor per depth: the backward pass of a slice would write a whole (D, N, K) of zeros per depth
        leaves = torch.split(F.embedding(codes, flat), sizes)  # (D, N, K), breadth-first
        edge_shift, edge_scaled = edge
        shifts, scaled = torch.split(edge_shift, sizes[1:]), torch.split(edge_scaled, sizes[1:])
        values = leaves[-1]  # the deepest nodes have no children
        for level in range(len(sizes) - 1, 0, -1):
            shift = finite_max(values)  # (n, N, 1)
            mixed = torch.bmm(torch.exp(values - shift), scaled[level - 1].transpose(1, 2))
            messages = torch.log(mixed) + shift + shifts[level - 1].transpose(1, 2)
            local = self.parent_local[self.starts[level]:self.starts[level + 1]]
            values = leaves[level - 1].index_add(0, local, messages)
        shift = finite_max(values[0])  # (N, 1)
        root_shift, root_scaled = root
        return torch.log(torch.exp(values[0] - shift) @ root_scaled) + shift.squeeze(1) + root_shift

    # -- expectation-maximisation -------------------------------------------------------------------------------

    def em_step(self, x: Any, step_size: float, pseudo_count: float = 1e-6, softening: float = 1.0) -> float:
        """One step of online EM on the batch ``x``; returns the batch's mean log-likelihood before the step.

        Expected counts come from autograd, as in :meth:`RatSPN.em_step`: for a sum weight, w times the gradient of
        the batch log-likelihood with respect to w; for a leaf probability p(x_d = c | z_d = k), the gradient with
        respect to its logarithm. The batch's maximum-likelihood parameters (counts plus ``pseudo_count``,
        normalised) are mixed into the current ones with weight ``step_size`` (1: full-batch EM).
        ``softening`` < 1: EM on the softened rows (:mod:`overspn.engine.softening`), whose likelihood it returns;
        each softened leaf is linear in the leaf probabilities, so the same gradients are the expected counts of the
        clean values.
        """
        softening = checked_softening(softening)
        if self.parametrisation != "softmax":
            raise ConfigurationError(f"EM keeps sum weights normalised: use weights='softmax', not "
                                     f"{self.parametrisation!r}")
        data = self.encode(x, with_partition=False)
        codes = data.codes[:-1] if data.with_partition else data.codes  # the partition row is not data
        with torch.no_grad():
            table = self.leaf_log_table()
            edge = torch.softmax(self.edge_weights, dim=-1)
            root = torch.softmax(self.root_weights, dim=0)
        for tensor in (table, edge, root):
            tensor.requires_grad_()
        # counts add up over rows: large batches (full-batch EM) go in chunks of about _EM_CHUNK values of (D, N, K)
        chunk = max(1, _EM_CHUNK // (self.num_vars * self.config.latent))
        grads = [torch.zeros_like(table), torch.zeros_like(edge), torch.zeros_like(root)]
        total = 0.0
        for begin in range(0, len(codes), chunk):
            with torch.enable_grad():
                llh = self._root_values(codes[begin:begin + chunk], softened_log_table(table, softening),
                                        (edge.new_zeros(edge.shape[:-1] + (1,)), edge), (root.new_zeros(()), root))
                total += float(llh.detach().double().sum())
                if not math.isfinite(total):
                    return total
                for summed, grad in zip(grads, torch.autograd.grad(llh.sum(), [table, edge, root])):
                    summed += grad
        mean = total / max(1, len(codes))
        with torch.no_grad():
            for parameter, w, grad in ((self.edge_weights, edge, grads[1]), (self.root_weights, root, grads[2])):
                counts = w * grad + pseudo_count
                parameter.copy_(torch.log((1 - step_size) * w + step_size * counts / counts.sum(-1, keepdim=True)))
            counts = grads[0] + pseudo_count  # (D, C, K)
            self._set_leaf_probs((1 - step_size) * torch.exp(table) + step_size * counts / counts.sum(1, keepdim=True))
        return mean

    def _set_leaf_probs(self, probs: torch.Tensor) -> None:
        """Set the leaves to ``probs`` ``(D, C, K)`` (normalised over C)."""
        if self.config.leaf == "bernoulli":
            self.logit.copy_(torch.logit(probs[:, 1].clamp(1e-12, 1 - 1e-12)).to(self.dtype))
        else:
            self.logits.copy_(torch.log(probs.clamp_min(1e-300)).transpose(1, 2).to(self.dtype))

    # -- initialisation from data -------------------------------------------------------------------------------

    @torch.no_grad()
    def initialise_from_data(self, data: Any, seed: int = 0, pseudo_count: float = 1.0, iterations: int = 10) -> None:
        """Start the leaves of latent state k from cluster k of the data, and the tree near a mixture of clusters.

        At most a few thousand rows are sampled and clustered by k-means on their one-hot codes (missing values are
        all-zero); leaf (v, k) is the Laplace-smoothed distribution of ``x_v`` in cluster k (empty clusters: a random
        tenth of the sample), the root weights the cluster sizes, and every ``W_v`` half the identity (the child's
        latent follows its parent's) and half random, which breaks the symmetry between latent states.
        """
        values = self.check_data(data).double()
        rng = np.random.default_rng(seed)
        card, latent = self.config.cardinality, self.config.latent
        if len(values) > _INIT_ROWS:
            values = values[torch.from_numpy(rng.choice(len(values), _INIT_ROWS, replace=False)).to(values.device)]
        observed = ~torch.isnan(values)
        onehot = F.one_hot(torch.nan_to_num(values).long(), card).double() * observed.unsqueeze(-1)  # (S, D, C)
        points = onehot.flatten(1)
        sample = len(points)

        def random_rows(count: int) -> torch.Tensor:
            return torch.from_numpy(rng.choice(sample, count, replace=count > sample)).to(points.device)

        centres = points[random_rows(latent)]
        for _ in range(iterations):
            distance = (centres * centres).sum(1) - 2 * points @ centres.T  # (S, K), up to a per-row constant
            assign = distance.argmin(1)
            sizes = torch.bincount(assign, minlength=latent).double()
            sums = torch.zeros_like(centres).index_add_(0, assign, points)
            centres = torch.where(sizes[:, None] > 0, sums / sizes.clamp_min(1)[:, None], points[random_rows(latent)])
        counts = torch.zeros(latent, *onehot.shape[1:], dtype=torch.float64, device=points.device)
        counts.index_add_(0, assign, onehot)  # (K, D, C)
        empty = (sizes == 0).nonzero().squeeze(1)
        for k in empty.tolist():
            counts[k] = onehot[random_rows(max(1, sample // 10))].sum(0)
        counts = counts + pseudo_count + 1e-12
        self._set_leaf_probs((counts / counts.sum(-1, keepdim=True)).permute(1, 2, 0))
        sizes[empty] = 0.0
        root = (sizes + 1.0) / (sizes + 1.0).sum()
        noise = rng.uniform(0.5, 1.5, size=tuple(self.edge_weights.shape))
        edge = 0.5 * np.eye(latent) + 0.5 * noise / noise.sum(-1, keepdims=True)
        self.edge_weights.copy_(to_parameter(edge, self.parametrisation, self.dtype))
        self.root_weights.copy_(to_parameter(root.cpu().numpy(), self.parametrisation, self.dtype))

    # -- back to symbols ----------------------------------------------------------------------------------------

    @torch.no_grad()
    def to_structure(self) -> Node:
        """The same network as symbolic nodes, with the current parameters (weights as the actual weights)."""
        latent = self.config.latent
        table = torch.exp(self.leaf_log_table().double()).cpu().numpy()  # (D, C, K)
        if self.config.leaf == "bernoulli":
            p = torch.sigmoid(self.logit.double()).cpu().numpy()
            leaves: list[list[Leaf]] = [[Bernoulli(d, p[d, k]) for k in range(latent)] for d in range(self.num_vars)]
        else:
            leaves = [[Categorical(d, table[d, :, k]) for k in range(latent)] for d in range(self.num_vars)]
        edge = actual_weights(self.edge_weights, self.parametrisation)
        sums: list[list[list[Node]]] = [[] for _ in range(self.num_vars)]  # sums[v][c][j]: child c's sums
        parents = self.config.parents
        assert parents is not None, "HCLTConfig fills in the default tree"
        for position in range(self.num_vars - 1, -1, -1):  # deepest first
            v = int(self.order[position])
            products = [Product([leaves[v][k], *(s[k] for s in sums[v])]) if sums[v] else leaves[v][k]
                        for k in range(latent)]
            if position == 0:
                return Sum(products, actual_weights(self.root_weights, self.parametrisation))
            sums[parents[v]].append([Sum(products, edge[position - 1, j]) for j in range(latent)])
        raise AssertionError("unreachable")  # pragma: no cover
