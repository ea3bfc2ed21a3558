"""RAT-SPNs: the region graph, equality of the tensorised and generic compiled paths, exact partition functions."""

from __future__ import annotations

import itertools
import math

import numpy as np
import pytest
import torch

import overspn as osp
from overspn.engine.rat import RatConfig, RatSPN, rat_spn
from overspn.errors import ConfigurationError, DataError
from overspn.symbolic.structure import Product, Sum


def _random_data(leaf: str, cardinality: int, rows: int, num_vars: int, seed: int, missing: float) -> np.ndarray:
    rng = np.random.default_rng(seed)
    if leaf == "gaussian":
        x = rng.normal(size=(rows, num_vars))
    else:
        x = rng.integers(0, cardinality, size=(rows, num_vars)).astype(np.float64)
    x[rng.random(x.shape) < missing] = np.nan
    return x


def _perturb_weights(model: RatSPN, seed: int) -> None:
    """Make the sum weights unnormalised (for "log" and "raw") so that the partition function is not 1."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for parameter in [*model.sum_weights, model.root_weights]:
            noise = torch.rand(parameter.shape, generator=generator, dtype=parameter.dtype)
            if model.parametrisation == "raw":
                parameter.mul_(0.2 + 3 * noise)
            else:
                parameter.add_(2 * noise - 1)


@pytest.mark.parametrize("leaf", ["bernoulli", "categorical", "gaussian"])
@pytest.mark.parametrize("depth", [1, 2, 3])
def test_structure_is_a_valid_spn_over_all_variables(leaf: str, depth: int) -> None:
    root = rat_spn(11, depth=depth, num_repetitions=3, num_sums=4, num_input=2, leaf=leaf, seed=5, cardinality=3)
    order = osp.validate(root)
    assert root.scope == frozenset(range(11))
    model = RatSPN(RatConfig(11, depth, 3, 4, 2, leaf, 3, seed=5))
    assert osp.num_parameters(root) == model.num_parameters()
    # root: one sum over the cross products of the top split of every repetition
    assert isinstance(root, Sum) and len(root.children) == 3 * (2 if depth == 1 else 4) ** 2
    assert all(isinstance(child, Product) and len(child.children) == 2 for child in root.children)
    sums = [node for node in order if isinstance(node, Sum)]
    assert len(sums) == 1 + 3 * 4 * (2 ** depth - 2)


def test_region_graph_partitions_the_variables_in_every_repetition() -> None:
    model = RatSPN(RatConfig(13, depth=3, num_repetitions=4, seed=2))
    orders = set()
    for repetition in model.regions:
        assert len(repetition) == 8
        assert sorted(np.concatenate(repetition).tolist()) == list(range(13))
        assert max(map(len, repetition)) - min(map(len, repetition)) <= 1
        orders.add(tuple(np.concatenate(repetition).tolist()))
    assert len(orders) > 1  # repetitions split the variables differently
    membership = model.region_membership
    assert torch.equal(membership.sum(dim=2), torch.ones(13, 4, dtype=membership.dtype))


@pytest.mark.parametrize("weights", ["softmax", "log", "raw"])
@pytest.mark.parametrize("leaf", ["bernoulli", "categorical", "gaussian"])
@pytest.mark.parametrize("depth", [1, 3])
def test_tensorised_path_equals_generic_compiled_path(weights: str, leaf: str, depth: int) -> None:
    model = RatSPN(RatConfig(10, depth, 3, 3, 2, leaf, 3, seed=depth), weights, dtype=torch.float64)
    _perturb_weights(model, seed=1)
    x = _random_data(leaf, 2 if leaf == "bernoulli" else 3, 40, 10, seed=3, missing=0.3)
    x[0] = np.nan  # the all-missing row: the partition function ratio
    expected_fast = model.to_compiled(fast=True)
    expected_generic = model.to_compiled(fast=False)
    with torch.no_grad():
        got = model.log_likelihood(x)
        torch.testing.assert_close(got, expected_fast.log_likelihood(x), rtol=0, atol=1e-10)
        torch.testing.assert_close(got, expected_generic.log_likelihood(x), rtol=0, atol=1e-10)
        torch.testing.assert_close(model.log_unnormalised(x), expected_generic.log_unnormalised(x), rtol=0, atol=1e-10)
        torch.testing.assert_close(model.log_partition(), expected_generic.log_partition(), rtol=0, atol=1e-10)
        if weights != "softmax":  # the checks above compared a non-trivial partition function
            assert abs(float(model.log_partition())) > 1e-3
    assert abs(float(got[0])) < 1e-12


def test_float32_agrees_with_float64() -> None:
    config = RatConfig(12, 2, 4, 5, 3, seed=0)
    double = RatSPN(config, "log", dtype=torch.float64)
    single = RatSPN(config, "log", dtype=torch.float32)
    x = _random_data("bernoulli", 2, 30, 12, seed=1, missing=0.2)
    with torch.no_grad():
        torch.testing.assert_close(single.log_likelihood(x).double(), double.log_likelihood(x), rtol=0, atol=1e-4)


@pytest.mark.parametrize("weights", ["log", "raw"])
@pytest.mark.parametrize(("leaf", "cardinality", "num_vars"), [("bernoulli", 2, 8), ("categorical", 3, 5)])
def test_partition_function_is_exact_by_enumeration(weights: str, leaf: str, cardinality: int, num_vars: int) -> None:
    model = RatSPN(RatConfig(num_vars, 2, 3, 3, 2, leaf, cardinality, seed=4), weights, dtype=torch.float64)
    _perturb_weights(model, seed=2)
    states = np.array(list(itertools.product(range(cardinality), repeat=num_vars)), dtype=np.float64)
    with torch.no_grad():
        total = torch.logsumexp(model.log_unnormalised(states), dim=0)
        assert abs(float(total - model.log_partition())) < 1e-10
        assert abs(float(torch.logsumexp(model.log_likelihood(states), dim=0))) < 1e-10
        # a marginal equals the explicit sum over the states of the missing variable
        partial = states[states[:, 0] == 0].copy()
        partial[:, 1] = np.nan
        partial = np.unique(partial, axis=0)
        completed = np.repeat(partial, cardinality, axis=0)
        completed[:, 1] = np.tile(np.arange(cardinality), len(partial))
        explicit = torch.logsumexp(model.log_likelihood(completed).view(-1, cardinality), dim=1)
        torch.testing.assert_close(model.log_likelihood(partial), explicit, rtol=0, atol=1e-10)


def test_gradients_match_finite_differences() -> None:
    model = RatSPN(RatConfig(6, 2, 2, 2, 2, "gaussian", seed=1), "log", dtype=torch.float64)
    x = torch.from_numpy(_random_data("gaussian", 2, 5, 6, seed=0, missing=0.2))
    inputs = tuple(p.detach().clone().requires_grad_() for p in model.parameters())

    def functional(*values: torch.Tensor) -> torch.Tensor:
        return torch.func.functional_call(model, {name: v for (name, _), v in zip(model.named_parameters(), values)},
                                          (x,))

    assert torch.autograd.gradcheck(functional, inputs, eps=1e-6, atol=1e-6)


def test_reused_buffers_are_kept_per_shape_within_their_byte_budget() -> None:
    from overspn.engine.rat_layers import _Scratch

    scratch = _Scratch()
    scratch.capacity_bytes = 1000
    like = torch.zeros(1, dtype=torch.float64)
    first = scratch.empty((10, 5), like)  # 400 bytes
    assert scratch.empty((10, 5), like) is first
    assert scratch.empty((10, 5), torch.zeros(1, dtype=torch.float32)) is not first  # per dtype
    scratch.empty((20, 5), like)  # 800 bytes: the oldest buffers go
    assert sum(t.nbytes for t in scratch.tensors.values()) <= 1000
    assert scratch.empty((10, 5), like) is not first
    huge = scratch.empty((200,), like)  # over the budget: never kept
    assert scratch.empty((200,), like) is not huge and all(t.nbytes <= 1000 for t in scratch.tensors.values())


@pytest.mark.parametrize("chunk_bytes", [2**20, 1, 7000])
def test_gradients_through_reused_buffers_equal_those_of_fresh_ones(chunk_bytes: int,
                                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    """On the CPU the widest temporary of a backward pass is formed a few blocks at a time (all at once, one by
    one, or in uneven chunks here) in a reused buffer; batches of other sizes in turn, and a backward pass that
    records its graph (which forms it whole, afresh), give the same gradients."""
    monkeypatch.setattr("overspn.engine.rat_layers._CHUNK_BYTES", chunk_bytes)
    model = RatSPN(RatConfig(8, 2, 3, 4, 3, "bernoulli", seed=2), "softmax", dtype=torch.float64)
    batches = [torch.from_numpy(_random_data("bernoulli", 2, rows, 8, rows, 0.1)) for rows in (9, 4, 9, 13, 4)]

    def gradients(x: torch.Tensor, create_graph: bool) -> list[torch.Tensor]:
        loss = -model.log_likelihood(x).mean()
        return [g.detach() for g in torch.autograd.grad(loss, list(model.parameters()), create_graph=create_graph)]

    expected = [gradients(x, create_graph=True) for x in batches]
    for _ in range(2):
        for x, reference in zip(batches, expected):
            for got, want in zip(gradients(x, create_graph=False), reference):
                torch.testing.assert_close(got, want, rtol=0, atol=0)


@pytest.mark.parametrize("leaf", ["bernoulli", "categorical"])
def test_binary_rows_without_missing_values_take_the_half_product_with_the_same_values_and_gradients(leaf: str) -> None:
    """Complete binary rows read the leaves as x @ (log f(1) - log f(0)) + sum log f(0); the same rows with one
    missing value elsewhere (so every row takes the one-hot product) give the same values and gradients."""
    model = RatSPN(RatConfig(8, 2, 3, 3, 4, leaf, 2, seed=6), "log", dtype=torch.float64)
    _perturb_weights(model, seed=1)
    complete = torch.from_numpy(_random_data(leaf, 2, 12, 8, 3, 0.0))
    with_missing = torch.cat([complete, torch.full((1, 8), math.nan)])
    with_missing[-1, 0] = 1.0
    gradients = []
    for x in (complete, with_missing):
        model.zero_grad()
        values = model.log_likelihood(x)[: len(complete)]
        values.sum().backward()
        gradients.append((values.detach(), [p.grad.clone() for p in model.parameters()]))
    torch.testing.assert_close(gradients[0][0], gradients[1][0], rtol=1e-12, atol=1e-12)
    for fast, reference in zip(gradients[0][1], gradients[1][1]):
        torch.testing.assert_close(fast, reference, rtol=1e-10, atol=1e-12)
    inputs = (model.logit if leaf == "bernoulli" else model.logits).detach().clone().requires_grad_()
    name = "logit" if leaf == "bernoulli" else "logits"
    assert torch.autograd.gradcheck(
        lambda t: torch.func.functional_call(model, {name: t}, (complete,)), (inputs,), eps=1e-6, atol=1e-6)


@pytest.mark.parametrize(("leaf", "cardinality"), [("bernoulli", 2), ("categorical", 4), ("gaussian", 2)])
def test_full_batch_em_never_decreases_the_likelihood(leaf: str, cardinality: int) -> None:
    model = RatSPN(RatConfig(8, 2, 3, 3, 3, leaf, cardinality, seed=0), dtype=torch.float64)
    x = torch.from_numpy(_random_data(leaf, cardinality, 200, 8, seed=0, missing=0.1))
    if leaf == "gaussian":
        x[:, :4] += 2.0 * (x[:, 4:] > 0)  # dependent columns, so mixing has something to learn
    model.initialise_from_data(x.numpy(), seed=0)
    values = [model.em_step(x, step_size=1.0, pseudo_count=0.0) for _ in range(6)]
    assert all(later >= earlier - 1e-9 for earlier, later in zip(values, values[1:]))
    assert values[-1] > values[0] + 1e-3


def test_bad_configuration_and_data_are_named() -> None:
    with pytest.raises(ConfigurationError, match="depth <= 2"):
        RatConfig(5, depth=3)
    with pytest.raises(ConfigurationError, match="num_sums"):
        RatConfig(5, depth=1, num_sums=0)
    with pytest.raises(ConfigurationError, match="leaf"):
        RatConfig(5, depth=1, leaf="poisson")
    model = RatSPN(RatConfig(4, 1, 2, 2, 2))
    with pytest.raises(DataError, match="row 1, column 2"):
        model.log_likelihood(np.array([[0, 1, 0, 1], [0, 1, 2, 1.0]]))
    with pytest.raises(DataError, match="shape"):
        model.log_likelihood(np.zeros((3, 5)))
    with pytest.raises(ConfigurationError, match="softmax"):
        RatSPN(RatConfig(4, 1, 2, 2, 2), "log").em_step(np.zeros((2, 4)), 0.5)


def test_saved_model_reloads_with_the_same_likelihoods(tmp_path) -> None:
    model = RatSPN(RatConfig(9, 2, 2, 3, 3, "categorical", 4, seed=3))
    path = tmp_path / "rat.ospn"
    osp.save(model.to_compiled(), path)
    x = _random_data("categorical", 4, 25, 9, seed=2, missing=0.25)
    with torch.no_grad():
        torch.testing.assert_close(osp.load(path).log_likelihood(x), model.log_likelihood(x), rtol=0, atol=1e-5)


@pytest.mark.parametrize("leaf", ["bernoulli", "categorical", "gaussian"])
def test_initialisation_from_data_in_groups_equals_one_pass(leaf: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """Processing the inputs in small groups (bounded memory) gives exactly the statistics of one pass."""
    import overspn.engine.rat as rat_module

    rng = np.random.default_rng(3)
    data = rng.normal(size=(300, 8)) if leaf == "gaussian" else rng.integers(0, 3 if leaf == "categorical" else 2,
                                                                             (300, 8)).astype(float)
    data[rng.random(data.shape) < 0.1] = np.nan
    config = RatConfig(num_vars=8, depth=2, num_repetitions=3, num_sums=2, num_input=4, leaf=leaf, cardinality=3)
    one_pass, grouped = RatSPN(config, dtype=torch.float64), RatSPN(config, dtype=torch.float64)
    one_pass.initialise_from_data(data, seed=5)
    monkeypatch.setattr(rat_module, "INIT_MEMORY", 1)  # one input per group
    grouped.initialise_from_data(data, seed=5)
    for key, value in one_pass.state_dict().items():
        assert torch.equal(value, grouped.state_dict()[key]), key


@pytest.mark.parametrize("leaf", ["bernoulli", "categorical"])
@pytest.mark.parametrize("missing", [0.0, 0.3])
def test_both_orientations_of_the_leaf_product_equal_the_generic_path(leaf: str, missing: float,
                                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    """The leaf regions' product is taken row-major from ROW_MAJOR_MIN_INPUTS inputs on and transposed below: both
    give the generic engine's values (with the partition row) and the same gradients."""
    model = RatSPN(RatConfig(9, 2, 3, 3, 4, leaf, 3, seed=2), "raw", dtype=torch.float64)
    _perturb_weights(model, seed=4)
    x = torch.from_numpy(_random_data(leaf, 2 if leaf == "bernoulli" else 3, 20, 9, seed=5, missing=missing))
    expected = model.to_compiled(fast=False).log_likelihood(x)
    results = []
    name = "logit" if leaf == "bernoulli" else "logits"
    for threshold in (0, 10**9):  # every width row-major, then none
        monkeypatch.setattr("overspn.engine.rat_layers.ROW_MAJOR_MIN_INPUTS", threshold)
        model.zero_grad()
        values = model.log_likelihood(x)
        values.sum().backward()
        torch.testing.assert_close(values.detach(), expected, rtol=0, atol=1e-10)
        results.append([p.grad.clone() for p in model.parameters()])
        inputs = getattr(model, name).detach().clone().requires_grad_()
        assert torch.autograd.gradcheck(
            lambda t: torch.func.functional_call(model, {name: t}, (x,)), (inputs,), eps=1e-6, atol=1e-6)
    for row_major, transposed in zip(*results):
        torch.testing.assert_close(row_major, transposed, rtol=1e-10, atol=1e-12)


def test_mixing_layer_gradients_can_be_differentiated_again() -> None:
    """The hand-written backward of the mixing layer records its own graph when asked to (create_graph)."""
    from overspn.engine.rat_layers import _Bilinear

    generator = torch.Generator().manual_seed(0)
    pairs = torch.rand(3, 2, 4, 3, dtype=torch.float64, generator=generator).requires_grad_()
    weights = torch.rand(3, 2, 3, 3, dtype=torch.float64, generator=generator).requires_grad_()
    assert torch.autograd.gradcheck(_Bilinear.apply, (pairs, weights))
    assert torch.autograd.gradgradcheck(_Bilinear.apply, (pairs, weights))


@pytest.mark.parametrize(("num_input", "depth", "weights"), [(2, 1, "softmax"), (12, 1, "softmax"),
                                                              (2, 2, "raw"), (12, 2, "raw")])
def test_a_state_of_probability_zero_gives_minus_inf_never_nan(num_input: int, depth: int, weights: str) -> None:
    """A leaf with probability 0 for a state (log -inf in its table) makes the rows with that state -inf and leaves
    the others as they are with a tiny finite probability instead, in both orientations of the leaf product and
    through the mixing layers (depth 2); the gradients stay finite."""
    config = RatConfig(6, depth, 2, 2, num_input, "categorical", 3, seed=1)
    model = RatSPN(config, weights, dtype=torch.float64)
    tiny = RatSPN(config, weights, dtype=torch.float64)
    with torch.no_grad():
        model.logits[0, :, :, 2] = -math.inf  # variable 0 never takes state 2, under any input
        tiny.logits[0, :, :, 2] = -1e30
    x = _random_data("categorical", 3, 30, 6, seed=2, missing=0.2)
    x[0, 0], x[1, 0], x[2, 0] = 2.0, 1.0, np.nan
    got, reference = model.log_likelihood(x), tiny.log_likelihood(x)
    hit = torch.from_numpy(x[:, 0] == 2)
    assert bool(hit.any()) and bool((~hit).any())
    assert bool(torch.isneginf(got[hit]).all()) and bool((reference[hit] < -1e29).all())
    torch.testing.assert_close(got[~hit], reference[~hit], rtol=0, atol=1e-10)
    got.sum().backward()
    assert all(bool(torch.isfinite(p.grad).all()) for p in model.parameters() if p.grad is not None)


@pytest.mark.parametrize("leaf", ["bernoulli", "categorical"])
def test_em_steps_agree_in_both_orientations_of_the_leaf_product(leaf: str, monkeypatch: pytest.MonkeyPatch) -> None:
    config = RatConfig(9, 2, 3, 3, 4, leaf, 3, seed=3)
    x = _random_data(leaf, 2 if leaf == "bernoulli" else 3, 40, 9, seed=6, missing=0.1)
    states = []
    for threshold in (0, 10**9):
        monkeypatch.setattr("overspn.engine.rat_layers.ROW_MAJOR_MIN_INPUTS", threshold)
        model = RatSPN(config, "softmax", dtype=torch.float64)
        llh = [model.em_step(x, step_size=0.5) for _ in range(3)]
        assert llh[2] >= llh[0]
        states.append(model.state_dict())
    for name, value in states[0].items():
        torch.testing.assert_close(value, states[1][name], rtol=1e-10, atol=1e-12)
