"""Every ```python block of the README runs as written, each on its own, and the cheap ``overspn`` examples run too.

Blocks that read a benchmark data set are skipped when ``OVERSPN_DATA`` is not set (no download in the tests); long
settings (a 240 s time budget) are shortened. The "Use a trained model" commands train for a few epochs on NLTCS and
are marked slow.
"""

from __future__ import annotations

import os
import re
import shlex
import subprocess
from pathlib import Path

import pytest

from overspn.cli.main import main

README = Path(__file__).resolve().parents[1] / "README.md"
TEXT = README.read_text(encoding="utf-8")
PYTHON_BLOCKS = re.findall(r"```python\n(.*?)```", TEXT, flags=re.S)
SHORTER = {"time_budget=240": "time_budget=2", '"ckpt.pt"': '"ckpt.pt", epochs=1'}


def _section(heading: str) -> str:
    start = TEXT.index(heading)
    end = TEXT.find("\n## ", start + len(heading))
    return TEXT[start:end if end >= 0 else None]


def _needs_data(code: str) -> bool:
    return "load_dataset" in code or "--dataset" in code


@pytest.mark.parametrize("index", range(len(PYTHON_BLOCKS)))
def test_python_block_runs_on_its_own(index: int, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    code = PYTHON_BLOCKS[index]
    if _needs_data(code) and not os.environ.get("OVERSPN_DATA"):
        pytest.skip("reads a benchmark data set; OVERSPN_DATA is not set")
    for long, short in SHORTER.items():
        code = code.replace(long, short)
    monkeypatch.chdir(tmp_path)
    exec(compile(code, f"{README}:python block {index + 1}", "exec"), {"__name__": "readme"})


def test_the_readme_has_install_and_model_sections() -> None:
    install = _section("## Install")
    assert "pip install torch==2.13.0" in install and "pip install ." in install and "make test" in install
    assert "overspn info" in _section("## Use a trained model")


def _commands(block: str) -> list[str]:
    return [line.split("  #")[0].strip() for line in block.strip().splitlines() if line.strip()]


@pytest.mark.slow
def test_use_a_trained_model_commands_run(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                          capsys: pytest.CaptureFixture[str]) -> None:
    if not os.environ.get("OVERSPN_DATA"):
        pytest.skip("trains on NLTCS; OVERSPN_DATA is not set")
    block = re.search(r"```bash\n(.*?)```", _section("## Use a trained model"), flags=re.S)
    assert block is not None
    monkeypatch.chdir(tmp_path)
    for command in _commands(block.group(1)):
        if command.startswith("overspn "):
            assert main(shlex.split(command)[1:] + (["--threads", "1"] if " train " in f" {command} " else [])) == 0, \
                command
            out = capsys.readouterr().out
            assert command.startswith("overspn info") or "wrote results/" in out, (command, out)
        else:
            subprocess.run(command, shell=True, check=True)
    for path in ("results/train/nltcs/model.ospn", "results/eval/nltcs-nltcs-test.json",
                 "results/sample/nltcs-n5-seed0.csv", "results/mpe/nltcs-partial.csv"):
        assert (tmp_path / path).is_file(), path
