"""Recipes: a structure spec, the model it builds from the training data, and the schedule that trains it.

* :func:`parse_structure` reads ``"hclt,latent=32,pseudocount=0.1,softening=0.999,bags=32"`` or
  ``"rat,depth=1,repetitions=20,sums=10,inputs=20"`` (the RAT spec may leave out ``rat,``); :attr:`Structure.spec`
  writes the full spec back.
* :func:`default_structure`: a hidden Chow-Liu tree for discrete data, a RAT-SPN with Gaussian leaves otherwise.
* :func:`build_model`: the model, initialised from the training data; with ``bags=B`` > 1 a :class:`ModelMixture` of
  ``B`` HCLTs, each learned from its own bootstrap sample of the training rows (bagging).
* :func:`train_model`: an HCLT trained by EM follows :class:`EMSchedule` -- mini-batch EM with a step size that decays
  from phase to phase, then full-batch EM (step size 1), pseudocounts throughout and optionally on softened training
  rows (:mod:`overspn.engine.softening`), every phase one call of :func:`overspn.fit` with early stopping on the
  validation data (never softened); the HCLTs of a bagged mixture one after another, each on its bootstrap sample
  with its share of the time budget; anything else is one call of :func:`overspn.fit`.
"""

from __future__ import annotations

import contextlib
import functools
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch

from overspn.engine.base import SPNModule
from overspn.engine.hclt import HCLT
from overspn.engine.mixture import MAX_COMPONENTS, ModelMixture
from overspn.engine.rat import RatConfig, RatSPN
from overspn.engine.softening import checked_softening
from overspn.errors import ConfigurationError
from overspn.learn.fit import fit
from overspn.learn.history import History

__all__ = ["Structure", "EMSchedule", "parse_structure", "parse_rat_structure", "default_structure", "build_model",
           "default_optimizer", "train_model", "STRUCTURE_KINDS"]

STRUCTURE_KINDS = ("hclt", "rat")
RAT_KEYS = {"depth": "depth", "d": "depth", "repetitions": "num_repetitions", "r": "num_repetitions",
            "sums": "num_sums", "k": "num_sums", "s": "num_sums", "inputs": "num_input", "i": "num_input"}
RAT_NAMES = {"depth": "depth", "num_repetitions": "repetitions", "num_sums": "sums", "num_input": "inputs"}
# the RAT-SPN layout of `overspn train --structure rat`: RatConfig's own defaults (read off a config with enough
# variables for any default depth), one source for the API and the command line
DEFAULT_RAT: dict[str, int] = {name: int(getattr(RatConfig(num_vars=2 ** 10), name)) for name in RAT_NAMES}
HCLT_KEYS = {"latent": "latent", "k": "latent", "pseudocount": "pseudocount", "alpha": "pseudocount",
             "init": "init", "softening": "softening", "beta": "softening", "bags": "bags"}
# latent: states per hidden variable; pseudocount: Laplace smoothing of the Chow-Liu statistics, of the leaves'
# initial clusters and of every EM step; softening: the probability EM's softened training rows keep on each observed
# value (1: EM on the data as it is); bags: HCLTs in a mixture, each learned from a bootstrap sample (1: one HCLT on
# the data). Chosen on validation data (README, "Model quality").
DEFAULT_HCLT: dict[str, Any] = {"latent": 32, "pseudocount": 0.01, "init": "data", "softening": 1.0, "bags": 1}


@dataclass(frozen=True)
class Structure:
    """A parsed structure spec: ``kind`` ("hclt" or "rat") and every option (defaults filled in)."""

    kind: str
    options: dict[str, Any] = field(default_factory=dict)

    @property
    def spec(self) -> str:
        """The full spec, e.g. ``"hclt,latent=32,pseudocount=0.1,init=data"``; parses back to the same structure."""
        names = RAT_NAMES if self.kind == "rat" else {key: key for key in self.options}
        return ",".join([self.kind, *(f"{names[key]}={value:g}" if isinstance(value, float) else
                                      f"{names[key]}={value}" for key, value in self.options.items())])


def _items(text: str, keys: dict[str, str], kind: str) -> Iterator[tuple[str, str, str]]:
    for item in text.split(","):
        if not item.strip():
            continue
        key, separator, value = item.partition("=")
        key = key.strip().lower()
        if not separator or key not in keys:
            names = ", ".join(sorted(set(keys.values()) if kind == "hclt" else RAT_NAMES.values()))
            raise ConfigurationError(f"--structure: unknown {kind} key {key!r} in {item.strip()!r}; expected "
                                     f"comma-separated key=value with keys {names}")
        yield key, keys[key], value.strip()


def parse_rat_structure(text: str | None) -> dict[str, int]:
    """``"depth=3,repetitions=20,sums=10,inputs=10"`` (or ``d=3,r=20,k=10,i=10``) into RatConfig arguments;
    unspecified keys take :data:`DEFAULT_RAT`."""
    structure = dict(DEFAULT_RAT)
    for key, name, value in _items(text or "", RAT_KEYS, "rat"):
        try:
            structure[name] = int(value)
        except ValueError:
            raise ConfigurationError(f"--structure: {key} must be an integer, got {value!r}") from None
    return structure


def parse_structure(text: str | None, leaf: str = "bernoulli") -> Structure:
    """A structure spec: ``hclt[,latent=K,pseudocount=A,init=data|random,softening=B,bags=M]`` or
    ``rat[,depth=..,repetitions=..,sums=..,inputs=..]`` (the RAT keys alone are read as a RAT spec); empty:
    :func:`default_structure` of ``leaf``."""
    if not text or not text.strip():
        return default_structure(leaf)
    head, _, rest = text.strip().partition(",")
    kind = head.strip().lower()
    if kind == "rat":
        return Structure("rat", parse_rat_structure(rest))
    if kind != "hclt":
        if "=" in head:  # the RAT spec without its prefix
            return Structure("rat", parse_rat_structure(text))
        raise ConfigurationError(f"--structure: unknown structure {head.strip()!r}; expected one of "
                                 f"{', '.join(STRUCTURE_KINDS)}, e.g. hclt,latent=32")
    options = dict(DEFAULT_HCLT)
    for key, name, value in _items(rest, HCLT_KEYS, "hclt"):
        try:
            options[name] = value if name == "init" else int(value) if name in ("latent", "bags") else float(value)
        except ValueError:
            kind_of = "an integer" if name in ("latent", "bags") else "a number"
            raise ConfigurationError(f"--structure: {key} must be {kind_of}, got {value!r}") from None
    if options["latent"] < 1:
        raise ConfigurationError(f"--structure: latent must be >= 1, got {options['latent']}")
    if not 1 <= options["bags"] <= MAX_COMPONENTS:
        raise ConfigurationError(f"--structure: bags must be 1 to {MAX_COMPONENTS}, got {options['bags']}")
    if not options["pseudocount"] >= 0 or not np.isfinite(options["pseudocount"]):
        raise ConfigurationError(f"--structure: pseudocount must be a finite number >= 0, got {options['pseudocount']}")
    if options["init"] not in ("data", "random"):
        raise ConfigurationError(f"--structure: init must be data or random, got {options['init']!r}")
    try:
        checked_softening(options["softening"])
    except ConfigurationError as error:
        raise ConfigurationError(f"--structure: {error}") from None
    return Structure("hclt", options)


def default_structure(leaf: str) -> Structure:
    """The best structure measured per data type: HCLT for discrete leaves, the default RAT-SPN for Gaussians."""
    if leaf in ("bernoulli", "categorical"):
        return Structure("hclt", dict(DEFAULT_HCLT))
    return Structure("rat", dict(DEFAULT_RAT))


def bootstrap_rows(count: int, bags: int, seed: int) -> list[np.ndarray]:
    """``bags`` samples of ``count`` row numbers drawn with replacement, each from its own stream of ``seed``."""
    return [np.random.default_rng([seed, number]).integers(0, count, count) for number in range(bags)]


def default_optimizer(structure: Structure) -> str:
    """EM for hidden Chow-Liu trees (the schedule of :class:`EMSchedule`), Adam for RAT-SPNs."""
    return "em" if structure.kind == "hclt" else "adam"


def build_model(structure: Structure, train: np.ndarray, *, leaf: str = "bernoulli", cardinality: int = 2,
                seed: int = 0, weights: str = "softmax", dtype: torch.dtype = torch.float32
                ) -> HCLT | RatSPN | ModelMixture:
    """The model of ``structure`` over the columns of ``train``, initialised from it. A bagged HCLT (``bags`` > 1)
    is a :class:`ModelMixture` whose ``bootstrap_rows`` say which rows of ``train`` each component learns from
    (:func:`train_model` trains it on them)."""
    if structure.kind == "hclt":
        if leaf == "gaussian":
            raise ConfigurationError("hclt needs discrete data (bernoulli or categorical leaves); use a rat "
                                     "structure for continuous data")
        options = structure.options

        def hclt(rows: Any, component_seed: int) -> HCLT:
            return HCLT.from_data(rows, latent=options["latent"], pseudocount=options["pseudocount"],
                                  weights=weights, dtype=dtype, seed=component_seed, init=options["init"],
                                  cardinality=cardinality if leaf == "categorical" else 2)

        if options.get("bags", 1) == 1:
            return hclt(train, seed)
        samples = bootstrap_rows(len(train), options["bags"], seed)
        mixture = ModelMixture([hclt(train[rows], seed + number) for number, rows in enumerate(samples)])
        mixture.bootstrap_rows = samples
        return mixture
    config = RatConfig(num_vars=train.shape[1], leaf=leaf, cardinality=cardinality, seed=seed, **structure.options)
    model = RatSPN(config, weights, dtype=dtype)
    model.initialise_from_data(train, seed=seed)
    return model


@dataclass(frozen=True)
class EMSchedule:
    """Mini-batch EM with the step sizes ``steps`` (one phase each, up to ``epochs`` epochs all together), then up
    to ``full_epochs`` epochs of full-batch EM (step size 1). ``pseudocount`` is added to every expected count;
    ``softening`` < 1: every EM step maximises the likelihood of the softened training rows (see
    :mod:`overspn.engine.softening`), while validation, early stopping and the recorded log-likelihoods use the rows
    as they are.
    The mini-batch phases have ``minibatch_share`` of the time budget (0: none at all) and full-batch EM the rest.

    The default is full-batch EM alone: from the clustered initialisation of :meth:`HCLT.initialise_from_data`,
    mini-batch EM (steps 0.5 to 0.01, batches of 512, 10-75% of the time) ended with worse validation
    log-likelihoods within minutes (plants, K = 32: -15.2 against -13.7 in 2 minutes).
    """

    batch_size: int = 512
    steps: tuple[float, ...] = (0.1, 0.03, 0.01)
    epochs: int = 60
    full_epochs: int = 20
    pseudocount: float = 0.01
    patience: int | None = 10
    minibatch_share: float = 0.0
    time_budget: float | None = 600.0
    softening: float = 1.0


@contextlib.contextmanager
def _em_options(model: HCLT, pseudocount: float, softening: float) -> Iterator[None]:
    """``fit`` calls ``model.em_step(rows, step)``; within this block that step adds ``pseudocount`` to the counts
    and, with ``softening`` < 1, learns from the softened rows."""
    model.em_step = functools.partial(type(model).em_step, model, pseudo_count=pseudocount,  # type: ignore[method-assign]
                                      softening=softening)
    try:
        yield
    finally:
        del model.em_step


def _phase_checkpoint(checkpoint: str | Path | None, phase: int) -> Path | None:
    if checkpoint is None:
        return None
    path = Path(checkpoint)
    return path if phase == 0 else path.with_name(f"{path.stem}.phase{phase}{path.suffix}")


def _merge(histories: list[History]) -> History:
    """One history of consecutive phases: epochs and times run on; a later phase's entry 0 (the model the previous
    phase ended with) is left out."""
    merged = History()
    epoch_offset, seconds, cpu = 0, 0.0, 0.0
    for index, history in enumerate(histories):
        for entry in history.entries[1 if index else 0:]:
            merged.append({**entry, "epoch": entry["epoch"] + epoch_offset, "seconds": entry["seconds"] + seconds,
                           "cpu_seconds": entry["cpu_seconds"] + cpu})
        epoch_offset, seconds, cpu = merged.epochs, merged.seconds, merged.cpu_seconds
        merged.stop_reason = history.stop_reason
    valid = merged.valid_llh
    if valid is None:
        merged.best_epoch = merged.epochs
    else:
        best = int(np.argmax(valid))
        merged.best_epoch, merged.best_valid_llh = int(merged.entries[best]["epoch"]), float(valid[best])
    return merged


def train_model(model: SPNModule, train: Any, valid: Any = None, *, structure: Structure | None = None,
                optimizer: Any = None, schedule: EMSchedule | None = None, lr: float | None = None,
                batch_size: int | None = None, epochs: int | None = None, patience: int | None = None,
                lr_decay: float = 1.0, time_budget: float | None = None, checkpoint: str | Path | None = None,
                callbacks: Iterable[Any] = (), **fit_options: Any) -> History:
    """Train ``model`` through :func:`overspn.fit`; returns the (merged) :class:`History`.

    A bagged mixture of :func:`build_model` trains its components one after another, each as below on its
    bootstrap sample. An HCLT with ``optimizer`` "em" (its default) follows ``schedule`` (default
    :class:`EMSchedule`); ``lr``, ``batch_size``, ``epochs`` (of each kind), ``patience`` and ``time_budget``
    replace the schedule's ones (a ``lr`` turns on the mini-batch phases with half the time if the schedule had
    none). Any other model or optimizer: one :func:`overspn.fit` call with these settings.
    ``checkpoint``: phase p > 0 of the schedule writes ``<stem>.phase<p><suffix>`` next to it, so an
    interrupted run resumes in the phase it was in. ``fit_options``: passed on (``test``, ``seed``, ``progress``,
    ``fingerprint``, ...).
    """
    if isinstance(model, ModelMixture) and model.bootstrap_rows is not None:
        return _train_bagged(model, train, valid, structure=structure, optimizer=optimizer, schedule=schedule, lr=lr,
                             batch_size=batch_size, epochs=epochs, patience=patience, lr_decay=lr_decay,
                             time_budget=time_budget, checkpoint=checkpoint, callbacks=callbacks, **fit_options)
    kind = structure.kind if structure is not None else "hclt" if isinstance(model, HCLT) else "rat"
    optimizer = optimizer if optimizer is not None else default_optimizer(Structure(kind))
    callbacks = list(callbacks)
    if not (kind == "hclt" and optimizer == "em"):
        if structure is not None and structure.options.get("softening", 1) != 1:
            raise ConfigurationError(f"softening is an option of EM training; the optimizer {optimizer!r} would "
                                     "ignore it (leave it out, or train with em)")
        return fit(model, train, valid, optimizer=optimizer, lr=lr, batch_size=batch_size,
                   epochs=200 if epochs is None else epochs, patience=patience, lr_decay=lr_decay,
                   time_budget=time_budget, checkpoint=checkpoint, callbacks=callbacks, **fit_options)
    if not isinstance(model, HCLT):
        raise ConfigurationError(f"the EM schedule of an hclt structure trains an HCLT, got {type(model).__name__}")
    options = DEFAULT_HCLT if structure is None else structure.options
    schedule = schedule or EMSchedule(pseudocount=options["pseudocount"], softening=options["softening"])
    steps = None if lr is None else (lr, *(step for step in schedule.steps if step < lr))
    changes: dict[str, Any] = {
        "batch_size": batch_size, "epochs": epochs, "full_epochs": epochs, "patience": patience,
        "time_budget": time_budget, "steps": steps,
        "minibatch_share": None if lr is None or schedule.minibatch_share > 0 else 0.5}
    schedule = replace(schedule, **{key: value for key, value in changes.items() if value is not None})
    if valid is None:  # nothing to stop on: every phase runs its epochs
        schedule = replace(schedule, patience=None)
    budget = schedule.time_budget
    steps = schedule.steps if schedule.minibatch_share > 0 else ()
    phases = [(step, schedule.batch_size, schedule.epochs // len(steps) + (i < schedule.epochs % len(steps)))
              for i, step in enumerate(steps)] + [(1.0, None, schedule.full_epochs)]
    histories: list[History] = []
    used = 0.0
    with _em_options(model, schedule.pseudocount, schedule.softening):
        for index, (step, size, count) in enumerate(phases):
            left = len(steps) - index
            if budget is None:
                share = None
            elif left > 0:
                share = (budget * schedule.minibatch_share - used) / left
            else:
                share = budget - used
            if count == 0 or (share is not None and share <= 0):
                continue
            history = fit(model, train, valid, optimizer="em", lr=step, batch_size=size, epochs=count,
                          patience=schedule.patience, lr_decay=lr_decay, time_budget=share,
                          checkpoint=_phase_checkpoint(checkpoint, index), callbacks=callbacks, **fit_options)
            histories.append(history)
            used += history.seconds
    return _merge(histories)


def _train_bagged(model: ModelMixture, train: Any, valid: Any, *, time_budget: float | None,
                  checkpoint: str | Path | None, **settings: Any) -> History:
    """The components of a bagged model one after another, each on its bootstrap sample with an equal share of the
    time that is left; component ``k`` keeps its checkpoint in ``<stem>.bag<k><suffix>``. Returns their histories
    run on."""
    samples = model.bootstrap_rows
    assert samples is not None, "called for a bagged mixture"
    budget = EMSchedule.time_budget if time_budget is None else time_budget
    histories: list[History] = []
    used = 0.0
    for number, component in enumerate(model.parts):
        rows = train[torch.as_tensor(samples[number]) if isinstance(train, torch.Tensor) else samples[number]]
        share = None if budget is None else max(budget - used, 0.0) / (len(model.parts) - number)
        path = None if checkpoint is None else Path(checkpoint).with_name(
            f"{Path(checkpoint).stem}.bag{number}{Path(checkpoint).suffix}")
        history = train_model(component, rows, valid, time_budget=share, checkpoint=path, **settings)
        histories.append(history)
        used += history.seconds
    return _merge(histories)
