"""Every model type answers the same questions the same way: the grid of model type x leaf x parametrisation.

Each model round-trips through ``osp.save`` / ``osp.load`` bit for bit and loads back as the same class; it
evaluates log-likelihoods and the partition function, agrees with the generic compiled program of its own
structure, samples valid data and completes missing values.
"""

from __future__ import annotations

import copy
from pathlib import Path

import numpy as np
import pytest
import torch

import overspn as osp

LEAVES = ("bernoulli", "categorical", "gaussian")
PARAMETRISATIONS = ("raw", "log", "softmax")
KINDS = ("compiled", "rat", "hclt")


def make_model(kind: str, leaf: str, weights: str) -> osp.SPNModule:
    if kind == "hclt":
        hclt = osp.HCLTConfig(num_vars=6, latent=3, cardinality=2 if leaf == "bernoulli" else 3, leaf=leaf,
                              parents=(-1, 0, 0, 1, 1, 3), seed=1)
        return osp.HCLT(hclt, weights, dtype=torch.float64)
    config = osp.RatConfig(num_vars=6, depth=2, num_repetitions=2, num_sums=3, num_input=2, leaf=leaf,
                           cardinality=3, seed=1)
    if kind == "rat":
        return osp.RatSPN(config, weights, dtype=torch.float64)
    structure = osp.RatSPN(config, dtype=torch.float64).to_structure()
    return osp.compile_structure(structure, weights, dtype=torch.float64)


def make_data(leaf: str, rows: int = 12, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    if leaf == "gaussian":
        data = rng.normal(size=(rows, 6))
    else:
        data = rng.integers(0, 2 if leaf == "bernoulli" else 3, size=(rows, 6)).astype(float)
    data[rng.random(data.shape) < 0.2] = np.nan
    return data


# HCLT leaves are discrete (each variable's categorical given its latent state)
GRID = [(kind, leaf, weights) for kind in KINDS for leaf in LEAVES for weights in PARAMETRISATIONS
        if not (kind == "hclt" and leaf == "gaussian")]


@pytest.mark.parametrize(("kind", "leaf", "weights"), GRID)
def test_save_load_round_trip_is_bit_identical_and_keeps_the_class(kind: str, leaf: str, weights: str,
                                                                    tmp_path: Path) -> None:
    model = make_model(kind, leaf, weights)
    data = make_data(leaf)
    osp.save(model, tmp_path / "model.ospn")
    loaded = osp.load(tmp_path / "model.ospn")
    assert type(loaded) is type(model)
    assert (loaded.parametrisation, loaded.floor, loaded.dtype, loaded.num_vars) == (
        model.parametrisation, model.floor, model.dtype, model.num_vars)
    original, restored = model.state_dict(), loaded.state_dict()
    assert original.keys() == restored.keys()
    assert all(torch.equal(original[key], restored[key]) for key in original)
    with torch.no_grad():
        assert torch.equal(loaded.log_likelihood(data), model.log_likelihood(data))
    assert loaded.supports_em == model.supports_em
    assert loaded.num_parameters() == model.num_parameters() > 0


@pytest.mark.parametrize(("kind", "leaf", "weights"), GRID)
def test_every_model_agrees_with_the_generic_program_of_its_structure(kind: str, leaf: str, weights: str) -> None:
    model = make_model(kind, leaf, weights)
    data = make_data(leaf)
    generic = model.to_compiled(fast=False)
    with torch.no_grad():
        torch.testing.assert_close(model.log_likelihood(data), generic.log_likelihood(data), rtol=1e-10,
                                   atol=1e-10)
        torch.testing.assert_close(model.log_partition(), generic.log_partition(), rtol=1e-10, atol=1e-10)
        # unnormalised weights: the likelihood is normalised by the exact partition function
        expected = model.log_unnormalised(data) - model.log_partition()
        torch.testing.assert_close(model.log_likelihood(data), expected, rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize(("kind", "leaf", "weights"), GRID)
def test_every_model_samples_and_completes_data(kind: str, leaf: str, weights: str) -> None:
    model = make_model(kind, leaf, weights)
    generator = torch.Generator().manual_seed(0)
    samples = model.sample(50, generator=generator)
    assert samples.shape == (50, 6) and not bool(torch.isnan(samples).any())
    model.check_data(samples, allow_missing=False)  # every sample is a valid data row
    evidence = make_data(leaf, rows=1)[0]
    conditioned = model.sample(20, evidence=evidence, generator=generator)
    observed = ~np.isnan(evidence)
    assert torch.equal(conditioned[:, torch.from_numpy(observed)],
                       torch.from_numpy(evidence[observed]).expand(20, -1))
    data = make_data(leaf)
    completed = model.mpe(data)
    assert not bool(torch.isnan(completed).any())
    known = torch.from_numpy(~np.isnan(data))
    assert torch.equal(completed[known], torch.from_numpy(data)[known])
    # the completion is at least as likely as the data with its missing values filled in any other valid way
    with torch.no_grad():
        assert bool(torch.isfinite(model.log_likelihood(completed)).all())


@pytest.mark.parametrize("kind", KINDS)
def test_deep_copies_are_independent_models_with_the_same_function(kind: str) -> None:
    model = make_model(kind, "bernoulli", "raw")
    data = make_data("bernoulli")
    twin = copy.deepcopy(model)
    with torch.no_grad():
        assert torch.equal(twin.log_likelihood(data), model.log_likelihood(data))
        next(twin.parameters()).add_(0.5)
        assert not torch.equal(twin.log_likelihood(data), model.log_likelihood(data))


def test_data_follows_the_model_dtype_and_device() -> None:
    model = make_model("rat", "bernoulli", "softmax").to(torch.float32)
    values = model.log_likelihood(torch.zeros(3, 6, dtype=torch.float64))
    assert values.dtype == torch.float32 and values.device == model.device


@pytest.mark.parametrize("kind", KINDS)
def test_type_casts_only_the_floating_point_state(kind: str) -> None:
    """``model.type(dtype)`` works like ``.to(dtype)``: the integer index buffers keep their type."""
    model, data = make_model(kind, "bernoulli", "raw"), make_data("bernoulli")
    expected = model.log_likelihood(data).detach()
    single = model.type(torch.float32)
    assert single is model and model.dtype == torch.float32
    torch.testing.assert_close(model.log_likelihood(data).double(), expected, rtol=0, atol=1e-4)
    model.type("torch.DoubleTensor")
    torch.testing.assert_close(model.log_likelihood(data), expected, rtol=0, atol=1e-6)
    with pytest.raises(osp.ConfigurationError, match="floating point"):
        model.type(torch.int64)


@pytest.mark.parametrize(("kind", "leaf", "weights"), GRID)
def test_every_model_trains_with_fit(kind: str, leaf: str, weights: str) -> None:
    model = make_model(kind, leaf, weights)
    train, valid = make_data(leaf, rows=60, seed=1), make_data(leaf, rows=20, seed=2)
    history = osp.fit(model, train, valid, optimizer="adam", lr=0.05, epochs=5, batch_size=20, seed=0)
    assert len(history.entries) == 6 and history.entries[0]["epoch"] == 0
    assert history.best_valid_llh is not None
    # the model holds the best parameters, and they are better on the training data than the initial ones
    with torch.no_grad():
        assert float(model.log_likelihood(train).mean()) > history.entries[0]["train_llh"]
    assert all(bool((p >= model.floor).all()) for p, _ in model.raw_weight_floors())
    if model.supports_em and weights == "softmax":
        em = osp.fit(make_model(kind, leaf, weights), train, optimizer="em", lr=0.5, epochs=3, batch_size=30)
        assert em.entries[-1]["train_llh"] > em.entries[0]["train_llh"]
