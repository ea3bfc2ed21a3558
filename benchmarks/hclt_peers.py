"""The same hidden Chow-Liu tree (HCLT) in overspn and cirkit 0.3.1, for the speed suite's HCLT training steps.

Both libraries get one tree: the Chow-Liu tree that :meth:`overspn.engine.hclt.HCLT.from_data` learns from the
training data (:func:`chow_liu_parents`). overspn builds its :class:`~overspn.engine.hclt.HCLT` on that ``parents``
tuple; cirkit gets the same predecessor array through ``tree2rg``, so both circuits stand on one region graph. Both
have ``K`` latent states per variable (cirkit: ``num_input_units = num_sum_units = K``), binary inputs (overspn:
Bernoulli leaves with one logit; cirkit: two-state categorical layers with two logits), softmax sum weights and
float32.

cirkit's sum-product layer is ``"cp-t"`` (CP-transposed): the Hadamard product of a region's inputs followed by one
``K x K`` sum layer, which is the HCLT's own shape: ``P_{v,k} = leaf_{v,k}(x_v) prod_c S_{c,k}`` and
``S_{v,j} = sum_k W_v[j, k] P_{v,k}``, so every edge from a node to its parent is one ``K x K`` mixing (``K x 1`` at
the root). ``"tucker"`` would mix the Kronecker product of the inputs (``K^arity`` columns), and ``"cp"`` puts a
``K x K`` sum on every input of a product, i.e. also on each variable's own leaf, which an HCLT does not have.
The one difference from overspn's layout is at the leaves of the tree: ``tree2rg`` passes a childless variable's
input layer straight into its parent's product, with no sum, while overspn mixes it like every other edge.
A mixture of categorical distributions is a categorical distribution, so the two describe the same family of
distributions, but overspn has one ``K x K`` matrix per leaf of the tree more (on plants, 20 of its 68 edges)
and cirkit a second logit per input; the parameter counts are reported side by side.

cirkit's model starts from overspn's parameters (the same function; a leaf's mixing folded into its categorical
input), which :func:`check_same_function` uses as an exact check at equal parameters on top of
``peers.check_comparable``'s checks (finite log-likelihoods, log Z = 0, equal values at factorised parameters).
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from peers import CirkitRunner, OverspnRunner, Runner

from overspn.engine.hclt import HCLT, HCLTConfig

# overspn has D K + (D - 1) K^2 + K parameters: on plants (D = 69) 10,632 / 100,852 / 1,004,058
HCLT_LATENTS = (12, 38, 121)


@dataclass(frozen=True)
class TreeShape:
    """An HCLT's layout: ``latent`` states per variable over the tree ``parents`` (-1 at the root)."""

    num_vars: int
    latent: int
    parents: tuple[int, ...]


def chow_liu_parents(data: Any) -> tuple[int, ...]:
    """The Chow-Liu tree that ``HCLT.from_data`` builds on ``data`` (rows of binary states)."""
    parents = HCLT.from_data(data, latent=1, init="random").config.parents
    assert parents is not None
    return parents


def overspn_hclt(shape: TreeShape, seed: int) -> HCLT:
    config = HCLTConfig(shape.num_vars, shape.latent, 2, "bernoulli", shape.parents, seed)
    return HCLT(config, weights="softmax", dtype=torch.float32)


class OverspnHCLTRunner(OverspnRunner):
    """overspn's HCLT; likelihood and partition function as for the RAT-SPN runner."""

    def build(self, shape: TreeShape, seed: int) -> torch.nn.Module:  # type: ignore[override]
        return overspn_hclt(shape, seed)

    @torch.no_grad()
    def set_factorised(self, p: np.ndarray) -> None:
        logit = torch.from_numpy(np.log(p / (1 - p))).to(self.module.logit.dtype)
        self.module.logit.copy_(logit[:, None].expand_as(self.module.logit))
        self.module.edge_weights.zero_()
        self.module.root_weights.zero_()


def cirkit_initial_values(model: HCLT) -> tuple[dict[int, np.ndarray], dict[int, np.ndarray]]:
    """overspn's parameters as cirkit's: the ``(K, 2)`` categorical logits of every variable, and the softmax logits
    of the sum over the subtree of every variable that has children (``(K, K)``; ``(1, K)`` at the root). A leaf of
    the tree has no sum in cirkit: its mixing ``softmax(W_c) p_c`` goes into its categorical input."""
    with torch.no_grad():
        table = model.leaf_log_table().double()  # (D, 2, K): log p(x_d = c | z_d = k)
        edges = model.edge_weights.double()  # (D-1, K, K) logits, breadth-first order[1:]
        root = model.root_weights.double()
    parents = model.config.parents
    assert parents is not None
    has_children = {p for p in parents if p >= 0}
    inputs, sums = {}, {}
    for v, parent in enumerate(parents):
        log_probs = table[v].T  # (K, 2)
        if parent >= 0:
            logits = edges[model.position[v] - 1]
            if v in has_children:
                sums[v] = logits.numpy()
            else:
                log_probs = torch.logsumexp(torch.log_softmax(logits, -1)[:, :, None] + log_probs[None], dim=1)
        else:
            sums[v] = root[None].numpy()
        inputs[v] = log_probs.numpy()
    return inputs, sums


def subtree_roots(parents: tuple[int, ...]) -> dict[frozenset[int], int]:
    """Every variable's subtree (its scope) -> the variable."""
    scopes: dict[int, set[int]] = {v: {v} for v in range(len(parents))}
    for v in range(len(parents)):
        u = parents[v]
        while u >= 0:
            scopes[u].add(v)
            u = parents[u]
    return {frozenset(s): v for v, s in scopes.items()}


class CirkitHCLTRunner(CirkitRunner):
    """cirkit's HCLT over ``tree2rg(parents)`` with ``"cp-t"`` layers (see the module docstring), compiled as the
    RAT-SPN's (lse-sum semiring, folded, optimised), starting from overspn's parameters at the same seed, or from
    those of ``reference``."""

    name = "cirkit"

    def __init__(self, shape: TreeShape, seed: int, reference: HCLT | None = None) -> None:
        self.reference = reference
        super().__init__(shape, seed)  # type: ignore[arg-type]

    def build(self, shape: TreeShape, seed: int) -> torch.nn.Module:  # type: ignore[override]
        import cirkit.symbolic.functional as symbolic
        from cirkit.pipeline import PipelineContext
        from cirkit.symbolic.initializers import ConstantTensorInitializer
        from cirkit.symbolic.layers import CategoricalLayer, SumLayer
        from cirkit.symbolic.parameters import TensorParameter
        from cirkit.templates import utils
        from cirkit.templates.region_graph.algorithms.utils import tree2rg

        torch.manual_seed(seed)
        region_graph = tree2rg(np.asarray(shape.parents, dtype=np.int64))
        softmax = utils.parameterization_to_factory(utils.Parameterization(activation="softmax",
                                                                           initialization="normal"))
        circuit = region_graph.build_circuit(
            input_factory=functools.partial(CategoricalLayer, num_categories=2), sum_product="cp-t",
            sum_weight_factory=softmax, num_input_units=shape.latent, num_sum_units=shape.latent)
        inputs, sums = cirkit_initial_values(self.reference or overspn_hclt(shape, seed))
        owner = subtree_roots(shape.parents)
        counts = {"inputs": 0, "sums": 0}
        for layer in circuit.layers:
            if isinstance(layer, CategoricalLayer):
                (variable,) = circuit.layer_scope(layer)
                value, kind = inputs[variable], "inputs"
            elif isinstance(layer, SumLayer):
                value, kind = sums[owner[frozenset(circuit.layer_scope(layer))]], "sums"
            else:
                continue
            (parameter,) = layer.params.values()
            (tensor,) = [node for node in parameter.nodes if isinstance(node, TensorParameter)]
            if tensor.shape != value.shape:
                raise RuntimeError(f"cirkit's {type(layer).__name__} has shape {tensor.shape}, expected {value.shape}")
            tensor.initializer = ConstantTensorInitializer(value.astype(np.float32))
            counts[kind] += 1
        if counts != {"inputs": len(inputs), "sums": len(sums)}:
            raise RuntimeError(f"cirkit's circuit has {counts} layers, expected {len(inputs)} inputs, {len(sums)} sums")
        context = PipelineContext(backend="torch", semiring="lse-sum", fold=True, optimize=True)
        with context:
            compiled = context.compile(circuit)
            self.partition = context.compile(symbolic.integrate(circuit))
        return compiled


HCLT_RUNNERS: dict[str, type[Runner]] = {"overspn": OverspnHCLTRunner, "cirkit": CirkitHCLTRunner}


def check_same_function(shape: TreeShape, data: torch.Tensor, rows: int, seed: int) -> dict[str, Any]:
    """overspn's HCLT initialised from ``data`` (leaves from clusters, edges near the identity: sharp dependencies
    along the tree) and cirkit's built from its parameters give the same log-likelihoods on ``rows`` rows."""
    ours = OverspnHCLTRunner(shape, seed)
    ours.module.initialise_from_data(data, seed=seed)
    theirs = CirkitHCLTRunner(shape, seed, reference=ours.module)
    x = data[:rows]
    with torch.no_grad():
        a = ours.log_likelihood(x).double()
        b = theirs.log_likelihood(theirs.prepare(x)).double()
    error = float((a - b).abs().max())
    if not bool(torch.isfinite(a).all()) or error > 1e-3:
        raise RuntimeError(f"overspn's and cirkit's HCLTs differ by {error} nats at equal parameters")
    return {"rows": len(x), "mean_ll": float(a.mean()), "max_abs_error": error,
            "log_partition": {"overspn": ours.log_partition(), "cirkit": theirs.log_partition()}}
