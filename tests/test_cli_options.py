"""One option vocabulary across the commands: defaults shown in the help, checked values, default output paths."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import pytest

import overspn as osp
from overspn.cli.main import COMMANDS, build_parser, main
from overspn.cli.options import DatasetList, default_out, max_threads
from overspn.data import Dataset


def _options(command: str, parser: argparse.ArgumentParser | None = None) -> list[argparse.Action]:
    parser = parser or build_parser().commands[command]
    return [action for action in parser._actions
            if action.option_strings and action.help is not argparse.SUPPRESS
            and not isinstance(action, (argparse._HelpAction, argparse._VersionAction))]


@pytest.mark.parametrize("command", COMMANDS)
def test_every_option_has_help_that_shows_its_default(command: str, capsys: pytest.CaptureFixture[str]) -> None:
    parser = build_parser().commands[command]
    chosen = {id(a) for group in parser._mutually_exclusive_groups if group.required for a in group._group_actions}
    for action in _options(command, parser):
        assert action.help, f"{command} {action.option_strings[0]} has no help"
        flag = isinstance(action, (argparse._StoreTrueAction, argparse._StoreFalseAction))
        if not flag and not action.required and id(action) not in chosen:
            shown = parser._get_formatter()._expand_help(action)
            assert "default" in shown.lower(), f"{command} {action.option_strings[0]}: {shown!r}"
    with pytest.raises(SystemExit):
        main([command, "--help"])
    text = capsys.readouterr().out
    assert "``" not in text and ":class:" not in text and ":func:" not in text


@pytest.mark.parametrize("command", ["train", "eval", "sample", "mpe", "reproduce", "dynamics", "compare"])
def test_shared_options_are_everywhere_and_out_is_never_required(command: str) -> None:
    options = {name: action for action in _options(command) for name in action.option_strings}
    assert "--out" in options and not options["--out"].required
    assert "--quiet" in options and "--threads" in options
    if command in ("train", "reproduce", "dynamics", "compare", "eval", "mpe"):
        assert "--data-dir" in options and "--dataset" in options
    if command in ("train", "compare"):
        assert "--restart" in options


@pytest.mark.parametrize("command", ["train", "dynamics", "compare", "reproduce", "sample"])
def test_threads_and_seed_are_checked_up_front(command: str, capsys: pytest.CaptureFixture[str]) -> None:
    model = ["model.ospn", "-n", "2"] if command == "sample" else []
    for option, value, words in (("--threads", "100000", f"from 1 to {max_threads()}"),
                                 ("--threads", "0", "from 1 to"), ("--seed", "-1", ">= 0")):
        with pytest.raises(SystemExit) as stop:
            main([command, *model, option, value])
        error = capsys.readouterr().err
        assert stop.value.code == 2 and option in error and words in error, error
        assert len(error.strip().splitlines()) == 1


def test_datasets_are_repeatable_and_comma_separated() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--dataset", action=DatasetList)
    assert parser.parse_args(["--dataset", "a,b", "--dataset", "c", "--dataset", "a"]).dataset == ["a", "b", "c"]
    compare = build_parser().commands["compare"]
    assert compare.parse_args(["--datasets", "plants,baudio", "--dataset", "nltcs"]).dataset == \
        ["plants", "baudio", "nltcs"]
    assert "--datasets" not in compare.format_help()  # the old spelling still works, but is not advertised


def test_default_folders_differ_by_what_runs() -> None:
    namespace = argparse.Namespace(lr=None, seed=0)
    defaults = {"lr": None, "seed": 0}
    assert default_out("train", "nltcs", namespace, defaults) == Path("results/train/nltcs")
    other = default_out("train", "nltcs", argparse.Namespace(lr=0.1, seed=0), defaults)
    assert other.parent == Path("results/train") and other.name.startswith("nltcs-") and other != \
        default_out("train", "nltcs", argparse.Namespace(lr=0.2, seed=0), defaults)
    assert other == default_out("train", "nltcs", argparse.Namespace(lr=0.1, seed=0), defaults)  # resumable


def _binary(rows: int, seed: int) -> np.ndarray:
    return (np.random.default_rng(seed).random((rows, 5)) < 0.3).astype(float)


def test_train_then_use_the_model_with_default_outputs(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                       capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.chdir(tmp_path)
    for name, rows, seed in (("a", 200, 0), ("b", 50, 1), ("c", 50, 2)):
        np.savetxt(f"{name}.csv", _binary(rows, seed), fmt="%d", delimiter=",")
    common = ["--valid", "b.csv", "--test", "c.csv", "--epochs", "2", "--threads", "1"]
    assert main(["train", "--train", "a.csv", *common]) == 0
    out = capsys.readouterr().out
    folder = Path("results/train/a")
    assert f"wrote {folder / 'model.ospn'}" in out and (folder / "curves.png").is_file()
    # another setting: another folder, not a refusal
    assert main(["train", "--train", "a.csv", *common, "--seed", "1", "--quiet"]) == 0
    assert capsys.readouterr().out == ""
    assert len(list(Path("results/train").iterdir())) == 2

    info = json.loads((main(["info", str(folder / "model.ospn"), "--json"]), capsys.readouterr().out)[1])
    metadata = info["metadata"]
    assert metadata["data"]["train"] == "a.csv" and metadata["data"]["rows"] == [200, 50, 50]
    assert metadata["settings"]["optimizer"] and metadata["results"]["epochs"] >= 1

    assert main(["eval", str(folder / "model.ospn"), "--data", "c.csv"]) == 0
    assert "wrote results/eval/a-c.json" in capsys.readouterr().out
    assert json.loads(Path("results/eval/a-c.json").read_text())["rows"] == 50
    assert main(["sample", str(folder / "model.ospn"), "-n", "7"]) == 0
    assert "wrote results/sample/a-n7-seed0.csv" in capsys.readouterr().out
    assert len(Path("results/sample/a-n7-seed0.csv").read_text().splitlines()) == 7
    np.savetxt("holes.csv", np.array([[0, np.nan, 1, np.nan, 0]]), delimiter=",")
    assert main(["mpe", str(folder / "model.ospn"), "--data", "holes.csv"]) == 0
    assert "wrote results/mpe/a-holes.csv" in capsys.readouterr().out
    assert np.isfinite(np.loadtxt("results/mpe/a-holes.csv", delimiter=",")).all()
    assert osp.load(folder / "model.ospn").num_vars == 5


def test_non_terminal_progress_is_plain_lines(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                              capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.chdir(tmp_path)
    np.savetxt("a.csv", _binary(100, 0), fmt="%d", delimiter=",")
    np.savetxt("b.csv", _binary(40, 1), fmt="%d", delimiter=",")
    assert main(["train", "--train", "a.csv", "--valid", "b.csv", "--epochs", "3", "--patience", "1"]) == 0
    captured = capsys.readouterr()
    assert "\r" not in captured.err and "training: epoch 1/" in captured.err
    assert captured.out.strip().splitlines()[-1].startswith("wrote ")


def test_dynamics_and_compare_report_progress_and_where_they_wrote(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                                    capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.chdir(tmp_path)
    data = _binary(120, 3)
    dataset = Dataset("tiny", data, None, _binary(40, 4))
    for module in ("dynamics", "compare"):
        monkeypatch.setattr(f"overspn.cli.{module}.load_dataset", lambda name, data_dir=None: dataset)
    assert main(["dynamics", "--dataset", "tiny", "--iterations", "3", "--etas", "1e-2,1e-3", "--init", "0.3",
                 "--perturbation", "0.1"]) == 0
    out = capsys.readouterr().out
    assert out.startswith("dynamics: tracing 3 iterations")
    assert "wrote results/dynamics/tiny-2x2x2-" in out and "rho.png" in out
    assert main(["compare", "--dataset", "tiny", "--iterations", "3", "--seeds", "1", "--methods", "gd,adam",
                 "--timing-steps", "1", "--timing-rounds", "1"]) == 0
    out = capsys.readouterr().out
    folder = next(Path("results/compare").iterdir())
    assert folder.name.startswith("paper+tiny") and f"wrote {folder / 'comparison.md'}" in out
    assert "paper tiny gd seed 0: final train" in out
    assert (folder / "curves_paper_tiny.png").is_file()
