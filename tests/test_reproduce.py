"""The depth study and ``overspn reproduce``: symmetry, outputs, summary arithmetic, resumption after SIGKILL."""

from __future__ import annotations

import csv
import json
import math
import os
import signal
import subprocess
import sys
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch

import overspn as osp
from overspn.cli.main import main
from overspn.errors import ConfigurationError, DataError
from overspn.learn.fit import History, fit
from overspn.studies.depth import (
    BRANCHINGS,
    TARGET_GAP,
    RunResult,
    build_model,
    protocol_study,
    run_study,
    summarise,
)

REPO = Path(__file__).resolve().parents[1]



def write_binary_data(folder: Path, name: str, rows: int, num_vars: int, seed: int = 0) -> Path:
    """``folder/name/name.{train,test}.data``: rows drawn from a mixture of three product distributions."""
    rng = np.random.default_rng(seed)
    centres = rng.uniform(0.1, 0.9, size=(3, num_vars))
    for split, count in (("train", rows), ("test", rows // 4)):
        cluster = rng.integers(0, 3, size=count)
        data = (rng.random((count, num_vars)) < centres[cluster]).astype(int)
        path = folder / name / f"{name}.{split}.data"
        path.parent.mkdir(parents=True, exist_ok=True)
        np.savetxt(path, data, fmt="%d", delimiter=",")
    return folder


def read_curves(path: Path) -> list[dict[str, str]]:
    with open(path, newline="") as stream:
        return list(csv.DictReader(stream))


def test_unperturbed_components_stay_identical_and_depth_changes_nothing(tmp_path: Path) -> None:
    data_dir = write_binary_data(tmp_path / "data", "toy", rows=300, num_vars=6)
    study = protocol_study("paper", datasets=["toy"], perturbation=0.0, iterations=60, runs=1)
    results = run_study(study, tmp_path / "out", data_dir, progress=False)
    curves = {r.depth: np.array(r.history.train_llh) for r in results}
    for curve in curves.values():
        assert curve[0] == pytest.approx(6 * math.log(0.5), abs=1e-14)  # every leaf starts at 1/2
        np.testing.assert_allclose(curve, curves[1], rtol=1e-12)  # depth makes no difference
    assert np.all(np.diff(curves[1]) > 0) and curves[1][-1] > curves[1][0] + 0.03  # the leaves still learn
    model = build_model(study, 6, depth=3, run=0)
    x = np.loadtxt(data_dir / "toy" / "toy.train.data", delimiter=",")
    fit(model, x, optimizer="sgd", lr=study.lr, epochs=60)
    collapsed = osp.collapse(model.to_structure())
    leaf_weights = np.array([[leaf.weights for leaf in component.children] for component in collapsed.children])
    assert np.array_equal(leaf_weights, np.broadcast_to(leaf_weights[0], leaf_weights.shape))  # bit for bit
    assert np.all(collapsed.weights == collapsed.weights[0])


def test_a_tiny_perturbation_breaks_the_symmetry(tmp_path: Path) -> None:
    x = np.loadtxt(write_binary_data(tmp_path, "toy", rows=400, num_vars=6) / "toy" / "toy.train.data", delimiter=",")
    finals = {}
    for perturbation in (0.0, 1e-12):
        study = protocol_study("paper", datasets=["toy"], perturbation=perturbation)
        model = build_model(study, 6, depth=3, run=0)
        history = fit(model, x, optimizer="sgd", lr=0.01, epochs=400)
        assert history.train_llh[0] == pytest.approx(6 * math.log(0.5), abs=1e-10)
        leaf_weights = np.array([[leaf.weights / leaf.weights.sum() for leaf in component.children]
                                 for component in osp.collapse(model.to_structure()).children])
        finals[perturbation] = (history.train_llh[-1], np.ptp(leaf_weights, axis=0).max())
    assert finals[0.0][1] == 0.0
    assert finals[1e-12][1] > 0.05  # the components have drifted apart from a difference of 1e-12
    assert finals[1e-12][0] > finals[0.0][0] + 0.05  # and the mixture beats independent variables


def test_reproduce_writes_curves_summary_and_figures(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    data_dir = write_binary_data(tmp_path / "data", "toy", rows=200, num_vars=5)
    out = tmp_path / "out"
    status = main(["reproduce", "--dataset", "toy", "--data-dir", str(data_dir), "--iterations", "25", "--runs", "2",
                   "--out", str(out), "--no-progress"])
    assert status == 0
    rows = read_curves(out / "curves.csv")
    assert list(rows[0]) == ["protocol", "dataset", "depth", "run", "iteration", "train_llh", "test_llh"]
    assert len(rows) == 3 * 2 * 26
    assert {(r["depth"], r["run"]) for r in rows} == {(d, r) for d in "123" for r in "01"}
    first = [r for r in rows if r["iteration"] == "0"]
    assert all(float(r["train_llh"]) == pytest.approx(5 * math.log(0.5), abs=1e-10) for r in first)
    assert all(float(r["test_llh"]) == pytest.approx(5 * math.log(0.5), abs=1e-10) for r in first)
    summary = json.loads((out / "summary.json").read_text())
    depths = summary["datasets"]["toy"]["depths"]
    assert sorted(depths) == ["1", "2", "3"] and depths["2"]["branching"] == [2, 4]
    finals = [float(r["train_llh"]) for r in rows if r["iteration"] == "25" and r["depth"] == "3"]
    assert depths["3"]["final_train_llh"]["mean"] == pytest.approx(np.mean(finals), rel=1e-12)
    assert (out / "toy.png").stat().st_size > 10_000
    printed = capsys.readouterr().out
    assert "depth 3 (2, 2, 2), 2 runs: final train" in printed and "reached the target" in printed
    # the same command again reuses every finished run and rewrites identical curves
    before = (out / "curves.csv").read_bytes()
    assert main(["reproduce", "--dataset", "toy", "--data-dir", str(data_dir), "--iterations", "25", "--runs", "2",
                 "--out", str(out), "--no-progress"]) == 0
    assert "reused 6 finished runs" in capsys.readouterr().out
    assert (out / "curves.csv").read_bytes() == before


def test_other_settings_in_the_same_folder_are_refused(tmp_path: Path) -> None:
    data_dir = write_binary_data(tmp_path / "data", "toy", rows=50, num_vars=3)
    run_study(protocol_study("paper", datasets=["toy"], iterations=2, runs=1), tmp_path / "out", data_dir,
              progress=False)
    with pytest.raises(ConfigurationError, match="differing: lr"):
        run_study(protocol_study("paper", datasets=["toy"], iterations=2, runs=1, lr=0.5), tmp_path / "out",
                  data_dir, progress=False)


def test_bad_data_and_leaf_choices_are_named(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="unknown data set 'nosuch'"):
        run_study(protocol_study("paper", datasets=["nosuch"]), tmp_path / "a", tmp_path, progress=False)
    assert not (tmp_path / "a").exists()
    with pytest.raises(ConfigurationError, match="needs discrete data.*--leaf gaussian"):
        run_study(protocol_study("paper", datasets=["wine"], iterations=2, runs=1), tmp_path / "b", progress=False)
    with pytest.raises(ConfigurationError, match="protocol"):
        protocol_study("nosuch")
    with pytest.raises(ConfigurationError, match="perturbation"):
        protocol_study("paper", perturbation=1.5)


def test_gaussian_leaves_learn_means_and_deviations(tmp_path: Path) -> None:
    # all components N(0, 1) are the maximum-likelihood single Gaussian of standardised data, a stationary point
    # from which a small perturbation takes hundreds of iterations to escape: start from distinct means here
    study = protocol_study("paper", leaf="gaussian", datasets=["wine"], iterations=80, runs=1, depths=(1, 3),
                           perturbation=0.5, gaussian_init="jitter")
    assert study.datasets == ("wine",)
    results = run_study(study, tmp_path / "out", progress=False)
    for result in results:
        # the first step, from sum weights of 1e-4, overshoots; the ascent climbs from there
        assert result.history.train_llh[-1] > result.history.train_llh[1] + 0.5
        assert result.history.test_llh is not None and math.isfinite(result.history.test_llh[-1])
    train = osp.data.load_sklearn("wine").train
    model = build_model(study, 13, depth=3, run=0, train=train)
    means, log_std = model.gaussian.mean.detach().clone(), model.gaussian.log_std.detach().clone()
    fit(model, train, optimizer="sgd", lr=0.01, epochs=40)
    assert not torch.allclose(model.gaussian.mean, means) and not torch.allclose(model.gaussian.log_std, log_std)


def test_gaussian_defaults_break_the_symmetry_from_data() -> None:
    study = protocol_study("paper", leaf="gaussian")
    assert (study.gaussian_init, study.perturbation, study.iterations) == ("kmeans", 1e-4, 2000)
    assert study.datasets == ("wine", "breast_cancer")
    assert "gaussian_init" not in protocol_study("paper").settings()  # discrete folders keep their settings
    train = osp.data.load_sklearn("wine").train
    model = build_model(study, 13, depth=1, run=0, train=train)
    means = model.gaussian.mean.detach().numpy().reshape(-1)
    assert np.unique(np.round(means, 3)).size > 13 * 4  # the components start apart
    # the same seed gives the same start; another seed another
    again = build_model(study, 13, depth=3, run=0, train=train).gaussian.mean.detach().numpy().reshape(-1)
    assert np.array_equal(np.sort(means), np.sort(again))
    other = build_model(study, 13, depth=1, run=1, train=train).gaussian.mean.detach().numpy().reshape(-1)
    assert not np.array_equal(np.sort(means), np.sort(other))
    with pytest.raises(ConfigurationError, match="gaussian_init"):
        protocol_study("paper", gaussian_init="kmeans")
    with pytest.raises(ConfigurationError, match="training rows"):
        build_model(study, 13, depth=1, run=0)
    # the jittered start differs from N(0, 1) by the perturbation, relatively, in means and spreads
    jitter = build_model(replace(study, gaussian_init="jitter"), 13, depth=1, run=0)
    assert 0 < float(jitter.gaussian.mean.detach().abs().max()) < 1e-3
    assert 0 < float(jitter.gaussian.log_std.detach().abs().max()) < 1e-3


def test_per_depth_run_counts_and_the_perturbation_sweep(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from overspn.studies.sweep import load_results, perturbation_label

    assert [perturbation_label(p) for p in (1e-4, 1e-12, 2.5e-8, 0.0, 0.3)] == ["p1e-4", "p1e-12", "p2.5e-8", "p0",
                                                                              "p0.3"]
    data_dir = write_binary_data(tmp_path / "data", "toy", rows=150, num_vars=4)
    out = tmp_path / "sweep"
    arguments = ["reproduce", "--dataset", "toy", "--data-dir", str(data_dir), "--iterations", "12", "--depth", "1",
                 "--depth", "3", "--runs", "3,1", "--perturbation", "1e-2,1e-8", "--budget", "6", "--target",
                 "-2.7", "--out", str(out), "--no-progress"]
    assert main(arguments) == 0
    printed = capsys.readouterr().out
    assert "depth 1 (8,), 3 runs" in printed and "depth 3 (2, 2, 2), 1 runs" in printed
    assert "sweep, target reached within 6 iterations" in printed and "within 12 iterations" in printed
    assert sorted(p.name for p in (out / "p1e-2" / "runs").iterdir()) == [
        "toy-depth1-run0.json", "toy-depth1-run1.json", "toy-depth1-run2.json", "toy-depth3-run0.json"]
    sweep = json.loads((out / "sweep.json").read_text())
    assert sweep["budgets"] == [6, 12] and [row["perturbation"] for row in sweep["perturbations"]] == [1e-2, 1e-8]
    cell = sweep["perturbations"][0]["budgets"]["12"]["toy"]
    assert cell["target"] == -2.7 and cell["depths"]["1"]["reach"]["runs"] == 3
    assert (out / "sweep.png").stat().st_size > 10_000
    study, results = load_results(out / "p1e-8")
    assert study.runs_by_depth == (3, 1) and study.perturbation == 1e-8 and len(results) == 4
    assert main(["reproduce", "--runs", "3,1,2,4", "--out", str(tmp_path / "x"), "--dataset", "toy",
                 "--data-dir", str(data_dir), "--no-progress"]) == 2
    assert "4 counts for 3 depths" in capsys.readouterr().err


def fake_result(depth: int, run: int, curve: list[float]) -> RunResult:
    entries = [{"epoch": epoch, "train_llh": value, "valid_llh": None, "test_llh": None, "seconds": 0.0,
                "cpu_seconds": 0.0, "learning_rate": 0.01} for epoch, value in enumerate(curve)]
    return RunResult("d", depth, run, History(entries), 1.0)


def test_summary_reports_reach_fractions_km_medians_and_speedups_against_a_fixed_target() -> None:
    study = protocol_study("paper", datasets=["d"], runs=2, iterations=5)
    curves = {
        (1, 0): [-3.0, -2.5, -2.0, -1.5, -1.2, -1.0],
        (1, 1): [-3.0, -2.8, -2.6, -2.0, -1.6, -1.4],
        (2, 0): [-3.0, -2.0, -1.5, -1.1, -1.0, -1.0],
        (2, 1): [-3.0, -2.2, -1.6, -1.3, -1.1, -1.0],
        (3, 0): [-3.0, -1.0, -0.96, -0.95, -0.95, -0.95],
        (3, 1): [-3.0, -1.8, -1.2, -1.05, -1.0, -1.0],
    }
    results = [fake_result(d, r, c) for (d, r), c in curves.items()]
    # default target for a data set without a fixed one: best final mean (-0.975, depth 3) minus TARGET_GAP
    summary = summarise(study, results)["datasets"]["d"]
    assert summary["target"] == pytest.approx(-0.975 - TARGET_GAP)
    assert "minus 0.05" in summary["target_rule"]
    summary = summarise(study, results, target=-1.1)["datasets"]["d"]
    depths = summary["depths"]
    assert depths["1"]["reach"]["per_run"] == [5, None] and depths["1"]["reach"]["reached"] == 1
    assert depths["1"]["reach"]["km_median"] == 5  # event and censoring at 5: the event first, S(5) = 1/2
    assert depths["2"]["reach"]["per_run"] == [3, 4] and depths["2"]["reach"]["km_median"] == 3
    assert depths["3"]["reach"]["per_run"] == [1, 3] and depths["3"]["reach"]["median_reached"] == 1
    low, high = depths["1"]["reach"]["fraction_reached_ci95"]
    assert 0 < low < 0.5 < high < 1
    assert depths["1"]["speedup_vs_depth1"] is None
    assert depths["3"]["speedup_vs_depth1"]["ratio"] == pytest.approx(5 / 1)  # KM medians 5 and 1
    lower = summarise(study, results, target=-1.45)["datasets"]["d"]["depths"]
    assert lower["1"]["reach"]["per_run"] == [4, 5] and lower["1"]["reach"]["km_median"] == 4
    speed = lower["3"]["speedup_vs_depth1"]
    assert speed["ratio"] == pytest.approx(4 / 1) and speed["ci95"][0] is not None
    assert depths["2"]["final_train_llh"]["mean"] == pytest.approx(-1.0)
    assert depths["1"]["final_train_llh"]["std"] == pytest.approx(np.std([-1.0, -1.4], ddof=1))
    assert depths["1"]["final_test_llh"] is None
    # a budget counts only the first iterations: within 3, depth 2 reaches -1.1 in run 0 only
    budgeted = summarise(study, results, target=-1.1, budget=3)["datasets"]["d"]["depths"]
    assert budgeted["2"]["reach"]["per_run"] == [3, None] and budgeted["2"]["reach"]["budget"] == 3
    with pytest.raises(ConfigurationError, match="metric"):
        summarise(study, results, metric="valid")
    with pytest.raises(ConfigurationError, match="test curves"):
        summarise(study, results, metric="test")
    assert BRANCHINGS[3] == (2, 2, 2) and depths["3"]["branching"] == [2, 2, 2]


def test_the_nltcs_target_is_the_readme_level() -> None:
    from overspn.studies.depth import default_target

    assert default_target("nltcs", {1: np.zeros((1, 2))}) == (-7.10, "fixed default for nltcs")


@pytest.mark.slow
def test_killed_run_resumes_to_the_same_curves(tmp_path: Path) -> None:
    """SIGKILL a reproduce command half-way, give it again, and compare with an uninterrupted run byte for byte."""
    data_dir = write_binary_data(tmp_path / "data", "toy", rows=600, num_vars=16)
    arguments = ["reproduce", "--dataset", "toy", "--data-dir", str(data_dir), "--iterations", "100", "--runs", "1",
                 "--checkpoint-every", "10", "--threads", "1", "--no-progress"]
    killed_out = tmp_path / "killed"
    command = [sys.executable, "-m", "overspn.cli", *arguments, "--out", str(killed_out)]
    environment = {**os.environ, "PYTHONPATH": str(REPO / "src")}
    process = subprocess.Popen(command, env=environment, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.monotonic() + 120
    # wait until at least one run has finished and another is part-way (a checkpoint on disk)
    while time.monotonic() < deadline and process.poll() is None:
        if list((killed_out / "runs").glob("[!.]*.json")) and list((killed_out / "checkpoints").glob("[!.]*.pt")):
            break
        time.sleep(0.02)
    assert process.poll() is None, "the run finished before it could be killed: " + process.stderr.read().decode()
    process.send_signal(signal.SIGKILL)
    process.wait()
    process.stderr.close()
    finished = len(list((killed_out / "runs").glob("[!.]*.json")))  # not a killed writer's temporary file
    assert 1 <= finished < 3 and not (killed_out / "curves.csv").exists()
    resumed = subprocess.run(command, env=environment, capture_output=True, text=True, timeout=300)
    assert resumed.returncode == 0, resumed.stderr
    assert f"reused {finished} finished runs" in resumed.stdout
    # checkpoints go once their run is finished, and temporary files left by the killed writer are swept
    assert not list((killed_out / "checkpoints").iterdir())
    assert all(not p.name.startswith(".") for p in (killed_out / "runs").iterdir())
    assert main([*arguments, "--out", str(tmp_path / "whole")]) == 0
    assert (killed_out / "curves.csv").read_bytes() == (tmp_path / "whole" / "curves.csv").read_bytes()
