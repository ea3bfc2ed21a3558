"""The README's science section quotes only what the tool writes: its tables are those that
``python -m overspn.studies.results`` generates from ``docs/results/*.json``, and its numbers in the prose match
those files at the precision the README states (the test only reads the committed JSON)."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from overspn.studies.results import readme_tables

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "docs" / "results"
README = (ROOT / "README.md").read_text(encoding="utf-8")
PROSE = " ".join(README.split())  # prose is wrapped: phrases are matched across line breaks


def _load(name: str) -> dict:
    path = RESULTS / f"{name}.json"
    if not path.is_file():
        pytest.skip(f"{path} not generated")
    return json.loads(path.read_text())


def _number(text: str) -> float:
    return float(text.replace("−", "-"))


def _quoted(pattern: str) -> list[str]:
    found = re.findall(pattern, PROSE)
    assert found, f"the README does not quote {pattern!r}"
    return found


def test_readme_tables_are_the_generated_ones() -> None:
    tables = readme_tables(RESULTS)
    assert {"paper", "sweep", "dynamics"} <= set(tables) and any(n.startswith("gaussian_") for n in tables)
    for name, table in tables.items():
        assert table in README, f"the README's {name} table differs from the one docs/results/{name}.json gives"


def test_prose_numbers_of_the_paper_protocol() -> None:
    paper = _load("paper")["datasets"]["nltcs"]["depths"]
    slow = paper["1"]["slow_runs"]
    (text,) = set(_quoted(r"one-layer runs are still below −7\.30 at iteration 500: (\d+) of (\d+)"))
    assert (int(text[0]), int(text[1])) == (slow["slow"], slow["runs"])
    (span,) = set(_quoted(r"reach −7\.10 between iterations (\d+) and (\d+)"))
    assert (int(span[0]), int(span[1])) == (slow["slow_reach_min"], slow["slow_reach_max"])
    (three,) = set(_quoted(r"three-layer runs below −7\.30 at 500: (\d+) of (\d+)"))
    assert (int(three[0]), int(three[1])) == (paper["3"]["slow_runs"]["slow"], paper["3"]["slow_runs"]["runs"])


def test_prose_numbers_of_the_dynamics() -> None:
    dynamics = _load("dynamics")
    (held,) = set(_quoted(r"component-steps held by the floor: (\d\.\d{3})"))
    assert _number(held) == pytest.approx(dynamics["fraction_of_component_steps_clamped"], abs=5e-4)
    (free,) = set(_quoted(r"median relative residual of free steps (\d\.\d+e-\d+)"))
    value = dynamics["training_steps"]["general"]["median_component_residual_free_steps"]
    assert _number(free) == pytest.approx(value, rel=0.05)
    (noise,) = set(_quoted(r"noise level at t = 0: (\d\.\d+e-\d+)"))
    assert _number(noise) == pytest.approx(dynamics["gradient_noise_level"]["t=0"], rel=0.05)
