"""The first-order dynamics of deep SPNs: factorisation, chain rule against autograd, eta-scaling, the tracer, CLI."""

from __future__ import annotations

import csv
import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch
from torch.func import functional_call

import overspn as osp
from overspn.cli.main import main
from overspn.data import Dataset
from overspn.errors import ConfigurationError, StructureError
from overspn.learn.optim import root_weight_parameter
from overspn.studies.dynamics import (
    Tracer,
    component_weights,
    edge_values,
    expand,
    factorise,
    loglog_slope,
    shallow_structure,
)

NUM_VARS = 4


def _data(rows: int = 150, seed: int = 0, num_vars: int = NUM_VARS) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 2, size=(rows, num_vars)).astype(np.float64)


def _deep(branching: tuple[int, ...], seed: int = 1) -> osp.Sum:
    """An overparametrized mixture with distinct, positive weights everywhere (a generic state)."""
    root = osp.mixture(NUM_VARS, math.prod(branching), seed=seed, root_weight=0.5, perturbation=0.4)
    rng = np.random.default_rng(seed)
    return osp.overparametrize(osp.Sum(root.children, rng.uniform(0.2, 1.5, len(root.children))), branching)


def _natural_tree() -> osp.Sum:
    """A naturally deep tree SPN over 4 variables: sums under products under the root (no private edges)."""
    rng = np.random.default_rng(7)

    def unit(var: int) -> osp.Sum:
        return osp.Sum([osp.Indicator(var, 0), osp.Indicator(var, 1)], rng.uniform(0.2, 1.0, 2))

    def block(a: int, b: int) -> osp.Sum:
        products = [osp.Product([unit(a), unit(b)]) for _ in range(2)]
        return osp.Sum(products, rng.uniform(0.2, 1.0, 2))

    children = [osp.Product([block(0, 1), block(2, 3)]), osp.Product([block(0, 2), block(1, 3)])]
    return osp.Sum(children, rng.uniform(0.2, 1.0, 2))


def test_factorisation_of_an_overparametrized_spn_follows_phi() -> None:
    branching = (2, 3, 2)
    deep = _deep(branching)
    factorisation = factorise(deep)
    values = edge_values(deep, factorisation)
    assert factorisation.incidence.shape == (12, 2 + 6 + 12)
    collapsed = osp.collapse(deep)
    np.testing.assert_allclose(component_weights(factorisation, values), collapsed.weights, rtol=1e-14)
    layers = [deep.weights]
    nodes = [deep]
    for _ in branching[1:]:
        nodes = [child for node in nodes for child in node.children]
        layers.append(np.concatenate([n.weights for n in nodes]))
    for k in range(12):
        on_path = sorted(values[factorisation.incidence[k]].tolist())
        expected = sorted(float(layers[layer][osp.phi(branching, k, layer)]) for layer in range(3))
        assert on_path == pytest.approx(expected, rel=1e-15)
        assert values[factorisation.top[k]] == deep.weights[osp.phi(branching, k, 0)]
    assert factorisation.private.sum() == 12  # exactly the bottom layer belongs to one component alone


@pytest.mark.parametrize("make", [lambda: _deep((2, 2, 2)), _natural_tree])
def test_shallow_structure_is_the_same_function(make) -> None:
    deep = make()
    factorisation = factorise(deep)
    assert factorisation.num_components == osp.count_induced_trees(deep)
    x = _data(40, seed=3)
    x[::3, 1] = np.nan  # marginalised entries too
    reference = osp.compile(deep, "raw", dtype=torch.float64).log_likelihood(x)
    shallow = osp.compile(shallow_structure(deep, factorisation), "raw", dtype=torch.float64, num_vars=NUM_VARS)
    torch.testing.assert_close(shallow.log_likelihood(x), reference, rtol=1e-12, atol=1e-12)


def test_factorise_rejects_dags_and_product_roots() -> None:
    shared = osp.Sum([osp.Indicator(0, 0), osp.Indicator(0, 1)], [0.5, 0.5])
    other = osp.Sum([osp.Indicator(1, 0), osp.Indicator(1, 1)], [0.5, 0.5])
    inner = osp.Sum([osp.Product([osp.Indicator(1, 0), osp.Indicator(2, 1)]),
                     osp.Product([osp.Indicator(1, 1), osp.Indicator(2, 0)])], [0.5, 0.5])
    dag = osp.Sum([osp.Product([shared, inner]), osp.Product([shared, other, osp.Indicator(2, 1)])], [0.5, 0.5])
    with pytest.raises(StructureError, match="not a tree"):
        factorise(osp.Sum([dag.children[0], osp.Product([inner, shared])], [1.0, 1.0]))
    with pytest.raises(StructureError, match="sum node at the root"):
        factorise(osp.Product([shared, other]))


@pytest.mark.parametrize("make", [lambda: _deep((2, 2, 2)), lambda: _deep((3, 2)), _natural_tree])
def test_edge_gradient_is_autograd_through_the_products(make) -> None:
    """G_e = sum_{j on e} (w_j / a_e) g_j equals autograd of the objective through w = prod(a) (float64)."""
    deep = make()
    factorisation = factorise(deep)
    values = edge_values(deep, factorisation)
    shallow = osp.compile(shallow_structure(deep, factorisation), "raw", dtype=torch.float64, num_vars=NUM_VARS)
    x = shallow.encode(_data())
    name = next(n for n, p in shallow.named_parameters() if p is root_weight_parameter(shallow))
    incidence = torch.from_numpy(factorisation.incidence)

    def objective(edge: torch.Tensor) -> torch.Tensor:
        weights = torch.where(incidence, edge[None, :], torch.ones_like(edge)[None, :]).prod(dim=1)
        return functional_call(shallow, {name: weights}, (x,)).mean()

    edges = torch.tensor(values, requires_grad=True)
    (expected,) = torch.autograd.grad(objective(edges), edges)
    weights = torch.tensor(component_weights(factorisation, values), requires_grad=True)
    (gradient,) = torch.autograd.grad(functional_call(shallow, {name: weights}, (x,)).mean(), weights)
    expansion = expand(factorisation, values, gradient.numpy(), eta=0.01)
    np.testing.assert_allclose(expansion.edge_gradient, expected.numpy(), rtol=1e-10, atol=1e-13)


@pytest.mark.parametrize("make", [lambda: _deep((2, 4)), lambda: _deep((2, 2, 2)), _natural_tree])
def test_the_two_decompositions_agree_and_the_paper_rate_is_the_two_layer_case(make) -> None:
    deep = make()
    factorisation = factorise(deep)
    values = edge_values(deep, factorisation)
    gradient = np.random.default_rng(0).normal(size=factorisation.num_components)
    e = expand(factorisation, values, gradient, eta=0.03)
    np.testing.assert_allclose(e.general, e.rho_self * gradient + e.cross, rtol=1e-12, atol=1e-15)
    direct = 0.03 * np.array([
        sum(e.weights[k] / values[edge] * e.edge_gradient[edge] for edge in np.flatnonzero(factorisation.incidence[k]))
        for k in range(factorisation.num_components)])
    np.testing.assert_allclose(e.general, direct, rtol=1e-12)
    depth = factorisation.depth
    if factorisation.private.any() and np.all(depth == 2):
        np.testing.assert_allclose(e.paper, e.general, rtol=1e-12)
    if factorisation.private.any() and np.all(depth == 3):
        # rho is eta times the squared product of all weights above the bottom layer, not eta (w[0])^2
        bottom = np.array([np.flatnonzero(factorisation.incidence[k] & factorisation.private)[0]
                           for k in range(factorisation.num_components)])
        np.testing.assert_allclose(e.rho, 0.03 * (e.weights / values[bottom]) ** 2, rtol=1e-12)
        assert np.max(np.abs(e.paper - e.general)) > 1e-3 * np.max(np.abs(e.general))


@pytest.mark.parametrize("branching, paper_exact", [((2, 4), True), ((2, 2, 2), False), ((2, 1, 2, 2), False)])
def test_first_order_residual_shrinks_like_eta_squared(branching: tuple[int, ...], paper_exact: bool) -> None:
    """At a fixed state the residual of the general formula has log-log slope 2 in eta; the paper's formula has
    slope 2 for two layers and stays first-order wrong (relative residual constant in eta) for three or more."""
    tracer = Tracer(_deep(branching), _data(), lr=0.1, floor=1e-6)
    etas = [1e-2, 1e-3, 1e-4, 1e-5]
    rows = tracer.eta_scaling(etas)
    general = [r for r in rows if r["formula"] == "general"]
    paper = [r for r in rows if r["formula"] == "paper"]
    assert loglog_slope(etas, [r["absolute"] for r in general]) == pytest.approx(2.0, abs=0.05)
    assert loglog_slope(etas, [r["residual"] for r in general]) == pytest.approx(1.0, abs=0.05)
    assert general[-1]["residual"] < 1e-3
    if paper_exact:
        assert loglog_slope(etas, [r["absolute"] for r in paper]) == pytest.approx(2.0, abs=0.05)
    else:
        assert loglog_slope(etas, [r["residual"] for r in paper]) == pytest.approx(0.0, abs=0.05)
        assert min(r["residual"] for r in paper) > 0.05


def test_at_the_symmetric_start_one_gradient_is_rounding_limited_far_below_two_gradients() -> None:
    """At the paper's start (components equal up to 1e-12, every weight 1e-4) the shallow gradient is at float64
    noise level. The deep model's own step and the shallow gradient's prediction then disagree by rounding (a
    residual constant in eta); step and prediction from one gradient agree to the rounding of the step itself."""
    root = osp.mixture(NUM_VARS, 8, seed=0, root_weight=1e-4, perturbation=1e-12)
    tracer = Tracer(osp.overparametrize(root, (2, 2, 2), init=1e-4), _data(400), lr=0.01)
    etas = [1e-2, 1e-3, 1e-4, 1e-5]
    rows = tracer.eta_scaling(etas)
    one = [r for r in rows if r["formula"] == "general"]
    deep = [r for r in rows if r["formula"] == "general_deep_step"]
    # the steps are so small (w changes by 1e-8 of itself) that the one-gradient residual is float64 rounding of
    # the step: within a few times eps ||w|| at every eta, and tiny relative to the change
    assert all(r["absolute"] < 10 * r["resolution"] for r in one)
    assert max(r["residual"] for r in one) < 1e-4
    # the deep model's own step disagrees with the shallow gradient's prediction by a constant fraction
    assert loglog_slope(etas, [r["residual"] for r in deep]) == pytest.approx(0.0, abs=0.2)
    assert min(r["residual"] for r in deep) > 100 * max(r["residual"] for r in one)


def test_natural_tree_first_order_slope() -> None:
    tracer = Tracer(_natural_tree(), _data(), lr=0.1)
    etas = [1e-2, 1e-3, 1e-4]
    general = [r for r in tracer.eta_scaling(etas) if r["formula"] == "general"]
    assert loglog_slope(etas, [r["absolute"] for r in general]) == pytest.approx(2.0, abs=0.05)


def test_tracer_records_a_consistent_trajectory() -> None:
    """Deep and collapsed objectives agree at every state; small steps are predicted to first order; the unrolled
    coefficients mu reproduce the first-order recursion and, for small steps, the weights themselves."""
    tracer = Tracer(_deep((2, 2, 2)), _data(), lr=2e-3, floor=1e-6)
    trace, snapshots = tracer.run(12, snapshot_at=[0, 12])
    assert set(snapshots) == {0, 12}
    np.testing.assert_allclose(trace.objective, trace.objective_shallow, rtol=1e-12)
    assert trace.objective[-1] > trace.objective[0]
    assert not trace.clamped.any()  # weights far above the floor
    assert np.nanmax(trace.step_residuals("general")) < 1e-2
    assert np.nanmin(trace.step_residuals("paper")) > 0.05
    unrolled = trace.unrolled()
    for t in (1, 6, 12):
        mu = trace.momentum_coefficients(t)
        rebuilt = trace.decayed_start()[t] + (mu * trace.gradients[:t]).sum(axis=0)
        np.testing.assert_allclose(rebuilt, unrolled[t], rtol=1e-12)
    np.testing.assert_allclose(unrolled, trace.weights, rtol=1e-3)
    # the snapshot restores the start: the first recorded state comes back
    tracer.restore(snapshots[0])
    values, gradient, _ = tracer.state()
    np.testing.assert_allclose(values, trace.values[0], rtol=0)
    np.testing.assert_allclose(gradient, trace.gradients[0], rtol=1e-12)


def test_tracer_marks_steps_held_by_the_floor() -> None:
    """From the paper's start (every weight on the floor) the first step holds edges on the floor, and the
    recorded change of a held component is the clamped one, not the gradient step."""
    root = osp.mixture(NUM_VARS, 8, seed=2, root_weight=1e-4, perturbation=0.3)
    tracer = Tracer(osp.overparametrize(root, (2, 2, 2), init=1e-4), _data(), lr=0.01, floor=1e-4)
    trace, _ = tracer.run(3)
    held = trace.clamped[0]
    assert held.any() and np.all(trace.values >= 1e-4)
    with np.errstate(divide="ignore"):  # a component held entirely does not move: its error is infinite
        error = np.abs(trace.actual[0] - trace.general[0]) / np.abs(trace.actual[0])
    assert np.max(error[held]) > 0.5


def test_tracer_rejects_bad_options() -> None:
    with pytest.raises(ConfigurationError, match="lr must be"):
        Tracer(_deep((2, 2)), _data(), lr=-1.0)
    tracer = Tracer(_deep((2, 2)), _data(), lr=0.1)
    with pytest.raises(ConfigurationError, match="iterations must be"):
        tracer.run(0)
    with pytest.raises(ConfigurationError, match="positive sum weights"):
        expand(tracer.factorisation, np.zeros(tracer.factorisation.incidence.shape[1]), np.ones(4), 0.1)


def _fake_dataset(monkeypatch: pytest.MonkeyPatch, module: str, num_vars: int = 5) -> None:
    dataset = Dataset("tiny", _data(200, seed=1, num_vars=num_vars), None, _data(60, seed=2, num_vars=num_vars))
    monkeypatch.setattr(f"overspn.cli.{module}.load_dataset", lambda name, data_dir=None: dataset)


def test_dynamics_command_writes_its_outputs(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    _fake_dataset(monkeypatch, "dynamics")
    out = tmp_path / "dyn"
    status = main(["dynamics", "--dataset", "tiny", "--branching", "2,2,2", "--iterations", "6", "--lr", "0.01",
                   "--init", "0.3", "--perturbation", "0.2", "--etas", "1e-2,1e-3,1e-4", "--out", str(out)])
    assert status == 0
    for name in ("dynamics.csv", "eta_scaling.csv", "momentum.csv", "summary.json", "rho.png", "lambda.png",
                 "predicted_vs_actual.png", "eta_scaling.png"):
        assert (out / name).stat().st_size > 0, name
    with open(out / "eta_scaling.csv") as stream:
        rows = list(csv.DictReader(stream))
    assert list(rows[0])[:3] == ["formula", "eta", "residual"]
    assert {r["formula"] for r in rows} == {"general", "paper", "general_deep_step"}
    assert {float(r["eta"]) for r in rows} == {1e-2, 1e-3, 1e-4}
    with open(out / "dynamics.csv") as stream:
        table = list(csv.DictReader(stream))
    assert len(table) == 6 * 8
    summary = json.loads((out / "summary.json").read_text())
    assert summary["slopes"]["general, t=3"]["absolute_residual_slope"] == pytest.approx(2.0, abs=0.1)
    assert summary["slopes"]["paper, t=3"]["relative_residual_slope"] == pytest.approx(0.0, abs=0.1)
    assert set(summary["gradient_noise_level"]) == {"t=0", "t=3", "t=6"}
    assert 0 <= summary["fraction_of_component_steps_clamped"] <= 1
    assert not list(out.glob(".*.tmp"))


def test_dynamics_command_names_a_bad_branching(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    assert main(["dynamics", "--branching", "2,x", "--out", str(tmp_path)]) == 2
    assert "--branching" in capsys.readouterr().err


def test_compare_command_summarises_and_resumes(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    _fake_dataset(monkeypatch, "compare")
    out = tmp_path / "cmp"
    arguments = ["compare", "--protocol", "paper", "--iterations", "4", "--seeds", "2",
                 "--methods", "gd,momentum,deep3,depth3-shared", "--timing-steps", "1", "--timing-rounds", "1",
                 "--out", str(out)]
    assert main(arguments) == 0
    results = json.loads((out / "comparison.json").read_text())
    rows = {row["method"]: row for row in results[0]["rows"]}
    assert set(rows) == {"gd", "momentum", "deep3", "depth3-shared"}
    # the shared depth optimiser is the deep SPN, collapsed
    assert rows["depth3-shared"]["final_train"] == pytest.approx(rows["deep3"]["final_train"], rel=1e-9)
    assert results[0]["target"] == pytest.approx(rows["gd"]["final_train"])
    assert rows["gd"]["reached"] >= 1 and rows["gd"]["iterations_to_target"] <= 4
    assert "| gradient ascent |" in (out / "comparison.md").read_text()
    stored = sorted(p.name for p in (out / "runs").iterdir())
    assert len(stored) == 8 + 1  # one file per run, and the timing
    assert all(row["ms_per_iteration"] > 0 for row in rows.values())
    before = {p: p.stat().st_mtime_ns for p in (out / "runs").iterdir()}
    assert main(arguments) == 0  # resumes: nothing is trained again
    assert {p: p.stat().st_mtime_ns for p in (out / "runs").iterdir()} == before
