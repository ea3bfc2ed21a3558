"""The encoding cache of models: evaluating the same tensor again reuses its checked encoding, with identical results,
and any change of the tensor (in place, or a new tensor at a reused address) is seen."""

from __future__ import annotations

import copy
import gc
import math
import pickle
import weakref

import numpy as np
import pytest
import torch

import overspn as osp
from overspn.engine.rat import RatConfig, RatSPN
from overspn.errors import DataError


def _models() -> list[osp.SPNModule]:
    mixture = osp.mixture(6, 4, seed=1, perturbation=0.3)
    gaussian = osp.mixture(6, 3, leaf="gaussian", seed=2, perturbation=0.5)
    return [
        osp.compile(mixture, "raw", dtype=torch.float64),
        osp.compile(mixture, "log", dtype=torch.float32),
        osp.compile(mixture, "raw", dtype=torch.float64, fast=False),
        osp.compile(gaussian, "raw", dtype=torch.float64),
        RatSPN(RatConfig(6, depth=2, num_repetitions=2, seed=3), dtype=torch.float64),
    ]


def _data(model: osp.SPNModule, rows: int = 50, seed: int = 0) -> torch.Tensor:
    rng = np.random.default_rng(seed)
    if bool((model.var_cardinality == 0).all()):
        x = rng.normal(size=(rows, model.num_vars))
    else:
        x = rng.integers(0, 2, size=(rows, model.num_vars)).astype(float)
    x[rng.random(x.shape) < 0.1] = math.nan
    return torch.from_numpy(x).to(model.dtype)


def _uncached(model: osp.SPNModule, x: torch.Tensor) -> torch.Tensor:
    model.encoding_cache_size = 0
    try:
        return model.log_likelihood(x)
    finally:
        del model.encoding_cache_size


@pytest.mark.parametrize("index", range(5))
def test_cached_equals_uncached_and_encoded(index: int) -> None:
    model = _models()[index]
    x = _data(model)
    expected = _uncached(model, x)
    first, second, third = model.log_likelihood(x), model.log_likelihood(x), model.log_likelihood(x)
    assert torch.equal(first, expected) and torch.equal(second, expected) and torch.equal(third, expected)
    assert torch.equal(model.log_likelihood(model.encode(x)), expected)
    assert torch.equal(model.log_unnormalised(x), model.log_unnormalised(model.encode(x)))


@pytest.mark.parametrize("index", range(5))
def test_cached_gradients_equal_uncached(index: int) -> None:
    model = _models()[index]
    x = _data(model)
    grads = []
    for evaluate in (lambda: _uncached(model, x), lambda: model.log_likelihood(x), lambda: model.log_likelihood(x)):
        model.zero_grad(set_to_none=True)
        evaluate().sum().backward()
        grads.append([p.grad.clone() for p in model.parameters() if p.grad is not None])
    for other in grads[1:]:
        assert all(torch.equal(a, b) for a, b in zip(grads[0], other))


def test_in_place_change_invalidates_the_cache() -> None:
    model = _models()[0]
    x = _data(model)
    before = model.log_likelihood(x)
    x[0, 0] = 1.0 - x[0, 0] if not math.isnan(x[0, 0]) else 0.0
    after = model.log_likelihood(x)
    assert not torch.equal(before[0], after[0])
    assert torch.equal(after, _uncached(model, x))
    # through a view of the same storage, too
    x.view(-1)[1] = math.nan
    assert torch.equal(model.log_likelihood(x), _uncached(model, x))


def test_in_place_invalid_value_is_still_rejected() -> None:
    model = _models()[0]
    x = _data(model)
    model.log_likelihood(x)
    x[3, 2] = 5.0
    with pytest.raises(DataError, match="row 3, column 2"):
        model.log_likelihood(x)


def test_equal_content_in_another_tensor_gives_the_same_result() -> None:
    model = _models()[0]
    x = _data(model)
    result = model.log_likelihood(x)
    assert torch.equal(model.log_likelihood(x.clone()), result)
    assert torch.equal(model.log_likelihood(x.clone()), result)


def test_new_tensors_at_reused_addresses_are_not_confused() -> None:
    # a fresh batch every step may reuse the freed memory (and object id) of the previous one
    model = _models()[0]
    for seed in range(20):
        x = _data(model, rows=30, seed=seed)
        assert torch.equal(model.log_likelihood(x), _uncached(model, x))
        del x


def test_cache_does_not_keep_inputs_alive() -> None:
    model = _models()[0]
    x = _data(model)
    model.log_likelihood(x)
    reference = weakref.ref(x)
    assert len(model.encoding_cache.entries) == 1
    del x
    gc.collect()
    assert reference() is None
    assert model.encoding_cache.entries == []


def test_cache_holds_few_entries() -> None:
    model = _models()[0]
    tensors = [_data(model, seed=seed) for seed in range(5)]
    for x in tensors:
        model.log_likelihood(x)
    assert len(model.encoding_cache.entries) == model.encoding_cache_size == 2


def test_copies_state_dicts_and_pickles_do_not_carry_the_cache() -> None:
    model = _models()[0]
    x = _data(model)
    expected = model.log_likelihood(x)
    assert all(isinstance(value, torch.Tensor) for value in model.state_dict().values())
    for clone in (copy.deepcopy(model), pickle.loads(pickle.dumps(model))):
        assert "_encoding_cache" not in clone.__dict__
        assert torch.equal(clone.log_likelihood(x), expected)


def test_dtype_change_clears_the_cache() -> None:
    model = _models()[0]
    x = _data(model)
    model.log_likelihood(x)
    model.float()
    assert "_encoding_cache" not in model.__dict__
    result = model.log_likelihood(x)
    assert result.dtype == torch.float32
    assert torch.equal(result, model.log_likelihood(model.encode(x)))


def test_inference_mode_then_training() -> None:
    model = _models()[0]
    x = _data(model)
    with torch.inference_mode():
        evaluated = model.log_likelihood(x)
    with torch.no_grad():
        model.log_likelihood(x)
    loss = -model.log_likelihood(x).mean()
    loss.backward()
    assert torch.equal(evaluated, model.log_likelihood(x).detach())


def test_inputs_that_require_grad_or_numpy_are_not_cached() -> None:
    model = _models()[3]  # Gaussian leaves: the gradient with respect to the data exists
    x = _data(model).requires_grad_()
    model.log_likelihood(x).sum().backward()
    assert x.grad is not None and model.encoding_cache.entries == []
    array = _data(model).numpy()
    model.log_likelihood(array)
    assert model.encoding_cache.entries == []


def test_numpy_input_still_checked_and_equal() -> None:
    model = _models()[0]
    x = _data(model)
    assert torch.equal(model.log_likelihood(x.numpy()), model.log_likelihood(x))
    bad = x.numpy().copy()
    bad[1, 1] = 0.5
    with pytest.raises(DataError, match="row 1, column 1"):
        model.log_likelihood(bad)


@pytest.mark.parametrize("seed", range(10))
def test_flat_node_values_agree_with_per_layer_outputs(seed: int) -> None:
    # without autograd, layers read one node-major tensor of node values; the values agree to rounding (the order in
    # which a node's children are added may differ from the per-layer path's)
    import sys
    from pathlib import Path

    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from strategies import random_structure

    rng = np.random.default_rng(seed)
    structure = random_structure(rng, max_vars=6, max_depth=4)
    model = osp.compile(structure.root, "raw", dtype=torch.float64, fast=bool(seed % 2))
    x = torch.from_numpy(np.stack([rng.integers(0, c, 30) for c in model.var_cardinality.tolist()], 1)
                         .astype(np.float64))
    x[torch.from_numpy(rng.random(x.shape) < 0.2)] = math.nan
    with torch.no_grad():
        flat = model.log_likelihood(x)
        model.flat_outputs = False
        listed = model.log_likelihood(x)
    torch.testing.assert_close(flat, listed, rtol=1e-13, atol=1e-13)
    torch.testing.assert_close(flat, model.log_likelihood(x).detach(), rtol=1e-13, atol=1e-13)
