"""Depth as an optimiser: exact equality with training the overparametrized SPN, gradients against autograd."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

import overspn as osp
from overspn.errors import ConfigurationError
from overspn.learn.optim import Overparametrized, default_factor_floor, root_weight_parameter

NUM_VARS = 5


def _data(rows: int = 120, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 2, size=(rows, NUM_VARS)).astype(np.float64)


@pytest.mark.parametrize("branching, init, lr", [((2, 2, 2), 1e-4, 0.01), ((3, 1, 2), 0.2, 0.1)])
def test_shared_factors_follow_the_overparametrized_spn(branching: tuple[int, ...], init: float, lr: float) -> None:
    """50 steps of gradient ascent on overparametrize(...) collapse, step by step, onto the depth optimiser's
    trajectory of the shallow SPN (float64), floors included."""
    floor = 1e-4
    depth, components = len(branching), math.prod(branching)
    root = osp.mixture(NUM_VARS, components, seed=3, root_weight=init**depth, perturbation=0.3)
    deep = osp.compile(osp.overparametrize(root, branching, init=init), "raw", floor=floor, dtype=torch.float64)
    shallow = osp.compile(root, "raw", floor=floor**depth, dtype=torch.float64)
    root_parameter = root_weight_parameter(shallow)
    leaves = [p for p in shallow.parameters() if p is not root_parameter]
    floors = {**dict(shallow.raw_weight_floors()), **{p: floor for p in leaves}}  # leaves keep the deep model's floor
    deep_optimiser = torch.optim.SGD(deep.parameters(), lr=lr, maximize=True)
    osp.keep_floor(deep_optimiser, deep)
    optimiser = Overparametrized([{"params": [root_parameter], "branching": branching, "init": init,
                                   "factor_floor": floor}, {"params": leaves, "depth": 1}], lr=lr, maximize=True,
                                 floors=floors)
    osp.keep_floor(optimiser, shallow)
    x = _data()
    deep_x, shallow_x = deep.encode(x), shallow.encode(x)
    clamped = False
    for step in range(50):
        deep_value = deep.log_likelihood(deep_x).mean()
        value = shallow.log_likelihood(shallow_x).mean()
        assert value.item() == pytest.approx(deep_value.item(), rel=1e-10, abs=1e-10)
        deep_optimiser.zero_grad()
        deep_value.backward()
        deep_optimiser.step()
        optimiser.zero_grad()
        value.backward()
        optimiser.step()
        clamped |= any(bool((f == floor).any()) for f in optimiser.factors(root_parameter))
        if step % 7 == 0 or step == 49:
            collapsed = osp.collapse(deep.to_structure())
            np.testing.assert_allclose(root_parameter.detach().numpy(), collapsed.weights, rtol=1e-9)
    assert clamped or init > floor  # the paper's start exercises the floor of the factors
    deep_leaves = osp.compile(deep.to_structure(), "raw", dtype=torch.float64)
    np.testing.assert_allclose(shallow.log_likelihood(x).detach().numpy(),
                               deep_leaves.log_likelihood(x).detach().numpy(), rtol=1e-9)


def test_overparametrize_factorisation_reproduces_the_deep_weights() -> None:
    """init="overparametrize" factors a weight vector exactly as overparametrize(init=None) builds the deep SPN."""
    root = osp.mixture(NUM_VARS, 8, seed=1, root_weight=0.3, perturbation=0.2)
    weights = torch.tensor(np.random.default_rng(2).uniform(0.1, 2.0, 8))
    parameter = torch.nn.Parameter(weights.clone())
    optimiser = Overparametrized([parameter], lr=1e-3, branching=(2, 2, 2), init="overparametrize")
    parameter.grad = torch.zeros_like(parameter)
    optimiser.step()  # a zero gradient only factors the weights
    factors = [f.numpy().ravel() for f in optimiser.factors(parameter)]
    deep = osp.overparametrize(osp.Sum(root.children, weights.numpy()), (2, 2, 2))
    layer1 = deep.children
    layer2 = [grandchild for child in layer1 for grandchild in child.children]
    np.testing.assert_allclose(factors[0], deep.weights, rtol=1e-12)
    np.testing.assert_allclose(factors[1], np.concatenate([c.weights for c in layer1]), rtol=1e-12)
    np.testing.assert_allclose(factors[2], np.concatenate([c.weights for c in layer2]), rtol=1e-12)
    np.testing.assert_allclose(parameter.detach().numpy(), weights.numpy(), rtol=1e-12)


@pytest.mark.parametrize("branching, depth, init", [(None, 3, "balanced"), (None, 2, 0.7), ((2, 3), None, "balanced"),
                                                    ((2, 2), None, "overparametrize")])
def test_one_step_is_gradient_descent_on_the_factors(branching: tuple[int, ...] | None, depth: int | None,
                                                     init: str | float) -> None:
    """The step equals autograd's gradient of the loss through the product of the (shared) factors."""
    rng = np.random.default_rng(4)
    target = torch.tensor(rng.normal(size=12))
    start = torch.tensor(rng.uniform(0.2, 1.5, size=12) * rng.choice([-1.0, 1.0], size=12))
    if branching is not None:
        start = start.abs()

    def loss(p: torch.Tensor) -> torch.Tensor:
        return ((p - target) ** 2 * torch.arange(1.0, 13.0, dtype=p.dtype)).sum() + p.prod()

    parameter = torch.nn.Parameter(start.clone())
    lr = 0.01
    optimiser = Overparametrized([parameter], lr=lr, depth=depth, branching=branching, init=init)
    parameter.grad = torch.zeros_like(parameter)
    optimiser.step()
    factors = [f.clone().requires_grad_() for f in optimiser.factors(parameter)]
    np.testing.assert_allclose(parameter.detach().numpy(), start.numpy(), rtol=1e-12)

    def product(fs: list[torch.Tensor]) -> torch.Tensor:
        size = fs[-1].shape[1]
        result = torch.ones_like(fs[-1])
        for f in fs:
            result = result * f.repeat_interleave(size // f.shape[1], dim=1)
        return result.reshape(-1)

    value = loss(product(factors))
    grads = torch.autograd.grad(value, factors)
    expected = product([(f - lr * g).detach() for f, g in zip(factors, grads)])
    for _ in range(2):  # the second step checks the stored factors, not only the first factorisation
        parameter.grad = None
        loss(parameter).backward()
        optimiser.step()
        np.testing.assert_allclose(parameter.detach().numpy(), expected.numpy(), rtol=1e-12)
        factors = [f.clone().requires_grad_() for f in optimiser.factors(parameter)]
        grads = torch.autograd.grad(loss(product(factors)), factors)
        expected = product([(f - lr * g).detach() for f, g in zip(factors, grads)])


def test_factor_gradient_matches_finite_differences() -> None:
    """d loss / d factor from the optimiser's own step (lr -> step / lr) against central differences."""
    rng = np.random.default_rng(5)
    start = torch.tensor(rng.uniform(0.3, 1.2, size=6))

    def loss(p: torch.Tensor) -> torch.Tensor:
        return torch.log1p((p**3).sum()) + (p * torch.arange(6.0, dtype=p.dtype)).sum()

    parameter = torch.nn.Parameter(start.clone())
    optimiser = Overparametrized([parameter], lr=1e-3, branching=(3, 2))
    parameter.grad = torch.zeros_like(parameter)
    optimiser.step()
    before = [f.clone() for f in optimiser.factors(parameter)]
    parameter.grad = None
    loss(parameter).backward()
    optimiser.step()
    after = optimiser.factors(parameter)
    step = 1e-6
    for layer, factor in enumerate(before):
        for index in range(factor.shape[1]):
            values = []
            for sign in (1.0, -1.0):
                moved = [f.clone() for f in before]
                moved[layer][0, index] += sign * step
                size = moved[-1].shape[1]
                product = torch.ones_like(moved[-1])
                for f in moved:
                    product = product * f.repeat_interleave(size // f.shape[1], dim=1)
                values.append(loss(product.reshape(-1)).item())
            numeric = (values[0] - values[1]) / (2 * step)
            taken = (before[layer][0, index] - after[layer][0, index]).item() / 1e-3
            assert taken == pytest.approx(numeric, rel=1e-6, abs=1e-8)


def test_floors_keep_raw_weights_valid() -> None:
    """Factors are clamped to the default factor floor, whose cube reaches the weights' floor: the product never
    falls below it, so the global clamp of raw weights never moves a weight away from its factors."""
    root = osp.mixture(NUM_VARS, 4, seed=0, root_weight=1e-4, perturbation=0.3)
    model = osp.compile(root, "raw", dtype=torch.float64)
    x = model.encode(_data())
    root_parameter = root_weight_parameter(model)
    others = [p for p in model.parameters() if p is not root_parameter]
    optimiser = Overparametrized([{"params": [root_parameter], "depth": 3}, {"params": others, "depth": 1}], lr=0.5,
                                 maximize=True, floors=model.raw_weight_floors())
    for _ in range(10):
        value = model.log_likelihood(x).mean()
        optimiser.zero_grad()
        value.backward()
        optimiser.step()
        factors = optimiser.factors(root_parameter)
        product = factors[0] * factors[1] * factors[2]
        assert torch.equal(product.reshape(-1), root_parameter.detach())
    factor_floor = default_factor_floor(1e-4, 3)
    assert factor_floor**3 >= 1e-4 and math.nextafter(factor_floor, 0.0) ** 3 < 1e-4
    assert all(bool((f >= factor_floor).all()) for f in factors)
    assert any(bool((f == factor_floor).any()) for f in factors)  # the floor was hit
    assert bool((root_parameter >= 1e-4).all())
    with pytest.raises(ConfigurationError, match="below the weights' floor"):
        Overparametrized([root_parameter], lr=0.1, depth=3, factor_floor=1e-3 ** 2, floors={root_parameter: 1e-4})
    # without floors the factors have no lower bound
    free = Overparametrized([root_parameter], lr=0.1, depth=3, factor_floor=1e-3 ** 2)
    assert free.floor(root_parameter) is None


def test_depth_one_equals_sgd_exactly() -> None:
    root = osp.mixture(NUM_VARS, 4, seed=0, root_weight=0.2, perturbation=0.3)
    first, second = (osp.compile(root, "raw", dtype=torch.float64) for _ in range(2))
    x = first.encode(_data())
    optimisers = (Overparametrized(first.parameters(), lr=0.05, depth=1, maximize=True),
                  torch.optim.SGD(second.parameters(), lr=0.05, maximize=True))
    osp.keep_floor(optimisers[0], first)
    osp.keep_floor(optimisers[1], second)
    for _ in range(5):
        for model, optimiser in zip((first, second), optimisers):
            value = model.log_likelihood(x).mean()
            optimiser.zero_grad()
            value.backward()
            optimiser.step()
    for a, b in zip(first.parameters(), second.parameters()):
        # torch's SGD may fuse lr * grad + p into one rounding; the optimiser rounds twice
        torch.testing.assert_close(a, b, rtol=1e-13, atol=0.0)


@pytest.mark.parametrize("kwargs, message", [
    ({"lr": 0.0}, "lr must be"),
    ({"lr": 0.1, "depth": 0}, "depth must be"),
    ({"lr": 0.1, "branching": (2, 2), "depth": 3}, "disagrees with branching"),
    ({"lr": 0.1, "branching": (4, 1)}, "cannot be read as weight vectors"),
    ({"lr": 0.1, "branching": (2, 0)}, "branching must be"),
    ({"lr": 0.1, "init": "zeros"}, "init must be"),
    ({"lr": 0.1, "init": -1.0}, "init must be"),
    ({"lr": 0.1, "factor_floor": -1.0}, "factor_floor must be"),
])
def test_bad_options_are_named(kwargs: dict, message: str) -> None:
    with pytest.raises(ConfigurationError, match=message):
        Overparametrized([torch.nn.Parameter(torch.ones(6))], **kwargs)


def test_root_weight_parameter_needs_a_sum_root_alone_in_its_layer() -> None:
    model = osp.compile(osp.Product([osp.Indicator(0, 1), osp.Indicator(1, 0)]), "raw")
    with pytest.raises(ConfigurationError, match="root is not a sum"):
        root_weight_parameter(model)
