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

from overspn.engine.semiring import gaussian_log_density, log_or_minus_inf, logsumexp
from overspn.engine.weights import SumWeights
from overspn.symbolic.structure import Bernoulli, Categorical, Gaussian, Indicator, Node, Sum

__all__ = ["DiscreteInputs", "GaussianInputs"]


class DiscreteInputs(nn.Module):
    """Log-tables ``(J, C + 1)`` of every discrete input node; column ``C`` is the log-marginal (missing value).

    Rows are ordered: indicators, Bernoulli leaves, categorical leaves, indicator sums.
    """

    def __init__(self, nodes: list[Node], cardinality: int, parametrisation: str, dtype: torch.dtype):
        super().__init__()
        self.cardinality = cardinality
        card = cardinality
        indicators = [n for n in nodes if isinstance(n, Indicator)]
        bernoullis = [n for n in nodes if isinstance(n, Bernoulli)]
        categoricals = [n for n in nodes if isinstance(n, Categorical)]
        indicator_sums = [n for n in nodes if isinstance(n, Sum)]
        self.order: list[Node] = indicators + bernoullis + categoricals + indicator_sums
        self.num_indicators, self.num_bernoulli = len(indicators), len(bernoullis)
        self.num_categorical, self.num_indicator_sums = len(categoricals), len(indicator_sums)

        indicator_table = torch.full((len(indicators), card + 1), -math.inf, dtype=torch.float64)
        for row, node in enumerate(indicators):
            indicator_table[row, node.value] = 0.0
        indicator_table[:, card] = 0.0
        self.register_buffer("indicator_table", indicator_table.to(dtype), persistent=False)

        if bernoullis:
            p = torch.tensor([n.p for n in bernoullis], dtype=torch.float64)
            self.bernoulli_logit = nn.Parameter(torch.log(p / (1 - p)).to(dtype))
        if categoricals:
            logits = torch.full((len(categoricals), card), -math.inf, dtype=torch.float64)
            for row, node in enumerate(categoricals):
                logits[row, : node.cardinality] = torch.log(torch.from_numpy(np.array(node.probs)))
            mask = torch.isinf(logits)
            self.categorical_logits = nn.Parameter(torch.where(mask, 0.0, logits).to(dtype))
            self.register_buffer("categorical_mask", mask, persistent=False)
        if indicator_sums:
            self.indicator_sum_weights = SumWeights([n.weights for n in indicator_sums], parametrisation, dtype)
            arity = self.indicator_sum_weights.arity
            values = np.full((len(indicator_sums), arity), card + 1, dtype=np.int64)
            for row, node in enumerate(indicator_sums):
                values[row, : len(node.children)] = [child.value for child in node.children]
            self.register_buffer("indicator_sum_values", torch.from_numpy(values), persistent=False)
            # When no sum has two indicators of one state (the usual case), its per-state log-values are its
            # log-weights, gathered from the flattened (S, A) log-weights; S * A is a -inf slot for absent states.
            states = None
            if all(len({c.value for c in n.children}) == len(n.children) for n in indicator_sums):
                states = np.full((len(indicator_sums), card), len(indicator_sums) * arity, dtype=np.int64)
                for row, node in enumerate(indicator_sums):
                    for column, child in enumerate(node.children):
                        states[row, child.value] = row * arity + column
                self.indicator_sums_cover_all_states = bool((states < len(indicator_sums) * arity).all())
            self.register_buffer("indicator_sum_states", None if states is None else torch.from_numpy(states),
                                 persistent=False)

    def table(self, maximise: bool = False) -> torch.Tensor:
        """The ``(J, C + 1)`` log-table; with ``maximise`` the last column is the max over states (max-product)."""
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
            parts.append(self._indicator_sum_table(maximise))
        table = torch.cat(parts, dim=0) if len(parts) > 1 else parts[0]
        if maximise:
            table = torch.cat([table[:, :card], table[:, :card].amax(dim=1, keepdim=True)], dim=1)
        return table

    def _indicator_sum_table(self, maximise: bool) -> torch.Tensor:
        card = self.cardinality
        log_w = self.indicator_sum_weights.log_weights()  # (S, A), -inf padding
        values = self.indicator_sum_values
        if maximise:
            table = log_w.new_full((len(log_w), card + 2), -math.inf)
            table = table.scatter_reduce(1, values, log_w, reduce="amax")
            return table[:, : card + 1]
        if self.indicator_sum_states is not None:
            flat = log_w.reshape(-1)
            if not self.indicator_sums_cover_all_states:
                flat = torch.cat([flat, flat.new_full((1,), -math.inf)])
            return torch.cat([flat[self.indicator_sum_states], logsumexp(log_w, dim=1).unsqueeze(1)], dim=1)
        shift = log_w.amax(dim=1, keepdim=True).detach()
        shift = torch.where(torch.isfinite(shift), shift, torch.zeros_like(shift))
        scaled = torch.exp(log_w - shift)
        per_state = scaled.new_zeros((len(log_w), card + 2)).scatter_add(1, values, scaled)[:, :card]
        total = scaled.sum(dim=1, keepdim=True)
        return torch.cat([log_or_minus_inf(per_state), torch.log(total)], dim=1) + shift


class GaussianInputs(nn.Module):
    """Gaussian leaves evaluated together: ``(N, G)`` log-densities; missing values give log 1 = 0."""

    def __init__(self, nodes: list[Gaussian], dtype: torch.dtype):
        super().__init__()
        self.order: list[Node] = list(nodes)
        self.mean = nn.Parameter(torch.tensor([n.mean for n in nodes], dtype=dtype))
        self.log_std = nn.Parameter(torch.log(torch.tensor([n.std for n in nodes], dtype=torch.float64)).to(dtype))
        self.register_buffer("var", torch.tensor([n.var for n in nodes], dtype=torch.long), persistent=False)

    def forward(self, x: torch.Tensor, maximise: bool = False) -> torch.Tensor:
        values = x[:, self.var]
        missing = torch.isnan(values)
        if maximise:
            # max-product: a missing Gaussian takes its mode, the density at the mean
            values = torch.where(missing, self.mean.expand_as(values), values)
            return gaussian_log_density(values, self.mean, self.log_std)
        filled = torch.where(missing, self.mean.detach().expand_as(values), values)
        return gaussian_log_density(filled, self.mean, self.log_std).masked_fill(missing, 0.0)
