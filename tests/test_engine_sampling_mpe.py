"""Sampling frequencies against p(x) and p(x | e) by chi-square and Kolmogorov-Smirnov tests (fixed seeds), and the
contract of ``mpe``/``sample`` (evidence kept, inputs untouched, reproducible)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from scipy import stats
from strategies import RandomStructure, all_states, random_structure

import overspn as osp

PARAMETRISATIONS = ("raw", "log", "softmax")
NUM_SAMPLES = 20000
SIGNIFICANCE = 1e-3


def state_index(rows: np.ndarray, cardinalities: tuple[int, ...]) -> np.ndarray:
    """Position of each complete row in ``all_states(cardinalities)`` (mixed-radix number, last variable fastest)."""
    index = np.zeros(len(rows), dtype=np.int64)
    for column, card in enumerate(cardinalities):
        index = index * card + rows[:, column].astype(np.int64)
    return index


def chi_square_p_value(samples: np.ndarray, cardinalities: tuple[int, ...], probs: np.ndarray) -> float:
    """Goodness of fit of the samples' state counts to ``probs``; states expected fewer than 5 times are pooled."""
    counts = np.bincount(state_index(samples, cardinalities), minlength=len(probs)).astype(np.float64)
    expected = probs * len(samples)
    assert counts[expected == 0].sum() == 0, "a state of probability zero was sampled"
    small = expected < 5
    observed = np.append(counts[~small], counts[small].sum())
    expected = np.append(expected[~small], expected[small].sum())
    keep = expected > 0
    return float(stats.chisquare(observed[keep], expected[keep] * observed.sum() / expected[keep].sum()).pvalue)


def shared_structure() -> RandomStructure:
    """Two mixtures over (x0, x1, x2) that share a sub-network, with a ternary variable and an indicator sum."""
    shared = osp.Product([osp.Bernoulli(0, 0.8), osp.Categorical(1, [0.1, 0.3, 0.6])])
    indicator_sum = osp.Sum([osp.Indicator(2, 0), osp.Indicator(2, 1)], [0.3, 2.0])
    first = osp.Sum([osp.Product([shared, osp.Bernoulli(2, 0.25)]), osp.Product([shared, indicator_sum])], [1.0, 0.5])
    second = osp.Product([osp.Sum([shared, osp.Product([osp.Bernoulli(0, 0.1), osp.Categorical(1, [0.7, 0.2, 0.1])])],
                                  [0.4, 0.6]), osp.Bernoulli(2, 0.9)])
    return RandomStructure(osp.Sum([first, second], [2.0, 1.0]), (2, 3, 2))


def sampling_structures() -> list[RandomStructure]:
    rng = np.random.default_rng(21)
    return [shared_structure()] + [random_structure(rng, min_vars=3, max_vars=4) for _ in range(3)]


@pytest.mark.parametrize("weights", PARAMETRISATIONS)
def test_sample_frequencies_match_probabilities(weights: str) -> None:
    for number, structure in enumerate(sampling_structures()):
        model = osp.compile(structure.root, weights, dtype=torch.float64, num_vars=structure.num_vars)
        probs = np.exp(model.log_likelihood(all_states(structure.cardinalities)).detach().numpy())
        samples = model.sample(NUM_SAMPLES, generator=torch.Generator().manual_seed(number)).numpy()
        assert samples.shape == (NUM_SAMPLES, structure.num_vars) and not np.isnan(samples).any()
        assert chi_square_p_value(samples, structure.cardinalities, probs) > SIGNIFICANCE


def test_sample_frequencies_detect_a_wrong_distribution() -> None:
    """The chi-square check has power: samples of one model do not pass as samples of a perturbed one."""
    structure = shared_structure()
    model = osp.compile(structure.root, dtype=torch.float64)
    samples = model.sample(NUM_SAMPLES, generator=torch.Generator().manual_seed(0)).numpy()
    probs = np.exp(model.log_likelihood(all_states(structure.cardinalities)).detach().numpy())
    perturbed = probs * np.linspace(0.9, 1.1, len(probs))
    assert chi_square_p_value(samples, structure.cardinalities, perturbed / perturbed.sum()) < SIGNIFICANCE


@pytest.mark.parametrize("weights", PARAMETRISATIONS)
def test_conditional_samples_keep_evidence_and_follow_the_posterior(weights: str) -> None:
    for number, structure in enumerate(sampling_structures()):
        model = osp.compile(structure.root, weights, dtype=torch.float64, num_vars=structure.num_vars)
        states = all_states(structure.cardinalities)
        log_p = model.log_likelihood(states).detach().numpy()
        evidence = np.full(structure.num_vars, np.nan)
        observed = [0, structure.num_vars - 1]
        evidence[observed] = states[int(np.argmax(log_p)), observed]  # a likely evidence, so the posterior is rich
        samples = model.sample(NUM_SAMPLES, evidence=evidence, generator=torch.Generator().manual_seed(number))
        samples = samples.numpy()
        assert not np.isnan(samples).any()
        np.testing.assert_array_equal(samples[:, observed], np.broadcast_to(evidence[observed], (NUM_SAMPLES, 2)))
        consistent = np.all(states[:, observed] == evidence[observed], axis=1)
        posterior = np.where(consistent, np.exp(log_p), 0.0)
        assert chi_square_p_value(samples, structure.cardinalities, posterior / posterior.sum()) > SIGNIFICANCE


def test_per_row_evidence() -> None:
    structure = shared_structure()
    model = osp.compile(structure.root, dtype=torch.float64)
    evidence = np.array([[0.0, np.nan, np.nan], [np.nan, 2.0, np.nan], [np.nan, np.nan, np.nan]])
    samples = model.sample(3, evidence=evidence, generator=torch.Generator().manual_seed(0)).numpy()
    assert samples[0, 0] == 0.0 and samples[1, 1] == 2.0 and not np.isnan(samples).any()
    with pytest.raises(osp.DataError, match="3 rows but 5 samples"):
        model.sample(5, evidence=evidence)


def test_sampling_is_reproducible_with_a_seeded_generator() -> None:
    model = osp.compile(shared_structure().root)
    first = model.sample(500, generator=torch.Generator().manual_seed(3))
    again = model.sample(500, generator=torch.Generator().manual_seed(3))
    other = model.sample(500, generator=torch.Generator().manual_seed(4))
    assert torch.equal(first, again) and not torch.equal(first, other)


def gaussian_mixed_model() -> tuple[osp.CompiledSPN, np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    weights = np.array([0.5, 1.0, 1.5])
    means, stds, p_one = np.array([-2.0, 0.5, 3.0]), np.array([0.5, 1.0, 0.8]), np.array([0.9, 0.5, 0.1])
    components = [osp.Product([osp.Gaussian(0, m, s), osp.Bernoulli(1, p)]) for m, s, p in zip(means, stds, p_one)]
    return osp.compile(osp.Sum(components, weights), dtype=torch.float64), weights, means, stds, p_one


def mixture_cdf(weights: np.ndarray, means: np.ndarray, stds: np.ndarray):  # noqa: ANN201
    weights = weights / weights.sum()
    return lambda t: (weights * stats.norm.cdf(np.asarray(t)[..., None], means, stds)).sum(-1)


def test_gaussian_samples_follow_the_mixture_and_its_posterior() -> None:
    model, weights, means, stds, p_one = gaussian_mixed_model()
    samples = model.sample(NUM_SAMPLES, generator=torch.Generator().manual_seed(0)).numpy()
    assert stats.kstest(samples[:, 0], mixture_cdf(weights, means, stds)).pvalue > SIGNIFICANCE
    assert stats.binomtest(int(samples[:, 1].sum()), NUM_SAMPLES, float(weights @ p_one / weights.sum())).pvalue \
        > SIGNIFICANCE
    # given x1 = 1 the component weights become w_k p_k
    conditional = model.sample(NUM_SAMPLES, evidence=np.array([np.nan, 1.0]),
                               generator=torch.Generator().manual_seed(1)).numpy()
    assert np.all(conditional[:, 1] == 1.0)
    assert stats.kstest(conditional[:, 0], mixture_cdf(weights * p_one, means, stds)).pvalue > SIGNIFICANCE
    assert stats.kstest(conditional[:, 0], mixture_cdf(weights, means, stds)).pvalue < SIGNIFICANCE


def test_mpe_keeps_evidence_and_leaves_its_input_untouched() -> None:
    model = osp.compile(shared_structure().root, dtype=torch.float64)
    evidence = np.array([[np.nan, 1.0, np.nan], [0.0, 2.0, 1.0], [np.nan, np.nan, np.nan]])
    original = evidence.copy()
    completed = model.mpe(evidence).numpy()
    np.testing.assert_array_equal(evidence, original)
    assert not np.isnan(completed).any()
    np.testing.assert_array_equal(completed[1], evidence[1])  # complete rows come back as they are
    assert completed[0, 1] == 1.0
    tensor = torch.tensor(evidence)
    model.mpe(tensor)
    assert torch.equal(torch.isnan(tensor), torch.from_numpy(np.isnan(original)))
    assert model.mpe(np.zeros((0, 3))).shape == (0, 3)
