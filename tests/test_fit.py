"""Generative gradient learning: the update against a hand computation, floor, improvement, divergence, batches."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

import overspn as osp
from overspn.errors import ConfigurationError, DivergenceError
from overspn.learn.learning import History, train


def tiny_model(a: float = 0.7, b: float = 0.3, u: tuple[float, float] = (0.6, 0.2),
               v: tuple[float, float] = (0.1, 0.5)) -> osp.Sum:
    """f(x) = a u_x + b v_x over one binary variable, all weights raw and unnormalised."""
    first = osp.Product([osp.Sum([osp.Indicator(0, 0), osp.Indicator(0, 1)], list(u))])
    second = osp.Product([osp.Sum([osp.Indicator(0, 0), osp.Indicator(0, 1)], list(v))])
    return osp.Sum([first, second], [a, b])


def weights_of(model: osp.CompiledSPN) -> tuple[float, float, np.ndarray, np.ndarray]:
    root = model.to_structure()
    return (root.weights[0], root.weights[1], root.children[0].children[0].weights,
            root.children[1].children[0].weights)


def test_one_step_of_gradient_ascent_equals_the_hand_computation() -> None:
    a, b, u, v = 0.7, 0.3, np.array([0.6, 0.2]), np.array([0.1, 0.5])
    x = np.array([[0.0], [1.0], [1.0], [0.0], [1.0]])
    lr = 0.05
    model = osp.compile(tiny_model(a, b, tuple(u), tuple(v)), "raw", floor=1e-4, dtype=torch.float64)
    history = train(model, x, iterations=1, lr=lr, progress=False)
    # L = mean_n log(a u_xn + b v_xn) - log(a (u0 + u1) + b (v0 + v1))
    states = x[:, 0].astype(int)
    f = a * u[states] + b * v[states]
    z = a * u.sum() + b * v.sum()
    assert history.train_llh[0] == pytest.approx(np.mean(np.log(f)) - math.log(z), rel=1e-14)
    grad_a = np.mean(u[states] / f) - u.sum() / z
    grad_b = np.mean(v[states] / f) - v.sum() / z
    grad_u = np.array([np.mean((states == c) * a / f) for c in (0, 1)]) - a / z
    grad_v = np.array([np.mean((states == c) * b / f) for c in (0, 1)]) - b / z
    new_a, new_b, new_u, new_v = weights_of(model)
    assert new_a == pytest.approx(a + lr * grad_a, rel=1e-13)
    assert new_b == pytest.approx(b + lr * grad_b, rel=1e-13)
    np.testing.assert_allclose(new_u, u + lr * grad_u, rtol=1e-13)
    np.testing.assert_allclose(new_v, v + lr * grad_v, rtol=1e-13)
    assert len(history.train_llh) == 2  # iteration 0 (before the update) and iteration 1
    assert history.train_llh[1] == pytest.approx(float(model.log_likelihood(x).mean().detach()), rel=1e-14)


def test_raw_weights_are_clamped_to_the_floor() -> None:
    # all data in state 0: the weights of state 1 are pushed down and must stop exactly at the floor
    x = np.zeros((20, 1))
    floor = 1e-3
    model = osp.compile(tiny_model(), "raw", floor=floor, dtype=torch.float64)
    train(model, x, iterations=1, lr=2.0, progress=False)
    _, _, u, v = weights_of(model)
    assert u[1] == floor and v[1] == floor  # the unclamped step would be negative (hand computation: < 0)
    history = train(model, x, iterations=200, lr=0.5, progress=False)
    a, b, u, v = weights_of(model)
    assert min(a, b, *u, *v) >= floor
    # the best the floor allows: P(x = 0) = 1 - floor / (u0 + floor) with u0 large
    assert history.train_llh[-1] > history.train_llh[0]


def paper_like(num_vars: int = 6, perturbation: float = 0.2, seed: int = 0, branching: tuple[int, ...] = (2, 4),
               weights: str = "raw") -> osp.CompiledSPN:
    root = osp.overparametrize(osp.mixture(num_vars, 8, seed=seed, perturbation=perturbation), branching, init=1e-4)
    return osp.compile(root, weights, floor=1e-4, dtype=torch.float64)


def binary_data(rows: int = 300, num_vars: int = 6, seed: int = 0) -> np.ndarray:
    """Two clusters of binary rows, so that a mixture beats independent variables."""
    rng = np.random.default_rng(seed)
    cluster = rng.integers(0, 2, size=rows)
    p = np.where(cluster[:, None] == 1, 0.9, 0.2)
    return (rng.random((rows, num_vars)) < p).astype(np.float64)


@pytest.mark.parametrize("weights, lr", [("raw", 0.01), ("log", 0.1)])
def test_log_likelihood_improves_almost_monotonically(weights: str, lr: float) -> None:
    x, test_x = binary_data(seed=0), binary_data(seed=1)
    model = paper_like(weights=weights)
    history = train(model, x, iterations=150, lr=lr, test_x=test_x, progress=False)
    train_llh, test_llh = np.array(history.train_llh), np.array(history.test_llh)
    assert len(train_llh) == len(test_llh) == 151
    assert train_llh[-1] > train_llh[0] + 0.3
    assert test_llh[-1] > test_llh[0] + 0.3
    assert np.all(np.diff(train_llh) > -1e-3)  # small steps: no noticeable decrease
    assert history.test_llh[-1] == pytest.approx(float(model.log_likelihood(test_x).mean().detach()), rel=1e-12)


@pytest.mark.parametrize("lr", [1e3, 1e6])
def test_huge_learning_rate_diverges_and_restores_the_last_finite_model(lr: float) -> None:
    # Gaussian leaves: a huge step sends a deviation to 0 or a mean far away, and the likelihood to -inf or NaN
    x = np.random.default_rng(0).normal(size=(100, 3))
    model = osp.compile(osp.mixture(3, 4, leaf="gaussian", seed=0, perturbation=0.5), "log", dtype=torch.float64)
    with pytest.raises(DivergenceError, match=r"diverged at iteration \d+.*learning rate") as caught:
        train(model, x, iterations=50, lr=lr, progress=False)
    error = caught.value
    assert error.iteration >= 1
    history = error.history
    assert isinstance(history, History) and len(history.train_llh) == error.iteration
    assert all(math.isfinite(v) for v in history.train_llh)
    assert all(torch.isfinite(p).all() for p in model.parameters())
    # the model holds the parameters of the last finite iteration
    assert float(model.log_likelihood(x).mean().detach()) == pytest.approx(history.train_llh[-1], rel=1e-12)


def test_minibatch_training_improves_and_is_reproducible() -> None:
    x = binary_data(rows=256)
    histories, finals = [], []
    for seed in (3, 3, 4):
        model = paper_like(weights="log")
        histories.append(train(model, x, iterations=40, lr=0.1, batch_size=32, seed=seed, progress=False))
        finals.append(torch.cat([p.detach().flatten() for p in model.parameters()]))
    full = train(paper_like(weights="log"), x, iterations=40, lr=0.1, progress=False)
    assert histories[0].train_llh[-1] > histories[0].train_llh[0] + 0.1
    assert histories[0].train_llh == histories[1].train_llh and torch.equal(finals[0], finals[1])
    assert histories[0].train_llh != histories[2].train_llh  # another seed, other batches
    assert histories[0].train_llh != full.train_llh
    assert histories[0].train_llh[0] == full.train_llh[0]  # iteration 0 is the full training set


@pytest.mark.parametrize("batch_size", [None, 50])
def test_continuing_from_a_saved_state_equals_an_uninterrupted_run(batch_size: int | None) -> None:
    x, test_x = binary_data(), binary_data(seed=5)
    uninterrupted = train(paper_like(), x, iterations=30, lr=0.01, batch_size=batch_size, test_x=test_x,
                          progress=False)
    saved: dict[str, object] = {}

    def snapshot(iteration: int, model: osp.CompiledSPN, history: History) -> None:
        if iteration == 12:
            saved["state"] = {k: t.clone() for k, t in model.state_dict().items()}
            saved["history"] = History.from_dict(history.to_dict())

    train(paper_like(), x, iterations=17, lr=0.01, batch_size=batch_size, test_x=test_x, progress=False,
          callback=snapshot)
    resumed_model = paper_like()
    resumed_model.load_state_dict(saved["state"])
    resumed = train(resumed_model, x, iterations=30, lr=0.01, batch_size=batch_size, test_x=test_x, progress=False,
                    history=saved["history"])
    assert resumed.train_llh == uninterrupted.train_llh
    assert resumed.test_llh == uninterrupted.test_llh


def test_distinct_rows_give_the_same_objective_and_gradient_as_all_rows() -> None:
    x = np.repeat(binary_data(rows=40), 5, axis=0)  # every row five times (and more by chance)
    fast = train(paper_like(), x, iterations=20, lr=0.01, progress=False, deduplicate=True)
    plain = train(paper_like(), x, iterations=20, lr=0.01, progress=False, deduplicate=False)
    np.testing.assert_allclose(fast.train_llh, plain.train_llh, rtol=1e-12)


def test_torch_optimisers_as_factory_or_instance() -> None:
    x = binary_data()
    model = paper_like()
    history = train(model, x, iterations=60, lr=0.02, optimizer=torch.optim.Adam, progress=False)
    assert history.train_llh[-1] > history.train_llh[0] + 0.5
    assert all(bool((p >= 1e-4).all()) for p in model.parameters() if hasattr(p, "overspn_floor"))
    model = paper_like()
    instance = torch.optim.SGD(model.parameters(), lr=0.01)
    sgd = train(model, x, iterations=10, lr=0.01, optimizer=instance, progress=False)
    plain = train(paper_like(), x, iterations=10, lr=0.01, progress=False)
    np.testing.assert_allclose(sgd.train_llh, plain.train_llh, rtol=1e-12)  # SGD descends the negative objective
    with pytest.raises(ConfigurationError, match="does not hold any parameter"):
        train(paper_like(), x, iterations=1, lr=0.01, optimizer=instance, progress=False)


@pytest.mark.parametrize("lr", [0.0, -0.1, math.inf, math.nan])
def test_bad_learning_rate_is_a_configuration_error(lr: float) -> None:
    with pytest.raises(ConfigurationError, match="learning rate"):
        train(paper_like(), binary_data(), iterations=1, lr=lr, progress=False)


def test_bad_iterations_and_batch_size_are_configuration_errors() -> None:
    with pytest.raises(ConfigurationError, match="iterations"):
        train(paper_like(), binary_data(), iterations=-1, lr=0.1, progress=False)
    with pytest.raises(ConfigurationError, match="batch_size"):
        train(paper_like(), binary_data(), iterations=1, lr=0.1, batch_size=0, progress=False)
    with pytest.raises(ConfigurationError, match="optimizer"):
        train(paper_like(), binary_data(), iterations=1, lr=0.1, optimizer="adam", progress=False)  # type: ignore[arg-type]
