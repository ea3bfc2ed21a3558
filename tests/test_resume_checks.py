"""A resumed run must be the run it continues: other data, or a checkpoint that does not fit, is refused."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from overspn.cli.main import main
from overspn.learn.checkpoint import content_digest


def write_csv(path: Path, rows: np.ndarray) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join(",".join(str(int(v)) for v in row) for row in rows) + "\n")
    return path


def test_content_digest_sees_values_shape_and_dtype() -> None:
    rows = np.arange(12, dtype=float).reshape(3, 4)
    assert content_digest(rows) == content_digest(rows.copy()) == content_digest(torch.from_numpy(rows))
    changed = rows.copy()
    changed[2, 3] = 0
    assert content_digest(changed) != content_digest(rows)
    assert content_digest(rows.reshape(4, 3)) != content_digest(rows)
    assert content_digest(rows.astype(np.float32)) != content_digest(rows)
    assert content_digest(None) is None


def test_train_refuses_to_resume_on_other_data_of_the_same_name_and_size(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    rng = np.random.default_rng(0)
    first = write_csv(tmp_path / "d1" / "data.csv", rng.integers(0, 2, (40, 4)))
    second = write_csv(tmp_path / "d2" / "data.csv", rng.integers(0, 2, (40, 4)))
    out = tmp_path / "out"
    options = ["--structure", "depth=1,repetitions=1,sums=2,inputs=2", "--epochs", "2", "--out", str(out), "--quiet"]
    assert main(["train", "--train", str(first), *options]) == 0
    capsys.readouterr()
    assert main(["train", "--train", str(second), "--epochs", "3", *options[:2], *options[4:]]) == 2
    error = capsys.readouterr().err
    assert "train_sha256" in error and "--restart" in error
    assert main(["train", "--train", str(second), *options, "--restart"]) == 0


def test_a_damaged_but_loadable_checkpoint_exits_2(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    data = write_csv(tmp_path / "data.csv", np.random.default_rng(1).integers(0, 2, (30, 4)))
    out = tmp_path / "out"
    options = ["train", "--train", str(data), "--structure", "depth=1,repetitions=1,sums=2,inputs=2", "--out",
               str(out), "--quiet"]
    assert main([*options, "--epochs", "1"]) == 0
    checkpoints = list(out.glob("*.pt"))
    assert checkpoints
    state = torch.load(checkpoints[0], weights_only=True)
    state["best_state"] = {"not a parameter": torch.zeros(1)}
    torch.save(state, checkpoints[0])
    capsys.readouterr()
    assert main([*options, "--epochs", "3"]) == 2
    error = capsys.readouterr().err.strip()
    assert "checkpoint" in error and "--restart" in error and "\n" not in error
