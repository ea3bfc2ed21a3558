"""Mini-batch training of RAT-SPNs and ``overspn train``: improvement, early stopping, divergence, files, exact
resumption, two processes."""

from __future__ import annotations

import io
import json
import math
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch

import overspn as osp
from overspn.cli.main import main
from overspn.cli.train import infer_leaf, parse_structure
from overspn.engine.rat import RatConfig, RatSPN
from overspn.errors import ConfigurationError, DivergenceError
from overspn.learn.fit import History, evaluate, fit


def _mixture_data(rows: int, num_vars: int, seed: int) -> np.ndarray:
    """Binary rows from a mixture of three product distributions: dependent variables, learnable structure."""
    rng = np.random.default_rng(seed)
    centres = np.array([[0.9] * num_vars, [0.1] * num_vars, [0.9, 0.1] * (num_vars // 2) + [0.5] * (num_vars % 2)])
    component = rng.integers(0, 3, size=rows)
    return (rng.random((rows, num_vars)) < centres[component]).astype(np.float64)


def _write_csv(path: Path, array: np.ndarray) -> Path:
    np.savetxt(path, array, delimiter=",", fmt="%g")
    return path


@pytest.fixture(scope="module")
def splits(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    folder = tmp_path_factory.mktemp("data")
    data = _mixture_data(1400, 8, seed=0)
    return {"train": _write_csv(folder / "train.csv", data[:1000]),
            "valid": _write_csv(folder / "valid.csv", data[1000:1200]),
            "test": _write_csv(folder / "test.csv", data[1200:])}


def test_training_improves_the_likelihood_and_keeps_the_best_parameters() -> None:
    data = _mixture_data(900, 8, seed=1)
    model = RatSPN(RatConfig(8, 2, 3, 4, 4, seed=0))
    before = evaluate(model, data[600:])
    result = fit(model, data[:600], data[600:], epochs=15, batch_size=50, patience=3, lr_decay=0.5, seed=0)
    after = evaluate(model, data[600:])
    assert after > before + 0.5
    # the model holds the parameters of the best validation epoch, not the last one
    assert after == pytest.approx(result.best_valid_llh, abs=1e-9)
    assert result.best_valid_llh == max(result.valid_llh)
    assert len(result.entries) == result.epochs + 1 and result.entries[0]["valid_llh"] == pytest.approx(before)
    assert result.stop_reason in ("epochs", "early stopping")


@pytest.mark.parametrize(("optimizer", "lr"), [("sgd", 2.0), ("em", 0.2)])
def test_other_optimizers_improve_the_likelihood(optimizer: str, lr: float) -> None:
    data = _mixture_data(600, 8, seed=2)
    model = RatSPN(RatConfig(8, 2, 3, 4, 4, seed=1))
    before = evaluate(model, data)
    fit(model, data, optimizer=optimizer, epochs=4, batch_size=50, lr=lr, seed=0)
    assert evaluate(model, data) > before + 0.5


def test_divergence_names_the_epoch_and_keeps_finite_parameters() -> None:
    data = np.random.default_rng(3).normal(size=(300, 8))
    model = RatSPN(RatConfig(8, 2, 2, 3, 3, "gaussian", seed=0))
    with pytest.raises(DivergenceError, match=r"epoch 1 .*learning rate") as caught:
        fit(model, data, data, optimizer="sgd", lr=1e3, epochs=3, batch_size=50)
    assert caught.value.iteration == 1
    assert isinstance(caught.value.history, History) and caught.value.history.epochs == 0
    assert all(bool(torch.isfinite(p).all()) for p in model.parameters())
    assert math.isfinite(evaluate(model, data))


def test_checkpoint_extends_a_finished_run_and_refuses_other_settings(tmp_path: Path) -> None:
    data = _mixture_data(200, 8, seed=4)
    checkpoint = tmp_path / "checkpoint.pt"

    def run(epochs: int, batch_size: int = 50) -> History:
        return fit(RatSPN(RatConfig(8, 1, 2, 2, 3, seed=0)), data, data, epochs=epochs, batch_size=batch_size,
                   patience=100, checkpoint=checkpoint)

    assert run(2).epochs == 2
    extended = run(4)
    assert extended.epochs == 4 and [entry["epoch"] for entry in extended.entries] == [0, 1, 2, 3, 4]
    with pytest.raises(ConfigurationError, match="batch_size: 50 there, 20 now"):
        run(6, batch_size=20)


def test_settings_are_checked() -> None:
    model, data = RatSPN(RatConfig(8, 1, 2, 2, 3, seed=0)), _mixture_data(20, 8, seed=0)
    with pytest.raises(ConfigurationError, match="learning rate"):
        fit(model, data, lr=-1.0)
    with pytest.raises(ConfigurationError, match="optimizer"):
        fit(model, data, optimizer="lbfgs")
    with pytest.raises(ConfigurationError, match="batch_size"):
        fit(model, data, batch_size=0)
    with pytest.raises(ConfigurationError, match="EM step size"):
        fit(model, data, optimizer="em", lr=1.5)
    with pytest.raises(ConfigurationError, match="repetitions"):
        parse_structure("depth=2,reps=3")
    assert parse_structure("d=1,r=3,k=4,i=5") == {"depth": 1, "num_repetitions": 3, "num_sums": 4,
                                                      "num_input": 5}


def test_leaf_family_is_inferred_from_the_data() -> None:
    assert infer_leaf(np.array([[0.0, 1.0], [1.0, np.nan]])) == ("bernoulli", 2)
    assert infer_leaf(np.array([[0.0, 4.0], [2.0, 1.0]]), np.array([[5.0, 0.0]])) == ("categorical", 6)
    assert infer_leaf(np.array([[0.5, 1.0], [2.0, 3.0]]))[0] == "gaussian"
    assert infer_leaf(np.array([[-1.0, 1.0], [2.0, 3.0]]))[0] == "gaussian"


def test_cli_writes_metrics_curves_and_a_loadable_model(splits: dict[str, Path], tmp_path: Path) -> None:
    out = tmp_path / "run"
    status = main(["train", "--train", str(splits["train"]), "--valid", str(splits["valid"]), "--test",
                   str(splits["test"]), "--structure", "depth=2,repetitions=2,sums=3,inputs=3", "--epochs", "3",
                   "--batch-size", "100", "--out", str(out), "--quiet", "--threads", "1"])
    assert status == 0
    metrics = json.loads((out / "metrics.json").read_text())
    for key in ("train_llh", "valid_llh", "test_llh", "seconds", "epochs", "num_params"):
        assert key in metrics
    assert metrics["epochs"] == 3 and metrics["structure"]["leaf"] == "bernoulli"
    lines = (out / "curves.csv").read_text().splitlines()
    assert lines[0] == "epoch,train_llh,valid_llh,cpu_seconds,seconds" and len(lines) == 5  # epochs 0 to 3
    assert (out / "curves.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    model = osp.load(out / "model.ospn")
    test = np.loadtxt(splits["test"], delimiter=",")
    assert metrics["num_params"] == osp.num_parameters(model.to_structure())
    with torch.no_grad():
        assert float(model.log_likelihood(test).double().mean()) == pytest.approx(metrics["test_llh"], abs=1e-4)


def test_cli_reports_bad_options_in_one_line(splits: dict[str, Path], tmp_path: Path,
                                             capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["train", "--train", str(splits["train"]), "--structure", "depth=9", "--out", str(tmp_path),
                 "--quiet"]) == 2
    error = capsys.readouterr().err.strip()
    assert "depth 9" in error and len(error.splitlines()) == 1
    assert main(["train", "--dataset", "nltcs", "--train", str(splits["train"]), "--out", str(tmp_path)]) == 2
    assert main(["train", "--train", str(tmp_path / "absent.csv"), "--out", str(tmp_path)]) == 2


def _checkpoint_epochs(path: Path) -> int:
    return int(torch.load(io.BytesIO(path.read_bytes()), weights_only=True)["history"]["entries"][-1]["epoch"])


@pytest.mark.slow
def test_killed_run_resumes_to_identical_results(splits: dict[str, Path], tmp_path: Path) -> None:
    epochs = 8
    command = [sys.executable, "-m", "overspn.cli", "train", "--train", str(splits["train"]), "--valid",
               str(splits["valid"]), "--test", str(splits["test"]), "--structure", "depth=2,repetitions=4,sums=6,"
               "inputs=6", "--epochs", str(epochs), "--batch-size", "25", "--patience", "100", "--threads", "1",
               "--quiet", "--seed", "3"]
    environment = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1] / "src")}
    reference, resumed = tmp_path / "reference", tmp_path / "resumed"
    subprocess.run([*command, "--out", str(reference)], check=True, env=environment, timeout=120)

    process = subprocess.Popen([*command, "--out", str(resumed)], env=environment)
    checkpoint = resumed / "checkpoint.pt"
    deadline = time.monotonic() + 120
    while not checkpoint.exists() and process.poll() is None and time.monotonic() < deadline:
        time.sleep(0.005)
    os.kill(process.pid, signal.SIGKILL)
    process.wait()
    interrupted_at = _checkpoint_epochs(checkpoint)
    assert 1 <= interrupted_at < epochs, "the run was not interrupted half-way"
    assert not (resumed / "metrics.json").exists()
    subprocess.run([*command, "--out", str(resumed)], check=True, env=environment, timeout=120)

    first = json.loads((reference / "metrics.json").read_text())
    second = json.loads((resumed / "metrics.json").read_text())
    for key in ("train_llh", "valid_llh", "test_llh", "epochs", "best_epoch", "num_params"):
        assert first[key] == second[key], key
    curves = [[line.rsplit(",", 2)[0] for line in (folder / "curves.csv").read_text().splitlines()]
              for folder in (reference, resumed)]
    assert curves[0] == curves[1] and len(curves[0]) == epochs + 2  # identical apart from the timings
    first_model, second_model = osp.load(reference / "model.ospn"), osp.load(resumed / "model.ospn")
    for (name, a), b in zip(first_model.state_dict().items(), second_model.state_dict().values()):
        assert torch.equal(a, b), name


@pytest.mark.slow
def test_two_process_training_equals_single_process_training(splits: dict[str, Path], tmp_path: Path) -> None:
    options = ["train", "--train", str(splits["train"]), "--valid", str(splits["valid"]), "--test", str(splits["test"]),
               "--structure", "depth=2,repetitions=3,sums=4,inputs=4", "--epochs", "3", "--batch-size", "50",
               "--threads", "1", "--quiet"]
    environment = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1] / "src"),
                   "OMP_NUM_THREADS": "1"}
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2", "-m",
               "overspn.cli", *options, "--distributed", "--out", str(tmp_path / "two")]
    launched = subprocess.run(command, env=environment, timeout=300, capture_output=True, text=True)
    if launched.returncode != 0 and "terminate called without an active exception" in launched.stderr:
        # gloo's worker threads occasionally abort a process while it exits on a loaded machine (seen about once in
        # ten runs on two cores); the same command, given again, resumes or restarts the run and must then succeed
        launched = subprocess.run([*command, "--restart"], env=environment, timeout=300, capture_output=True,
                                  text=True)
    assert launched.returncode == 0, launched.stderr[-3000:]
    assert main([*options, "--out", str(tmp_path / "one")]) == 0
    single = json.loads((tmp_path / "one" / "metrics.json").read_text())
    double = json.loads((tmp_path / "two" / "metrics.json").read_text())
    assert double["processes"] == 2 and single["processes"] == 1
    for key in ("train_llh", "valid_llh", "test_llh"):
        assert double[key] == pytest.approx(single[key], abs=1e-5), key
    assert single["epochs"] == double["epochs"] == 3
    one, two = osp.load(tmp_path / "one" / "model.ospn"), osp.load(tmp_path / "two" / "model.ospn")
    for (name, a), b in zip(one.state_dict().items(), two.state_dict().values()):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5, msg=name)


def test_distributed_outside_torchrun_is_a_clear_error(splits: dict[str, Path], tmp_path: Path,
                                                       capsys: pytest.CaptureFixture[str],
                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("RANK", raising=False)
    assert main(["train", "--train", str(splits["train"]), "--out", str(tmp_path), "--distributed", "--quiet"]) == 2
    assert "torchrun" in capsys.readouterr().err
