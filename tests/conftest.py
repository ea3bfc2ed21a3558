"""Shared test set-up: hypothesis settings, and the data folder next to the repository when one is there."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch
from hypothesis import HealthCheck, settings

# Generated structures are evaluated by brute force, so examples are few and may take a while each.
settings.register_profile(
    "overspn", max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large]
)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "overspn"))

_SHARED_DATA = Path(__file__).resolve().parents[1].parent / "shared" / "datasets"
if not os.environ.get("OVERSPN_DATA") and _SHARED_DATA.is_dir():
    os.environ["OVERSPN_DATA"] = str(_SHARED_DATA)


@pytest.fixture(autouse=True)
def one_thread():
    """The models in the tests are small: extra torch threads only cost start-up time (a lot on a busy machine)."""
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)
