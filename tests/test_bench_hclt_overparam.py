"""Smoke test of benchmarks/bench_hclt_overparam.py: every arm on a tiny synthetic data set for 2 epochs."""

from __future__ import annotations

import json
import sys
import types
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))

import bench_hclt_overparam as bench  # noqa: E402


def test_study_writes_expected_fields(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    x = (rng.random((300, 6)) < 0.4).astype(np.float64)
    data = types.SimpleNamespace(train=x[:200], valid=x[200:250], test=x[250:])
    out = tmp_path / "hclt_overparam.json"
    bench.study({"toy": data}, [0], {arm: bench.GRIDS[arm][1] for arm in bench.GRADIENT_ARMS}, 2, 30.0, out=out)
    doc = json.loads(out.read_text())
    assert {r["arm"] for r in doc["runs"]} == set(bench.ARMS)
    initial = {r["history"][0]["train"] for r in doc["runs"]}
    assert max(initial) - min(initial) < 1e-9  # the same initial function in every arm
    for run in doc["runs"]:
        assert [e["epoch"] for e in run["history"]] == [0, 1, 2]
        assert {"train", "valid", "test", "seconds"} <= set(run["history"][0])
    summary = doc["summary"]["toy"]
    assert summary["best_arm"] in bench.ARMS
    for arm in bench.ARMS:
        entry = summary["arms"][arm]
        for label in ("50%", "90%", "99%"):
            assert {"values", "reached", "mean", "spread"} <= set(entry[f"epochs_to_{label}"])
            assert {"values", "reached", "mean", "spread"} <= set(entry[f"seconds_to_{label}"])
    assert "| toy |" in bench.markdown(doc["summary"])
