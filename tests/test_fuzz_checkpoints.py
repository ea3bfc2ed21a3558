"""Damaged checkpoints: whatever happened to the file, resuming either continues or raises an OverspnError."""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import overspn as osp

DATA = np.random.default_rng(0).integers(0, 2, (40, 5)).astype(float)


def train(checkpoint: Path, epochs: int) -> osp.History:
    model = osp.compile_structure(osp.mixture(num_vars=5, num_components=3, seed=0), "raw", dtype=torch.float64)
    return osp.fit(model, DATA, DATA[:10], optimizer="sgd", lr=0.05, epochs=epochs, batch_size=10, seed=1,
                   checkpoint=checkpoint)


@pytest.fixture(scope="module")
def original(tmp_path_factory: pytest.TempPathFactory) -> bytes:
    path = tmp_path_factory.mktemp("checkpoint") / "run.pt"
    train(path, epochs=2)
    return path.read_bytes()


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(cut=st.one_of(st.none(), st.floats(0.0, 1.0)),
       flips=st.lists(st.tuples(st.floats(0.0, 1.0), st.integers(1, 255)), max_size=6))
def test_a_mutated_checkpoint_resumes_or_is_refused(original: bytes, tmp_path: Path, cut: float | None,
                                                    flips: list[tuple[float, int]]) -> None:
    damaged = bytearray(original)
    for position, mask in flips:
        damaged[int(position * (len(damaged) - 1))] ^= mask
    if cut is not None:
        damaged = damaged[: int(cut * len(damaged))]
    path = tmp_path / f"run-{abs(hash((cut, tuple(flips))))}.pt"
    path.write_bytes(bytes(damaged))
    started = time.perf_counter()
    try:
        history = train(path, epochs=4)
    except osp.OverspnError as error:
        assert str(path) in str(error) or "settings" in str(error)
    else:
        assert history.epochs == 4 and all(np.isfinite(e["train_llh"]) for e in history.entries)
    assert time.perf_counter() - started < 30
