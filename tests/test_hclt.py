"""Hidden Chow-Liu trees: equality with the generic engine, exact normalisation, EM by hand, softened data by
enumeration, files, data."""

from __future__ import annotations

import itertools
import math

import numpy as np
import pytest
import torch

import overspn as osp
from overspn.engine.compiled import compile_structure
from overspn.engine.hclt import HCLT, HCLTConfig
from overspn.engine.weights import actual_weights
from overspn.errors import ConfigurationError, DataError
from overspn.symbolic.structure import Sum

TREE = (2, 2, -1, 1, 1)  # root 2; children 0 and 1; 1 has children 3 and 4


def _data(cardinality: int, rows: int, num_vars: int, seed: int, missing: float) -> np.ndarray:
    rng = np.random.default_rng(seed)
    x = rng.integers(0, cardinality, size=(rows, num_vars)).astype(np.float64)
    x[rng.random(x.shape) < missing] = np.nan
    return x


def _model(weights: str, leaf: str = "bernoulli", cardinality: int = 2, latent: int = 3, parents=TREE,
           seed: int = 0) -> HCLT:
    """A float64 HCLT whose weights are unnormalised for "log" and "raw" (the partition function is not 1)."""
    model = HCLT(HCLTConfig(len(parents), latent, cardinality, leaf, parents, seed), weights, dtype=torch.float64)
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for parameter in model.sum_weight_parameters():
            noise = torch.rand(parameter.shape, generator=generator, dtype=parameter.dtype)
            parameter.mul_(0.2 + 3 * noise) if weights == "raw" else parameter.add_(2 * noise - 1)
    return model


@pytest.mark.parametrize("weights", ["softmax", "log", "raw"])
@pytest.mark.parametrize(("leaf", "cardinality"), [("bernoulli", 2), ("categorical", 3)])
def test_equals_the_generic_engine_on_its_structure(weights: str, leaf: str, cardinality: int) -> None:
    model = _model(weights, leaf, cardinality)
    root = model.to_structure()
    assert isinstance(root, Sum) and root.scope == frozenset(range(5))
    assert osp.num_parameters(root) == model.num_parameters()
    generic = compile_structure(root, weights, dtype=torch.float64, num_vars=5, fast=False)
    x = _data(cardinality, 40, 5, seed=1, missing=0.3)
    x[0] = np.nan
    with torch.no_grad():
        got = model.log_likelihood(x)
        torch.testing.assert_close(got, generic.log_likelihood(x), rtol=0, atol=1e-10)
        torch.testing.assert_close(got, model.to_compiled().log_likelihood(x), rtol=0, atol=1e-10)
        torch.testing.assert_close(model.log_unnormalised(x), generic.log_unnormalised(x), rtol=0, atol=1e-10)
        torch.testing.assert_close(model.log_partition(), generic.log_partition(), rtol=0, atol=1e-10)
        assert weights == "softmax" or abs(float(model.log_partition())) > 1e-3
    assert abs(float(got[0])) < 1e-12


@pytest.mark.parametrize("weights", ["softmax", "log", "raw"])
def test_gradients_match_finite_differences(weights: str) -> None:
    model = _model(weights, "categorical", 3, latent=2, parents=(-1, 0, 1, 1), seed=2)
    x = torch.from_numpy(_data(3, 6, 4, seed=0, missing=0.2))
    names = [name for name, _ in model.named_parameters()]
    inputs = tuple(p.detach().clone().requires_grad_() for p in model.parameters())

    def functional(*values: torch.Tensor) -> torch.Tensor:
        return torch.func.functional_call(model, dict(zip(names, values)), (x,))

    assert torch.autograd.gradcheck(functional, inputs, eps=1e-6, atol=1e-6)


def test_gradient_of_the_data_likelihood_matches_the_generic_engine() -> None:
    """d/dt of sum log p(x) along a random direction of all parameters, versus the generic engine's values."""
    model = _model("log", latent=2, seed=3)
    x = _data(2, 30, 5, seed=4, missing=0.2)
    direction = [torch.randn(p.shape, generator=torch.Generator().manual_seed(i), dtype=torch.float64)
                 for i, p in enumerate(model.parameters())]
    total = model.log_likelihood(x).sum()
    grads = torch.autograd.grad(total, list(model.parameters()))
    analytic = sum(float((g * d).sum()) for g, d in zip(grads, direction))

    def generic_at(t: float) -> float:
        with torch.no_grad():
            for p, d in zip(model.parameters(), direction):
                p.add_(t * d)
            value = float(model.to_compiled().log_likelihood(x).sum())
            for p, d in zip(model.parameters(), direction):
                p.sub_(t * d)
        return value

    eps = 1e-5
    assert abs((generic_at(eps) - generic_at(-eps)) / (2 * eps) - analytic) < 1e-6 * max(1.0, abs(analytic))


@pytest.mark.parametrize(("leaf", "cardinality", "num_vars", "weights"),
                         [("bernoulli", 2, 5, "softmax"), ("bernoulli", 2, 5, "raw"), ("categorical", 3, 4, "log")])
def test_normalised_by_enumeration_and_marginals_are_sums(leaf: str, cardinality: int, num_vars: int,
                                                          weights: str) -> None:
    model = _model(weights, leaf, cardinality, latent=3, parents=TREE[:num_vars] if num_vars == 5 else (-1, 0, 0, 1))
    states = np.array(list(itertools.product(range(cardinality), repeat=num_vars)), dtype=np.float64)
    with torch.no_grad():
        assert abs(float(torch.logsumexp(model.log_likelihood(states), dim=0))) < 1e-10
        assert abs(float(torch.logsumexp(model.log_unnormalised(states), dim=0) - model.log_partition())) < 1e-10
        for missing in (1, 2):  # an inner node and a tree leaf (or the root's other child)
            partial = np.unique(np.where(np.arange(num_vars) == missing, np.nan, states), axis=0)
            completed = np.repeat(partial, cardinality, axis=0)
            completed[:, missing] = np.tile(np.arange(cardinality), len(partial))
            explicit = torch.logsumexp(model.log_likelihood(completed).view(-1, cardinality), dim=1)
            torch.testing.assert_close(model.log_likelihood(partial), explicit, rtol=0, atol=1e-10)


def test_em_step_equals_em_by_hand() -> None:
    parents, latent, step, pseudo = (1, -1, 1), 2, 0.7, 0.1
    model = _model("softmax", "categorical", 3, latent=latent, parents=parents, seed=5)
    x = _data(3, 12, 3, seed=6, missing=0.2)
    with torch.no_grad():
        leaf = torch.exp(model.leaf_log_table()).numpy()  # (D, C, K)
        edge = torch.softmax(model.edge_weights, -1).numpy()  # (D-1, K, K) in breadth-first order
        root = torch.softmax(model.root_weights, 0).numpy()
    weight_of = {int(v): edge[p - 1] for p, v in enumerate(model.order) if p > 0}
    counts_root, counts_leaf = np.zeros(latent), np.zeros_like(leaf)
    counts_edge = {v: np.zeros((latent, latent)) for v in weight_of}
    total = 0.0
    for row in x:
        joint = {}
        for z in itertools.product(range(latent), repeat=3):
            p = root[z[1]] * weight_of[0][z[1], z[0]] * weight_of[2][z[1], z[2]]
            for v in range(3):
                p *= 1.0 if np.isnan(row[v]) else leaf[v, int(row[v]), z[v]]
            joint[z] = p
        evidence = sum(joint.values())
        total += np.log(evidence)
        for z, p in joint.items():
            q = p / evidence
            counts_root[z[1]] += q
            counts_edge[0][z[1], z[0]] += q
            counts_edge[2][z[1], z[2]] += q
            for v in range(3):
                if not np.isnan(row[v]):
                    counts_leaf[v, int(row[v]), z[v]] += q

    def mixed(old: np.ndarray, counts: np.ndarray, axis: int) -> np.ndarray:
        counts = counts + pseudo
        return (1 - step) * old + step * counts / counts.sum(axis=axis, keepdims=True)

    assert abs(model.em_step(x, step_size=step, pseudo_count=pseudo) - total / len(x)) < 1e-12
    with torch.no_grad():
        np.testing.assert_allclose(torch.softmax(model.root_weights, 0).numpy(), mixed(root, counts_root, 0),
                                   rtol=0, atol=1e-12)
        for p, v in enumerate(model.order[1:], start=1):
            np.testing.assert_allclose(torch.softmax(model.edge_weights[p - 1], -1).numpy(),
                                       mixed(weight_of[int(v)], counts_edge[int(v)], 1), rtol=0, atol=1e-12)
        np.testing.assert_allclose(torch.exp(model.leaf_log_table()).numpy(), mixed(leaf, counts_leaf, 1),
                                   rtol=0, atol=1e-12)


def test_full_batch_em_never_decreases_the_likelihood() -> None:
    x = _data(2, 300, 6, seed=7, missing=0.1)
    x[:, 3:] = np.where(np.isnan(x[:, 3:]), np.nan, x[:, :3])  # dependent columns
    model = HCLT.from_data(x, latent=4, dtype=torch.float64)
    values = [model.em_step(x, step_size=1.0, pseudo_count=0.0) for _ in range(6)]
    assert all(later >= earlier - 1e-9 for earlier, later in zip(values, values[1:]))


@pytest.mark.parametrize("weights", ["softmax", "log", "raw"])
@pytest.mark.parametrize("leaf", ["bernoulli", "categorical"])
def test_saved_model_reloads_bit_for_bit(tmp_path, weights: str, leaf: str) -> None:
    cardinality = 2 if leaf == "bernoulli" else 4
    model = HCLT(HCLTConfig(5, 4, cardinality, leaf, TREE, seed=1), weights)
    path = tmp_path / "hclt.ospn"
    osp.save(model, path)
    loaded = osp.load(path)
    assert type(loaded) is HCLT and loaded.config == model.config and loaded.parametrisation == weights
    assert loaded.state_dict().keys() == model.state_dict().keys()
    for key, value in model.state_dict().items():
        assert torch.equal(loaded.state_dict()[key], value)
    x = _data(cardinality, 20, 5, seed=2, missing=0.2)
    with torch.no_grad():
        assert torch.equal(loaded.log_likelihood(x), model.log_likelihood(x))


def test_large_trees_and_many_latent_states_run() -> None:
    chain = HCLT(HCLTConfig(200, latent=8), "log", dtype=torch.float64)  # the default tree: a chain of depth 199
    assert len(chain.starts) == 201
    x = torch.from_numpy(_data(2, 32, 200, seed=0, missing=0.1))
    llh = chain.log_likelihood(x)
    llh.sum().backward()
    assert torch.isfinite(llh).all() and all(torch.isfinite(p.grad).all() for p in chain.parameters())
    wide = HCLT(HCLTConfig(8, latent=256, parents=(-1, 0, 0, 1, 1, 2, 2, 3)))
    x = _data(2, 64, 8, seed=1, missing=0.1)
    llh = wide.log_likelihood(x)
    llh.sum().backward()
    assert torch.isfinite(llh).all() and all(torch.isfinite(p.grad).all() for p in wide.parameters())
    with torch.no_grad():
        assert abs(float(wide.log_partition())) < 1e-5


def test_from_data_recovers_the_tree_and_beats_independent_marginals() -> None:
    rng = np.random.default_rng(0)
    parents = (3, 0, 0, -1, 3, 4, 4, 1)
    rows = 3000
    x = np.zeros((rows, 8))
    x[:, 3] = rng.random(rows) < 0.6
    for v in (0, 4, 1, 2, 5, 6, 7):  # parents first
        flip = rng.random(rows) < np.where(x[:, parents[v]] == 1, 0.1, 0.25)
        x[:, v] = np.where(flip, 1 - x[:, parents[v]], x[:, parents[v]])
    train, test = x[:2000], x[2000:]
    model = HCLT.from_data(train, latent=4, dtype=torch.float64, seed=1)
    learned = {frozenset((v, p)) for v, p in enumerate(model.config.parents) if p >= 0}
    assert learned == {frozenset((v, p)) for v, p in enumerate(parents) if p >= 0}
    p1 = (train.sum(0) + 1) / (len(train) + 2)
    independent = float(np.mean(np.log(np.where(test == 1, p1, 1 - p1)).sum(1)))
    with torch.no_grad():
        initial = float(model.log_likelihood(test).mean())
    for _ in range(10):
        model.em_step(train, step_size=1.0, pseudo_count=0.1)
    with torch.no_grad():
        trained = float(model.log_likelihood(test).mean())
    assert initial > independent and trained > independent + 0.3


def test_sampling_and_mpe_through_the_structure() -> None:
    model = _model("softmax", latent=2)
    samples = model.sample(50, generator=torch.Generator().manual_seed(0))
    assert samples.shape == (50, 5) and set(samples.unique().tolist()) <= {0.0, 1.0}
    completed = model.mpe(np.array([[0, np.nan, 1, np.nan, 0]]))
    assert not torch.isnan(completed).any() and completed[0, 0] == 0 and completed[0, 2] == 1


def test_bad_configuration_and_data_are_named() -> None:
    with pytest.raises(ConfigurationError, match="latent must be a positive integer, got 0"):
        HCLTConfig(3, latent=0)
    with pytest.raises(ConfigurationError, match="leaf must be one of"):
        HCLTConfig(3, leaf="gaussian")
    with pytest.raises(ConfigurationError, match="cardinality 2, got 3"):
        HCLTConfig(3, cardinality=3)
    with pytest.raises(ConfigurationError, match="3 integers"):
        HCLTConfig(3, parents=(-1, 0))
    with pytest.raises(ConfigurationError, match="exactly one root"):
        HCLTConfig(3, parents=(-1, 0, -1))
    with pytest.raises(ConfigurationError, match="cycle"):
        HCLTConfig(4, parents=(-1, 2, 3, 1))
    with pytest.raises(ConfigurationError, match=r"parents\[1\]"):
        HCLTConfig(3, parents=(-1, 7, 0))
    with pytest.raises(ConfigurationError, match="softmax"):
        HCLT(HCLTConfig(3), "log").em_step(np.zeros((2, 3)), 0.5)
    with pytest.raises(ConfigurationError, match="init"):
        HCLT.from_data(np.zeros((4, 3)), init="kmeans")
    model = HCLT(HCLTConfig(4, latent=2))
    with pytest.raises(DataError, match="row 1, column 2"):
        model.log_likelihood(np.array([[0, 1, 0, 1], [0, 1, 2, 1.0]]))
    single = HCLT(HCLTConfig(1, latent=3, parents=(-1,)), "raw", dtype=torch.float64)
    with torch.no_grad():
        assert abs(float(torch.logsumexp(single.log_likelihood(np.array([[0.0], [1.0]])), 0))) < 1e-12


def test_em_step_on_encoded_data_ignores_the_partition_row() -> None:
    x = _data(2, 50, 5, seed=8, missing=0.1)
    plain, encoded = _model("softmax", seed=4), _model("softmax", seed=4)
    assert plain.em_step(x, 0.5) == pytest.approx(encoded.em_step(encoded.encode(x), 0.5), abs=1e-12)
    for a, b in zip(plain.parameters(), encoded.parameters()):
        torch.testing.assert_close(a, b, rtol=0, atol=1e-12)
    assert HCLTConfig(np.int64(3), seed=np.int64(2)).as_dict() == HCLTConfig(3, seed=2).as_dict()


def _enumerated(model: HCLT, x: np.ndarray, softening: float) -> tuple[np.ndarray, np.ndarray, dict, np.ndarray]:
    """By enumeration of every latent state z and every clean value x' of the observed variables: the softened
    log-likelihood of each row, log sum_{z, x'} p(z) prod_v p(x'_v | z_v) q(x'_v | x_v) (a missing variable's leaf
    sums to 1), and the expected counts of the root, of every edge (by child variable) and of the leaves."""
    parents, latent = model.config.parents, model.config.latent
    num, card = model.num_vars, model.config.cardinality
    with torch.no_grad():
        leaf = torch.exp(model.leaf_log_table().double()).numpy()  # (D, C, K)
    edge = actual_weights(model.edge_weights, model.parametrisation)  # (D-1, K, K) in breadth-first order
    root = actual_weights(model.root_weights, model.parametrisation)
    weight_of = {int(v): edge[p - 1] for p, v in enumerate(model.order) if p > 0}
    top = parents.index(-1)
    partition = sum(root[z[top]] * np.prod([weight_of[v][z[parents[v]], z[v]] for v in weight_of])
                    for z in itertools.product(range(latent), repeat=num))
    q = np.full((card, card), (1 - softening) / (card - 1))
    np.fill_diagonal(q, softening)
    llh, counts_root, counts_leaf = np.zeros(len(x)), np.zeros(latent), np.zeros_like(leaf)
    counts_edge = {v: np.zeros((latent, latent)) for v in weight_of}
    for n, row in enumerate(x):
        observed = [v for v in range(num) if not np.isnan(row[v])]
        joint = {}
        for z in itertools.product(range(latent), repeat=num):
            prior = root[z[top]] * np.prod([weight_of[v][z[parents[v]], z[v]] for v in weight_of])
            for clean in itertools.product(range(card), repeat=len(observed)):
                joint[z, clean] = prior * np.prod([leaf[v, c, z[v]] * q[c, int(row[v])]
                                                   for v, c in zip(observed, clean)])
        evidence = sum(joint.values())
        llh[n] = np.log(evidence / partition)
        for (z, clean), p in joint.items():
            counts_root[z[top]] += p / evidence
            for v in weight_of:
                counts_edge[v][z[parents[v]], z[v]] += p / evidence
            for v, c in zip(observed, clean):
                counts_leaf[v, c, z[v]] += p / evidence
    return llh, counts_root, counts_edge, counts_leaf


@pytest.mark.parametrize(("leaf", "cardinality", "weights"),
                         [("bernoulli", 2, "softmax"), ("bernoulli", 2, "raw"), ("categorical", 3, "log")])
def test_softened_likelihood_is_the_enumerated_one(leaf: str, cardinality: int, weights: str) -> None:
    model = _model(weights, leaf, cardinality, latent=2, parents=(1, -1, 1, 2), seed=9)
    x = _data(cardinality, 10, 4, seed=10, missing=0.2)
    x[0] = np.nan
    with torch.no_grad():
        for softening in (0.9, 0.6):
            got = model.softened_log_likelihood(x, softening).numpy()
            np.testing.assert_allclose(got, _enumerated(model, x, softening)[0], rtol=0, atol=1e-10)
            encoded = model.softened_log_likelihood(model.encode(x, with_partition=False), softening)
            np.testing.assert_allclose(encoded.numpy(), got, rtol=0, atol=1e-12)
        assert abs(float(got[0])) < 1e-12  # a row with every value missing is not softened
        assert torch.equal(model.softened_log_likelihood(x, 1), model.log_likelihood(x))
        states = np.array(list(itertools.product(range(cardinality), repeat=4)), dtype=np.float64)
        assert abs(float(torch.logsumexp(model.softened_log_likelihood(states, 0.8), 0))) < 1e-10  # normalised


def test_softened_em_step_equals_em_by_enumeration() -> None:
    step, pseudo, softening = 0.7, 0.1, 0.9
    model = _model("softmax", "categorical", 3, latent=2, parents=(1, -1, 1), seed=5)
    x = _data(3, 12, 3, seed=6, missing=0.2)
    llh, counts_root, counts_edge, counts_leaf = _enumerated(model, x, softening)
    with torch.no_grad():
        leaf = torch.exp(model.leaf_log_table()).numpy()
        root = torch.softmax(model.root_weights, 0).numpy()
        edge = {int(v): torch.softmax(model.edge_weights[p - 1], -1).numpy() for p, v in enumerate(model.order[1:], 1)}

    def mixed(old: np.ndarray, counts: np.ndarray, axis: int) -> np.ndarray:
        counts = counts + pseudo
        return (1 - step) * old + step * counts / counts.sum(axis=axis, keepdims=True)

    assert model.em_step(x, step_size=step, pseudo_count=pseudo, softening=softening) == pytest.approx(
        llh.mean(), abs=1e-12)
    with torch.no_grad():
        np.testing.assert_allclose(torch.softmax(model.root_weights, 0).numpy(), mixed(root, counts_root, 0),
                                   rtol=0, atol=1e-12)
        for p, v in enumerate(model.order[1:], start=1):
            np.testing.assert_allclose(torch.softmax(model.edge_weights[p - 1], -1).numpy(),
                                       mixed(edge[int(v)], counts_edge[int(v)], 1), rtol=0, atol=1e-12)
        np.testing.assert_allclose(torch.exp(model.leaf_log_table()).numpy(), mixed(leaf, counts_leaf, 1),
                                   rtol=0, atol=1e-12)


def test_softened_full_batch_em_never_decreases_the_softened_likelihood() -> None:
    x = _data(2, 300, 6, seed=7, missing=0.1)
    x[:, 3:] = np.where(np.isnan(x[:, 3:]), np.nan, x[:, :3])
    model = HCLT.from_data(x, latent=4, dtype=torch.float64)
    values = [model.em_step(x, step_size=1.0, pseudo_count=0.0, softening=0.95) for _ in range(6)]
    assert all(later >= earlier - 1e-9 for earlier, later in zip(values, values[1:]))
    with torch.no_grad():
        before = float(model.softened_log_likelihood(x, 0.95).mean())
    assert model.em_step(x, 1.0, 0.0, 0.95) == pytest.approx(before, abs=1e-10)  # the objective before the step


@pytest.mark.parametrize("softening", [0.5, 0.2, 1.5, -1, math.nan, math.inf, "0.9", True, None])
def test_bad_softening_is_named(softening: object) -> None:
    model = _model("softmax")
    x = _data(2, 4, 5, seed=0, missing=0)
    with pytest.raises(ConfigurationError, match=r"softening must be a number in \(0\.5, 1\]"):
        model.em_step(x, 0.5, softening=softening)  # type: ignore[arg-type]
    with pytest.raises(ConfigurationError, match="softening"):
        model.softened_log_likelihood(x, softening)  # type: ignore[arg-type]
