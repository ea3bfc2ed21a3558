"""The training loop ``fit``: the update against a hand computation, floor, improvement, divergence, batches,
optimizers, callbacks, stopping rules and checkpoints that resume exactly."""

from __future__ import annotations

import functools
import math
from pathlib import Path

import numpy as np
import pytest
import torch

import overspn as osp
from overspn.errors import ConfigurationError, DivergenceError, ModelFileError
from overspn.learn.callbacks import StepTimes
from overspn.learn.fit import History, fit
from overspn.learn.optim import Overparametrized, root_weight_parameter


def train(model: osp.CompiledSPN, x: np.ndarray, *, iterations: int, lr: float, **options: object) -> History:
    """The paper's update: full batch (unless a batch size is given), plain gradient ascent."""
    return fit(model, x, optimizer=options.pop("optimizer", "sgd"), lr=lr, epochs=iterations, **options)


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
    history = train(model, x, iterations=1, lr=lr)
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
    train(model, x, iterations=1, lr=2.0)
    _, _, u, v = weights_of(model)
    assert u[1] == floor and v[1] == floor  # the unclamped step would be negative (hand computation: < 0)
    history = train(model, x, iterations=200, lr=0.5)
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
    history = train(model, x, iterations=150, lr=lr, test=test_x)
    train_llh, test_llh = np.array(history.train_llh), np.array(history.test_llh)
    assert len(train_llh) == len(test_llh) == 151
    assert train_llh[-1] > train_llh[0] + 0.3
    assert test_llh[-1] > test_llh[0] + 0.3
    assert np.all(np.diff(train_llh) > -1e-3)  # small steps: no noticeable decrease
    assert history.test_llh[-1] == pytest.approx(float(model.log_likelihood(test_x).mean().detach()), rel=1e-12)


@pytest.mark.parametrize("lr", [1e6, 1e9])
def test_huge_learning_rate_diverges_and_restores_the_last_finite_model(lr: float) -> None:
    # Gaussian leaves: a huge step sends a deviation to 0 or a mean far away, and the likelihood to -inf or NaN
    x = np.random.default_rng(0).normal(size=(100, 3))
    model = osp.compile(osp.mixture(3, 4, leaf="gaussian", seed=0, perturbation=0.5), "log", dtype=torch.float64)
    with pytest.raises(DivergenceError, match=r"diverged at epoch \d+ .*learning rate") as caught:
        train(model, x, iterations=50, lr=lr)
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
        histories.append(train(model, x, iterations=40, lr=0.1, batch_size=32, seed=seed))
        finals.append(torch.cat([p.detach().flatten() for p in model.parameters()]))
    full = train(paper_like(weights="log"), x, iterations=40, lr=0.1)
    assert histories[0].train_llh[-1] > histories[0].train_llh[0] + 0.1
    assert histories[0].train_llh == histories[1].train_llh and torch.equal(finals[0], finals[1])
    assert histories[0].train_llh != histories[2].train_llh  # another seed, other batches
    assert histories[0].train_llh != full.train_llh
    assert histories[0].train_llh[0] == full.train_llh[0]  # iteration 0 is the full training set


class Interrupt(Exception):
    """Raised by a callback to stop a run the way a kill would (after its last checkpoint)."""


class StopAt:
    def __init__(self, epoch: int) -> None:
        self.epoch = epoch

    def on_epoch(self, model: object, entry: dict) -> None:
        if entry["epoch"] == self.epoch:
            raise Interrupt


def parameters_of(model: torch.nn.Module) -> torch.Tensor:
    return torch.cat([p.detach().flatten() for p in model.parameters()])


@pytest.mark.parametrize("optimizer, lr, batch_size", [("sgd", 0.01, None), ("sgd", 0.01, 50), ("adam", 0.02, None),
                                                         ("adam", 0.02, 64)])
def test_an_interrupted_run_resumes_to_the_uninterrupted_result(optimizer: str, lr: float, batch_size: int | None,
                                                                tmp_path: Path) -> None:
    x, valid, test_x = binary_data(), binary_data(rows=100, seed=4), binary_data(seed=5)
    options = dict(optimizer=optimizer, lr=lr, batch_size=batch_size, test=test_x, epochs=30, patience=20,
                   lr_decay=0.7, seed=3)
    reference_model = paper_like()
    reference = fit(reference_model, x, valid, **options)
    checkpoint = tmp_path / "run.pt"
    with pytest.raises(Interrupt):  # stopped in epoch 14, after the checkpoint of epoch 12
        fit(paper_like(), x, valid, **options, checkpoint=checkpoint, checkpoint_every=4, callbacks=[StopAt(14)])
    resumed_model = paper_like()
    resumed = fit(resumed_model, x, valid, **options, checkpoint=checkpoint, checkpoint_every=4)
    strip = [{k: v for k, v in entry.items() if "seconds" not in k} for entry in reference.entries]
    assert [{k: v for k, v in entry.items() if "seconds" not in k} for entry in resumed.entries] == strip
    assert (resumed.best_epoch, resumed.best_valid_llh) == (reference.best_epoch, reference.best_valid_llh)
    assert torch.equal(parameters_of(resumed_model), parameters_of(reference_model))


def test_a_finished_run_is_extended_and_other_settings_are_refused(tmp_path: Path) -> None:
    x, checkpoint = binary_data(), tmp_path / "run.pt"
    uninterrupted = fit(paper_like(), x, optimizer="sgd", lr=0.01, epochs=8)
    assert fit(paper_like(), x, optimizer="sgd", lr=0.01, epochs=5, checkpoint=checkpoint).epochs == 5
    extended = fit(paper_like(), x, optimizer="sgd", lr=0.01, epochs=8, checkpoint=checkpoint)
    assert [entry["epoch"] for entry in extended.entries] == list(range(9))
    assert extended.train_llh == uninterrupted.train_llh
    with pytest.raises(ConfigurationError, match=r"run\.pt .*lr: 0\.01 there, 0\.02 now"):
        fit(paper_like(), x, optimizer="sgd", lr=0.02, epochs=8, checkpoint=checkpoint)
    with pytest.raises(ConfigurationError, match="data: 'a' there, 'b' now"):
        for data in ("a", "b"):
            fit(paper_like(), x, optimizer="sgd", lr=0.01, epochs=2, checkpoint=tmp_path / "f.pt",
                fingerprint={"data": data})


@pytest.mark.parametrize("content", [b"", b"not a checkpoint", b"PK\x03\x04 truncated zip"])
def test_a_damaged_checkpoint_names_the_file_and_the_way_out(content: bytes, tmp_path: Path) -> None:
    path = tmp_path / "damaged.pt"
    path.write_bytes(content)
    with pytest.raises(ModelFileError, match=r"damaged\.pt.*--restart"):
        fit(paper_like(), binary_data(), optimizer="sgd", lr=0.01, epochs=2, checkpoint=path)
    foreign = tmp_path / "foreign.pt"
    torch.save({"weights": torch.ones(3)}, foreign)
    with pytest.raises(ModelFileError, match=r"foreign\.pt: not an overspn checkpoint.*--restart"):
        fit(paper_like(), binary_data(), optimizer="sgd", lr=0.01, epochs=2, checkpoint=foreign)


def test_distinct_rows_give_the_same_objective_and_gradient_as_all_rows() -> None:
    x = np.repeat(binary_data(rows=40), 5, axis=0)  # every row five times (and more by chance)
    fast = train(paper_like(), x, iterations=20, lr=0.01, deduplicate=True)
    plain = train(paper_like(), x, iterations=20, lr=0.01, deduplicate=False)
    np.testing.assert_allclose(fast.train_llh, plain.train_llh, rtol=1e-12)


def test_torch_optimisers_as_factory_or_instance() -> None:
    x = binary_data()
    model = paper_like()
    history = train(model, x, iterations=60, lr=0.02, optimizer=torch.optim.Adam)
    assert history.train_llh[-1] > history.train_llh[0] + 0.5
    assert all(bool((p >= floor).all()) for p, floor in model.raw_weight_floors())
    model = paper_like()
    instance = torch.optim.SGD(model.parameters(), lr=0.01)
    sgd = train(model, x, iterations=10, lr=0.01, optimizer=instance)
    plain = train(paper_like(), x, iterations=10, lr=0.01)
    assert sgd.train_llh == plain.train_llh  # SGD on the negative objective is exactly gradient ascent
    with pytest.raises(ConfigurationError, match="does not hold any parameter"):
        train(paper_like(), x, iterations=1, lr=0.01, optimizer=instance)


@pytest.mark.parametrize("lr", [0.0, -0.1, math.inf, math.nan])
def test_bad_learning_rate_is_a_configuration_error(lr: float) -> None:
    with pytest.raises(ConfigurationError, match="learning rate"):
        train(paper_like(), binary_data(), iterations=1, lr=lr)


def test_bad_options_are_configuration_errors() -> None:
    model, x = paper_like(), binary_data()
    for options, message in [({"epochs": -1}, "epochs"), ({"batch_size": 0}, "batch_size"),
                             ({"patience": 0}, "patience"),
                             ({"lr_decay": 1.5}, "lr_decay"), ({"time_budget": 0}, "time budget"),
                             ({"seed": -1}, "seed"), ({"optimizer": "lbfgs"}, "optimizer"),
                             ({"optimizer": 3}, "optimizer"), ({"optimizer": "em"}, "EM")]:
        with pytest.raises(ConfigurationError, match=message):
            fit(model, x, **{"optimizer": "sgd", "lr": 0.1, **options})
    with pytest.raises(ConfigurationError, match="maximize"):
        fit(model, x, optimizer=torch.optim.SGD(model.parameters(), lr=0.1, maximize=True))
    with pytest.raises(ConfigurationError, match="factory needs lr"):
        fit(model, x, optimizer=torch.optim.Adam)
    with pytest.raises(ConfigurationError, match="no rows"):
        fit(model, x[:0], optimizer="sgd", lr=0.1)


def test_callbacks_see_every_step_and_every_entry() -> None:
    class Entries:
        def __init__(self) -> None:
            self.entries: list[dict] = []

        def on_epoch(self, model: object, entry: dict) -> None:
            self.entries.append(entry)

    x, steps, entries = binary_data(rows=100), StepTimes(), Entries()
    history = fit(paper_like(), x, optimizer="sgd", lr=0.01, epochs=3, batch_size=30, callbacks=[steps, entries])
    assert len(steps.seconds) == 3 * 4 and all(s >= 0 for s in steps.seconds)
    assert entries.entries == history.entries and [e["epoch"] for e in entries.entries] == [0, 1, 2, 3]
    # mini-batch: an epoch's train value is the mean of its batch objectives, weighted by the batch sizes
    assert history.train_llh[1] == pytest.approx((30 * sum(steps.objectives[:3]) + 10 * steps.objectives[3]) / 100)
    exact = fit(paper_like(), x, optimizer="sgd", lr=0.01, epochs=3, batch_size=30, evaluate_train=True)
    assert exact.train_llh[1] != history.train_llh[1]
    assert [e["valid_llh"] for e in exact.entries] == [None] * 4 and exact.valid_llh is None


def test_full_batch_steps_ascend_the_recorded_objective() -> None:
    steps = StepTimes()
    history = fit(paper_like(), binary_data(), optimizer="sgd", lr=0.01, epochs=4, callbacks=[steps])
    assert steps.objectives == history.train_llh[:-1]


def test_early_stopping_keeps_the_best_parameters_and_decays_the_rate() -> None:
    x, valid = binary_data(rows=60, seed=0), binary_data(rows=200, seed=9)
    model = paper_like(weights="log")
    history = fit(model, x, valid, optimizer="adam", lr=0.3, epochs=200, patience=3, lr_decay=0.5)
    assert history.stop_reason == "early stopping" and history.epochs < 200
    assert history.best_valid_llh == max(history.valid_llh)
    assert history.valid_llh[history.best_epoch] == history.best_valid_llh
    assert osp.learn.fit.evaluate(model, valid) == pytest.approx(history.best_valid_llh, rel=1e-10)
    # the rate of epoch e is halved once for every earlier epoch that did not improve on the best validation value
    valid = history.valid_llh
    worse = [valid[e] <= max(valid[:e]) for e in range(1, len(valid))]
    expected = [0.3 * 0.5 ** sum(worse[: max(e - 1, 0)]) for e in range(len(valid))]
    assert [entry["learning_rate"] for entry in history.entries] == expected


def test_the_time_budget_stops_after_the_epoch_that_crosses_it() -> None:
    history = fit(paper_like(), binary_data(), optimizer="sgd", lr=0.01, epochs=10**6, time_budget=0.3)
    assert history.stop_reason == "time budget"
    assert history.entries[-2]["seconds"] < 0.3 <= history.seconds


def test_the_depth_optimizer_is_a_factory_and_raw_weights_stay_on_their_floor() -> None:
    model = paper_like(branching=(8,))
    floors = dict(model.raw_weight_floors())
    factory = functools.partial(Overparametrized, depth=2, floors=floors)
    history = fit(model, binary_data(), optimizer=factory, lr=0.05, epochs=30)
    assert history.train_llh[-1] > history.train_llh[0]
    assert all(bool((p >= floor).all()) for p, floor in floors.items())
    adam = paper_like()
    fit(adam, binary_data(), optimizer="adam", lr=0.5, epochs=5)  # big Adam steps push weights below the floor
    assert all(bool((p >= floor).all()) for p, floor in adam.raw_weight_floors())
    assert root_weight_parameter(paper_like(branching=(8,))) is not None
