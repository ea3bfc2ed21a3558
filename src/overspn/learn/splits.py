"""Data splits prepared once for the many evaluations of a training run.

A compiled SPN gets its rows checked and encoded once, and a full-batch mean is taken over the distinct rows weighted
by their frequency (the same mean over fewer rows). Other models (e.g. a RAT-SPN) get a checked tensor of their dtype,
evaluated in batches.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from overspn.engine.compiled import CompiledSPN
from overspn.engine.encoding import EncodedData
from overspn.errors import ConfigurationError
from overspn.learn.distributed import Processes

__all__ = ["evaluate", "prepare", "EncodedSplit", "TensorSplit"]


@torch.no_grad()
def evaluate(model: torch.nn.Module, data: Any, batch_size: int = 2000) -> float | None:
    """Mean log-likelihood of ``data`` under ``model`` (None when there is no data), in batches of ``batch_size``."""
    if data is None or len(data) == 0:
        return None
    return _total(model, data, batch_size) / len(data)


@torch.no_grad()
def _total(model: Any, data: Any, batch_size: int) -> float:
    total = 0.0
    for start in range(0, len(data), batch_size):
        total += float(model.log_likelihood(data[start: start + batch_size]).double().sum())
    return total


class EncodedSplit:
    """Rows encoded once by a compiled SPN; full-batch means over the distinct rows, weighted by frequency."""

    def __init__(self, model: Any, x: Any, deduplicate: bool) -> None:
        data = model.encode(x, with_partition=True)
        if not data.with_partition:
            raise ConfigurationError("encode the data with with_partition=True")
        self.data, self.num_rows = data, data.num_rows
        self.distinct, self.weights = _distinct_rows(model, data, deduplicate)

    def mean(self, model: Any) -> torch.Tensor:
        """The mean log-likelihood of all rows, differentiable."""
        values = model.log_likelihood(self.distinct)
        return values.mean() if self.weights is None else (values * self.weights).sum()

    def evaluate(self, model: Any, processes: Processes) -> float:
        with torch.no_grad():
            return float(self.mean(model))

    def rows(self, indices: torch.Tensor) -> EncodedData:
        """The rows ``indices`` with the all-missing partition row kept at the end."""
        keep = torch.cat([indices, torch.tensor([self.data.codes.shape[0] - 1])])
        return EncodedData(self.data.codes[keep], self.data.values[keep], self.data.onehot_width, True)


def _distinct_rows(model: Any, data: EncodedData, deduplicate: bool) -> tuple[EncodedData, torch.Tensor | None]:
    """The distinct rows of ``data`` and their frequencies (None: all rows, equal weights).

    Binary benchmarks repeat many rows (NLTCS: 2,671 distinct among 16,181), so full-batch training evaluates the
    model on the distinct rows only. Rows with missing values are never merged.
    """
    values = data.values[:-1]
    if not deduplicate or bool(torch.isnan(values).any()):
        return data, None
    unique, counts = torch.unique(values, dim=0, return_counts=True)
    if len(unique) == len(values):
        return data, None
    return model.encode(unique, with_partition=True), counts.to(values.dtype) / len(values)


class TensorSplit:
    """Rows as one tensor of the model's dtype, checked once; evaluated in batches (sharded across processes)."""

    def __init__(self, model: Any, x: Any, batch_size: int) -> None:
        if hasattr(model, "check_data"):
            tensor = model.check_data(x)  # a bad value is named before any time is spent
        else:
            tensor = torch.from_numpy(np.ascontiguousarray(x)) if isinstance(x, np.ndarray) else torch.as_tensor(x)
            tensor = tensor.to(next(model.parameters()).dtype)
        self.data, self.num_rows, self.batch_size = tensor, len(tensor), batch_size

    def mean(self, model: Any) -> torch.Tensor:
        return model.log_likelihood(self.data).mean()

    def evaluate(self, model: Any, processes: Processes) -> float:
        if processes.size == 1:
            return _total(model, self.data, self.batch_size) / self.num_rows
        return processes.total(_total(model, processes.shard(self.data), self.batch_size)) / self.num_rows

    def rows(self, indices: torch.Tensor) -> torch.Tensor:
        return self.data[indices]


def prepare(model: Any, x: Any, deduplicate: bool, batch_size: int) -> EncodedSplit | TensorSplit | None:
    """The split ``x`` prepared for ``model`` (None for no data or no rows)."""
    if x is None:
        return None
    split = EncodedSplit(model, x, deduplicate) if isinstance(model, CompiledSPN) else TensorSplit(model, x, batch_size)
    return split if split.num_rows > 0 else None
