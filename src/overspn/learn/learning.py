"""Generative gradient learning: maximise the mean log-likelihood of a compiled SPN.

The objective is the paper's ``(1/N) sum_n log f(x_n) - log f(*)``, i.e. ``model.log_likelihood(x).mean()``, with
the partition function ``f(*)`` exact. :func:`train` maximises it by

* plain gradient ascent with a fixed rate (the default): ``p <- p + lr * grad``, then raw weights are projected
  back onto their floor (``w >= floor``), exactly the paper's update; with log-parametrised weights the same step
  acts on the log-weights;
* or any ``torch.optim`` optimiser, given as an instance or as a factory called ``factory(parameters, lr=lr)``
  (optimisers minimise, so they are handed the negative objective; raw weights are clamped by the global
  post-step hook of :mod:`overspn.engine.compiled`).

Full batch by default; with ``batch_size`` every update uses one mini-batch, the batches of epoch ``e`` being a
permutation of the rows drawn from ``(seed, e)`` alone, so that a run resumed at any iteration draws the same
batches as an uninterrupted one. The history always records the full training-set log-likelihood.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from tqdm.auto import tqdm

from overspn.engine.compiled import CompiledSPN, EncodedData
from overspn.errors import ConfigurationError, DivergenceError

__all__ = ["History", "train", "gradient_ascent_step", "OptimizerSpec"]

OptimizerSpec = torch.optim.Optimizer | Callable[..., torch.optim.Optimizer] | None


@dataclass
class History:
    """Per-iteration log-likelihoods; entry ``i`` is measured after ``i`` updates (entry 0: before the first)."""

    train_llh: list[float] = field(default_factory=list)
    test_llh: list[float] | None = None

    @property
    def iterations(self) -> int:
        """Number of updates recorded so far (the last entry's iteration)."""
        return len(self.train_llh) - 1

    def append(self, train: float, test: float | None) -> None:
        self.train_llh.append(train)
        if test is not None:
            if self.test_llh is None:
                self.test_llh = []
            self.test_llh.append(test)

    def to_dict(self) -> dict[str, Any]:
        return {"train_llh": list(self.train_llh), "test_llh": None if self.test_llh is None else list(self.test_llh)}

    @classmethod
    def from_dict(cls, value: dict[str, Any]) -> History:
        test = value.get("test_llh")
        return cls([float(v) for v in value["train_llh"]], None if test is None else [float(v) for v in test])


def gradient_ascent_step(model: CompiledSPN, lr: float) -> None:
    """One plain ascent step on every parameter with a gradient, then the raw weights' floor projection."""
    with torch.no_grad():
        for parameter in model.parameters():
            if parameter.grad is not None:
                parameter.add_(parameter.grad, alpha=lr)
    model.project_()


def _make_optimizer(spec: OptimizerSpec, model: CompiledSPN, lr: float) -> torch.optim.Optimizer | None:
    if spec is None:
        return None
    if isinstance(spec, torch.optim.Optimizer):
        owned = {id(p) for p in model.parameters()}
        if not any(id(p) in owned for group in spec.param_groups for p in group["params"]):
            raise ConfigurationError("the optimizer given does not hold any parameter of the model")
        return spec
    if callable(spec):
        optimizer = spec(model.parameters(), lr=lr)
        if not isinstance(optimizer, torch.optim.Optimizer):
            raise ConfigurationError(
                f"the optimizer factory must return a torch.optim.Optimizer, got {type(optimizer).__name__}")
        return optimizer
    raise ConfigurationError(
        f"optimizer must be None, a torch.optim.Optimizer or a factory of one, got {type(spec).__name__}")


@dataclass(frozen=True)
class _Rows:
    """Encoded rows and their weights in the mean (None: all equal), for the mean log-likelihood."""

    data: EncodedData
    weights: torch.Tensor | None

    def mean_log_likelihood(self, model: CompiledSPN) -> torch.Tensor:
        values = model.log_likelihood(self.data)
        return values.mean() if self.weights is None else (values * self.weights).sum()


def _distinct_rows(model: CompiledSPN, data: EncodedData, deduplicate: bool) -> _Rows:
    """The distinct rows of ``data`` weighted by their frequency: the same mean, computed over fewer rows.

    Binary benchmarks repeat many rows (NLTCS: 2,671 distinct among 16,181), so full-batch training evaluates the
    model on the distinct rows only. Rows with missing values are never merged.
    """
    values = data.values[:-1]
    if not deduplicate or bool(torch.isnan(values).any()):
        return _Rows(data, None)
    unique, counts = torch.unique(values, dim=0, return_counts=True)
    if len(unique) == len(values):
        return _Rows(data, None)
    return _Rows(model.encode(unique, with_partition=True), counts.to(values.dtype) / len(values))


def _batch_rows(seed: int, update: int, num_rows: int, batch_size: int) -> torch.Tensor:
    """Row indices of the mini-batch used by update number ``update`` (0-based), a pure function of its inputs."""
    per_epoch = math.ceil(num_rows / batch_size)
    epoch, position = divmod(update, per_epoch)
    order = np.random.default_rng([seed, epoch]).permutation(num_rows)
    return torch.from_numpy(order[position * batch_size:(position + 1) * batch_size])


def _subset(data: EncodedData, rows: torch.Tensor) -> EncodedData:
    """The rows ``rows`` of encoded training data, with its all-missing partition row kept at the end."""
    keep = torch.cat([rows, torch.tensor([data.codes.shape[0] - 1])])
    onehot = None if data.onehot is None else data.onehot[keep]
    return EncodedData(data.codes[keep], data.values[keep], onehot, True)


def train(model: CompiledSPN, train_x: Any, *, iterations: int, lr: float, optimizer: OptimizerSpec = None,
          batch_size: int | None = None, test_x: Any = None, seed: int = 0, progress: bool = True,
          callback: Callable[[int, CompiledSPN, History], None] | None = None,
          history: History | None = None, deduplicate: bool = True) -> History:
    """Maximise the mean training log-likelihood of ``model`` for ``iterations`` updates; returns the history.

    ``train_x`` / ``test_x``: arrays ``(N, num_vars)`` (NaN = missing) or ``model.encode(x)``; encoded once.
    ``lr`` > 0: the rate of plain gradient ascent, or the ``lr`` given to an optimiser factory. ``optimizer``: None
    (plain gradient ascent), a ``torch.optim.Optimizer`` over the model's parameters, or a factory of one.
    ``batch_size``: None for full batch. ``callback(iteration, model, history)`` runs after every recorded
    iteration (e.g. to checkpoint). ``history``: the history of an interrupted run whose parameters the model
    holds; training continues from its last iteration up to ``iterations`` (the plain ascent and mini-batch order
    are stateless, so the continuation equals an uninterrupted run).

    Raises :class:`DivergenceError` when the objective becomes non-finite: the model is restored to the last
    parameters with a finite objective and the error carries the history up to them.
    """
    if not (isinstance(lr, (int, float)) and math.isfinite(lr) and lr > 0):
        raise ConfigurationError(f"learning rate must be a finite number > 0, got {lr!r}")
    if isinstance(iterations, bool) or not isinstance(iterations, int) or iterations < 0:
        raise ConfigurationError(f"iterations must be an int >= 0, got {iterations!r}")
    if batch_size is not None and (isinstance(batch_size, bool) or not isinstance(batch_size, int)
                                   or batch_size < 1):
        raise ConfigurationError(f"batch_size must be None or an int >= 1, got {batch_size!r}")
    train_data = model.encode(train_x, with_partition=True)
    test_data = None if test_x is None else model.encode(test_x, with_partition=True)
    if train_data.num_rows == 0:
        raise ConfigurationError("the training data has no rows")
    if not train_data.with_partition:
        raise ConfigurationError("encode the training data with with_partition=True")
    full_batch = batch_size is None or batch_size >= train_data.num_rows
    train_rows = _distinct_rows(model, train_data, deduplicate)
    test_rows = None if test_data is None else _distinct_rows(model, test_data, deduplicate)
    torch_optimizer = _make_optimizer(optimizer, model, lr)
    if history is not None and history.iterations > iterations:
        raise ConfigurationError(f"the history already has {history.iterations} iterations, more than {iterations}")
    # A continued run re-evaluates its last recorded iteration from the parameters the model holds (the same
    # computation, so the same value) and then updates from there.
    start = 0 if history is None or not history.train_llh else history.iterations
    history = History() if history is None else History.from_dict(history.to_dict())
    del history.train_llh[start:]
    if history.test_llh is not None:
        del history.test_llh[start:]
    parameters = [p for p in model.parameters() if p.requires_grad]
    bar = tqdm(total=iterations + 1, initial=start, disable=not progress, desc="training", unit="it", leave=False)

    def evaluate(rows: _Rows) -> float:
        with torch.no_grad():
            return float(rows.mean_log_likelihood(model))

    last_finite: list[torch.Tensor] = [p.detach().clone() for p in parameters]
    try:
        for iteration in range(start, iterations + 1):
            updating = iteration < iterations
            if full_batch and updating:
                objective = train_rows.mean_log_likelihood(model)
                train_value = float(objective.detach())
            else:
                objective = None
                train_value = evaluate(train_rows)
            test_value = None if test_rows is None else evaluate(test_rows)
            if not math.isfinite(train_value):
                with torch.no_grad():
                    for parameter, saved in zip(parameters, last_finite):
                        parameter.copy_(saved)
                cause = ("the learning rate is probably too large for this parametrisation (try a smaller lr)"
                         if iteration > 0 else "the initial model gives the training data zero probability")
                raise DivergenceError(
                    f"training diverged at iteration {iteration}: the training log-likelihood is {train_value}; "
                    f"{cause}. The model holds the parameters of iteration {max(iteration - 1, 0)}.",
                    iteration, history)
            history.append(train_value, test_value)
            if callback is not None:
                callback(iteration, model, history)
            bar.update(1)
            if progress:
                bar.set_postfix(train=f"{train_value:.4f}", refresh=False)
            if not updating:
                break
            for parameter, saved in zip(parameters, last_finite):
                saved.copy_(parameter.detach())
            if objective is None:
                rows = _batch_rows(seed, iteration, train_data.num_rows, batch_size)  # type: ignore[arg-type]
                objective = model.log_likelihood(_subset(train_data, rows)).mean()
            model.zero_grad(set_to_none=True)
            if torch_optimizer is None:
                objective.backward()
                gradient_ascent_step(model, lr)
            else:
                torch_optimizer.zero_grad(set_to_none=True)
                (-objective).backward()
                torch_optimizer.step()
    finally:
        bar.close()
    return history
