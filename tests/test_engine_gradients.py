"""Gradients of the compiled log-likelihood against float64 finite differences, and the floor of raw weights."""

from __future__ import annotations

import math
from collections.abc import Callable

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from strategies import RandomStructure, all_states, structures

import overspn as osp
from overspn.engine.semiring import logsumexp
from overspn.learn.floor import keep_floor

PARAMETRISATIONS = ("raw", "log", "softmax")


def finite_difference_gradient(loss: Callable[[], torch.Tensor], parameter: torch.Tensor,
                               step: float = 1e-6) -> torch.Tensor:
    """Central differences of ``loss()`` with respect to every entry of ``parameter`` (changed in place, restored)."""
    gradient = torch.zeros_like(parameter)
    flat = parameter.data.view(-1)
    with torch.no_grad():
        for i in range(flat.numel()):
            original = flat[i].item()
            flat[i] = original + step
            up = loss().item()
            flat[i] = original - step
            down = loss().item()
            flat[i] = original
            gradient.view(-1)[i] = (up - down) / (2 * step)
    return gradient


def check_gradients(model: osp.CompiledSPN, data: np.ndarray) -> dict[str, torch.Tensor]:
    encoded = model.encode(data)

    def loss() -> torch.Tensor:
        return -model.log_likelihood(encoded).mean()

    if not list(model.parameters()):  # e.g. only indicators: nothing to differentiate
        return {}
    model.zero_grad()
    loss().backward()
    gradients = {}
    for name, parameter in model.named_parameters():
        expected = finite_difference_gradient(loss, parameter)
        assert parameter.grad is not None, name
        torch.testing.assert_close(parameter.grad, expected, rtol=1e-5, atol=1e-6, msg=lambda m, n=name: f"{n}: {m}")
        gradients[name] = parameter.grad.clone()
    return gradients


def possible_rows(structure: RandomStructure, rng: np.random.Generator, rows: int) -> np.ndarray:
    """Random complete states of non-zero probability, some entries then set missing."""
    states = all_states(structure.cardinalities)
    model = osp.compile(structure.root, dtype=torch.float64)
    possible = states[np.isfinite(model.log_unnormalised(states).detach().numpy())]
    data = possible[rng.integers(0, len(possible), size=rows)]
    data[rng.random(data.shape) < 0.25] = np.nan
    return data


@settings(max_examples=15)
@given(structure=structures(max_vars=5), weights=st.sampled_from(PARAMETRISATIONS), seed=st.integers(0, 2**32 - 1))
def test_gradients_match_finite_differences(structure: RandomStructure, weights: str, seed: int) -> None:
    data = possible_rows(structure, np.random.default_rng(seed), rows=12)
    for fast in (True, False):  # the two paths lay parameters out differently; each is checked on its own
        model = osp.compile(structure.root, weights, dtype=torch.float64, num_vars=structure.num_vars, fast=fast)
        check_gradients(model, data)


@pytest.mark.parametrize("weights", PARAMETRISATIONS)
def test_gradients_of_a_mixture_whose_root_weights_join_the_matrix_product(weights: str) -> None:
    """A root sum over products of discrete leaves takes its log-weights into the product's offset; its gradients
    match finite differences through the compact one-hot form and, when a leaf rules states out (an indicator, so
    the table holds -inf), through the full one."""
    rng = np.random.default_rng(3)
    data = rng.integers(0, 2, size=(15, 5)).astype(np.float64)
    data[rng.random(data.shape) < 0.2] = np.nan
    mixture = osp.mixture(num_vars=5, num_components=4, seed=7)
    components = [osp.Product([osp.Indicator(0, 1), *[osp.Bernoulli(v, 0.3 + 0.1 * v) for v in range(1, 5)]]),
                  osp.Product([osp.Sum([osp.Indicator(v, 0), osp.Indicator(v, 1)], [0.4, 1.2]) for v in range(5)])]
    with_indicator = osp.Sum(components, [0.7, 0.5])
    for root in (mixture, with_indicator):
        model = osp.compile(root, weights, dtype=torch.float64)
        assert model._weighted_tabular
        check_gradients(model, data)


@pytest.mark.parametrize("weights", PARAMETRISATIONS)
def test_gradients_of_gaussian_and_discrete_leaf_parameters(weights: str) -> None:
    components = [
        osp.Product([osp.Gaussian(0, -0.5, 0.8), osp.Bernoulli(1, 0.3), osp.Categorical(2, [0.2, 0.5, 0.3])]),
        osp.Product([osp.Gaussian(0, 1.0, 1.7), osp.Bernoulli(1, 0.6),
                     osp.Sum([osp.Indicator(2, 0), osp.Indicator(2, 2)], [0.4, 1.3])]),
    ]
    model = osp.compile(osp.Sum(components, [0.7, 1.2]), weights, dtype=torch.float64)
    names = {name for name, _ in model.named_parameters()}
    assert {"gaussian.mean", "gaussian.log_std", "discrete.bernoulli_logit", "discrete.categorical_logits"} <= names
    rng = np.random.default_rng(4)
    data = np.stack([rng.normal(0, 1.5, 20), rng.integers(0, 2, 20), rng.choice([0, 2], 20)], axis=1)
    data[rng.random(data.shape) < 0.2] = np.nan
    gradients = check_gradients(model, data)
    assert all(bool(torch.any(g != 0)) for g in gradients.values())


def test_sgd_step_keeps_raw_weights_at_or_above_the_floor() -> None:
    floor = 1e-3
    indicator_sums = [osp.Sum([osp.Indicator(d, 0), osp.Indicator(d, 1)], [0.5, 0.5]) for d in range(3)]
    components = [osp.Product(indicator_sums), osp.Product([osp.Bernoulli(d, 0.9) for d in range(3)])]
    model = osp.compile(osp.Sum(components, [0.01, 1.0]), "raw", floor=floor, dtype=torch.float64)
    floors = model.raw_weight_floors()
    raw = [p for p, _ in floors]
    assert len(raw) == 2 and all(f == floor for _, f in floors)
    data = np.ones((10, 3))
    (-model.log_likelihood(data).mean()).backward()
    # a learning rate large enough to push the weight of each group with the largest gradient below the floor
    learning_rate = 2 * max(float(((p.detach() - floor) / p.grad)[p.grad > 0].min()) for p in raw)
    optimizer = torch.optim.SGD(model.parameters(), lr=learning_rate)
    keep_floor(optimizer, model)
    unclamped = [(p - learning_rate * p.grad).detach() for p in raw]
    # the plain step would push some weights of both sum groups below the floor, even below zero
    assert all(bool((u < floor).any()) for u in unclamped)
    optimizer.step()
    for parameter, target in zip(raw, unclamped):
        assert bool((parameter >= floor).all())
        torch.testing.assert_close(parameter.detach(), target.clamp(min=floor), rtol=0, atol=0)
    assert bool(torch.isfinite(model.log_likelihood(data)).all())


def test_projection_acts_only_on_raw_weights() -> None:
    root = osp.Sum([osp.Bernoulli(0, 0.5), osp.Bernoulli(0, 0.2)], [1.0, 2.0])
    raw = osp.compile(root, "raw", floor=0.25)
    logits = osp.compile(root, "log", floor=0.25)
    with torch.no_grad():
        for model in (raw, logits):
            for parameter in model.parameters():
                parameter.fill_(-3.0)
    raw.project_()
    logits.project_()
    assert torch.equal(raw.layers[0].weights.param, torch.full((2,), 0.25))
    assert torch.equal(raw.discrete.bernoulli_logit, torch.full((2,), -3.0))  # leaf logits are unconstrained
    assert all(torch.equal(p, torch.full_like(p, -3.0)) for p in logits.parameters())


@pytest.mark.parametrize("fast", [True, False])
@pytest.mark.parametrize("weights", PARAMETRISATIONS)
def test_impossible_branches_get_zero_not_nan_gradients(weights: str, fast: bool) -> None:
    """A sum with no possible child for a row, and an indicator sum without a state, contribute log 0 = -inf."""
    only_state_0 = osp.Sum([osp.Indicator(1, 0)], [0.7], name="only_state_0")  # zero for x1 = 1
    inner = osp.Sum([osp.Product([osp.Indicator(0, 0), osp.Bernoulli(1, 0.3)]),
                     osp.Product([osp.Indicator(0, 0), only_state_0])], [1.0, 2.0], name="inner")  # zero for x0 = 1
    other = osp.Product([osp.Indicator(0, 1), osp.Bernoulli(1, 0.8)])
    model = osp.compile(osp.Sum([inner, other], [0.5, 1.5]), weights, dtype=torch.float64, fast=fast)
    data = np.array([[1.0, 1.0], [1.0, 0.0], [0.0, 0.0], [np.nan, 1.0]])
    check_gradients(model, data)
    assert all(bool(torch.isfinite(p.grad).all()) for p in model.parameters())


def test_a_zero_raw_weight_does_not_poison_training() -> None:
    """log 0 = -inf has gradient 0, not NaN; the optimiser's floor clamp then lifts the weight to the floor."""
    indicator_sum = osp.Sum([osp.Indicator(1, 0), osp.Indicator(1, 1)], [0.0, 1.0])
    components = [osp.Product([osp.Bernoulli(0, 0.3), indicator_sum]),
                  osp.Product([osp.Bernoulli(0, 0.6), osp.Bernoulli(1, 0.5)])]
    model = osp.compile(osp.Sum(components, [0.0, 1.0]), "raw", floor=1e-3, dtype=torch.float64)
    data = np.array([[0.0, 1.0], [1.0, 1.0], [1.0, np.nan]])
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    keep_floor(optimizer, model)
    (-model.log_likelihood(data).mean()).backward()
    assert all(bool(torch.isfinite(p.grad).all()) for p in model.parameters())
    optimizer.step()
    assert all(bool(torch.isfinite(p).all()) for p in model.parameters())
    assert model.layers[0].weights.param[0].item() == 1e-3
    assert bool(torch.isfinite(model.log_likelihood(data)).all())


def test_logsumexp_gradient_is_zero_on_impossible_rows_and_twice_differentiable() -> None:
    scores = torch.tensor([[-math.inf, -math.inf], [0.0, 1.0], [-math.inf, 2.0]], dtype=torch.float64,
                          requires_grad=True)
    values = logsumexp(scores, dim=1)
    assert values[0].item() == -math.inf
    (gradient,) = torch.autograd.grad(values[1:].sum() + 0 * values[0], scores)
    torch.testing.assert_close(gradient, torch.tensor([[0.0, 0.0], [1 / (1 + math.e), math.e / (1 + math.e)],
                                                       [0.0, 1.0]], dtype=torch.float64))
    finite = torch.randn(4, 3, 5, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda t: logsumexp(t, 1), (finite,))
    assert torch.autograd.gradgradcheck(lambda t: logsumexp(t, 2), (finite,))


@pytest.mark.parametrize("kind", ["compiled", "rat"])
def test_the_floor_survives_deepcopy_and_state_dict_round_trips(kind: str) -> None:
    """The floor belongs to the model: a deep copy, or a fresh model given the state, keeps it under plain torch."""
    if kind == "compiled":
        model: osp.SPNModule = osp.compile(osp.mixture(num_vars=5, num_components=4, seed=0), "raw", floor=1e-3,
                                           dtype=torch.float64)
    else:
        model = osp.RatSPN(osp.RatConfig(num_vars=8, depth=2, num_repetitions=2, num_sums=3, num_input=3), "raw",
                           floor=1e-3, dtype=torch.float64)
    copy_ = __import__("copy").deepcopy(model)
    fresh = type(model).from_file_config(model.file_config(), torch.float64)
    fresh.load_state_dict(model.state_dict())
    data = np.random.default_rng(0).integers(0, 2, (30, model.num_vars)).astype(float)
    for candidate in (copy_, fresh):
        assert [f for _, f in candidate.raw_weight_floors()] == [f for _, f in model.raw_weight_floors()]
        optimizer = torch.optim.SGD(candidate.parameters(), lr=1e3)  # far past the floor
        keep_floor(optimizer, candidate)
        (-candidate.log_likelihood(data).mean()).backward()
        optimizer.step()
        weights = [p for p, _ in candidate.raw_weight_floors()]
        assert weights and all(bool((p >= 1e-3).all()) for p in weights)
        assert any(bool((p == 1e-3).any()) for p in weights)  # the projection did act


@pytest.mark.parametrize("weights", ["raw", "log", "softmax"])
def test_log_totals_are_the_log_sum_exp_of_the_log_weights_with_finite_gradients(weights: str) -> None:
    """Each parametrisation's shortcut for log sum_k w_k (raw: the weights added; softmax: 0) against log-sum-exp,
    with padding (sums of different arity) and, for raw weights, a weight of exactly 0 and a sum of only zeros."""
    from overspn.engine.weights import SumWeights

    values = [np.array([0.5, 2.0, 1e-3]), np.array([3.0, 0.0]), np.array([0.0, 0.0]), np.array([1e-30])]
    if weights != "raw":
        values = [np.where(v > 0, v, 0.25) for v in values]
    module = SumWeights(values, weights, torch.float64)
    totals = module.log_totals()
    expected = torch.logsumexp(module.log_weights(), dim=1)
    torch.testing.assert_close(totals, expected, rtol=1e-15, atol=0)
    finite = torch.isfinite(totals)
    if weights == "softmax":  # normalised: the totals are the constant 1
        assert not totals.requires_grad and bool((totals == 0).all())
        return
    (gradient,) = torch.autograd.grad(totals[finite].sum(), module.param)
    assert bool(torch.isfinite(gradient).all())
    if weights == "raw":
        assert totals[2].item() == -math.inf
        assert gradient[4].item() == 0.0  # a zero weight: gradient 0, not 0 * 1 / 0 = NaN
        assert gradient[3].item() == pytest.approx(1 / 3.0)
        assert gradient[0].item() == pytest.approx(1 / 2.501)
