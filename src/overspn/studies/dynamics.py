"""The dynamics of gradient ascent on deep tree SPNs, seen through their collapsed shallow mixture.

A tree-structured SPN is a mixture over its induced trees, ``f(x) = sum_k w_k C_k(x)``, whose weight ``w_k`` is the
product of the sum weights ``a_e`` on tree ``k`` (for :func:`overspn.overparametrize` the path
``prod_l w[l][phi(k, l)]``). Write ``g_k = dL/dw_k`` for the gradient of the shallow objective
``L = mean_n log f(x_n) - log f(*)`` and ``T_k`` for the edges of tree ``k``. The gradient of an edge is
``G_e = sum_{j : e in T_j} (w_j / a_e) g_j`` -- every component below the edge contributes -- and one step of gradient
ascent on the edges, ``a_e <- a_e + eta G_e``, changes ``w_k`` by

    w_k(t+1) - w_k(t) = eta sum_{e in T_k} (w_k / a_e) G_e + O(eta^2)                                   (1)
                      = rho_k g_k + lambda_k w_k + O(eta^2)

with the split the paper uses: edges that belong to tree ``k`` alone (the bottom layer of an overparametrized SPN)
give the adaptive rate, all shared edges the momentum-like term,

    rho_k    = eta sum_{e in T_k, private} (w_k / a_e)^2      (overparametrized: eta (prod_{l < L-1} w[l])^2)
    lambda_k = eta sum_{e in T_k, shared} G_e / a_e.

The paper writes ``rho = eta (w[0])^2``, the product of the layers above the bottom only when there are two layers.
The same change also splits into a self and a cross part,

    rho_self_k = eta sum_{e in T_k} (w_k / a_e)^2,
    cross_k    = eta sum_{e in T_k} (w_k / a_e) sum_{j != k, e in T_j} (w_j / a_e) g_j,

which shows that a component moves with the gradients of every component it shares a weight with. Unrolling the
first-order recursion ``w_k(t+1) = (1 + lambda_k(t)) w_k(t) + rho_k(t) g_k(t)`` gives
``w_k(t) = D_k(t, 0) w_k(0) + sum_{tau < t} mu_k(t, tau) g_k(tau)`` with
``D_k(t, s) = prod_{s <= u < t} (1 + lambda_k(u))`` and ``mu_k(t, tau) = rho_k(tau) D_k(t, tau + 1)``.

:class:`Tracer` trains a deep SPN with raw weights by gradient ascent (the paper's update: step, then clamp to the
floor) and records all of these quantities per iteration and component; :meth:`Tracer.eta_scaling` measures the
residual of the first-order prediction for one unclamped step of several sizes from a fixed state.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from overspn.engine.compiled import compile as compile_spn
from overspn.engine.encoding import EncodedData
from overspn.engine.layers import SumLayer
from overspn.errors import ConfigurationError, StructureError
from overspn.learn.fit import fit
from overspn.symbolic.structure import Leaf, Node, Product, Sum, describe, scopes, topological_order
from overspn.symbolic.transforms import count_induced_trees

__all__ = ["Factorisation", "factorise", "edge_values", "shallow_structure", "Expansion", "expand", "Trace",
           "Tracer", "component_weights", "relative_residual", "loglog_slope"]


@dataclass(frozen=True)
class Factorisation:
    """Which sum weights (edges) of a tree SPN multiply into each component weight of its induced-tree mixture.

    ``incidence[k, e]``: edge ``e`` lies on tree ``k``. ``edges[e]``: (position of the sum node in
    ``topological_order(root)``, child position). ``terminals[k]``: positions of tree ``k``'s terminal nodes (leaves
    and sub-networks over one variable). ``top[k]``: the edge leaving the root on tree ``k``.
    """

    incidence: np.ndarray
    edges: tuple[tuple[int, int], ...]
    terminals: tuple[tuple[int, ...], ...]
    top: np.ndarray

    @property
    def num_components(self) -> int:
        return self.incidence.shape[0]

    @property
    def private(self) -> np.ndarray:
        """``(E,)``: the edge lies on one tree only (it carries that component's adaptive rate)."""
        return self.incidence.sum(axis=0) == 1

    @property
    def depth(self) -> np.ndarray:
        """``(K,)``: number of sum weights multiplied into each component weight."""
        return self.incidence.sum(axis=1)


def factorise(root: Node, limit: int = 10_000) -> Factorisation:
    """The factorisation of a tree-structured SPN with a sum root into its induced trees.

    Trees are enumerated in the order of :func:`overspn.induced_trees`; for ``overparametrize(mixture, branching)``
    tree ``k`` is component ``k``. Raises StructureError when the SPN is not a tree or its root is not a sum, and
    ConfigurationError when it has more than ``limit`` induced trees.
    """
    if not isinstance(root, Sum):
        raise StructureError(f"the dynamics are defined for a sum node at the root, got {describe(root)}")
    total = count_induced_trees(root)  # validates, and checks that the SPN is a tree
    if total > limit:
        raise ConfigurationError(f"the SPN has {total} induced trees, more than limit={limit}")
    order = topological_order(root)
    scope = scopes(root, order)
    position = {node: i for i, node in enumerate(order)}
    edge_ids: dict[tuple[int, int], int] = {}
    trees: dict[Node, list[tuple[tuple[int, ...], tuple[int, ...]]]] = {}
    for node in order:
        if isinstance(node, Leaf) or len(scope[node]) == 1:
            trees[node] = [((), (position[node],))]
        elif isinstance(node, Sum):
            trees[node] = []
            for child_position, child in enumerate(node.children):
                edge = edge_ids.setdefault((position[node], child_position), len(edge_ids))
                trees[node].extend(((edge,) + edges, terms) for edges, terms in trees[child])
        else:
            trees[node] = [
                (tuple(e for edges, _ in combination for e in edges),
                 tuple(t for _, terms in combination for t in terms))
                for combination in itertools.product(*(trees[c] for c in node.children))
            ]
    enumerated = trees[root]
    incidence = np.zeros((len(enumerated), len(edge_ids)), dtype=bool)
    for k, (edges, _) in enumerate(enumerated):
        incidence[k, list(edges)] = True
    edges_sorted = tuple(sorted(edge_ids, key=edge_ids.__getitem__))
    top = np.array([edges[0] for edges, _ in enumerated], dtype=np.int64)
    return Factorisation(incidence, edges_sorted, tuple(terms for _, terms in enumerated), top)


def edge_values(root: Node, factorisation: Factorisation) -> np.ndarray:
    """``(E,)`` the current sum weights of ``root`` (same shape as the factorised SPN) on the factorisation's edges."""
    order = topological_order(root)
    values = []
    for node, child in factorisation.edges:
        sum_node = order[node]
        assert isinstance(sum_node, Sum), "an edge starts at a sum node"
        values.append(float(sum_node.weights[child]))
    return np.array(values)


def shallow_structure(root: Node, factorisation: Factorisation) -> Sum:
    """The induced-tree mixture of ``root`` at its current weights: a sum over one product per tree, weighted by the
    product of the tree's sum weights (the collapsed shallow SPN of an overparametrized one)."""
    order = topological_order(root)
    values = edge_values(root, factorisation)
    weights = np.prod(np.where(factorisation.incidence, values[None, :], 1.0), axis=1)
    products = [Product([order[t] for t in terms]) for terms in factorisation.terminals]
    return Sum(products, weights)


@dataclass(frozen=True)
class Expansion:
    """The first-order change of every component weight for one step of size ``eta`` (all ``(K,)`` except
    ``edge_gradient`` ``(E,)``); ``general = rho g + lambda w = rho_self g + cross`` and
    ``paper = rho_paper g + lambda w``."""

    weights: np.ndarray
    edge_gradient: np.ndarray
    rho: np.ndarray
    lam: np.ndarray
    rho_paper: np.ndarray
    rho_self: np.ndarray
    cross: np.ndarray
    general: np.ndarray
    paper: np.ndarray


def expand(factorisation: Factorisation, values: np.ndarray, gradient: np.ndarray, eta: float) -> Expansion:
    """Evaluate the first-order expansion (1) at edge values ``values`` ``(E,)`` and shallow gradient ``gradient``
    ``(K,)`` (``dL/dw_k``). Edge values must be positive: the momentum term divides by them."""
    values = np.asarray(values, dtype=np.float64)
    gradient = np.asarray(gradient, dtype=np.float64)
    if np.any(values <= 0):
        raise ConfigurationError("the first-order expansion needs positive sum weights")
    incidence = factorisation.incidence
    weights = component_weights(factorisation, values)
    # (K, E): the product of the other weights on tree k, w_k / a_e, for edges on the tree (0 elsewhere)
    others = np.where(incidence, weights[:, None] / values[None, :], 0.0)
    edge_gradient = (others * gradient[:, None]).sum(axis=0)
    private = factorisation.private
    rho = eta * (others**2 * private[None, :]).sum(axis=1)
    lam = eta * np.where(incidence & ~private[None, :], edge_gradient[None, :] / values[None, :], 0.0).sum(axis=1)
    rho_paper = eta * values[factorisation.top] ** 2
    rho_self = eta * (others**2).sum(axis=1)
    cross = eta * (others * (edge_gradient[None, :] - others * gradient[:, None])).sum(axis=1)
    return Expansion(weights, edge_gradient, rho, lam, rho_paper, rho_self, cross,
                     rho * gradient + lam * weights, rho_paper * gradient + lam * weights)


def relative_residual(actual: np.ndarray, predicted: np.ndarray) -> float:
    """``||actual - predicted|| / ||actual||`` over components (NaN when nothing moved)."""
    scale = float(np.linalg.norm(actual))
    return float(np.linalg.norm(np.asarray(actual) - np.asarray(predicted)) / scale) if scale > 0 else math.nan


def loglog_slope(x: Sequence[float], y: Sequence[float]) -> float:
    """Least-squares slope of log y against log x over the finite positive pairs."""
    pairs = [(math.log(a), math.log(b)) for a, b in zip(x, y) if a > 0 and b > 0 and math.isfinite(b)]
    if len(pairs) < 2:
        return math.nan
    lx, ly = np.array(pairs).T
    return float(np.polyfit(lx, ly, 1)[0])


def component_weights(factorisation: Factorisation, values: np.ndarray) -> np.ndarray:
    """``(K,)`` the collapsed weights: the product of the edge values on each tree."""
    return np.prod(np.where(factorisation.incidence, np.asarray(values)[None, :], 1.0), axis=1)


def _change(factorisation: Factorisation, weights: np.ndarray, before: np.ndarray, after: np.ndarray) -> np.ndarray:
    """``w_k(after) - w_k(before)``, for positive ratios without cancellation: ``w_k expm1(sum log(a_e' / a_e))``."""
    ratio = after / before
    if np.all(ratio > 0):
        return weights * np.expm1(factorisation.incidence.astype(np.float64) @ np.log(ratio))
    return weights * (np.prod(np.where(factorisation.incidence, ratio[None, :], 1.0), axis=1) - 1.0)


@dataclass
class Trace:
    """Per-iteration records of a traced run: ``(T, K)`` arrays for the steps, ``(T + 1, ...)`` for the states."""

    eta: float
    factorisation: Factorisation
    values: np.ndarray          # (T + 1, E) sum weights on the edges
    weights: np.ndarray         # (T + 1, K) collapsed component weights w_k(t)
    gradients: np.ndarray       # (T + 1, K) shallow gradients dL/dw_k at every state
    objective: np.ndarray       # (T + 1,) mean log-likelihood of the deep model
    objective_shallow: np.ndarray  # (T + 1,) the same of the collapsed shallow model
    rho: np.ndarray
    lam: np.ndarray
    rho_paper: np.ndarray
    rho_self: np.ndarray
    cross: np.ndarray
    actual: np.ndarray          # (T, K) w_k(t+1) - w_k(t) of the real (clamped) step
    general: np.ndarray         # (T, K) first-order prediction, general formula
    paper: np.ndarray           # (T, K) first-order prediction, the paper's formula
    clamped: np.ndarray         # (T, K) bool: the floor stopped an edge of tree k in this step

    @property
    def iterations(self) -> int:
        return self.actual.shape[0]

    def momentum_coefficients(self, t: int) -> np.ndarray:
        """``(t, K)``: ``mu_k(t, tau)`` for ``tau < t``, the weight of the past gradient ``g_k(tau)`` in ``w_k(t)``."""
        if not 0 <= t <= self.iterations:
            raise ConfigurationError(f"t must lie in [0, {self.iterations}], got {t}")
        mu = np.zeros((t, self.weights.shape[1]))
        decay = np.ones(self.weights.shape[1])
        for tau in range(t - 1, -1, -1):
            mu[tau] = self.rho[tau] * decay
            decay = decay * (1.0 + self.lam[tau])
        return mu

    def decayed_start(self) -> np.ndarray:
        """``(T + 1, K)``: ``D_k(t, 0) w_k(0)``, what is left of the initial weight after ``t`` steps."""
        factors = np.vstack([np.ones(self.weights.shape[1]), np.cumprod(1.0 + self.lam, axis=0)])
        return factors * self.weights[0]

    def unrolled(self) -> np.ndarray:
        """``(T + 1, K)``: the first-order recursion ``u(t+1) = (1 + lambda(t)) u(t) + rho(t) g(t)`` from ``u(0) =
        w(0)``, driven by the recorded rates and gradients; equals ``D(t, 0) w(0) + sum_tau mu(t, tau) g(tau)``."""
        result = np.empty_like(self.weights)
        result[0] = self.weights[0]
        for t in range(self.iterations):
            result[t + 1] = (1.0 + self.lam[t]) * result[t] + self.rho[t] * self.gradients[t]
        return result

    def step_residuals(self, formula: str = "general") -> np.ndarray:
        """``(T,)`` relative residual of the first-order prediction of every recorded step."""
        predicted = self.general if formula == "general" else self.paper
        return np.array([relative_residual(a, p) for a, p in zip(self.actual, predicted)])


class _Recorder:
    """Callback of :func:`overspn.fit` that records a :class:`Tracer`'s state at every iteration (0 included)."""

    def __init__(self, tracer: Tracer, snapshot_at: Sequence[int]) -> None:
        self.tracer, self.snapshot_at = tracer, set(snapshot_at)
        self.snapshots: dict[int, dict] = {}
        self.values: list[np.ndarray] = []
        self.gradients: list[np.ndarray] = []
        self.objective: list[float] = []
        self.objective_shallow: list[float] = []

    def on_epoch(self, model: torch.nn.Module, entry: dict) -> None:
        t = entry["epoch"]
        if t in self.snapshot_at:
            self.snapshots[t] = self.tracer.snapshot()
        values, gradient, shallow_value = self.tracer.state()
        self.values.append(values)
        self.gradients.append(gradient)
        self.objective_shallow.append(shallow_value)
        self.objective.append(entry["train_llh"])


class Tracer:
    """Train a tree SPN (raw weights, float64) by gradient ascent on the mean log-likelihood and record its dynamics.

    ``root``: the deep SPN, e.g. ``overparametrize(mixture(...), branching, init=1e-4)`` or any tree SPN with a sum
    root. ``data``: the training rows. Every step is the paper's: all weights move by ``lr`` times their gradient and
    are then clamped to ``floor`` (:func:`overspn.fit`, full batch, plain SGD, every row counted).
    """

    def __init__(self, root: Node, data: np.ndarray, lr: float, floor: float = 1e-4, limit: int = 10_000) -> None:
        if not (math.isfinite(lr) and lr > 0):
            raise ConfigurationError(f"lr must be a finite number > 0, got {lr!r}")
        self.factorisation = factorise(root, limit)
        self.lr, self.floor = lr, floor
        self.model = compile_spn(root, "raw", floor=floor, dtype=torch.float64)
        self.data = self.model.encode(data)
        self.optimizer = torch.optim.SGD(self.model.parameters(), lr=lr)
        self._shallow_data: EncodedData | None = None

    def _objective(self) -> torch.Tensor:
        return self.model.log_likelihood(self.data).mean()

    def state(self) -> tuple[np.ndarray, np.ndarray, float]:
        """Edge values ``(E,)``, shallow gradient ``dL/dw`` ``(K,)`` and the shallow objective at the current state."""
        structure = self.model.to_structure()
        values = edge_values(structure, self.factorisation)
        shallow = compile_spn(shallow_structure(structure, self.factorisation), "raw", floor=0.0,
                              dtype=torch.float64, num_vars=self.model.num_vars)
        if self._shallow_data is None:
            self._shallow_data = shallow.encode(self.data.values[:-1])  # the encoding depends on the shape only
        objective = shallow.log_likelihood(self._shallow_data).mean()
        root = shallow.layers[-1]
        assert isinstance(root, SumLayer), "the root of the shallow structure is a sum"
        root_weights = root.weights.param
        (gradient,) = torch.autograd.grad(objective, root_weights)
        return values, gradient.numpy().copy(), objective.item()

    def snapshot(self) -> dict[str, torch.Tensor]:
        return {name: tensor.clone() for name, tensor in self.model.state_dict().items()}

    def restore(self, snapshot: dict[str, torch.Tensor]) -> None:
        self.model.load_state_dict(snapshot)

    def run(self, iterations: int, snapshot_at: Sequence[int] = ()) -> tuple[Trace, dict[int, dict]]:
        """Train ``iterations`` steps; returns the trace and model snapshots at the iterations asked for."""
        if iterations < 1:
            raise ConfigurationError(f"iterations must be >= 1, got {iterations}")
        recorder = _Recorder(self, snapshot_at)
        fit(self.model, self.data, optimizer=self.optimizer, epochs=iterations, callbacks=[recorder],
            deduplicate=False)
        snapshots, values, gradients = recorder.snapshots, recorder.values, recorder.gradients
        objective, objective_shallow = recorder.objective, recorder.objective_shallow
        values_ = np.array(values)
        expansions = [expand(self.factorisation, values_[t], gradients[t], self.lr) for t in range(iterations)]
        weights = np.array([component_weights(self.factorisation, a) for a in values_])
        actual = np.array([_change(self.factorisation, weights[t], values_[t], values_[t + 1])
                           for t in range(iterations)])

        def stack(name: str) -> np.ndarray:
            return np.array([getattr(expansion, name) for expansion in expansions])

        trace = Trace(self.lr, self.factorisation, values_, weights, np.array(gradients), np.array(objective),
                      np.array(objective_shallow), stack("rho"), stack("lam"), stack("rho_paper"),
                      stack("rho_self"), stack("cross"), actual, stack("general"), stack("paper"),
                      self._clamped(values_, stack("edge_gradient")))
        return trace, snapshots

    def _clamped(self, values: np.ndarray, edge_gradients: np.ndarray) -> np.ndarray:
        """``(T, K)``: an edge of tree k would have fallen below the floor and was held on it."""
        held = (values[1:] == self.floor) & (values[:-1] + self.lr * edge_gradients < self.floor)
        return (held.astype(np.int64) @ self.factorisation.incidence.T.astype(np.int64)) > 0

    def eta_scaling(self, etas: Sequence[float]) -> list[dict[str, Any]]:
        """Residual of the first-order prediction for one unclamped gradient step (weights may leave the floor or
        turn negative) of each size in ``etas`` from the current state (which is left unchanged): rows
        ``formula, eta, residual, absolute, change``.

        Formulas "general" and "paper" take the actual step and the prediction from ONE gradient, the shallow
        gradient ``g``: the edges move by ``eta G_e`` with ``G_e = sum_j (w_j / a_e) g_j``, exactly what a gradient
        step of the deep model does in exact arithmetic, so the residual is the expansion's own (second order in
        ``eta``). "general_deep_step" takes the actual step from the deep model's autograd gradient instead: in
        float64 the two gradients differ by rounding, which at a nearly symmetric state (the paper's start, where
        every ``g_k`` is close to 0) is a few percent of the gradient and sets a floor on that residual; its value
        at the smallest ``eta`` is that noise level. ``resolution`` is float64's resolution of the weights,
        ``eps ||w||``: an absolute residual within a few times it is rounding, not the expansion's error.
        """
        values, gradient, _ = self.state()
        parameters = list(self.model.parameters())
        self.model.zero_grad()
        self._objective().backward()
        grads = []
        for parameter in parameters:
            assert parameter.grad is not None, "every parameter of the model enters the objective"
            grads.append(parameter.grad.clone())
        saved = [p.detach().clone() for p in parameters]
        rows = []
        for eta in etas:
            with torch.no_grad():
                for parameter, grad in zip(parameters, grads):
                    parameter.add_(eta * grad)
            stepped = edge_values(self.model.to_structure(), self.factorisation)
            with torch.no_grad():
                for parameter, value in zip(parameters, saved):
                    parameter.copy_(value)
            expansion = expand(self.factorisation, values, gradient, eta)
            one_gradient = _change(self.factorisation, expansion.weights, values,
                                   values + eta * expansion.edge_gradient)
            deep_step = _change(self.factorisation, expansion.weights, values, stepped)
            for formula, actual, predicted in (("general", one_gradient, expansion.general),
                                               ("paper", one_gradient, expansion.paper),
                                               ("general_deep_step", deep_step, expansion.general)):
                rows.append({"formula": formula, "eta": float(eta), "residual": relative_residual(actual, predicted),
                             "absolute": float(np.linalg.norm(actual - predicted)),
                             "change": float(np.linalg.norm(actual)),
                             "resolution": float(np.finfo(np.float64).eps * np.linalg.norm(expansion.weights))})
        self.model.zero_grad()
        return rows
