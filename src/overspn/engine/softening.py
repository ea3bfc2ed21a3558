"""Data softening (Liu & Van den Broeck, "Tractable Regularization of Probabilistic Circuits", NeurIPS 2021).

A softened row replaces every observed value ``x_d`` by soft evidence: a clean value ``c`` that has probability
``q(c | x_d) = beta`` for ``c = x_d`` and ``(1 - beta) / (C - 1)`` for each of the other ``C - 1`` states. Its
likelihood ``sum_{x'} prod_d q(x'_d | x_d) p(x')`` is exact in a circuit over categorical leaves: each leaf
``p(x_d | z)`` becomes ``sum_c q(c | x_d) p(c | z)``, so softening is a change of the leaf table alone, and maximising
the softened likelihood by EM regularises a model that overfits its training data. ``q`` is symmetric and its
columns sum to 1, so a softened model is normalised exactly when the model is.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import torch

from overspn.errors import ConfigurationError

__all__ = ["checked_softening", "softened_log_table"]


def checked_softening(value: Any) -> float:
    """``value`` as a float in (0.5, 1]: the probability a softened row keeps on each observed value (1: none)."""
    if isinstance(value, bool) or not isinstance(value, (int, float, np.integer, np.floating)) \
            or not 0.5 < value <= 1:
        raise ConfigurationError(f"softening must be a number in (0.5, 1] (the probability kept on each observed "
                                 f"value; 1 = the data as it is), got {value!r}")
    return float(value)


def softened_log_table(table: torch.Tensor, softening: float) -> torch.Tensor:
    """The leaf log-table ``(D, C, K)`` (log p(x_d = c | z_d = k)) of the softened evidence x_d = c:
    ``log sum_{c'} q(c' | c) p(c' | k)``, in log-space. Softening 1 returns ``table`` itself, bit for bit."""
    if softening == 1:
        return table
    states = table.shape[1]
    other = math.log((1 - softening) / (states - 1))
    log_q = torch.full((states, states), other, dtype=table.dtype, device=table.device)
    log_q.fill_diagonal_(math.log(softening))
    # (D, 1, C', K) + (1, C, C', 1), summed over the clean state c'
    return torch.logsumexp(table.unsqueeze(1) + log_q[None, :, :, None], dim=2)
