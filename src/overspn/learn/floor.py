"""Keep raw weights on their floor in a hand-written torch training loop.

:func:`overspn.fit` calls ``model.project_()`` after every step itself. A loop of one's own needs one line,
``keep_floor(optimizer, model)``, after creating the optimizer: the projection then follows every ``optimizer.step()``.
The floor belongs to the model (not to its parameter tensors), so it survives ``copy.deepcopy``, ``state_dict``
round trips and :func:`overspn.save` / :func:`overspn.load`.
"""

from __future__ import annotations

from typing import Any

import torch
from torch.utils.hooks import RemovableHandle

from overspn.engine.base import SPNModule
from overspn.errors import ConfigurationError

__all__ = ["keep_floor"]


def keep_floor(optimizer: torch.optim.Optimizer, model: SPNModule) -> RemovableHandle:
    """Project ``model``'s raw weights onto their floor after every step of ``optimizer``; returns the hook's
    handle (``handle.remove()`` undoes it)."""
    if not isinstance(optimizer, torch.optim.Optimizer):
        raise ConfigurationError(f"keep_floor needs a torch.optim.Optimizer, got {type(optimizer).__name__}")
    if not isinstance(model, SPNModule):
        raise ConfigurationError(f"keep_floor needs an overspn model, got {type(model).__name__}")

    def project(_optimizer: torch.optim.Optimizer, _args: Any, _kwargs: Any) -> None:
        model.project_()

    return optimizer.register_step_post_hook(project)
