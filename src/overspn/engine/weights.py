"""Sum-weight parametrisations, the one place that maps stored parameters to weights.

* ``"raw"``: the parameter is the weight itself, kept ``>= floor`` by the model's :meth:`project_` after every
  optimizer step (the paper's protocol); the network is unnormalised.
* ``"log"``: the parameter is ``log w``; unnormalised.
* ``"softmax"``: the parameter holds logits, normalised per sum node by a log-softmax; the network stays normalised
  under any optimizer.

In every case the partition function is computed exactly, so the choice changes the optimisation, never the model
class.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
import torch
from torch import nn

from overspn.engine.semiring import finite_max, log_or_minus_inf, logsumexp
from overspn.errors import ConfigurationError

__all__ = ["WEIGHT_PARAMETRISATIONS", "DEFAULT_FLOOR", "check_weight_options", "checked_weight_options",
           "to_parameter", "log_weights", "linear_weights", "actual_weights", "SumWeights"]

WEIGHT_PARAMETRISATIONS = ("raw", "log", "softmax")
DEFAULT_FLOOR = 1e-4


def check_weight_options(weights: object, floor: object) -> None:
    """ConfigurationError naming the option when ``weights`` or ``floor`` is not a valid choice."""
    if weights not in WEIGHT_PARAMETRISATIONS:
        raise ConfigurationError(f"weights must be one of {WEIGHT_PARAMETRISATIONS}, got {weights!r}")
    if isinstance(floor, bool) or not isinstance(floor, (int, float)) or not (math.isfinite(floor) and floor >= 0):
        raise ConfigurationError(f"floor must be a finite number >= 0, got {floor!r}")


def checked_weight_options(weights: object, floor: object) -> tuple[str, float]:
    """``weights`` and ``floor`` as read from an untyped source (a model file), once :func:`check_weight_options`
    has accepted them."""
    check_weight_options(weights, floor)
    assert isinstance(weights, str) and isinstance(floor, (int, float)), "accepted by check_weight_options"
    return weights, floor


def to_parameter(values: np.ndarray | torch.Tensor, parametrisation: str, dtype: torch.dtype) -> torch.Tensor:
    """The stored parameter for actual (non-negative) weights ``values``: themselves, or their logarithm."""
    tensor = torch.as_tensor(values, dtype=torch.float64)
    return (tensor if parametrisation == "raw" else torch.log(tensor)).to(dtype)


def log_weights(parameter: torch.Tensor, parametrisation: str, dim: int = -1) -> torch.Tensor:
    """Log-weights of the sum nodes whose children lie along ``dim``; -inf entries of a logit are weight 0."""
    if parametrisation == "raw":
        # a weight of exactly 0 gets gradient 0 (not 0 / 0 = NaN); the floor projection lifts it after the step
        return log_or_minus_inf(parameter)
    if parametrisation == "log":
        return parameter
    return torch.log_softmax(parameter, dim=dim)


def linear_weights(parameter: torch.Tensor, parametrisation: str) -> tuple[torch.Tensor, torch.Tensor]:
    """Per sum node (last axis = children): a log-shift ``(..., 1)`` and the weights divided by its exponential.

    Layers that mix in linear space (one matrix product per layer) take the weights this way, so that large
    log-weights cannot overflow: the actual weights are ``exp(shift) * scaled``.
    """
    if parametrisation == "softmax":
        return parameter.new_zeros(parameter.shape[:-1] + (1,)), torch.softmax(parameter, dim=-1)
    if parametrisation == "log":
        shift = finite_max(parameter)
        return shift, torch.exp(parameter - shift)
    return parameter.new_zeros(parameter.shape[:-1] + (1,)), parameter


@torch.no_grad()
def actual_weights(parameter: torch.Tensor, parametrisation: str) -> np.ndarray:
    """The weights as float64 numbers (normalised per node for softmax), for structures and files."""
    values = parameter.detach().double()
    if parametrisation == "softmax":
        return torch.softmax(values, dim=-1).cpu().numpy()
    if parametrisation == "log":
        return torch.exp(values).cpu().numpy()
    return values.cpu().numpy()


class SumWeights(nn.Module):
    """The weights of a group of ``S`` sum nodes with at most ``A`` children each, stored flat (one entry per edge).

    ``log_weights()`` returns the padded ``(S, A)`` matrix of log-weights; padding entries are -inf.
    """

    index: torch.Tensor

    def __init__(self, weights: Sequence[np.ndarray], parametrisation: str, dtype: torch.dtype):
        super().__init__()
        arity = max(len(w) for w in weights)
        flat = np.concatenate(weights)
        lengths = np.array([len(w) for w in weights])
        # position of every edge in the padded (S, A) matrix; len(flat) is the padding slot
        index = np.full((len(weights), arity), len(flat), dtype=np.int64)
        index[np.arange(arity)[None, :] < lengths[:, None]] = np.arange(len(flat))
        self.parametrisation = parametrisation
        self.arity = arity
        self.param = nn.Parameter(to_parameter(flat, parametrisation, dtype))
        self.register_buffer("index", torch.from_numpy(index), persistent=False)
        # all sums of the same arity: the (S, A) matrix is a view of the flat parameter, no padding gather needed
        self.has_padding = bool((lengths < arity).any())

    def _padded(self, flat: torch.Tensor, fill: float) -> torch.Tensor:
        if not self.has_padding:
            return flat.view(self.index.shape)
        extended = torch.cat([flat, flat.new_full((1,), fill)])
        return extended[self.index]

    def log_weights(self) -> torch.Tensor:
        if self.parametrisation == "softmax":
            return torch.log_softmax(self._padded(self.param, -math.inf), dim=1)
        return self._padded(log_weights(self.param, self.parametrisation), -math.inf)

    def log_totals(self, log_weights: torch.Tensor | None = None) -> torch.Tensor:
        """``(S,)`` the log of every sum's total weight (its value when all its children are 1); ``log_weights``:
        this module's :meth:`log_weights`, when the caller has them. Raw weights are added as they are (the
        parameters are the weights: two operations instead of a log-sum-exp); softmax totals are 1."""
        if self.parametrisation == "raw":
            return torch.log(torch.relu(self._padded(self.param, 0.0)).sum(1))
        if self.parametrisation == "softmax":
            return self.param.new_zeros(self.index.shape[0])
        return logsumexp(self.log_weights() if log_weights is None else log_weights, dim=1)

    def weights(self) -> torch.Tensor:
        """The actual (padded, zero-filled) weights; for raw weights exactly the stored values."""
        if self.parametrisation == "raw":
            return self._padded(self.param, 0.0)
        return torch.exp(self.log_weights())
