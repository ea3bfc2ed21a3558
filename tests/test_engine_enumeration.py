"""Compiled inference against brute-force enumeration, closed forms and quadrature.

Random valid structures (shared sub-networks, indicator/Bernoulli/categorical leaves, indicator sums, mixed
products) over up to 8 binary or categorical variables, in every weight parametrisation, through both the fast
(matrix-product) and the generic compiled path.
"""

from __future__ import annotations

import copy
import math
import pickle

import numpy as np
import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st
from scipy import integrate, stats
from scipy.special import logsumexp
from strategies import (
    RandomStructure,
    all_states,
    random_structure,
    reference_log_value,
    selective_structures,
    structures,
)

import overspn as osp

PARAMETRISATIONS = ("raw", "log", "softmax")


def compiled_pair(structure: RandomStructure, weights: str, dtype: torch.dtype = torch.float64
                  ) -> tuple[osp.CompiledSPN, osp.CompiledSPN]:
    fast = osp.compile(structure.root, weights, dtype=dtype, num_vars=structure.num_vars, fast=True)
    generic = osp.compile(structure.root, weights, dtype=dtype, num_vars=structure.num_vars, fast=False)
    return fast, generic


def values(tensor: torch.Tensor) -> np.ndarray:
    return tensor.detach().double().cpu().numpy()


def random_evidence(states: np.ndarray, rng: np.random.Generator, rows: int) -> np.ndarray:
    """Rows of random states with a random subset (possibly none or all) of the entries set missing."""
    evidence = states[rng.integers(0, len(states), size=rows)].copy()
    evidence[rng.random(evidence.shape) < rng.uniform(0, 1, size=(rows, 1))] = np.nan
    return evidence


def matching(states: np.ndarray, evidence: np.ndarray) -> np.ndarray:
    """``(rows, states)`` mask: which complete states agree with each evidence row on its observed entries."""
    observed = ~np.isnan(evidence)
    return np.all((states[None, :, :] == evidence[:, None, :]) | ~observed[:, None, :], axis=2)


@given(structure=structures(), weights=st.sampled_from(PARAMETRISATIONS), seed=st.integers(0, 2**32 - 1))
def test_states_sum_to_partition_function_and_match_reference(structure: RandomStructure, weights: str,
                                                              seed: int) -> None:
    states = all_states(structure.cardinalities)
    fast, generic = compiled_pair(structure, weights)
    log_f = values(fast.log_unnormalised(states))
    np.testing.assert_allclose(values(generic.log_unnormalised(states)), log_f, rtol=1e-10, atol=1e-10)

    log_z = float(values(fast.log_partition()))
    assert log_z == pytest.approx(float(values(generic.log_partition())), rel=1e-10, abs=1e-10)
    assert logsumexp(log_f) == pytest.approx(log_z, rel=1e-10, abs=1e-10)
    for model in (fast, generic):
        assert np.exp(values(model.log_likelihood(states))).sum() == pytest.approx(1.0, rel=1e-10)

    # the engine against a node-by-node evaluation of the symbolic structure, on some states
    rows = np.random.default_rng(seed).choice(len(states), size=min(len(states), 24), replace=False)
    expected = [reference_log_value(structure.root, states[r], normalise=weights == "softmax") for r in rows]
    np.testing.assert_allclose(log_f[rows], expected, rtol=1e-10, atol=1e-10)


@given(structure=structures(), weights=st.sampled_from(PARAMETRISATIONS), seed=st.integers(0, 2**32 - 1))
def test_marginals_equal_explicit_sums(structure: RandomStructure, weights: str, seed: int) -> None:
    states = all_states(structure.cardinalities)
    evidence = random_evidence(states, np.random.default_rng(seed), rows=16)
    fast, generic = compiled_pair(structure, weights)
    log_p = values(fast.log_likelihood(states))
    mask = matching(states, evidence)
    expected = logsumexp(np.where(mask, log_p[None, :], -np.inf), axis=1)
    for model in (fast, generic):
        np.testing.assert_allclose(values(model.log_likelihood(evidence)), expected, rtol=1e-9, atol=1e-9)
        np.testing.assert_allclose(values(model.log_likelihood(model.encode(evidence))), expected, rtol=1e-9,
                                   atol=1e-9)


@given(structure=structures(max_vars=6), weights=st.sampled_from(PARAMETRISATIONS), seed=st.integers(0, 2**32 - 1))
def test_mpe_attains_the_max_product_value_over_all_completions(structure: RandomStructure, weights: str,
                                                                seed: int) -> None:
    """Max-product M commutes with maximising over completions, so the MPE x* must have M(x*) = max_x M(x)."""
    states = all_states(structure.cardinalities)
    evidence = random_evidence(states, np.random.default_rng(seed), rows=4)
    normalise = weights == "softmax"
    max_product = np.array([reference_log_value(structure.root, s, "max", normalise) for s in states])
    best = np.where(matching(states, evidence), max_product[None, :], -np.inf).max(axis=1)
    for model in compiled_pair(structure, weights):
        completed = values(model.mpe(evidence))
        assert not np.isnan(completed).any()
        observed = ~np.isnan(evidence)
        np.testing.assert_array_equal(completed[observed], evidence[observed])
        attained = [reference_log_value(structure.root, row, "max", normalise) for row in completed]
        np.testing.assert_allclose(attained, best, rtol=1e-10, atol=1e-10)
        # the max-product value of the evidence itself is that same maximum
        direct = [reference_log_value(structure.root, row, "max", normalise) for row in evidence]
        np.testing.assert_allclose(direct, best, rtol=1e-10, atol=1e-10)


@given(structure=selective_structures(), weights=st.sampled_from(PARAMETRISATIONS), seed=st.integers(0, 2**32 - 1))
def test_mpe_of_selective_structure_is_the_true_arg_max(structure: RandomStructure, weights: str, seed: int) -> None:
    states = all_states(structure.cardinalities)
    evidence = random_evidence(states, np.random.default_rng(seed), rows=8)
    for model in compiled_pair(structure, weights):
        log_f = values(model.log_unnormalised(states))
        best = np.where(matching(states, evidence), log_f[None, :], -np.inf).max(axis=1)
        completed = model.mpe(evidence)
        np.testing.assert_allclose(values(model.log_unnormalised(completed)), best, rtol=1e-10, atol=1e-10)


def test_seeded_larger_structures_normalise_on_both_paths() -> None:
    rng = np.random.default_rng(5)
    for _ in range(8):
        structure = random_structure(rng, min_vars=6, max_depth=4)
        states = all_states(structure.cardinalities)
        for weights in PARAMETRISATIONS:
            fast, generic = compiled_pair(structure, weights)
            log_f = values(fast.log_unnormalised(states))
            np.testing.assert_allclose(values(generic.log_unnormalised(states)), log_f, rtol=1e-10, atol=1e-10)
            assert logsumexp(log_f) == pytest.approx(float(values(generic.log_partition())), rel=1e-10, abs=1e-10)


def test_fast_and_generic_paths_agree_in_float32() -> None:
    rng = np.random.default_rng(7)
    for _ in range(6):
        structure = random_structure(rng, min_vars=5)
        states = all_states(structure.cardinalities)
        for weights in PARAMETRISATIONS:
            fast, generic = compiled_pair(structure, weights, torch.float32)
            reference = osp.compile(structure.root, weights, dtype=torch.float64)
            expected = values(reference.log_likelihood(states))
            for model in (fast, generic):
                np.testing.assert_allclose(values(model.log_likelihood(states)), expected, rtol=1e-4, atol=1e-4)


# ------------------------------------------------------------------------------------------------------------------
# Gaussian leaves: closed forms and quadrature
# ------------------------------------------------------------------------------------------------------------------


def gaussian_mixture_2d() -> tuple[osp.Node, np.ndarray, np.ndarray, np.ndarray]:
    """A mixture of three diagonal 2-D Gaussians (unnormalised weights), one leaf shared by two components."""
    means = np.array([[-1.0, 0.5], [2.0, 0.5], [0.3, -2.0]])
    stds = np.array([[0.7, 1.3], [1.5, 1.3], [0.4, 0.9]])
    weights = np.array([0.5, 2.0, 1.5])
    shared = osp.Gaussian(1, means[0, 1], stds[0, 1])
    components = [osp.Product([osp.Gaussian(0, means[0, 0], stds[0, 0]), shared]),
                  osp.Product([osp.Gaussian(0, means[1, 0], stds[1, 0]), shared]),
                  osp.Product([osp.Gaussian(0, means[2, 0], stds[2, 0]), osp.Gaussian(1, means[2, 1], stds[2, 1])])]
    return osp.Sum(components, weights), means, stds, weights


@pytest.mark.parametrize("weights", PARAMETRISATIONS)
def test_gaussian_mixture_matches_closed_form(weights: str) -> None:
    root, means, stds, mixture = gaussian_mixture_2d()
    model = osp.compile(root, weights, dtype=torch.float64)
    x = np.random.default_rng(3).normal(0, 2, size=(50, 2))
    log_w = np.log(mixture / mixture.sum())
    component = stats.norm.logpdf(x[:, None, :], means[None], stds[None]).sum(axis=2)
    np.testing.assert_allclose(values(model.log_likelihood(x)), logsumexp(component + log_w, axis=1), rtol=1e-12)
    # one coordinate missing: the mixture of the other coordinate's marginals
    x[:25, 1] = np.nan
    expected = logsumexp(stats.norm.logpdf(x[:25, :1], means[None, :, 0], stds[None, :, 0]) + log_w, axis=1)
    np.testing.assert_allclose(values(model.log_likelihood(x))[:25], expected, rtol=1e-12)
    expected_z = math.log(mixture.sum()) if weights != "softmax" else 0.0
    assert float(values(model.log_partition())) == pytest.approx(expected_z, abs=1e-12)


def test_gaussian_mixture_mpe_takes_the_mode_of_the_best_component() -> None:
    root, means, stds, mixture = gaussian_mixture_2d()
    model = osp.compile(root, dtype=torch.float64)
    completed = values(model.mpe(np.array([[np.nan, np.nan], [0.3, np.nan], [2.0, np.nan]])))
    # max-product: component k scores w_k * prod_d N(mode) = w_k / prod_d (sqrt(2 pi) std_kd)
    best = int(np.argmax(np.log(mixture) - np.log(stds).sum(axis=1)))
    np.testing.assert_allclose(completed[0], means[best])
    for row, x0 in ((1, 0.3), (2, 2.0)):
        score = np.log(mixture) + stats.norm.logpdf(x0, means[:, 0], stds[:, 0]) - np.log(stds[:, 1])
        assert completed[row, 0] == x0
        assert completed[row, 1] == pytest.approx(means[int(np.argmax(score)), 1])


def test_mixed_discrete_continuous_marginal_by_quadrature() -> None:
    """p(x0 = c) from the engine's marginalisation equals the integral of the joint density over x1."""
    components = [
        osp.Product([osp.Bernoulli(0, 0.2), osp.Gaussian(1, -1.0, 0.5), osp.Categorical(2, [0.1, 0.6, 0.3])]),
        osp.Product([osp.Bernoulli(0, 0.7), osp.Gaussian(1, 1.5, 1.2), osp.Categorical(2, [0.5, 0.25, 0.25])]),
    ]
    model = osp.compile(osp.Sum(components, [0.3, 1.1]), "log", dtype=torch.float64)

    def density(t: np.ndarray, x0: float, x2: float) -> np.ndarray:
        rows = np.stack([np.full_like(t, x0), t, np.full_like(t, x2)], axis=1)
        return np.exp(values(model.log_likelihood(rows)))

    total = 0.0
    for x0 in (0.0, 1.0):
        marginal = math.exp(model.log_likelihood(np.array([[x0, np.nan, np.nan]])).detach()[0].item())
        # beyond +-12 both components' densities are below 1e-20
        integral = sum(integrate.fixed_quad(density, -12.0, 12.0, args=(x0, c), n=200)[0] for c in range(3))
        assert integral == pytest.approx(marginal, rel=1e-10)
        partial = math.exp(model.log_likelihood(np.array([[x0, np.nan, 1.0]])).detach()[0].item())
        assert integrate.fixed_quad(density, -12.0, 12.0, args=(x0, 1.0), n=200)[0] == pytest.approx(partial, rel=1e-10)
        total += integral
    assert total == pytest.approx(1.0, rel=1e-10)


# ------------------------------------------------------------------------------------------------------------------
# Numerical range
# ------------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("fast", [True, False])
def test_products_over_thousands_of_variables_stay_finite_in_float32(fast: bool) -> None:
    rng = np.random.default_rng(11)
    num_vars = 5000
    p = rng.uniform(0.05, 0.95, size=(2, num_vars))
    components = [osp.Product([osp.Bernoulli(d, p[k, d]) for d in range(num_vars)]) for k in range(2)]
    root = osp.Sum(components, [0.4, 0.6])
    x = (rng.random((6, num_vars)) < 0.5).astype(np.float64)
    x[3, : num_vars // 2] = np.nan
    model = osp.compile(root, dtype=torch.float32, fast=fast)
    log_likelihood = values(model.log_likelihood(x))
    assert np.all(np.isfinite(log_likelihood))
    observed = ~np.isnan(x)
    per_component = np.where(observed[:, None, :], np.where(x[:, None, :] == 1, np.log(p), np.log1p(-p)), 0).sum(2)
    expected = logsumexp(per_component + np.log([0.4, 0.6]), axis=1)
    assert expected.min() < -1500  # far below the float32 range of the probabilities themselves (about 1e-38)
    np.testing.assert_allclose(log_likelihood, expected, rtol=1e-4)


def test_indicator_sums_over_thousands_of_variables_stay_finite_in_float32() -> None:
    num_vars = 5000
    leaf_weights = np.random.default_rng(12).uniform(0.1, 1.0, size=(num_vars, 2))
    root = osp.Product([osp.Sum([osp.Indicator(d, 0), osp.Indicator(d, 1)], leaf_weights[d]) for d in range(num_vars)])
    x = np.random.default_rng(13).integers(0, 2, size=(4, num_vars)).astype(np.float64)
    expected = np.log(leaf_weights[np.arange(num_vars), x.astype(int)]).sum(1) - np.log(leaf_weights.sum(1)).sum()
    for fast in (True, False):
        model = osp.compile(root, "raw", dtype=torch.float32, fast=fast)
        log_likelihood = values(model.log_likelihood(x))
        assert np.all(np.isfinite(log_likelihood))
        np.testing.assert_allclose(log_likelihood, expected, rtol=1e-4)


@pytest.mark.parametrize("weights", PARAMETRISATIONS)
def test_compact_one_hot_path_matches_the_generic_path(weights: str) -> None:
    """Mixtures of fully factorised components, the shape whose products take the compact matrix product: data with
    and without missing values, subsets of states (unused columns), impossible states that force the full one-hot."""
    rng = np.random.default_rng(17)
    cardinalities = (2, 3, 2, 3, 2)
    for leaves in ("indicator_sums", "bernoulli_categorical", "with_indicators"):
        components = []
        for _ in range(3):
            children: list[osp.Node] = []
            for var, card in enumerate(cardinalities):
                if leaves == "indicator_sums" or (leaves == "with_indicators" and var != 1):
                    children.append(osp.Sum([osp.Indicator(var, c) for c in range(card)], rng.uniform(0.2, 2, card)))
                elif leaves == "with_indicators":
                    children.append(osp.Indicator(var, int(rng.integers(0, card))))
                elif card == 2:
                    children.append(osp.Bernoulli(var, rng.uniform(0.1, 0.9)))
                else:
                    children.append(osp.Categorical(var, rng.dirichlet(np.ones(card))))
            components.append(osp.Product(children))
        root = osp.Sum(components, rng.uniform(0.5, 2.0, size=3))
        fast = osp.compile(root, weights, dtype=torch.float64)
        generic = osp.compile(root, weights, dtype=torch.float64, fast=False)
        states = all_states(cardinalities)
        for data in (states, states[states[:, 1] < 2], random_evidence(states, rng, rows=40), states[:1]):
            encoded = fast.encode(data)
            assert encoded.compact is not None and encoded.compact.values.shape[0] == len(data)
            expected = values(generic.log_likelihood(data))
            np.testing.assert_allclose(values(fast.log_likelihood(encoded)), expected, rtol=1e-12, atol=1e-12)
            without_partition = fast.encode(data, with_partition=False)
            np.testing.assert_allclose(values(fast.log_unnormalised(without_partition)),
                                       values(generic.log_unnormalised(data)), rtol=1e-12, atol=1e-12)


def test_compact_gather_indices_follow_their_encoding_through_copies_and_dtype_changes() -> None:
    """The compact product keeps the gather index of its last two encodings: a third encoding, a deep copy, a pickle
    and a change of dtype all give the values of a fresh model."""
    rng = np.random.default_rng(5)
    root = osp.mixture(num_vars=6, num_components=4, seed=3)
    model = osp.compile(root, "raw", dtype=torch.float32)
    batches = [rng.integers(0, 2, size=(rows, 6)).astype(np.float64) for rows in (20, 7, 33)]
    batches[1][:, 2] = 1.0  # fewer kept columns than the other batches
    encodings = [model.encode(batch) for batch in batches]
    expected = [osp.compile(root, "raw", dtype=torch.float32).log_likelihood(batch) for batch in batches]
    for _ in range(2):
        for encoded, value in zip(encodings, expected):
            torch.testing.assert_close(model.log_likelihood(encoded), value, rtol=0, atol=0)
    for other in (copy.deepcopy(model), pickle.loads(pickle.dumps(model))):
        torch.testing.assert_close(other.log_likelihood(batches[0]), expected[0], rtol=0, atol=0)
    model.double()
    fresh = osp.compile(root, "raw", dtype=torch.float64)
    fresh.load_state_dict(model.state_dict())
    torch.testing.assert_close(model.log_likelihood(model.encode(batches[2])), fresh.log_likelihood(batches[2]),
                               rtol=0, atol=0)


def test_compact_one_hot_reproduces_the_matrix_product() -> None:
    rng = np.random.default_rng(2)
    model = osp.compile(osp.Product([osp.Categorical(d, [0.2, 0.3, 0.5]) for d in range(4)]), dtype=torch.float64)
    data = rng.integers(0, 3, size=(30, 4)).astype(np.float64)
    data[:, 2] = 1.0  # a variable with one observed state keeps no column
    data[rng.random(data.shape) < 0.2] = np.nan
    encoded = model.encode(data)
    compact = encoded.compact
    onehot = encoded.onehot[:-1]
    assert compact.values.shape[1] < onehot.shape[1]
    matrix = torch.randn(onehot.shape[1], 5, dtype=torch.float64)
    expected = onehot @ matrix
    rebuilt = matrix[compact.references].sum(0) + compact.values @ (matrix[compact.columns]
                                                                    - matrix[compact.column_references])
    torch.testing.assert_close(rebuilt, expected, rtol=1e-12, atol=1e-12)
