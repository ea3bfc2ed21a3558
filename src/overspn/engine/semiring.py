"""Log-space arithmetic shared by every model: one place for the shifts, the all ``-inf`` cases and their gradients.

Every sum in the engine is a log-sum-exp. Its edge cases are where users get NaN: a row whose entries are all
``-inf`` (a state no component allows) has value ``-inf`` and must have gradient 0, not ``0 / 0``; a weight of exactly
0 has log ``-inf`` and gradient 0; a shift by the row maximum must ignore non-finite maxima.
"""

from __future__ import annotations

import math
from typing import Any

import torch

__all__ = ["LOG_SQRT_2PI", "logsumexp", "log_or_minus_inf", "finite_max", "gaussian_log_density"]

LOG_SQRT_2PI = 0.5 * math.log(2 * math.pi)


class _LogSumExp(torch.autograd.Function):
    """torch.logsumexp forward (fewer passes over the scores than a hand-written shift, exp, sum, log) with the
    gradient softmax(scores), 0 where a row is entirely -inf (torch's own gradient is NaN there). The backward is
    made of differentiable operations, so it can be differentiated again."""

    @staticmethod
    def forward(ctx: Any, scores: torch.Tensor, dim: int) -> torch.Tensor:
        result = torch.logsumexp(scores, dim=dim)
        ctx.save_for_backward(scores, result)
        ctx.dim = dim
        return result

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> tuple[torch.Tensor, None]:
        scores, result = ctx.saved_tensors
        # a row that is entirely -inf has result -inf; shifting it by 0 instead gives exp(-inf) = 0, not NaN
        shift = result.nan_to_num(nan=math.nan, posinf=math.inf, neginf=0.0).unsqueeze(ctx.dim)
        if torch.is_grad_enabled():  # the graph of this gradient is being recorded: no in-place operations
            return grad.unsqueeze(ctx.dim) * torch.exp(scores - shift), None
        return torch.sub(scores, shift).exp_().mul_(grad.unsqueeze(ctx.dim)), None


def logsumexp(scores: torch.Tensor, dim: int) -> torch.Tensor:
    """Log-sum-exp whose gradient stays finite when a row is entirely -inf (its value is -inf, its gradient 0)."""
    return _LogSumExp.apply(scores, dim)


def log_or_minus_inf(values: torch.Tensor) -> torch.Tensor:
    """log of ``values``, -inf where a value is <= 0, with gradient 0 there (not 1 / 0): relu's gradient is
    selected, not multiplied, so it also discards the infinite gradient of log at 0."""
    return torch.log(torch.relu(values))


def finite_max(values: torch.Tensor, dim: int = -1) -> torch.Tensor:
    """The detached maximum along ``dim`` (kept), 0 where it is not finite: a shift that never makes NaN."""
    shift = values.detach().amax(dim=dim, keepdim=True)
    return torch.where(torch.isfinite(shift), shift, torch.zeros_like(shift))


def gaussian_log_density(values: torch.Tensor, mean: torch.Tensor, log_std: torch.Tensor) -> torch.Tensor:
    """log N(values; mean, exp(log_std)^2), broadcast."""
    z = (values - mean) * torch.exp(-log_std)
    return -0.5 * z * z - log_std - LOG_SQRT_2PI
