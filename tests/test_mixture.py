"""Mixtures of models: against enumeration, the generic engine on the same structure, finite differences, and files."""

from __future__ import annotations

import itertools
import json
import math
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch

import overspn as osp
from overspn.errors import ConfigurationError, ModelFileError

ALL_STATES = torch.tensor(list(itertools.product([0.0, 1.0], repeat=5)), dtype=torch.float64)


def components(count: int = 3, weights: str = "softmax") -> list[osp.SPNModule]:
    rng = np.random.default_rng(0)
    data = rng.integers(0, 2, (200, 5)).astype(float)
    return [osp.HCLT.from_data(data[rng.integers(0, 200, 200)], latent=3, seed=k, weights=weights,
                               dtype=torch.float64) for k in range(count)]


@pytest.mark.parametrize("weights", ["softmax", "log", "raw"])
def test_likelihoods_and_marginals_against_enumeration(weights: str) -> None:
    parts = components(weights=weights)
    mixture = osp.ModelMixture(parts, [0.2, 0.3, 0.5])
    with torch.no_grad():
        joint = mixture.log_likelihood(ALL_STATES)
        expected = torch.logsumexp(torch.stack([p.log_likelihood(ALL_STATES) for p in parts])
                                   + torch.log(torch.tensor([0.2, 0.3, 0.5], dtype=torch.float64)).unsqueeze(1), 0)
        torch.testing.assert_close(joint, expected, rtol=1e-12, atol=1e-12)
        assert float(torch.logsumexp(joint, 0)) == pytest.approx(0.0, abs=1e-12)
        # x0 missing: the marginal is the sum over both states of x0
        partial = ALL_STATES[ALL_STATES[:, 0] == 0].clone()
        partial[:, 0] = math.nan
        pairs = torch.logaddexp(joint[ALL_STATES[:, 0] == 0], joint[ALL_STATES[:, 0] == 1])
        torch.testing.assert_close(mixture.log_likelihood(partial), pairs, rtol=1e-12, atol=1e-12)


def test_equals_the_generic_engine_on_its_structure() -> None:
    mixture = osp.ModelMixture(components(), [0.6, 0.3, 0.1])
    generic = osp.compile(mixture.to_structure(), "softmax", dtype=torch.float64, num_vars=5)
    rows = ALL_STATES.clone()
    rows[::3, 2] = math.nan
    with torch.no_grad():
        torch.testing.assert_close(mixture.log_likelihood(rows), generic.log_likelihood(rows), rtol=1e-10,
                                   atol=1e-10)


def test_gradients_against_finite_differences() -> None:
    mixture = osp.ModelMixture(components(2, weights="log"), [0.7, 0.3])
    rows = ALL_STATES[::2]
    torch.autograd.gradcheck(lambda w: _mean_with(mixture, w, rows), (mixture.mixture_weights.detach().clone()
                                                                      .requires_grad_(),))
    loss = mixture.log_likelihood(rows).mean()
    loss.backward()
    assert all(p.grad is not None for p in mixture.parts[0].parameters())  # the components train too


def _mean_with(mixture: osp.ModelMixture, weights: torch.Tensor, rows: torch.Tensor) -> torch.Tensor:
    original = mixture.mixture_weights
    del mixture.mixture_weights
    mixture.mixture_weights = weights  # type: ignore[assignment]
    try:
        return mixture.log_likelihood(rows).mean()
    finally:
        mixture.mixture_weights = original


def test_round_trip_and_queries(tmp_path: Path) -> None:
    mixture = osp.ModelMixture(components())
    path = tmp_path / "mixture.ospn"
    osp.save(mixture, path)
    loaded = osp.load(path)
    assert isinstance(loaded, osp.ModelMixture) and len(loaded.parts) == 3
    with torch.no_grad():
        assert torch.equal(loaded.log_likelihood(ALL_STATES), mixture.log_likelihood(ALL_STATES))
    samples = loaded.sample(50, generator=torch.Generator().manual_seed(0))
    assert samples.shape == (50, 5) and set(samples.unique().tolist()) <= {0.0, 1.0}
    evidence = ALL_STATES[:4].clone()
    evidence[:, 1] = math.nan
    completed = loaded.mpe(evidence)
    assert not torch.isnan(completed).any() and torch.equal(completed[:, 0], evidence[:, 0])


def test_info_describes_a_mixture_file(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from overspn.cli.main import main

    path = tmp_path / "mixture.ospn"
    osp.save(osp.ModelMixture(components()), path)
    assert main(["info", str(path), "--json"]) == 0
    description = json.loads(capsys.readouterr().out)
    assert description["kind"] == "mixture" and description["num_vars"] == 5
    assert description["layout"]["components"] == 3 and description["num_parameters"] > 0


def _rewritten(source: Path, target: Path, change: object) -> Path:
    with zipfile.ZipFile(source) as archive:
        content = {name: archive.read(name) for name in archive.namelist()}
    header = json.loads(content["model.json"])
    change(header)  # type: ignore[operator]
    content["model.json"] = json.dumps(header).encode()
    with zipfile.ZipFile(target, "w") as archive:
        for name, data in content.items():
            archive.writestr(name, data)
    return target


@pytest.mark.parametrize("change, words", [
    (lambda h: h.update(components=[]), ("'components'", "1 to 4096")),
    (lambda h: h["components"][1].update(kind="compiled"), ("component 1", "'compiled'")),
    (lambda h: h["components"][0]["config"].update(latent=10**6), ("limit",)),
    (lambda h: h["components"][2].update(weights="log"), ("component 2", "log weights")),
])
def test_bad_mixture_files_are_refused(tmp_path: Path, change: object, words: tuple[str, ...]) -> None:
    source = tmp_path / "mixture.ospn"
    osp.save(osp.ModelMixture(components()), source)
    with pytest.raises(ModelFileError) as caught:
        osp.load(_rewritten(source, tmp_path / "bad.ospn", change))
    for word in words:
        assert word in str(caught.value)


def test_bad_components_are_refused() -> None:
    parts = components()
    with pytest.raises(ConfigurationError, match="1 to 4096"):
        osp.ModelMixture([])
    with pytest.raises(ConfigurationError, match="component 1 is a Sum"):
        osp.ModelMixture([parts[0], osp.Sum([osp.Indicator(0, 0), osp.Indicator(0, 1)], [1, 1])])  # type: ignore[list-item]
    other = osp.HCLT(osp.HCLTConfig(num_vars=4, latent=2))
    with pytest.raises(ConfigurationError, match="component 1 differs"):
        osp.ModelMixture([parts[0], other])
    with pytest.raises(ConfigurationError, match="mixture_weights"):
        osp.ModelMixture(parts, [1.0, -1.0, 1.0])
