"""Input layers: the leaves of a compiled structure, evaluated for all rows at once.

* :class:`DiscreteInputs`: indicator, Bernoulli and categorical leaves and sums over the indicators of one variable,
  all described by one log-table ``(J, C + 1)`` whose last column is the log-marginal (the value of a missing entry).
* :class:`GaussianInputs`: Gaussian leaves as one vectorised log-density ``(N, G)``.
"""

from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from overspn.engine.semiring import gaussian_log_density, log_or_minus_inf
from overspn.engine.weights import SumWeights, to_parameter

__all__ = ["DiscreteInputs", "GaussianInputs"]


class DiscreteInputs(nn.Module):
    """Log-tables ``(J, C + 1)`` of every discrete input node; column ``C`` is the log-marginal (missing value).

    Rows are ordered: indicators, Bernoulli leaves, categorical leaves, indicator sums.
    """

    indicator_table: torch.Tensor
    categorical_mask: torch.Tensor
    indicator_sum_values: torch.Tensor
    indicator_sum_states: torch.Tensor | None

    def __init__(self, cardinality: int, parametrisation: str, dtype: torch.dtype, *,
                 indicator_values: np.ndarray, bernoulli_p: np.ndarray, categorical_probs: list[np.ndarray],
                 sum_owner: np.ndarray, sum_values: np.ndarray, sum_weights: np.ndarray, num_sums: int):
        """Indicators by their values, Bernoulli leaves by p, categorical leaves by their probabilities, and
        ``num_sums`` indicator sums as one entry per child: the sum it belongs to (``sum_owner``, grouped in order),
        the indicator's value and its weight."""
        super().__init__()
        self.cardinality = cardinality
        card = cardinality
        self.num_indicators, self.num_bernoulli = len(indicator_values), len(bernoulli_p)
        self.num_categorical, self.num_indicator_sums = len(categorical_probs), num_sums

        indicator_table = torch.full((len(indicator_values), card + 1), -math.inf, dtype=torch.float64)
        indicator_table[torch.arange(len(indicator_values)), torch.from_numpy(indicator_values)] = 0.0
        indicator_table[:, card] = 0.0
        self.register_buffer("indicator_table", indicator_table.to(dtype), persistent=False)

        if len(bernoulli_p):
            p = torch.from_numpy(np.asarray(bernoulli_p, dtype=np.float64))
            self.bernoulli_logit = nn.Parameter(torch.log(p / (1 - p)).to(dtype))
        if categorical_probs:
            lengths = np.fromiter(map(len, categorical_probs), np.int64, len(categorical_probs))
            rows = np.repeat(np.arange(len(lengths)), lengths)
            columns = np.arange(len(rows)) - np.repeat(np.cumsum(lengths) - lengths, lengths)
            logits = np.full((len(lengths), card), -math.inf)
            logits[rows, columns] = np.log(np.concatenate(categorical_probs))
            logit_table = torch.from_numpy(logits)
            mask = torch.isinf(logit_table)
            self.categorical_logits = nn.Parameter(torch.where(mask, 0.0, logit_table).to(dtype))
            self.register_buffer("categorical_mask", mask, persistent=False)
        if num_sums:
            lengths = np.bincount(sum_owner, minlength=num_sums)
            column = np.arange(len(sum_owner)) - (np.cumsum(lengths) - lengths)[sum_owner]
            self.indicator_sum_weights = _sum_weights(sum_weights, lengths, column, parametrisation, dtype)
            arity = self.indicator_sum_weights.arity
            values = np.full((num_sums, arity), card + 1, dtype=np.int64)
            values[sum_owner, column] = sum_values
            self.register_buffer("indicator_sum_values", torch.from_numpy(values), persistent=False)
            # When no sum has two indicators of one state (the usual case), its per-state log-values are its
            # log-weights, gathered from the flattened (S, A) log-weights; S * A is a -inf slot for absent states.
            states = None
            pairs = np.sort(sum_owner * (card + 1) + sum_values)
            if not (pairs[1:] == pairs[:-1]).any():
                states = np.full((num_sums, card), num_sums * arity, dtype=np.int64)
                states[sum_owner, sum_values] = sum_owner * arity + column
                self.indicator_sums_cover_all_states = bool((states < num_sums * arity).all())
            self.register_buffer("indicator_sum_states", None if states is None else torch.from_numpy(states),
                                 persistent=False)

    def table(self, maximize: bool = False) -> torch.Tensor:
        """The ``(J, C + 1)`` log-table; with ``maximize`` the last column is the max over states (max-product)."""
        card = self.cardinality
        parts = [self.indicator_table]
        if self.num_bernoulli:
            logit = self.bernoulli_logit
            rows = torch.stack([F.logsigmoid(-logit), F.logsigmoid(logit)], dim=1)
            pad = rows.new_full((len(logit), card - 2), -math.inf)
            parts.append(torch.cat([rows, pad, rows.new_zeros((len(logit), 1))], dim=1))
        if self.num_categorical:
            masked = self.categorical_logits.masked_fill(self.categorical_mask, -math.inf)
            rows = torch.log_softmax(masked, dim=1)
            parts.append(torch.cat([rows, rows.new_zeros((len(rows), 1))], dim=1))
        if self.num_indicator_sums:
            parts.append(self._indicator_sum_table(maximize))
        table = torch.cat(parts, dim=0) if len(parts) > 1 else parts[0]
        if maximize:
            table = torch.cat([table[:, :card], table[:, :card].amax(dim=1, keepdim=True)], dim=1)
        return table

    def _indicator_sum_table(self, maximize: bool) -> torch.Tensor:
        card = self.cardinality
        log_w = self.indicator_sum_weights.log_weights()  # (S, A), -inf padding
        values = self.indicator_sum_values
        if maximize:
            table = log_w.new_full((len(log_w), card + 2), -math.inf)
            table = table.scatter_reduce(1, values, log_w, reduce="amax")
            return table[:, : card + 1]
        if self.indicator_sum_states is not None:
            flat = log_w.reshape(-1)
            if not self.indicator_sums_cover_all_states:
                flat = torch.cat([flat, flat.new_full((1,), -math.inf)])
            marginal = self.indicator_sum_weights.log_totals(log_w)
            return torch.cat([flat[self.indicator_sum_states], marginal.unsqueeze(1)], dim=1)
        shift = log_w.amax(dim=1, keepdim=True).detach()
        shift = torch.where(torch.isfinite(shift), shift, torch.zeros_like(shift))
        scaled = torch.exp(log_w - shift)
        per_state = scaled.new_zeros((len(log_w), card + 2)).scatter_add(1, values, scaled)[:, :card]
        total = scaled.sum(dim=1, keepdim=True)
        return torch.cat([log_or_minus_inf(per_state), torch.log(total)], dim=1) + shift


class GaussianInputs(nn.Module):
    """Gaussian leaves evaluated together: ``(N, G)`` log-densities; missing values give log 1 = 0."""

    var: torch.Tensor

    def __init__(self, mean: np.ndarray, std: np.ndarray, var: np.ndarray, dtype: torch.dtype):
        super().__init__()
        self.mean = nn.Parameter(torch.from_numpy(np.asarray(mean, dtype=np.float64)).to(dtype))
        self.log_std = nn.Parameter(torch.log(torch.from_numpy(np.asarray(std, dtype=np.float64))).to(dtype))
        self.register_buffer("var", torch.from_numpy(np.asarray(var, dtype=np.int64)), persistent=False)

    def forward(self, x: torch.Tensor, maximize: bool = False) -> torch.Tensor:
        values = x[:, self.var]
        missing = torch.isnan(values)
        if maximize:
            # max-product: a missing Gaussian takes its mode, the density at the mean
            values = torch.where(missing, self.mean.expand_as(values), values)
            return gaussian_log_density(values, self.mean, self.log_std)
        filled = torch.where(missing, self.mean.detach().expand_as(values), values)
        return gaussian_log_density(filled, self.mean, self.log_std).masked_fill(missing, 0.0)


def _sum_weights(flat: np.ndarray, lengths: np.ndarray, column: np.ndarray, parametrisation: str,
                 dtype: torch.dtype) -> SumWeights:
    """``SumWeights`` of many sums given as one flat array of weights (sum ``s`` owns ``lengths[s]`` consecutive
    entries; ``column``: each entry's position in its sum), built with numpy instead of one array per sum."""
    if len(lengths) < 1000:
        return SumWeights(np.split(flat, np.cumsum(lengths)[:-1]), parametrisation, dtype)
    weights = SumWeights.__new__(SumWeights)
    nn.Module.__init__(weights)
    arity = int(lengths.max())
    index = np.full((len(lengths), arity), len(flat), dtype=np.int64)
    index[np.repeat(np.arange(len(lengths)), lengths), column] = np.arange(len(flat))
    weights.parametrisation = parametrisation
    weights.arity = arity
    weights.param = nn.Parameter(to_parameter(flat, parametrisation, dtype))
    weights.register_buffer("index", torch.from_numpy(index), persistent=False)
    weights.has_padding = bool((lengths < arity).any())
    return weights
