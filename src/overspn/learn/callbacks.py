"""Callbacks of :func:`overspn.fit`: objects with any of the methods

* ``on_step(model, step)``: after every update, with a :class:`Step`;
* ``on_epoch(model, entry)``: after every history entry is recorded (entry 0 too, for a run that starts afresh),
  with the entry's dict (see :data:`overspn.learn.history.ENTRY_KEYS`).

They run outside ``torch.no_grad`` and must not change the model's parameters.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

__all__ = ["Step", "StepTimes", "notify"]


@dataclass(frozen=True)
class Step:
    """One update: its epoch (from 1), batch (from 0), the objective it ascended (the mean log-likelihood of the
    batch before the update) and the seconds the update took (full batch: the backward pass, the optimizer step and
    the forward pass that evaluates the new parameters)."""

    epoch: int
    batch: int
    objective: float
    seconds: float


class StepTimes:
    """Records every step's seconds and objective (``seconds``, ``objectives``)."""

    def __init__(self) -> None:
        self.seconds: list[float] = []
        self.objectives: list[float] = []

    def on_step(self, model: Any, step: Step) -> None:
        self.seconds.append(step.seconds)
        self.objectives.append(step.objective)


def notify(callbacks: Iterable[Any], method: str, *arguments: Any) -> None:
    """Call ``method`` on every callback that has it."""
    for callback in callbacks:
        function = getattr(callback, method, None)
        if function is not None:
            function(*arguments)
