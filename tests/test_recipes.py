"""Recipes: structure specs, the default structure per data type, the EM schedule through fit, and
``overspn train --structure hclt``."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

import overspn as osp
from overspn.cli.main import main
from overspn.engine.hclt import HCLT
from overspn.engine.rat import RatSPN
from overspn.errors import ConfigurationError
from overspn.learn.fit import evaluate
from overspn.learn.recipes import (
    EMSchedule,
    Structure,
    build_model,
    default_structure,
    parse_rat_structure,
    parse_structure,
    train_model,
)


def _chain_data(rows: int, num_vars: int, seed: int) -> np.ndarray:
    """Binary rows of a noisy chain: each variable copies the previous one with probability 0.85."""
    rng = np.random.default_rng(seed)
    data = np.empty((rows, num_vars))
    data[:, 0] = rng.random(rows) < 0.5
    for v in range(1, num_vars):
        data[:, v] = np.where(rng.random(rows) < 0.85, data[:, v - 1], 1 - data[:, v - 1])
    return data


def test_specs_parse_with_defaults_and_write_back_in_full() -> None:
    hclt = parse_structure("hclt,latent=8")
    assert hclt == Structure("hclt", {"latent": 8, "pseudocount": 0.01, "init": "data", "softening": 1.0,
                                      "bags": 1})
    assert hclt.spec == "hclt,latent=8,pseudocount=0.01,init=data,softening=1,bags=1"
    assert parse_structure(hclt.spec) == hclt
    assert parse_structure("HCLT, k=4, alpha=0.5").options == {"latent": 4, "pseudocount": 0.5, "init": "data",
                                                               "softening": 1.0, "bags": 1}
    softened = parse_structure("hclt,softening=0.999")
    assert softened.options["softening"] == 0.999 and parse_structure(softened.spec) == softened
    assert softened.spec.endswith(",softening=0.999,bags=1")
    assert parse_structure("hclt,beta=0.99").options["softening"] == 0.99
    old = parse_structure("d=1,r=3,k=4,i=5")  # the RAT spec without its prefix
    assert old == Structure("rat", {"depth": 1, "num_repetitions": 3, "num_sums": 4, "num_input": 5})
    assert old.spec == "rat,depth=1,repetitions=3,sums=4,inputs=5" and parse_structure(old.spec) == old
    assert parse_structure("rat,depth=2").options == {**parse_rat_structure(None), "depth": 2}
    assert default_structure("bernoulli").kind == "hclt" and default_structure("categorical").kind == "hclt"
    assert default_structure("gaussian").kind == "rat"
    assert parse_structure(None, "gaussian") == default_structure("gaussian")
    assert parse_structure("", "bernoulli") == default_structure("bernoulli")


@pytest.mark.parametrize(("spec", "words"), [
    ("hclt,latnt=4", ["'latnt'", "latent", "pseudocount"]),
    ("hclt,latent=four", ["latent", "integer", "'four'"]),
    ("hclt,pseudocount=-1", ["pseudocount", ">= 0"]),
    ("hclt,init=zeros", ["init", "'zeros'"]),
    ("hclt,softening=0.5", ["--structure", "softening", "(0.5, 1]", "0.5"]),
    ("hclt,softening=1.01", ["--structure", "softening", "(0.5, 1]", "1.01"]),
    ("hclt,softening=nan", ["--structure", "softening", "(0.5, 1]", "nan"]),
    ("hclt,softening=high", ["--structure", "softening", "a number", "'high'"]),
    ("hclt,bags=0", ["--structure", "bags", "1 to 4096", "0"]),
    ("hclt,bags=2.5", ["bags", "integer", "'2.5'"]),
    ("rat,depth=2,reps=3", ["'reps'", "repetitions"]),
    ("depth=2,reps=3", ["'reps'", "repetitions"]),
    ("tree,latent=4", ["'tree'", "hclt", "rat"]),
])
def test_spec_errors_name_the_bad_key(spec: str, words: list[str]) -> None:
    with pytest.raises(ConfigurationError) as error:
        parse_structure(spec)
    assert all(word in str(error.value) for word in words), str(error.value)


def test_models_are_built_from_the_training_data() -> None:
    data = _chain_data(300, 6, seed=0)
    hclt = build_model(parse_structure("hclt,latent=3"), data, seed=1)
    assert isinstance(hclt, HCLT) and hclt.config.latent == 3 and hclt.config.num_vars == 6
    rat = build_model(parse_structure("rat,depth=1,repetitions=2,inputs=2"), data)
    assert isinstance(rat, RatSPN) and rat.config.num_repetitions == 2
    with pytest.raises(ConfigurationError, match="continuous"):
        build_model(parse_structure("hclt"), data, leaf="gaussian")


class Entries:
    def __init__(self) -> None:
        self.entries: list[dict] = []

    def on_epoch(self, model: object, entry: dict) -> None:
        self.entries.append(entry)


def test_the_em_schedule_runs_through_fit_and_keeps_the_best_parameters() -> None:
    data = _chain_data(600, 8, seed=1)
    train, valid = data[:400], data[400:]
    structure = parse_structure("hclt,latent=4")
    model = build_model(structure, train)
    before = osp.fit(build_model(structure, train), train, valid, epochs=0).valid_llh[0]
    seen = Entries()
    schedule = EMSchedule(batch_size=100, steps=(0.5, 0.1), epochs=4, full_epochs=3, minibatch_share=0.5,
                          time_budget=None)
    history = train_model(model, train, valid, structure=structure, schedule=schedule, callbacks=[seen])
    # two mini-batch phases of 2 epochs, then 3 full-batch epochs; each phase's entry 0 after the first is left out
    assert [entry["epoch"] for entry in history.entries] == list(range(8))
    assert [entry["learning_rate"] for entry in history.entries[1:]] == [0.5, 0.5, 0.1, 0.1, 1.0, 1.0, 1.0]
    assert len(seen.entries) == 3 + 3 + 4  # fit announced every entry of every phase
    assert history.best_valid_llh == max(history.valid_llh) > before
    assert evaluate(model, valid) == pytest.approx(history.best_valid_llh, abs=1e-5)
    assert not hasattr(model, "__dict__") or "em_step" not in model.__dict__  # the pseudocount patch is gone


def test_the_default_schedule_is_full_batch_em_and_adam_is_one_fit_call() -> None:
    data = _chain_data(500, 6, seed=2)
    model = build_model(parse_structure("hclt,latent=3"), data[:400])
    history = train_model(model, data[:400], data[400:], epochs=3)
    assert history.epochs == 3 and {entry["learning_rate"] for entry in history.entries[1:]} <= {1.0, 0.5}
    adam = train_model(build_model(parse_structure("hclt,latent=3"), data[:400]), data[:400], data[400:],
                       optimizer="adam", lr=0.05, batch_size=100, epochs=2)
    assert adam.epochs == 2 and adam.entries[1]["learning_rate"] == 0.05


def test_cli_trains_an_hclt_and_picks_it_by_default_for_binary_data(tmp_path: Path) -> None:
    data = _chain_data(500, 6, seed=3)
    paths = {}
    for split, rows in (("train", data[:300]), ("valid", data[300:400]), ("test", data[400:])):
        paths[split] = tmp_path / f"{split}.csv"
        np.savetxt(paths[split], rows, delimiter=",", fmt="%d")
    common = ["--train", str(paths["train"]), "--valid", str(paths["valid"]), "--test", str(paths["test"]),
              "--quiet", "--threads", "1"]
    assert main(["train", *common, "--structure", "hclt,latent=4", "--epochs", "2", "--out", str(tmp_path / "a")]) == 0
    metrics = json.loads((tmp_path / "a" / "metrics.json").read_text())
    assert metrics["structure"]["spec"] == "hclt,latent=4,pseudocount=0.01,init=data,softening=1,bags=1"
    assert metrics["epochs"] == 2 and metrics["settings"]["optimizer"] == "em"
    model = osp.load(tmp_path / "a" / "model.ospn")
    assert isinstance(model, HCLT)
    assert evaluate(model, np.loadtxt(paths["test"], delimiter=",")) == pytest.approx(metrics["test_llh"], abs=1e-4)
    assert main(["train", *common, "--epochs", "1", "--out", str(tmp_path / "b")]) == 0
    assert json.loads((tmp_path / "b" / "metrics.json").read_text())["structure"]["spec"].startswith("hclt,latent=32")


def test_softening_trains_on_softened_rows_and_validates_on_the_rows_as_they_are() -> None:
    data = _chain_data(600, 8, seed=4)
    train, valid = data[:400], data[400:]
    structure = parse_structure("hclt,latent=3,softening=0.9")
    model, plain = build_model(structure, train), build_model(parse_structure("hclt,latent=3"), train)
    history = train_model(model, train, valid, structure=structure, epochs=3, patience=None)
    expected = build_model(structure, train)
    with torch.no_grad():
        first = float(expected.softened_log_likelihood(train, 0.9).mean())
    assert expected.em_step(train, 1.0, pseudo_count=0.01, softening=0.9) == pytest.approx(first, abs=1e-6)
    assert evaluate(expected, valid) == pytest.approx(history.entries[1]["valid_llh"], abs=1e-5)  # epoch 1: same step
    assert history.entries[1]["train_llh"] == pytest.approx(evaluate(expected, train), abs=1e-5)  # recorded unsoftened
    train_model(plain, train, valid, epochs=1)
    assert evaluate(plain, valid) != pytest.approx(history.entries[1]["valid_llh"], abs=1e-4)  # softening acted
    with pytest.raises(ConfigurationError, match="softening is an option of EM training"):
        train_model(build_model(structure, train), train, valid, structure=structure, optimizer="adam", epochs=1)


def test_bagging_builds_each_hclt_from_its_bootstrap_sample_and_trains_it_there() -> None:
    data = _chain_data(500, 6, seed=5)
    train, valid = data[:400], data[400:]
    structure = parse_structure("hclt,latent=3,bags=3")
    assert structure.options["bags"] == 3 and structure.spec.endswith(",bags=3")
    mixture = build_model(structure, train, seed=7)
    assert isinstance(mixture, osp.ModelMixture) and len(mixture.parts) == 3
    rows = mixture.bootstrap_rows
    assert rows is not None and all(len(sample) == 400 for sample in rows)
    assert not np.array_equal(rows[0], rows[1])  # every component draws its own sample, the same for a seed
    assert all(np.array_equal(a, b) for a, b in zip(rows, build_model(structure, train, seed=7).bootstrap_rows))
    history = train_model(mixture, train, valid, structure=structure, epochs=2, patience=None)
    assert history.epochs == 3 * 2
    # component 1 is exactly the HCLT its sample gives, trained alone on that sample
    alone = build_model(parse_structure("hclt,latent=3"), train[rows[1]], seed=7 + 1)
    train_model(alone, train[rows[1]], valid, structure=parse_structure("hclt,latent=3"), epochs=2, patience=None)
    assert alone.config == mixture.parts[1].config
    for mine, theirs in zip(alone.parameters(), mixture.parts[1].parameters()):
        assert torch.equal(mine, theirs)
    with torch.no_grad():  # the mixture is the equal-weight average of its components
        expected = torch.logsumexp(torch.stack([part.log_likelihood(valid) for part in mixture.parts]), 0) - np.log(3)
        torch.testing.assert_close(mixture.log_likelihood(valid), expected, rtol=1e-5, atol=1e-5)


def test_cli_trains_a_bagged_hclt(tmp_path: Path) -> None:
    data = _chain_data(400, 5, seed=6)
    paths = {}
    for split, rows in (("train", data[:250]), ("valid", data[250:320]), ("test", data[320:])):
        paths[split] = tmp_path / f"{split}.csv"
        np.savetxt(paths[split], rows, delimiter=",", fmt="%d")
    assert main(["train", "--train", str(paths["train"]), "--valid", str(paths["valid"]), "--test",
                 str(paths["test"]), "--quiet", "--threads", "1", "--structure", "hclt,latent=3,bags=2", "--epochs",
                 "2", "--out", str(tmp_path / "bagged")]) == 0
    metrics = json.loads((tmp_path / "bagged" / "metrics.json").read_text())
    assert metrics["structure"]["spec"].endswith(",bags=2") and len(metrics["structure"]["components"]) == 2
    model = osp.load(tmp_path / "bagged" / "model.ospn")
    assert isinstance(model, osp.ModelMixture)
    assert evaluate(model, np.loadtxt(paths["test"], delimiter=",")) == pytest.approx(metrics["test_llh"], abs=1e-4)
