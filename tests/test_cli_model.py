"""The commands that use a saved model: info, eval, sample, mpe, and ``--version``."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

import overspn as osp
from overspn.cli.main import COMMANDS, main


@pytest.fixture
def saved(tmp_path: Path) -> tuple[osp.SPNModule, Path, Path, np.ndarray]:
    model = osp.RatSPN(osp.RatConfig(num_vars=6, depth=1, num_repetitions=2, num_sums=2, num_input=3),
                       dtype=torch.float64)
    path = tmp_path / "model.ospn"
    osp.save(model, path, metadata={"dataset": "toy", "seed": 3})
    rows = np.random.default_rng(0).integers(0, 2, (7, 6)).astype(float)
    rows[1, 2] = rows[4, 0] = np.nan
    data = tmp_path / "rows.csv"
    data.write_text("\n".join(",".join("" if np.isnan(v) else str(int(v)) for v in row) for row in rows) + "\n")
    return model, path, data, rows


def read_csv(path: Path, skip_header: bool = False) -> np.ndarray:
    lines = path.read_text().splitlines()[1 if skip_header else 0:]
    return np.array([[float(v) if v else np.nan for v in line.split(",")] for line in lines])


def test_version(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as stop:
        main(["--version"])
    assert stop.value.code == 0 and capsys.readouterr().out.strip() == f"overspn {osp.__version__}"


@pytest.mark.parametrize("command", COMMANDS)
def test_every_command_has_plain_help(command: str, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as stop:
        main([command, "--help"])
    text = capsys.readouterr().out
    assert stop.value.code == 0 and f"overspn {command}" in text and "``" not in text


def test_info_reports_the_kind_size_and_metadata(saved: tuple, capsys: pytest.CaptureFixture[str]) -> None:
    model, path, _, _ = saved
    assert main(["info", str(path), "--json"]) == 0
    description = json.loads(capsys.readouterr().out)
    assert description["kind"] == "rat" and description["num_parameters"] == model.num_parameters()
    assert description["metadata"] == {"dataset": "toy", "seed": 3} and description["num_vars"] == 6


def test_eval_gives_the_models_log_likelihoods_with_marginals(saved: tuple, tmp_path: Path) -> None:
    model, path, data, rows = saved
    out, per_row = tmp_path / "eval.json", tmp_path / "rows_llh.csv"
    assert main(["eval", str(path), "--data", str(data), "--out", str(out), "--per-row", str(per_row),
                 "--quiet"]) == 0
    expected = model.log_likelihood(rows).detach().numpy()
    summary = json.loads(out.read_text())
    assert summary["rows"] == 7 and summary["rows_with_missing_values"] == 2
    assert summary["mean_log_likelihood"] == pytest.approx(expected.mean(), abs=1e-12)
    np.testing.assert_allclose(read_csv(per_row, skip_header=True)[:, 0], expected, rtol=1e-12)


def test_sample_writes_valid_rows_that_keep_the_evidence(saved: tuple, tmp_path: Path) -> None:
    _, path, _, rows = saved
    evidence = tmp_path / "evidence.csv"
    evidence.write_text("1,,0,,,1\n")
    out = tmp_path / "samples.csv"
    assert main(["sample", str(path), "-n", "40", "--evidence", str(evidence), "--seed", "2", "--out", str(out),
                 "--quiet"]) == 0
    samples = read_csv(out)
    assert samples.shape == (40, 6) and set(np.unique(samples)) <= {0.0, 1.0}
    assert (samples[:, 0] == 1).all() and (samples[:, 2] == 0).all() and (samples[:, 5] == 1).all()
    again = tmp_path / "again.csv"
    assert main(["sample", str(path), "-n", "40", "--evidence", str(evidence), "--seed", "2", "--out", str(again),
                 "--quiet"]) == 0
    assert again.read_text() == out.read_text()  # the seed fixes the draw


def test_mpe_fills_only_the_missing_entries(saved: tuple, tmp_path: Path) -> None:
    model, path, data, rows = saved
    out = tmp_path / "completed.csv"
    assert main(["mpe", str(path), "--data", str(data), "--out", str(out), "--quiet"]) == 0
    completed = read_csv(out)
    known = ~np.isnan(rows)
    assert not np.isnan(completed).any() and (completed[known] == rows[known]).all()
    np.testing.assert_array_equal(completed, model.mpe(rows).numpy())


@pytest.mark.parametrize("arguments", [
    ["eval", "{missing}", "--data", "{data}"],
    ["eval", "{model}", "--data", "{wide}"],
    ["mpe", "{model}", "--data", "{bad}", "--out", "{out}"],
    ["sample", "{model}", "-n", "3", "--evidence", "{wide}", "--out", "{out}"],
    ["info", "{data}"],
])
def test_bad_input_exits_2_with_one_line(arguments: list[str], saved: tuple, tmp_path: Path,
                                         capsys: pytest.CaptureFixture[str]) -> None:
    _, path, data, _ = saved
    (tmp_path / "wide.csv").write_text("0,1,0,1,0,1,1\n")
    (tmp_path / "bad.csv").write_text("0,1,0,1,0,1\n0,1,2,1,0,1\n")
    names = {"missing": tmp_path / "none.ospn", "data": data, "wide": tmp_path / "wide.csv", "model": path,
             "bad": tmp_path / "bad.csv", "out": tmp_path / "out.csv"}
    assert main([a.format(**names) for a in arguments]) == 2
    error = capsys.readouterr().err.strip()
    assert error.startswith(f"overspn {arguments[0]}: error:") and "\n" not in error
    assert not (tmp_path / "out.csv").exists()
