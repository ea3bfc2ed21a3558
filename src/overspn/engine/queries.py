"""Sampling and most-probable-explanation queries of a compiled program, by backtracking through autograd.

Both queries evaluate the program once in a selecting mode (sum layers choose one child: the best for max-product,
one drawn from its posterior by the Gumbel-max trick for sampling) and read which input nodes lie on each row's
selected induced tree from the gradient of the root with respect to the input-layer outputs: exactly the selected
inputs have gradient 1. No Python loop over nodes or rows.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from overspn.errors import ConfigurationError, DataError

if TYPE_CHECKING:
    from overspn.engine.compiled import CompiledSPN

__all__ = ["mpe", "sample"]


def _selected_inputs(model: CompiledSPN, values: torch.Tensor, mode: str,
                     generator: torch.Generator | None) -> tuple[torch.Tensor, torch.Tensor]:
    """Which discrete ``(N, J)`` and Gaussian ``(N, G)`` inputs lie on each row's selected induced tree."""
    data = model._encode_checked(values, with_partition=False)
    inputs: list[torch.Tensor] = []
    with torch.enable_grad():
        root = model._evaluate(data, mode=mode, generator=generator, inputs_out=inputs)
        grads = torch.autograd.grad(root.sum(), inputs, allow_unused=True)
    selected = [torch.zeros_like(tensor, dtype=torch.bool) if grad is None else grad > 0.5
                for tensor, grad in zip(inputs, grads)]
    return selected[0], selected[1]


def mpe(model: CompiledSPN, x: Any) -> torch.Tensor:
    """Fill the NaN entries of ``x`` with the max-product completion; returns a new tensor."""
    values = model.check_data(x).clone()
    if values.shape[0] == 0:
        return values
    discrete_sel, gaussian_sel = _selected_inputs(model, values, "max", None)
    with torch.no_grad():
        modes = None
        if model.discrete is not None:
            modes = model.discrete.table(maximize=True)[:, : model.cardinality].argmax(dim=1).to(values.dtype)
        means = None if model.gaussian is None else model.gaussian.mean.detach()
        _fill(model, values, discrete_sel, gaussian_sel, modes, means)
    return values


def sample(model: CompiledSPN, n: int, evidence: Any = None, generator: torch.Generator | None = None) -> torch.Tensor:
    """``n`` ancestral samples, conditioned on the non-NaN entries of ``evidence`` ``(D,)`` or ``(n, D)``."""
    if isinstance(n, bool) or not isinstance(n, (int, np.integer)) or n < 0:
        raise ConfigurationError(f"the number of samples must be an int >= 0, got {n!r}")
    if evidence is None:
        values = torch.full((n, model.num_vars), math.nan, dtype=model.dtype, device=model.device)
    else:
        if isinstance(evidence, (np.ndarray, torch.Tensor)) and evidence.ndim == 1:
            evidence = evidence[None, :]
        values = model.check_data(evidence).clone()
        if values.shape[0] == 1:
            values = values.expand(n, -1).clone()
        elif values.shape[0] != n:
            raise DataError(f"evidence has {values.shape[0]} rows but {n} samples were asked for")
    discrete_sel, gaussian_sel = _selected_inputs(model, values, "sample", generator)
    with torch.no_grad():
        drawn_discrete = drawn_gaussian = None
        if model.discrete is not None:
            table = model.discrete.table()[:, : model.cardinality]
            rows = discrete_sel.nonzero()[:, 1]
            uniform = torch.rand((len(rows), model.cardinality), generator=generator, dtype=table.dtype,
                                 device=table.device)
            gumbel = -torch.log(-torch.log(uniform.clamp_min(torch.finfo(table.dtype).tiny)))
            drawn_discrete = (table[rows] + gumbel).argmax(dim=1).to(values.dtype)
        if model.gaussian is not None:
            rows = gaussian_sel.nonzero()[:, 1]
            noise = torch.randn(len(rows), generator=generator, dtype=values.dtype, device=values.device)
            drawn_gaussian = model.gaussian.mean[rows] + torch.exp(model.gaussian.log_std[rows]) * noise
        _fill(model, values, discrete_sel, gaussian_sel, drawn_discrete, drawn_gaussian, per_selection=True)
    return values


def _fill(model: CompiledSPN, values: torch.Tensor, discrete_sel: torch.Tensor, gaussian_sel: torch.Tensor,
          discrete_values: torch.Tensor | None, gaussian_values: torch.Tensor | None,
          per_selection: bool = False) -> None:
    """Write the chosen value of every selected input into its variable where that variable is missing."""
    for selection, node_vars, chosen in (
        (discrete_sel, model.discrete_vars, discrete_values),
        (gaussian_sel, None if model.gaussian is None else model.gaussian.var, gaussian_values),
    ):
        if chosen is None or node_vars is None or selection.numel() == 0:
            continue
        sample_index, node_index = selection.nonzero(as_tuple=True)
        var = node_vars[node_index]
        fill = chosen if per_selection else chosen[node_index]
        missing = torch.isnan(values[sample_index, var])
        values[sample_index[missing], var[missing]] = fill[missing]
