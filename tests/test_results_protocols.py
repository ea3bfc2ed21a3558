"""``python -m overspn.studies.results`` on tiny synthetic study folders: the log-protocol summary finds when runs
leave the symmetric start, the comparison summary splits a folder by protocol, and both reach tables.md."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest

from overspn.errors import ConfigurationError
from overspn.studies.depth import protocol_study
from overspn.studies.optimizer_comparison import summarise as summarise_comparison
from overspn.studies.results import main, readme_tables
from overspn.studies.results_protocols import ESCAPE_MARGIN, factorised_llh, log_part

TRAIN = np.array([[0, 0], [0, 1], [1, 1], [1, 1]])
# the factorised model of TRAIN: p(x1 = 1) = 1/2, p(x2 = 1) = 3/4
FACTORISED = math.log(0.5) + 0.25 * math.log(0.25) + 0.75 * math.log(0.75)


def _history(curve: list[float]) -> dict:
    return {"entries": [{"epoch": epoch, "train_llh": value, "valid_llh": None, "test_llh": value - 0.1,
                         "seconds": 0.0, "cpu_seconds": 0.0, "learning_rate": 0.1} for epoch, value in
                        enumerate(curve)]}


def write_log_study(folder: Path, data_dir: Path) -> None:
    """A log-protocol folder of 4 iterations on TRAIN: depth 1's runs leave the factorised level at iterations 2 and
    3, depth 3's runs stay below it (the second comes within the margin)."""
    (data_dir / "toy").mkdir(parents=True)
    np.savetxt(data_dir / "toy" / "toy.train.data", TRAIN, fmt="%d", delimiter=",")
    (folder / "runs").mkdir(parents=True)
    study = protocol_study("log", datasets=["toy"], iterations=4)
    (folder / "study.json").write_text(json.dumps(study.settings()))
    start = 2 * math.log(0.5)
    curves = {(1, 0): [start, -1.3, FACTORISED + 0.01, -0.9, -0.8],
              (1, 1): [start, -1.3, -1.27, FACTORISED + 0.002, -0.8],
              (3, 0): [start, -1.3, -1.28, -1.27, FACTORISED - 0.01],
              (3, 1): [start, -1.3, -1.28, -1.27, FACTORISED + ESCAPE_MARGIN / 2]}
    for (depth, run), curve in curves.items():
        value = {"dataset": "toy", "depth": depth, "run": run, "history": _history(curve), "seconds": 1.0}
        (folder / "runs" / f"toy-depth{depth}-run{run}.json").write_text(json.dumps(value))


def _comparison_run(method: str, seed: int, curve: list[float]) -> dict:
    return {"method": method, "seed": seed, "iterations": len(curve) - 1, "history": curve,
            "seconds": [0.01 * step for step in range(len(curve))], "final_train": curve[-1],
            "final_test": curve[-1] - 0.1, "diverged": False}


def write_comparison(folder: Path) -> None:
    """What ``overspn compare --protocol both --dataset toy`` writes to comparison.json, for two methods."""
    runs = [_comparison_run("gd", 0, [-3.0, -2.5, -2.0]), _comparison_run("gd", 1, [-3.0, -2.9, -2.8]),
            _comparison_run("adam", 0, [-3.0, -2.0, -1.5]), _comparison_run("adam", 1, [-3.0, -1.9, -1.6])]
    sections = [{"protocol": protocol, "dataset": "toy", "target": -2.4, "seeds": 2, "iterations": 2,
                 "rows": summarise_comparison(runs, -2.4, {"gd": 0.001, "adam": 0.002})}
                for protocol in ("paper", "log")]
    folder.mkdir(parents=True)
    (folder / "comparison.json").write_text(json.dumps(sections))


def test_the_factorised_level_is_that_of_independent_marginals() -> None:
    assert factorised_llh(TRAIN) == pytest.approx(FACTORISED, abs=1e-15)
    # a missing value is marginalised: it contributes nothing, and the marginal is fitted to the observed values
    with_missing = np.array([[0, 0], [0, 1], [1, 1], [1, np.nan]])
    expected = (4 * math.log(0.5) + 2 * math.log(2 / 3) + math.log(1 / 3)) / 4
    assert factorised_llh(with_missing) == pytest.approx(expected, abs=1e-15)


def test_log_and_comparison_summaries_reach_the_tables(tmp_path: Path) -> None:
    write_log_study(tmp_path / "log", tmp_path / "data")
    write_comparison(tmp_path / "compare")
    out = tmp_path / "results"
    assert main(["--sweep", str(tmp_path / "none"), "--gaussian", str(tmp_path / "none"), "--dynamics",
                 str(tmp_path / "none"), "--log", str(tmp_path / "log"), "--data-dir", str(tmp_path / "data"),
                 "--compare", str(tmp_path / "compare"), "--out", str(out)]) == 0

    log = json.loads((out / "log_protocol.json").read_text())
    entry = log["datasets"]["toy"]
    assert entry["factorised_train_llh"] == pytest.approx(FACTORISED, abs=1e-15)
    assert entry["depths"]["1"]["escape"] == {"per_run": [2, 3], "runs": 2, "left": 2, "median": 2.5, "min": 2,
                                              "max": 3}
    assert entry["depths"]["3"]["escape"]["per_run"] == [None, None]
    assert entry["escape_all_depths"] == {"runs": 4, "left": 2, "median": 2.5}
    assert log["seeds"] == {"1": "0..1", "3": "0..1"} and log["iterations"] == 4
    assert log["command"].startswith("overspn reproduce --protocol log --dataset toy --depth 1 --depth 3 --runs 2 "
                                     "--iterations 4 ")

    paper, logged = (json.loads((out / f"compare_{p}.json").read_text()) for p in ("paper", "log"))
    assert [s["protocol"] for s in paper["sections"]] == ["paper"] and logged["protocol"] == "log"
    assert paper["seeds"] == 2 and paper["iterations"] == 2 and "--methods gd,adam --seeds 2" in paper["command"]

    tables = readme_tables(out)
    assert set(tables) == {"log_protocol", "compare_log", "compare_paper"}
    assert "| toy | 1 | 2 | −0.800 ± 0.000 | −0.900 ± 0.000 | −1.255 | 2 (2–3) |" in tables["log_protocol"]
    assert "| toy | 3 | 2 | " in tables["log_protocol"] and "| not within the run |" in tables["log_protocol"]
    # one gradient-ascent seed reaches −2.4 (at iteration 2), the other does not
    assert "| toy (−2.400) | gradient ascent | 1/2 | 2 ± 0 | 0.00 ± 0.00 | −2.400 ± 0.566 |" in tables["compare_paper"]
    assert "| toy (−2.400) | Adam | 2/2 | 1 ± 0 |" in tables["compare_log"]
    assert (out / "tables.md").read_text().count("## compare_") == 2


def test_a_study_of_another_protocol_is_refused(tmp_path: Path) -> None:
    write_log_study(tmp_path / "study", tmp_path / "data")
    settings = json.loads((tmp_path / "study" / "study.json").read_text())
    (tmp_path / "study" / "study.json").write_text(json.dumps({**settings, "protocol": "paper"}))
    with pytest.raises(ConfigurationError, match="needs a log-protocol study"):
        log_part(tmp_path / "study", tmp_path, tmp_path / "data")
