"""The command line on bad input: one line naming what and where, a non-zero exit, no traceback.

Every case runs through ``overspn.cli.main`` in this process; a few also run as ``python -m overspn.cli`` in a fresh
process, as a user would (only a few, since each process spends seconds importing torch). The data folder points
at an empty folder, so nothing is downloaded.
"""

from __future__ import annotations

import os
import subprocess
import sys
import types
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest

from overspn.cli import main as cli


@dataclass(frozen=True)
class CliCase:
    name: str
    arguments: Callable[[Path], list[str]]
    status: int
    words: tuple[str, ...]
    in_subprocess: bool = False


def files(folder: Path) -> dict[str, str]:
    """Small CSV files for the cases; returns name -> path."""
    contents = {
        "bad.csv": "1,0\n0,1\n1,x\n",
        "good.csv": "1,0\n0,1\n1,1\n0,0\n",
        "wide.csv": "1,0,1\n",
        "empty.csv": "",
        "constant.csv": "0.5,2\n1.5,2\n-0.5,2\n",
    }
    paths = {}
    for name, text in contents.items():
        (folder / name).write_text(text)
        paths[name] = str(folder / name)
    rng = np.random.default_rng(0)
    np.savetxt(folder / "continuous.csv", rng.normal(size=(200, 3)), delimiter=",")
    paths["continuous.csv"] = str(folder / "continuous.csv")
    (folder / "a-file").write_text("")
    paths["a-file"] = str(folder / "a-file")
    return paths


def out(folder: Path, name: str) -> list[str]:
    return ["--out", str(folder / "out" / name), "--quiet"]


CASES = [
    CliCase("train: text token in --train",
            lambda d: ["train", "--train", str(d / "bad.csv"), *out(d, "1")], 2,
            ("overspn train: error:", "bad.csv, line 3, column 1", "'x' is not a number"), in_subprocess=True),
    CliCase("train: missing --train file",
            lambda d: ["train", "--train", str(d / "absent.csv"), *out(d, "2")], 2, ("absent.csv", "no such file")),
    CliCase("train: empty --train file",
            lambda d: ["train", "--train", str(d / "empty.csv"), *out(d, "3")], 2, ("empty.csv", "empty")),
    CliCase("train: --test with another number of columns",
            lambda d: ["train", "--train", str(d / "good.csv"), "--test", str(d / "wide.csv"), *out(d, "4")], 2,
            ("--test has 3 columns", "--train has 2")),
    CliCase("train: negative learning rate",
            lambda d: ["train", "--train", str(d / "good.csv"), "--lr", "-1", *out(d, "6")], 2,
            ("--lr", "> 0", "-1")),
    CliCase("train: unknown data set",
            lambda d: ["train", "--dataset", "nltsc", *out(d, "7")], 2, ("unknown data set 'nltsc'", "nltcs")),
    CliCase("train: unknown option value",
            lambda d: ["train", "--train", str(d / "good.csv"), "--optimizer", "lbfgs"], 2,
            ("overspn train: error:", "--optimizer", "invalid choice", "'lbfgs'")),
    CliCase("train: unknown option",
            lambda d: ["train", "--train", str(d / "good.csv"), "--speed", "3"], 2,
            ("overspn train: error:", "unrecognized arguments: --speed 3")),
    CliCase("train: output folder under a file",
            lambda d: ["train", "--train", str(d / "good.csv"), "--epochs", "1", "--out", str(d / "a-file" / "x"),
                       "--quiet"], 2, ("Not a directory", "a-file")),
    CliCase("train: divergence",
            lambda d: ["train", "--train", str(d / "continuous.csv"), "--leaf", "gaussian", "--lr", "1e6",
                       "--epochs", "3", *out(d, "8")], 3, ("diverged", "epoch 1", "learning rate")),
    CliCase("reproduce: negative learning rate",
            lambda d: ["reproduce", "--lr", "-1", *out(d, "9")[:2]], 2,
            ("overspn reproduce: error:", "--lr", "> 0", "'-1'"), in_subprocess=True),
    CliCase("reproduce: unknown protocol",
            lambda d: ["reproduce", "--protocol", "fast", *out(d, "10")[:2]], 2, ("--protocol", "invalid choice")),
    CliCase("reproduce: zero iterations",
            lambda d: ["reproduce", "--iterations", "0", *out(d, "11")[:2]], 2, ("--iterations", "integer >= 1")),
    CliCase("dynamics: branching that is not numbers",
            lambda d: ["dynamics", "--branching", "2,x", "--out", str(d / "out" / "12")], 2,
            ("overspn dynamics: error:", "--branching", "'x'")),
    CliCase("compare: unknown method",
            lambda d: ["compare", "--methods", "gd,newton", "--out", str(d / "out" / "13")], 2,
            ("overspn compare: error:", "unknown method 'newton'")),
    CliCase("train: constant column for Gaussian leaves",
            lambda d: ["train", "--train", str(d / "constant.csv"), "--leaf", "gaussian", *out(d, "14")], 2,
            ("column 1", "constant")),
    CliCase("dynamics: zero threads",
            lambda d: ["dynamics", "--threads", "0", "--out", str(d / "out" / "15")], 2,
            ("overspn dynamics: error:", "--threads", "integer from 1 to")),
    CliCase("compare: target that is not a number",
            lambda d: ["compare", "--target", "nan", "--out", str(d / "out" / "16")], 2,
            ("overspn compare: error:", "--target", "finite")),
    CliCase("no subcommand", lambda d: [], 2, ("overspn: error:", "required")),
    CliCase("unknown subcommand", lambda d: ["fit"], 2, ("overspn: error:", "invalid choice: 'fit'")),
]


@pytest.fixture(scope="module")
def folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("cli")
    files(folder)
    (folder / "no-data").mkdir()
    return folder


def check_one_clear_line(case: CliCase, status: int, stderr: str) -> None:
    assert "Traceback" not in stderr, stderr
    lines = [line for line in stderr.splitlines() if line.strip()]
    assert len(lines) == 1, stderr
    assert status == case.status, (status, stderr)
    assert lines[0].startswith("overspn")
    for words in case.words:
        assert words in lines[0], f"{words!r} not in {lines[0]!r}"


@pytest.mark.parametrize("case", CASES, ids=[case.name for case in CASES])
def test_error_is_one_clear_line(case: CliCase, folder: Path, monkeypatch: pytest.MonkeyPatch,
                                 capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setenv("OVERSPN_DATA", str(folder / "no-data"))
    try:
        status = cli.main(case.arguments(folder))
    except SystemExit as stop:  # argparse's exit for a bad option
        status = stop.code
    check_one_clear_line(case, status, capsys.readouterr().err)


@pytest.mark.slow
def test_errors_in_a_fresh_process(folder: Path) -> None:
    """The same, as a user runs it: all chosen cases at once, each in its own interpreter."""
    environment = {**os.environ, "OVERSPN_DATA": str(folder / "no-data"), "PYTHONWARNINGS": "ignore"}
    chosen = [case for case in CASES if case.in_subprocess]
    modules = ["overspn.cli.main", "overspn"]  # the entry point of the installed script, and python -m overspn
    running = [subprocess.Popen([sys.executable, "-m", modules[i % 2], *case.arguments(folder)], env=environment,
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
               for i, case in enumerate(chosen)]
    for case, process in zip(chosen, running):
        _, stderr = process.communicate(timeout=300)
        check_one_clear_line(case, process.returncode, stderr)


def _register_broken(subparsers: object) -> None:
    parser = subparsers.add_parser("broken")  # type: ignore[attr-defined]
    parser.set_defaults(handler=lambda args: [][0])


def test_an_unexpected_exception_is_one_line_unless_the_traceback_is_asked_for(
        monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    module = types.ModuleType("overspn.cli.broken")
    module.register = _register_broken  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "overspn.cli.broken", module)
    monkeypatch.setattr(cli, "COMMANDS", (*cli.COMMANDS, "broken"))
    monkeypatch.delenv("OVERSPN_TRACEBACK", raising=False)
    assert cli.main(["broken"]) == 1
    line = capsys.readouterr().err.strip()
    assert "\n" not in line
    assert line.startswith("overspn broken: internal error: IndexError: list index out of range")
    assert "OVERSPN_TRACEBACK=1" in line
    monkeypatch.setenv("OVERSPN_TRACEBACK", "1")
    with pytest.raises(IndexError):
        cli.main(["broken"])
