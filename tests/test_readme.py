"""The README's quickstart runs as written and does what it says."""

from __future__ import annotations

import math
import re
from pathlib import Path

import pytest
import torch

import overspn as osp

README = Path(__file__).resolve().parents[1] / "README.md"


def quickstart_code() -> str:
    text = README.read_text(encoding="utf-8")
    section = text[text.index("## Quickstart"):]
    match = re.search(r"```python\n(.*?)```", section, flags=re.S)
    assert match is not None, "the README's quickstart has no python block"
    return match.group(1)


def test_quickstart_runs_and_its_claims_hold(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    namespace: dict[str, object] = {}
    exec(compile(quickstart_code(), str(README), "exec"), namespace)
    model, x = namespace["model"], namespace["x"]
    assert isinstance(model, osp.CompiledSPN)
    # the structure before training has partition function 2 + 1 = 3, as its comment says
    assert osp.compile(namespace["root"], dtype=torch.float64).log_partition().item() == pytest.approx(math.log(3))
    # training kept every raw weight above the floor, and the saved model gives the trained model's likelihoods
    floors = model.raw_weight_floors()
    assert floors and all(float(p.detach().min()) >= floor == 1e-4 for p, floor in floors)
    loaded = osp.load(tmp_path / "model.ospn")
    torch.testing.assert_close(loaded.log_likelihood(x), model.log_likelihood(x), rtol=0, atol=0)
