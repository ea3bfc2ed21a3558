"""overspn train checks everything it was given before it spends any time training."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest

from overspn.atomic import LOCK_NAME, output_lock
from overspn.cli.main import main

QUICK = ["--structure", "rat,depth=1,repetitions=1,sums=2,inputs=2", "--epochs", "2", "--quiet"]


def write_csv(path: Path, rows: np.ndarray) -> Path:
    path.write_text("\n".join(",".join("" if np.isnan(v) else str(int(v)) for v in row) for row in rows) + "\n")
    return path


@pytest.fixture
def files(tmp_path: Path) -> dict[str, Path]:
    rng = np.random.default_rng(0)
    return {"train": write_csv(tmp_path / "train.csv", rng.integers(0, 2, (30, 4)).astype(float)),
            "valid": write_csv(tmp_path / "valid.csv", rng.integers(0, 2, (10, 4)).astype(float))}


def run(arguments: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str]:
    capsys.readouterr()
    code = main(["train", *arguments])
    return code, capsys.readouterr().err.strip()


def test_a_bad_test_file_is_named_before_training(files: dict[str, Path], tmp_path: Path,
                                                  capsys: pytest.CaptureFixture[str]) -> None:
    bad = write_csv(tmp_path / "test.csv", np.array([[0, 1, 0, 1], [0, 1, 3, 1]], dtype=float))
    out = tmp_path / "out"
    code, error = run(["--train", str(files["train"]), "--test", str(bad), "--leaf", "bernoulli", "--out", str(out),
                       *QUICK], capsys)
    assert code == 2 and str(bad) in error and "row 1, column 2" in error
    assert not (out / "checkpoint.pt").exists()  # refused before the first epoch


def test_valid_and_test_files_are_refused_with_a_benchmark(files: dict[str, Path], tmp_path: Path,
                                                           capsys: pytest.CaptureFixture[str]) -> None:
    code, error = run(["--dataset", "nltcs", "--valid", str(files["valid"]), "--out", str(tmp_path / "o"), *QUICK],
                      capsys)
    assert code == 2 and "--valid cannot be combined with --dataset" in error


def test_all_missing_categorical_data_is_one_clear_error(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    empty = write_csv(tmp_path / "empty.csv", np.full((5, 4), np.nan))
    code, error = run(["--train", str(empty), "--leaf", "categorical", "--out", str(tmp_path / "o"), *QUICK], capsys)
    assert code == 2 and "no observed value" in error and "\n" not in error


def test_an_empty_output_name_is_refused(files: dict[str, Path], capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as stop:
        main(["train", "--train", str(files["train"]), "--out", "", *QUICK])
    assert stop.value.code == 2 and "empty" in capsys.readouterr().err


def test_a_second_run_into_a_busy_folder_is_refused(files: dict[str, Path], tmp_path: Path,
                                                    capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "out"
    out.mkdir()
    with output_lock(out, "another overspn train"):
        code, error = run(["--train", str(files["train"]), "--out", str(out), *QUICK], capsys)
    assert code == 2 and str(os.getpid()) in error
    assert not (out / LOCK_NAME).exists()
    assert run(["--train", str(files["train"]), "--out", str(out), *QUICK], capsys)[0] == 0  # free again
