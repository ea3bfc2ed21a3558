"""The training loop of overspn: :func:`fit` maximises the mean log-likelihood of a model.

The objective is ``mean_n log f(x_n) - log f(*)`` (the paper's, with the partition function exact). Optimisers
minimise, so torch optimizers are handed its negative; plain SGD is then exactly the paper's gradient ascent
``p <- p + lr * grad``. After every update :func:`fit` calls ``model.project_()``, which puts raw weights back onto
their floor.

* Full batch (``batch_size`` None or at least the number of rows): one update per epoch on the whole training set;
  a compiled SPN is evaluated on the distinct rows weighted by their frequency. Each entry's train log-likelihood is
  the exact one after the update, and is the objective of the next update.
* Mini-batch: the batches of epoch ``e`` are a permutation drawn from ``(seed, e)`` alone; an entry's train
  log-likelihood is the mean of the epoch's batch objectives (``evaluate_train=True``: an exact evaluation).

With validation data the best parameters are kept and restored at the end; after an epoch that does not improve on
them the learning rate is multiplied by ``lr_decay``, and after ``patience`` such epochs in a row training stops.
A checkpoint written every ``checkpoint_every`` epochs and at the end holds the whole state: calling :func:`fit`
again with the same settings resumes and ends with exactly the parameters of an uninterrupted run.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import numpy as np
import torch

from overspn.engine.base import SPNModule
from overspn.errors import ConfigurationError, DivergenceError, ModelFileError
from overspn.learn.callbacks import Step, notify
from overspn.learn.checkpoint import read_checkpoint, write_checkpoint
from overspn.learn.distributed import Processes
from overspn.learn.floor import keep_floor
from overspn.learn.history import History
from overspn.learn.progress import Progress
from overspn.learn.splits import evaluate, prepare

__all__ = ["fit", "keep_floor", "evaluate", "History", "OPTIMIZERS", "DEFAULT_LEARNING_RATES", "OptimizerSpec"]

OPTIMIZERS = ("adam", "sgd", "em")
# Adam's and SGD's step sizes; for EM the weight given to each batch's statistics in the running estimate.
DEFAULT_LEARNING_RATES = {"adam": 0.02, "sgd": 0.5, "em": 0.05}
OptimizerSpec = str | torch.optim.Optimizer | Callable[..., torch.optim.Optimizer]


def fit(model: SPNModule, train: Any, valid: Any = None, *, test: Any = None, optimizer: OptimizerSpec = "adam",
        lr: float | None = None, batch_size: int | None = None, epochs: int = 100, patience: int | None = None,
        lr_decay: float = 1.0, time_budget: float | None = None, seed: int = 0, callbacks: Iterable[Any] = (),
        progress: bool = False, checkpoint: str | Path | None = None, checkpoint_every: int = 1,
        fingerprint: dict[str, Any] | None = None, distributed: bool = False, deduplicate: bool = True,
        evaluate_train: bool = False, eval_batch_size: int = 2000) -> History:
    """Train ``model`` in place for up to ``epochs`` epochs; returns the :class:`History`.

    ``train`` / ``valid`` / ``test``: arrays ``(N, num_vars)`` (NaN = missing), tensors, or for a compiled SPN
    ``model.encode(x)``. ``optimizer``: "adam", "sgd" (plain gradient ascent), "em" (``model.em_step``), a
    ``torch.optim.Optimizer`` over the model's parameters, or a factory called ``factory(parameters, lr=lr)``.
    ``lr``: None takes :data:`DEFAULT_LEARNING_RATES` for a name and the optimizer's own rates for an instance (a
    rate given replaces them); a factory needs one.
    ``patience``: None never stops early. ``time_budget``: no epoch starts after this many seconds. ``callbacks``:
    see :mod:`overspn.learn.callbacks`. ``progress``: a bar on stderr (a line every few seconds when stderr is not a
    terminal) counting to the epoch early stopping would end at. ``checkpoint``: a file to resume from and write;
    ``fingerprint``: more settings (structure, data) it must match. ``distributed``: data-parallel over
    the current ``torch.distributed`` group (adam, sgd or torch optimizers; rank 0 writes the checkpoint).
    ``deduplicate``: full-batch means of a compiled SPN over distinct rows.

    Raises :class:`DivergenceError` (with the history) when a log-likelihood becomes NaN or infinite; the model then
    holds the last parameters that gave a finite one.
    """
    _check_settings(epochs, batch_size, patience, lr_decay, time_budget, seed, checkpoint_every, eval_batch_size)
    processes = Processes(distributed)
    torch_optimizer, name, rate = _make_optimizer(optimizer, model, lr)
    if processes.size > 1 and torch_optimizer is None:
        raise ConfigurationError("distributed training supports gradient optimizers (adam, sgd), not em")
    splits = {key: prepare(model, data, deduplicate, eval_batch_size)
              for key, data in (("train", train), ("valid", valid), ("test", test))}
    if splits["train"] is None:
        raise ConfigurationError("the training data has no rows")
    full = batch_size is None or batch_size >= splits["train"].num_rows
    if full and processes.size > 1:  # every process evaluates its share of one batch of all rows
        full, batch_size = False, splits["train"].num_rows
    settings = {"optimizer": name, "lr": rate, "lr_decay": lr_decay, "batch_size": None if full else batch_size,
                "seed": seed, "deduplicate": deduplicate}
    if processes.size > 1:  # rounding differs between process counts, so a resumed run must use the same one
        settings["processes"] = processes.size
    run = _Run(model, torch_optimizer, rate, splits, processes, list(callbacks),
               {"epochs": epochs, "patience": patience, "lr_decay": lr_decay, "time_budget": time_budget,
                "seed": seed, "full": full, "batch_size": batch_size, "evaluate_train": evaluate_train,
                "checkpoint": None if checkpoint is None else Path(checkpoint), "every": checkpoint_every,
                "fingerprint": {**settings, **(fingerprint or {})}})
    return run.execute(progress)


def _positive_int(name: str, value: Any, allow_none: bool = False) -> None:
    if value is None and allow_none:
        return
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ConfigurationError(f"{name} must be {'None or ' if allow_none else ''}an int >= 1, got {value!r}")


def _check_settings(epochs: Any, batch_size: Any, patience: Any, lr_decay: Any, time_budget: Any, seed: Any,
                    checkpoint_every: Any, eval_batch_size: Any) -> None:
    if isinstance(epochs, bool) or not isinstance(epochs, int) or epochs < 0:
        raise ConfigurationError(f"epochs must be an int >= 0, got {epochs!r}")
    _positive_int("batch_size", batch_size, allow_none=True)
    _positive_int("patience", patience, allow_none=True)
    _positive_int("checkpoint_every", checkpoint_every)
    _positive_int("eval_batch_size", eval_batch_size)
    if not (isinstance(lr_decay, (int, float)) and math.isfinite(lr_decay) and 0 < lr_decay <= 1):
        raise ConfigurationError(f"lr_decay must lie in (0, 1], got {lr_decay!r}")
    if time_budget is not None and not (isinstance(time_budget, (int, float)) and math.isfinite(time_budget)
                                        and time_budget > 0):
        raise ConfigurationError(f"time budget must be a positive number of seconds, got {time_budget!r}")
    if isinstance(seed, bool) or not isinstance(seed, int) or seed < 0:
        raise ConfigurationError(f"seed must be an int >= 0, got {seed!r}")


def _check_rate(lr: Any) -> float:
    if isinstance(lr, bool) or not (isinstance(lr, (int, float)) and math.isfinite(lr) and lr > 0):
        raise ConfigurationError(f"learning rate must be a finite number > 0, got {lr!r}")
    return float(lr)


def _make_optimizer(spec: Any, model: torch.nn.Module,
                    lr: float | None) -> tuple[torch.optim.Optimizer | None, str, float]:
    """The optimizer (None for EM), its name for the fingerprint, and the learning rate."""
    if isinstance(spec, str):
        if spec not in OPTIMIZERS:
            raise ConfigurationError(f"optimizer must be one of {OPTIMIZERS}, an optimizer or a factory, got {spec!r}")
        rate = _check_rate(DEFAULT_LEARNING_RATES[spec] if lr is None else lr)
        if spec == "em":
            if getattr(type(model), "em_step", SPNModule.em_step) is SPNModule.em_step:
                raise ConfigurationError(f"EM needs a model with expected counts (em_step), got {type(model).__name__}")
            if rate > 1:
                raise ConfigurationError(f"the EM step size must lie in (0, 1], got {rate!r}")
            return None, spec, rate
        factory = torch.optim.Adam if spec == "adam" else torch.optim.SGD
        return factory(model.parameters(), lr=rate), spec, rate
    if isinstance(spec, torch.optim.Optimizer):
        owned = {id(p) for p in model.parameters()}
        if not any(id(p) in owned for group in spec.param_groups for p in group["params"]):
            raise ConfigurationError("the optimizer given does not hold any parameter of the model")
        built, rate = spec, _check_rate(spec.param_groups[0]["lr"] if lr is None else lr)
        if lr is not None:  # a rate given replaces the optimizer's own in every group
            for group in built.param_groups:
                group["lr"] = rate
    elif callable(spec):
        if lr is None:
            raise ConfigurationError("an optimizer factory needs lr")
        rate = _check_rate(lr)
        built = spec(model.parameters(), lr=rate)
        if not isinstance(built, torch.optim.Optimizer):
            raise ConfigurationError(
                f"the optimizer factory must return a torch.optim.Optimizer, got {type(built).__name__}")
    else:
        raise ConfigurationError(f"optimizer must be one of {OPTIMIZERS}, a torch.optim.Optimizer or a factory of "
                                 f"one, got {type(spec).__name__}")
    if any(group.get("maximize") for group in built.param_groups):
        raise ConfigurationError("fit hands optimizers the negative log-likelihood to minimise; create the optimizer "
                                 "without maximize=True")
    return built, type(built).__name__, rate


def _epoch_order(seed: int, epoch: int, rows: int) -> torch.Tensor:
    """The permutation of the rows for the batches of ``epoch``: a pure function of its inputs."""
    state = np.random.SeedSequence([seed, epoch]).generate_state(2)
    generator = torch.Generator().manual_seed(int(state[0]) << 31 | int(state[1]) >> 1)
    return torch.randperm(rows, generator=generator)


class _Run:
    """The state of one training run: parameters to restore, the best ones, the history, and the loop."""

    def __init__(self, model: SPNModule, optimizer: torch.optim.Optimizer | None, rate: float,
                 splits: dict[str, Any], processes: Processes, callbacks: list[Any], settings: dict[str, Any]) -> None:
        self.model, self.optimizer, self.em_rate = model, optimizer, rate
        self.splits, self.processes, self.callbacks, self.settings = splits, processes, callbacks, settings
        self.parameters = list(model.parameters())
        self.last_finite = [p.detach().clone() for p in self.parameters]  # restored when training diverges
        self.spare = [p.detach().clone() for p in self.parameters]
        self.history = History()
        self.best_state: dict[str, torch.Tensor] | None = None
        self.bad_epochs = 0
        self.pending: torch.Tensor | None = None  # full batch: the objective at the current parameters
        self.offset = (0.0, 0.0)  # seconds and cpu seconds of the interrupted run
        self.bar: Any = None

    @property
    def rate(self) -> float:
        return self.em_rate if self.optimizer is None else float(self.optimizer.param_groups[0]["lr"])

    # -- the loop ------------------------------------------------------------------------------------------------

    def execute(self, progress: bool) -> History:
        resumed = self._resume()
        self.clock = (time.perf_counter() - self.offset[0], time.process_time() - self.offset[1])
        if progress and self.processes.rank == 0:
            self.bar = Progress(self.settings["epochs"], self.settings["patience"], initial=self.history.epochs)
        try:
            if not resumed:
                self._record_initial()
            while not self._stop():
                epoch = self.history.epochs + 1
                train_llh = self._full_epoch(epoch) if self.settings["full"] else self._batch_epoch(epoch)
                self._finish_epoch(epoch, train_llh)
                if epoch % self.settings["every"] == 0:
                    self._save()
            self._save()
        finally:
            if self.bar is not None:
                self.bar.close()
        if self.best_state is not None:
            self.model.load_state_dict(self.best_state)
        return self.history

    def _stop(self) -> bool:
        settings, history = self.settings, self.history
        if settings["patience"] is not None and self.bad_epochs >= settings["patience"]:
            history.stop_reason = "early stopping"
        elif history.epochs >= settings["epochs"]:
            history.stop_reason = "epochs"
        elif settings["time_budget"] is not None and history.seconds >= settings["time_budget"]:
            history.stop_reason = "time budget"
        else:
            history.stop_reason = ""
        return bool(history.stop_reason)

    def _record_initial(self) -> None:
        """Entry 0: the initial model (full batch: its objective is kept for the first update)."""
        train = self.splits["train"]
        if self.settings["full"] and self.optimizer is not None and self.settings["epochs"] > 0:
            self.pending = train.mean(self.model)
            value = float(self.pending.detach())
        else:
            value = train.evaluate(self.model, self.processes)
        self._record(0, value)

    def _full_epoch(self, epoch: int) -> float:
        """One update on the whole training set; the exact train log-likelihood after it."""
        train, started = self.splits["train"], time.perf_counter()
        if self.optimizer is None:
            objective = self._em_update(train.rows(torch.arange(train.num_rows)), epoch)
        else:
            pending = self.pending if self.pending is not None else train.mean(self.model)
            objective = float(pending.detach())
            self._descend(-pending, objective, epoch)
        self.pending = None
        if self.optimizer is not None and epoch < self.settings["epochs"]:
            self.pending = train.mean(self.model)  # with its graph: the next update's objective
            value = float(self.pending.detach())
        else:
            value = train.evaluate(self.model, self.processes)
        notify(self.callbacks, "on_step", self.model, Step(epoch, 0, objective, time.perf_counter() - started))
        return value

    def _batch_epoch(self, epoch: int) -> float:
        """One pass over a permutation of the training rows in mini-batches; the mean of the batch objectives."""
        train, size, processes = self.splits["train"], self.settings["batch_size"], self.processes
        order = _epoch_order(self.settings["seed"], epoch, train.num_rows)
        total = 0.0
        for batch, begin in enumerate(range(0, train.num_rows, size)):
            started, rows = time.perf_counter(), order[begin: begin + size]
            if self.optimizer is None:
                objective = self._em_update(train.rows(rows), epoch, batch)
            elif processes.size == 1:
                loss = -self.model.log_likelihood(train.rows(rows)).mean()
                objective = -float(loss.detach())
                self._descend(loss, objective, epoch, batch)
            else:
                share = self.model.log_likelihood(train.rows(processes.shard(rows)))
                objective = processes.total(float(share.detach().double().sum())) / len(rows)
                self._descend(-share.sum() / len(rows), objective, epoch, batch)
            total += objective * len(rows)
            notify(self.callbacks, "on_step", self.model, Step(epoch, batch, objective, time.perf_counter() - started))
            if self.bar is not None and batch % 10 == 0:
                self.bar.batch(epoch, total / min(begin + size, train.num_rows))
        return total / train.num_rows

    # -- one update ----------------------------------------------------------------------------------------------

    def _descend(self, loss: torch.Tensor, objective: float, epoch: int, batch: int = 0) -> None:
        if not math.isfinite(objective):
            self._diverge(epoch, f"the log-likelihood of batch {batch + 1} became {objective}")
        with torch.no_grad():
            for saved, parameter in zip(self.last_finite, self.parameters):
                saved.copy_(parameter)
        assert self.optimizer is not None, "gradient steps are taken only with an optimizer (EM has none)"
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        self.processes.sum_gradients(self.parameters)
        self.optimizer.step()
        self.model.project_()

    def _em_update(self, rows: Any, epoch: int, batch: int = 0) -> float:
        with torch.no_grad():
            for saved, parameter in zip(self.spare, self.parameters):
                saved.copy_(parameter)  # em_step evaluates these parameters, then updates them
        objective = self.model.em_step(rows, self.em_rate)
        if not math.isfinite(objective):
            self._diverge(epoch, f"the log-likelihood of batch {batch + 1} became {objective}")
        self.last_finite, self.spare = self.spare, self.last_finite
        self.model.project_()
        return objective

    def _diverge(self, epoch: int, what: str) -> None:
        with torch.no_grad():
            for parameter, saved in zip(self.parameters, self.last_finite):
                parameter.copy_(saved)
        if epoch == 0:
            cause = "the initial model gives the data zero probability"
        else:
            cause = (f"the learning rate {self.rate:g} is probably too large for this model and parametrisation "
                     "(try a smaller one)")
        raise DivergenceError(f"training diverged at epoch {epoch} ({what}); {cause}. The model holds the last "
                              "parameters with a finite log-likelihood.", epoch, self.history)

    # -- recording -----------------------------------------------------------------------------------------------

    def _finish_epoch(self, epoch: int, train_llh: float) -> None:
        if self.settings["evaluate_train"] and not self.settings["full"]:
            train_llh = self.splits["train"].evaluate(self.model, self.processes)
        self._record(epoch, train_llh)

    def _record(self, epoch: int, train_llh: float) -> None:
        """Measure the other splits, keep the best parameters, decay the rate; append and announce the entry."""
        if not math.isfinite(train_llh):
            self._diverge(epoch, f"the training log-likelihood became {train_llh}")
        values = {}
        for key in ("valid", "test"):
            split = self.splits[key]
            values[key] = None if split is None else split.evaluate(self.model, self.processes)
        if values["valid"] is not None and not math.isfinite(values["valid"]):
            self._diverge(epoch, f"the validation log-likelihood became {values['valid']}")
        rate = self.rate
        self._track_best(epoch, values["valid"])
        seconds = self.processes.total(time.perf_counter() - self.clock[0], "max")  # all processes stop together
        entry = {"epoch": epoch, "train_llh": train_llh, "valid_llh": values["valid"], "test_llh": values["test"],
                 "seconds": seconds, "cpu_seconds": time.process_time() - self.clock[1], "learning_rate": rate}
        self.history.append(entry)
        if self.bar is not None and epoch > 0:
            self.bar.epoch(epoch, train_llh, self.history.best_valid_llh,
                           self.history.best_epoch if self.history.best_valid_llh is not None else None)
        notify(self.callbacks, "on_epoch", self.model, dict(entry))

    def _track_best(self, epoch: int, valid: float | None) -> None:
        history = self.history
        if valid is None:
            history.best_epoch = epoch
            return
        if history.best_valid_llh is None or valid > history.best_valid_llh:
            self.best_state = {key: value.detach().clone() for key, value in self.model.state_dict().items()}
            history.best_epoch, history.best_valid_llh, self.bad_epochs = epoch, valid, 0
            return
        self.bad_epochs += 1
        decay = self.settings["lr_decay"]
        self.em_rate *= decay
        if self.optimizer is not None:
            for group in self.optimizer.param_groups:
                group["lr"] *= decay

    # -- checkpoints ---------------------------------------------------------------------------------------------

    def _save(self) -> None:
        path = self.settings["checkpoint"]
        if path is None or self.processes.rank != 0:
            return
        state = {"model": self.model.state_dict(),
                 "optimizer": {} if self.optimizer is None else self.optimizer.state_dict(),
                 "best_state": self.best_state, "history": self.history.to_dict(), "epochs": self.history.epochs,
                 "bad_epochs": self.bad_epochs, "em_rate": self.em_rate}
        write_checkpoint(path, self.settings["fingerprint"], state)

    def _resume(self) -> bool:
        path = self.settings["checkpoint"]
        saved = None if path is None else read_checkpoint(path, self.settings["fingerprint"])
        if saved is None:
            return False
        try:
            self.model.load_state_dict(saved["model"])
            if self.optimizer is not None:
                self.optimizer.load_state_dict(saved["optimizer"])
            self.history = History.from_dict(saved["history"])
            self.best_state, self.bad_epochs, self.em_rate = saved["best_state"], saved["bad_epochs"], saved["em_rate"]
            # None: no epoch has been validated yet; otherwise the parameters of the model's own layout
            if self.best_state is not None and (not isinstance(self.best_state, dict)
                                                or self.best_state.keys() != self.model.state_dict().keys()):
                raise ValueError("its best parameters do not match the model's")
            self.offset = (float(self.history.seconds), float(self.history.cpu_seconds))
        except (KeyError, RuntimeError, ValueError, TypeError, AttributeError) as error:
            raise ModelFileError(f"{path}: the checkpoint does not fit this model or optimizer ({error}); run again "
                                 "with --restart, or delete it, to start afresh") from error
        return True
