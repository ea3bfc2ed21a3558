"""Mini-batch training of tensorised SPNs with early stopping, checkpoints that resume exactly, and divergence checks.

:func:`train` maximises the mean log-likelihood of a model (anything with ``log_likelihood(x)``, normally a
:class:`overspn.rat.RatSPN`) by Adam or SGD on mini-batches, or by online EM (RAT-SPNs only: expected counts are the
weights times the gradient of the log-likelihood, one forward/backward pass per batch). After each epoch it measures
the validation log-likelihood and keeps the best parameters; after every epoch that does not improve on them the
learning rate (EM: step size) is multiplied by ``lr_decay`` (a fast start that then settles before it overfits).
It stops when they have not improved for ``patience`` epochs, when ``epochs`` are done or when ``time_budget``
seconds have passed.

Data-parallel training (``distributed=True``, inside an initialised ``torch.distributed`` process group, e.g. under
``torchrun``): every process draws the same batches, evaluates its share of each and the gradients are summed
across processes before every step, so the parameters follow single-process training up to rounding.

With a checkpoint path, the complete training state (parameters, optimiser, shuffling generator, best parameters,
history, elapsed time) is written atomically after every epoch; calling :func:`train` again with the same settings
resumes from it and, with the same number of threads, ends with exactly the same parameters as an uninterrupted run.
"""

from __future__ import annotations

import io
import math
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
from torch import nn

from overspn.atomic import atomic_write_bytes
from overspn.errors import ConfigurationError, DivergenceError, ModelFileError

__all__ = ["OPTIMIZERS", "DEFAULT_LEARNING_RATES", "TrainSettings", "TrainResult", "train", "evaluate"]

OPTIMIZERS = ("adam", "sgd", "em")
# Adam's and SGD's step sizes; for EM the weight given to each batch's statistics in the running estimate.
DEFAULT_LEARNING_RATES = {"adam": 0.02, "sgd": 0.5, "em": 0.05}
CHECKPOINT_FORMAT = "overspn-train-checkpoint"


@dataclass(frozen=True)
class TrainSettings:
    """How to train. ``lr=None`` takes the optimiser's default from :data:`DEFAULT_LEARNING_RATES`."""

    optimizer: str = "adam"
    lr: float | None = None
    batch_size: int = 100
    epochs: int = 100
    time_budget: float | None = None
    patience: int = 10
    lr_decay: float = 0.5
    seed: int = 0
    eval_batch_size: int = 2000

    def __post_init__(self) -> None:
        if self.optimizer not in OPTIMIZERS:
            raise ConfigurationError(f"optimizer must be one of {OPTIMIZERS}, got {self.optimizer!r}")
        if self.lr is not None and not (math.isfinite(self.lr) and self.lr > 0):
            raise ConfigurationError(f"learning rate must be finite and > 0, got {self.lr!r}")
        if self.optimizer == "em" and self.lr is not None and self.lr > 1:
            raise ConfigurationError(f"the EM step size must lie in (0, 1], got {self.lr!r}")
        for name in ("batch_size", "epochs", "patience", "eval_batch_size"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ConfigurationError(f"{name} must be a positive integer, got {value!r}")
        if not (math.isfinite(self.lr_decay) and 0 < self.lr_decay <= 1):
            raise ConfigurationError(f"lr_decay must lie in (0, 1], got {self.lr_decay!r}")
        if self.time_budget is not None and not (math.isfinite(self.time_budget) and self.time_budget > 0):
            raise ConfigurationError(f"time budget must be a positive number of seconds, got {self.time_budget!r}")

    @property
    def learning_rate(self) -> float:
        return self.lr if self.lr is not None else DEFAULT_LEARNING_RATES[self.optimizer]

    def fingerprint(self) -> dict[str, Any]:
        """The settings a resumed run must share with the interrupted one (stopping rules may change)."""
        return {"optimizer": self.optimizer, "lr": self.learning_rate, "lr_decay": self.lr_decay,
                "batch_size": self.batch_size,
                "seed": self.seed}


@dataclass
class TrainResult:
    """What a run did. ``history`` has one entry per epoch: epoch, train_llh (mean over its batches), valid_llh
    (None without validation data), seconds and cpu_seconds (cumulative wall-clock and processor time of this
    process; they differ on a busy machine). The model holds the best parameters on return."""

    history: list[dict[str, Any]] = field(default_factory=list)
    best_epoch: int = 0
    best_valid_llh: float | None = None
    epochs: int = 0
    seconds: float = 0.0
    cpu_seconds: float = 0.0
    stop_reason: str = ""

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


@torch.no_grad()
def evaluate(model: nn.Module, data: torch.Tensor | np.ndarray | None, batch_size: int = 2000) -> float | None:
    """Mean log-likelihood of ``data`` under ``model`` (None when there is no data), in batches."""
    if data is None or len(data) == 0:
        return None
    total = 0.0
    for start in range(0, len(data), batch_size):
        total += float(model.log_likelihood(data[start: start + batch_size]).double().sum())
    return total / len(data)


class _Group:
    """This process's place among the data-parallel processes (rank 0 of 1 without ``torch.distributed``)."""

    def __init__(self, distributed: bool) -> None:
        if distributed and not (dist.is_available() and dist.is_initialized()):
            raise ConfigurationError("distributed training needs an initialised torch.distributed process group "
                                     "(run under torchrun)")
        self.distributed = distributed
        self.size = dist.get_world_size() if distributed else 1
        self.rank = dist.get_rank() if distributed else 0

    def shard(self, rows: torch.Tensor) -> torch.Tensor:
        return rows[self.rank:: self.size]

    def total(self, value: float, op: str = "sum") -> float:
        if self.size == 1:
            return value
        tensor = torch.tensor([value], dtype=torch.float64)
        dist.all_reduce(tensor, op=dist.ReduceOp.SUM if op == "sum" else dist.ReduceOp.MAX)
        return float(tensor)

    def sum_gradients(self, parameters: list[torch.Tensor]) -> None:
        grads = [p.grad if p.grad is not None else torch.zeros_like(p) for p in parameters]
        flat = torch.cat([g.reshape(-1) for g in grads])
        dist.all_reduce(flat)
        offset = 0
        for parameter in parameters:
            parameter.grad = flat[offset: offset + parameter.numel()].view_as(parameter).clone()
            offset += parameter.numel()

    def evaluate(self, model: nn.Module, data: torch.Tensor | None, batch_size: int) -> float | None:
        if self.size == 1 or data is None or len(data) == 0:
            return evaluate(model, data, batch_size)
        with torch.no_grad():
            share = self.shard(data)
            local = sum(float(model.log_likelihood(share[start: start + batch_size]).double().sum())
                        for start in range(0, len(share), batch_size))
        return self.total(local) / len(data)


def _as_tensor(data: np.ndarray | torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    tensor = torch.from_numpy(np.ascontiguousarray(data)) if isinstance(data, np.ndarray) else data
    return tensor.to(dtype)


def _make_optimizer(model: nn.Module, settings: TrainSettings) -> torch.optim.Optimizer | None:
    if settings.optimizer == "adam":
        return torch.optim.Adam(model.parameters(), lr=settings.learning_rate)
    if settings.optimizer == "sgd":
        return torch.optim.SGD(model.parameters(), lr=settings.learning_rate)
    if not hasattr(model, "em_step"):
        raise ConfigurationError(f"EM needs a model with expected counts (a RatSPN), got {type(model).__name__}")
    return None


def _state_copy(model: nn.Module) -> dict[str, torch.Tensor]:
    return {key: value.detach().clone() for key, value in model.state_dict().items()}


@torch.no_grad()
def _copy(targets: list[torch.Tensor], sources: list[torch.Tensor]) -> None:
    for target, source in zip(targets, sources):
        target.copy_(source)


def _load_checkpoint(path: Path, fingerprint: dict[str, Any]) -> dict[str, Any] | None:
    if not path.is_file():
        return None
    try:
        state = torch.load(io.BytesIO(path.read_bytes()), weights_only=True)
    except Exception as error:  # torch raises many types for a damaged file
        raise ModelFileError(f"{path}: unreadable training checkpoint ({error}); delete it to start afresh") from error
    if not isinstance(state, dict) or state.get("format") != CHECKPOINT_FORMAT:
        raise ModelFileError(f"{path}: not an overspn training checkpoint")
    if state["fingerprint"] != fingerprint:
        differences = ", ".join(f"{key}: {state['fingerprint'].get(key)!r} there, {value!r} now"
                                for key, value in fingerprint.items() if state["fingerprint"].get(key) != value)
        raise ConfigurationError(f"{path} was written by a run with other settings ({differences}); use another "
                                 "output folder or delete the checkpoint to start afresh")
    return state


def train(model: nn.Module, train_data: np.ndarray | torch.Tensor, valid_data: np.ndarray | torch.Tensor | None = None,
          settings: TrainSettings | None = None, *, checkpoint: str | Path | None = None,
          fingerprint: dict[str, Any] | None = None, progress: bool = False,
          on_epoch: Callable[[dict[str, Any]], None] | None = None, distributed: bool = False) -> TrainResult:
    """Train ``model`` in place on ``train_data`` ``(N, D)`` (NaN = missing); returns the :class:`TrainResult`.

    ``checkpoint``: file to resume from and write after every epoch; ``fingerprint``: extra settings (e.g. the
    structure and data set) that must match the checkpoint's. ``progress`` shows a tqdm bar with the running
    log-likelihood; ``on_epoch`` is called with each epoch's history entry. ``distributed``: data-parallel over the
    processes of the current ``torch.distributed`` group (Adam and SGD; only rank 0 writes the checkpoint).

    Raises DivergenceError (with the history) when the objective becomes NaN or infinite; the model then holds the
    last parameters that gave a finite objective.
    """
    settings = settings or TrainSettings()
    dtype = next(model.parameters()).dtype
    train_tensor = _as_tensor(train_data, dtype)
    valid_tensor = None if valid_data is None else _as_tensor(valid_data, dtype)
    if len(train_tensor) == 0:
        raise ConfigurationError("the training data has no rows")
    if hasattr(model, "check_data"):
        model.check_data(train_tensor)  # a bad value is named before any time is spent
    optimizer = _make_optimizer(model, settings)
    processes = _Group(distributed)
    if processes.size > 1 and optimizer is None:
        raise ConfigurationError("distributed training supports the adam and sgd optimizers, not em")
    generator = torch.Generator().manual_seed(settings.seed)
    full_fingerprint = {**settings.fingerprint(), **(fingerprint or {})}
    if processes.size > 1:  # rounding differs between process counts, so a resumed run must use the same one
        full_fingerprint["processes"] = processes.size
    checkpoint_path = None if checkpoint is None else Path(checkpoint)
    result = TrainResult()
    best_state = _state_copy(model)
    bad_epochs = 0
    learning_rate = settings.learning_rate

    saved = None if checkpoint_path is None else _load_checkpoint(checkpoint_path, full_fingerprint)
    if saved is not None:
        model.load_state_dict(saved["model"])
        if optimizer is not None:
            optimizer.load_state_dict(saved["optimizer"])
        generator.set_state(saved["generator"])
        best_state = saved["best_state"]
        result.history = list(saved["history"])
        result.best_epoch, result.best_valid_llh = saved["best_epoch"], saved["best_valid_llh"]
        result.epochs, result.seconds, bad_epochs = saved["epochs"], saved["seconds"], saved["bad_epochs"]
        result.cpu_seconds, learning_rate = saved["cpu_seconds"], saved["learning_rate"]
        # a run stopped by its epoch count or time budget goes on when the command is repeated with larger ones
        result.stop_reason = saved["stop_reason"] if saved["stop_reason"] == "early stopping" else ""

    def write_checkpoint() -> None:
        if checkpoint_path is None or processes.rank != 0:
            return
        buffer = io.BytesIO()
        torch.save({
            "format": CHECKPOINT_FORMAT, "fingerprint": full_fingerprint, "model": _state_copy(model),
            "optimizer": optimizer.state_dict() if optimizer is not None else {}, "generator": generator.get_state(),
            "best_state": best_state, "history": result.history, "best_epoch": result.best_epoch,
            "best_valid_llh": result.best_valid_llh, "epochs": result.epochs, "seconds": result.seconds,
            "cpu_seconds": result.cpu_seconds, "learning_rate": learning_rate,
            "bad_epochs": bad_epochs, "stop_reason": result.stop_reason,
        }, buffer)
        atomic_write_bytes(checkpoint_path, buffer.getvalue())

    parameters = [p for p in model.parameters()]
    # the parameters that gave the latest finite objective, restored when training diverges
    last_finite = [p.detach().clone() for p in parameters]
    pending = [p.detach().clone() for p in parameters]
    bar = None
    if progress and processes.rank == 0:
        from tqdm.auto import tqdm

        bar = tqdm(total=settings.epochs, initial=min(result.epochs, settings.epochs), unit="epoch",
                   dynamic_ncols=True)
    started = time.perf_counter() - result.seconds
    cpu_started = time.process_time() - result.cpu_seconds
    num_batches = math.ceil(len(train_tensor) / settings.batch_size)
    try:
        while not result.stop_reason:
            if result.epochs >= settings.epochs:
                result.stop_reason = "epochs"
                break
            if settings.time_budget is not None and result.seconds >= settings.time_budget:
                result.stop_reason = "time budget"
                break
            epoch = result.epochs + 1
            order = torch.randperm(len(train_tensor), generator=generator)
            total, rows = 0.0, 0
            model.train()
            for batch_number in range(num_batches):
                batch = train_tensor[order[batch_number * settings.batch_size: (batch_number + 1) *
                                           settings.batch_size]]
                if optimizer is None:
                    _copy(pending, parameters)  # em_step evaluates these parameters, then updates them
                    objective = model.em_step(batch, learning_rate)
                    if math.isfinite(objective):
                        last_finite, pending = pending, last_finite
                else:
                    optimizer.zero_grad(set_to_none=True)
                    if processes.size == 1:
                        loss = -model.log_likelihood(batch).mean()
                        objective = -float(loss.detach())
                    else:
                        share = model.log_likelihood(processes.shard(batch))
                        loss = -share.sum() / len(batch)
                        objective = processes.total(float(share.detach().double().sum())) / len(batch)
                    if math.isfinite(objective):
                        _copy(last_finite, parameters)
                        loss.backward()
                        if processes.size > 1:
                            processes.sum_gradients(parameters)
                        optimizer.step()
                if not math.isfinite(objective):
                    _copy(parameters, last_finite)
                    raise DivergenceError(
                        f"training diverged in epoch {epoch} (batch {batch_number + 1} of {num_batches}): the "
                        f"log-likelihood became {objective}; the learning rate {learning_rate:g} is likely "
                        "too large for this model, try a smaller one", epoch, result.history)
                total += objective * len(batch)
                rows += len(batch)
                if bar is not None and batch_number % 10 == 0:
                    bar.set_postfix_str(f"epoch {epoch} batch llh {total / rows:.4f}", refresh=False)
                    bar.update(0)
            model.eval()
            valid_llh = processes.evaluate(model, valid_tensor, settings.eval_batch_size)
            if valid_llh is not None and not math.isfinite(valid_llh):
                _copy(parameters, last_finite)
                raise DivergenceError(f"training diverged in epoch {epoch}: the validation log-likelihood became "
                                      f"{valid_llh}; the learning rate {learning_rate:g} is likely too large",
                                      epoch, result.history)
            result.epochs = epoch
            result.seconds = processes.total(time.perf_counter() - started, "max")  # all processes stop together
            result.cpu_seconds = time.process_time() - cpu_started
            improved = valid_llh is None or result.best_valid_llh is None or valid_llh > result.best_valid_llh
            if improved:
                best_state = _state_copy(model)
                result.best_epoch, result.best_valid_llh, bad_epochs = epoch, valid_llh, 0
            else:
                bad_epochs += 1
                learning_rate *= settings.lr_decay
                if optimizer is not None:
                    for group in optimizer.param_groups:
                        group["lr"] = learning_rate
            entry = {"epoch": epoch, "train_llh": total / rows, "valid_llh": valid_llh, "seconds": result.seconds,
                     "cpu_seconds": result.cpu_seconds, "learning_rate": learning_rate}
            result.history.append(entry)
            if bad_epochs >= settings.patience:
                result.stop_reason = "early stopping"
            if bar is not None:
                best = "" if result.best_valid_llh is None else f" best valid {result.best_valid_llh:.4f}"
                bar.set_postfix_str(f"train {entry['train_llh']:.4f}{best}", refresh=False)
                bar.update(1)
            if on_epoch is not None:
                on_epoch(entry)
            write_checkpoint()
        write_checkpoint()
    finally:
        if bar is not None:
            bar.close()
    model.load_state_dict(best_state)
    return result
