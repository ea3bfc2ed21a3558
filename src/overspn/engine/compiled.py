"""The compiled tensor program that evaluates a structure.

``compile(root)`` turns a validated symbolic structure into a :class:`CompiledSPN`, a ``torch.nn.Module`` made of
layers. Evaluation never loops over nodes or samples in Python: each layer is one batched tensor operation.

Layout of the program (``N`` rows of data, ``D`` variables, ``C`` the largest cardinality):

* Discrete inputs -- indicator, Bernoulli and categorical leaves, and sums whose children are indicators of one
  variable (the "indicator sums" of the paper's models) -- are all described by one log-table ``(J, C + 1)``: entry
  ``[j, c]`` is log f_j(x = c) and the extra column ``C`` holds the log-marginal (the value when x is missing).
  Rows are gathered per sample with one ``take`` over the integer codes of the data.
* Gaussian leaves are one vectorised log-density ``(N, G)``.
* Products whose children are all discrete inputs are evaluated as a matrix product ``onehot(codes) @ table``
  ``(N, D (C + 1)) @ (D (C + 1), P)``: the fast form of a product of univariate leaves over many variables. Since
  every row has exactly one 1 per variable block, data encoded once by the caller (``model.encode``, as training
  does) also gets a compact one-hot without one reference column per variable and without unused columns (for
  complete binary data ``D`` columns, like ``x`` itself); while the table is finite on those columns the product
  is ``bias + compact @ (W[kept] - W[reference])``.
* Every other product layer is a gather + sum over ``(N, P, A)``; every sum layer a gather + log-sum-exp over
  ``(N, S, A)`` with log-weights ``(S, A)`` (padding carries log-weight -inf).

The partition function is the same program applied to the all-missing row, which ``log_likelihood`` appends to the
batch, so one pass serves data and partition function alike.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from functools import cached_property
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from torch.optim.optimizer import register_optimizer_step_post_hook

from overspn.errors import ConfigurationError, DataError, StructureError
from overspn.symbolic.structure import Bernoulli, Categorical, Gaussian, Indicator, Leaf, Node, Product, Sum, validate

__all__ = ["compile", "CompiledSPN", "EncodedData", "WEIGHT_PARAMETRISATIONS", "clamp_to_floor"]

WEIGHT_PARAMETRISATIONS = ("raw", "log", "softmax")
DEFAULT_FLOOR = 1e-4
_LOG_SQRT_2PI = 0.5 * math.log(2 * math.pi)


# ----------------------------------------------------------------------------------------------------------------
# Parameters
# ----------------------------------------------------------------------------------------------------------------


def clamp_to_floor(module: nn.Module) -> None:
    """Project every raw weight of ``module`` back onto ``weight >= floor`` (in place, outside autograd)."""
    with torch.no_grad():
        for parameter in module.parameters():
            floor = getattr(parameter, "overspn_floor", None)
            if floor is not None:
                parameter.clamp_(min=floor)


def _clamp_after_optimizer_step(optimizer: torch.optim.Optimizer, args: Any, kwargs: Any) -> None:
    # Registered for every torch optimiser, so that raw weights stay above their floor whichever optimiser drives them.
    with torch.no_grad():
        for group in optimizer.param_groups:
            for parameter in group["params"]:
                floor = getattr(parameter, "overspn_floor", None)
                if floor is not None:
                    parameter.clamp_(min=floor)


register_optimizer_step_post_hook(_clamp_after_optimizer_step)


class SumWeights(nn.Module):
    """The weights of a group of ``S`` sum nodes with at most ``A`` children each, stored flat (one entry per edge).

    ``log_weights()`` returns the padded ``(S, A)`` matrix of log-weights; padding entries are -inf.
    """

    def __init__(self, weights: Sequence[np.ndarray], parametrisation: str, floor: float, dtype: torch.dtype):
        super().__init__()
        arity = max(len(w) for w in weights)
        flat = np.concatenate(weights)
        index = np.full((len(weights), arity), len(flat), dtype=np.int64)  # len(flat) is the padding slot
        start = 0
        for row, w in enumerate(weights):
            index[row, : len(w)] = np.arange(start, start + len(w))
            start += len(w)
        self.parametrisation = parametrisation
        self.arity = arity
        values = torch.tensor(flat, dtype=torch.float64)
        # "log" stores log w; "softmax" stores logits whose per-node log-softmax gives the normalised weights
        self.param = nn.Parameter((values if parametrisation == "raw" else torch.log(values)).to(dtype))
        if parametrisation == "raw":
            self.param.overspn_floor = floor  # type: ignore[attr-defined]
        self.register_buffer("index", torch.from_numpy(index), persistent=False)
        # all sums of the same arity: the (S, A) matrix is a view of the flat parameter, no padding gather needed
        self.has_padding = bool((index == len(flat)).any())

    def _padded(self, flat: torch.Tensor, fill: float) -> torch.Tensor:
        if not self.has_padding:
            return flat.view(self.index.shape)
        extended = torch.cat([flat, flat.new_full((1,), fill)])
        return extended[self.index]

    def log_weights(self) -> torch.Tensor:
        if self.parametrisation == "raw":
            # a weight of exactly 0 gets gradient 0 (not 0 / 0 = NaN); the floor clamp lifts it after the step
            return self._padded(_log_or_minus_inf(self.param), -math.inf)
        if self.parametrisation == "log":
            return self._padded(self.param, -math.inf)
        return torch.log_softmax(self._padded(self.param, -math.inf), dim=1)

    def weights(self) -> torch.Tensor:
        """The actual (padded, zero-filled) weights; for raw weights exactly the stored values."""
        if self.parametrisation == "raw":
            return self._padded(self.param, 0.0)
        return torch.exp(self.log_weights())


# ----------------------------------------------------------------------------------------------------------------
# Input layers
# ----------------------------------------------------------------------------------------------------------------


class DiscreteInputs(nn.Module):
    """Log-tables ``(J, C + 1)`` of every discrete input node; column ``C`` is the log-marginal (missing value).

    Rows are ordered: indicators, Bernoulli leaves, categorical leaves, indicator sums.
    """

    def __init__(self, nodes: list[Node], cardinality: int, parametrisation: str, floor: float, dtype: torch.dtype):
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
            self.indicator_sum_weights = SumWeights(
                [n.weights for n in indicator_sums], parametrisation, floor, dtype
            )
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
        return torch.cat([_log_or_minus_inf(per_state), torch.log(total)], dim=1) + shift


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
            density = -0.5 * ((values - self.mean) / torch.exp(self.log_std)) ** 2 - self.log_std - _LOG_SQRT_2PI
            return density
        filled = torch.where(missing, self.mean.detach().expand_as(values), values)
        density = -0.5 * ((filled - self.mean) / torch.exp(self.log_std)) ** 2 - self.log_std - _LOG_SQRT_2PI
        return density.masked_fill(missing, 0.0)


# ----------------------------------------------------------------------------------------------------------------
# Inner layers
# ----------------------------------------------------------------------------------------------------------------


class _Gather(nn.Module):
    """Children of a layer, as a padded ``(nodes, arity)`` index into the concatenation of its source layers."""

    def __init__(self, sources: list[int], index: np.ndarray, pad_mask: np.ndarray, source_width: int):
        super().__init__()
        self.sources = sources
        self.arity = index.shape[1]
        self.has_padding = bool(pad_mask.any())
        # A sum over all columns of its single source in order needs no gather (e.g. the root of a mixture).
        self.identity = len(sources) == 1 and index.shape[0] == 1 and np.array_equal(
            index[0], np.arange(source_width)
        )
        self.register_buffer("index", torch.from_numpy(index.reshape(-1)), persistent=False)
        self.register_buffer("pad_mask", torch.from_numpy(pad_mask), persistent=False)

    def gather(self, outputs: list[torch.Tensor]) -> torch.Tensor:
        if len(self.sources) == 1:
            source = outputs[self.sources[0]]
        else:
            source = torch.cat([outputs[s] for s in self.sources], 1)
        if self.identity:
            return source.unsqueeze(1)
        return source.index_select(1, self.index).view(source.shape[0], -1, self.arity)


class ProductLayer(nn.Module):
    """Products as gather + sum over ``(N, P, A)``; padding contributes log 1 = 0."""

    def __init__(self, children: _Gather):
        super().__init__()
        self.children_ = children

    def forward(self, outputs: list[torch.Tensor]) -> torch.Tensor:
        gathered = self.children_.gather(outputs)
        if self.children_.has_padding:
            gathered = gathered.masked_fill(self.children_.pad_mask, 0.0)
        return gathered.sum(dim=2)


class SumLayer(nn.Module):
    """Sums as gather + log-sum-exp over ``(N, S, A)`` with log-weights ``(S, A)`` (padding has weight 0)."""

    def __init__(self, children: _Gather, weights: SumWeights):
        super().__init__()
        self.children_ = children
        self.weights = weights

    def forward(self, outputs: list[torch.Tensor], mode: str = "sum", generator: Any = None) -> torch.Tensor:
        scores = self.children_.gather(outputs) + self.weights.log_weights()
        if mode == "sum":
            return logsumexp(scores, dim=2)
        if mode == "max":
            choice = scores.argmax(dim=2, keepdim=True)
            return scores.gather(2, choice).squeeze(2)
        # "sample": exact values forward, gradient routed to a child drawn from its posterior by the Gumbel-max trick
        uniform = torch.rand(scores.shape, generator=generator, dtype=scores.dtype, device=scores.device)
        gumbel = -torch.log(-torch.log(uniform.clamp_min(torch.finfo(scores.dtype).tiny)))
        choice = (scores.detach() + gumbel).argmax(dim=2, keepdim=True)
        chosen = scores.gather(2, choice).squeeze(2)
        return logsumexp(scores.detach(), dim=2) + chosen - chosen.detach()


class TabularProductLayer(nn.Module):
    """Products of discrete inputs over distinct variables as one matrix product.

    log prod_j f_j(x_{v_j}) = sum_d table[j(d), code_d] = onehot(codes) ``(N, D (C+1))`` @ W ``(D (C+1), P)``,
    where W holds each child's table row in the block of its variable and zeros (log 1) elsewhere.
    """

    def __init__(self, num_vars: int, cardinality: int, num_table_rows: int, rows: np.ndarray, vars_: np.ndarray,
                 products: np.ndarray, num_products: int, generic: ProductLayer):
        super().__init__()
        self.num_vars, self.cardinality, self.num_products = num_vars, cardinality, num_products
        width = cardinality + 1
        # W[v (C+1) + c, p] = table[row, c] for the child ``row`` of product p on variable v, else log 1 = 0: an
        # index into the flattened table followed by one slot holding 0. It is stored transposed, (P, D (C+1)), so
        # that W is a column-major view: torch's matrix-product backward is markedly faster for such a right factor.
        source = np.full((num_products, num_vars, width), num_table_rows * width, dtype=np.int64)
        source[products[:, None], vars_[:, None], np.arange(width)[None, :]] = rows[:, None] * width + np.arange(width)
        self.register_buffer("source", torch.from_numpy(source.reshape(num_products, num_vars * width)),
                             persistent=False)
        missing = np.arange(num_vars) * width + cardinality
        self.register_buffer("missing_columns", torch.from_numpy(missing), persistent=False)
        self.generic = generic

    def matrix(self, table: torch.Tensor) -> torch.Tensor:
        """W ``(D (C+1), P)``, a column-major view."""
        return self._flat_table(table)[self.source].T

    @staticmethod
    def _flat_table(table: torch.Tensor) -> torch.Tensor:
        return torch.cat([table.reshape(-1), table.new_zeros(1)])

    def forward(self, onehot: torch.Tensor, table: torch.Tensor, compact: CompactOneHot | None = None,
                partition_row: bool = False) -> torch.Tensor:
        """``(N, P)`` log-products; with ``compact`` (the data rows, without the partition row when there is one)
        the narrower matrix product is used whenever the table is finite on the columns it keeps."""
        if compact is not None:
            flat = self._flat_table(table)
            kept, reference = flat[self.source[:, compact.columns]], flat[self.source[:, compact.references]]
            # one check (and, on an accelerator, one synchronisation) for both: the entries are finite or -inf
            if bool(torch.isfinite(kept.sum() + reference.sum())):
                weights = kept - flat[self.source[:, compact.column_references]]  # (P, K)
                product = torch.addmm(reference.sum(1), compact.values, weights.T)
                if not partition_row:
                    return product
                return torch.cat([product, flat[self.source[:, self.missing_columns]].sum(1).unsqueeze(0)])
        matrix = self.matrix(table)
        impossible = torch.isinf(matrix)
        if not bool(impossible.any()):
            return onehot @ matrix
        # 0 * -inf would be NaN: multiply the finite part and mark rows that hit an impossible state separately.
        finite = torch.where(impossible, torch.zeros_like(matrix), matrix)
        hits = onehot @ impossible.to(onehot.dtype)
        return (onehot @ finite).masked_fill(hits > 0, -math.inf)


def _log_or_minus_inf(values: torch.Tensor) -> torch.Tensor:
    """log of non-negative ``values`` whose gradient is 0, not 0 / 0 = NaN, where a value is 0 (log = -inf)."""
    positive = values > 0
    return torch.where(positive, torch.log(torch.where(positive, values, torch.ones_like(values))), -math.inf)


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
        result = result.unsqueeze(ctx.dim)
        # a row that is entirely -inf has result -inf; shifting it by 0 instead gives exp(-inf) = 0, not NaN
        shift = torch.where(result > -math.inf, result, torch.zeros_like(result))
        return grad.unsqueeze(ctx.dim) * torch.exp(scores - shift), None


def logsumexp(scores: torch.Tensor, dim: int) -> torch.Tensor:
    """Log-sum-exp that stays finite-gradient when a row is entirely -inf (its value is -inf, its gradient 0)."""
    return _LogSumExp.apply(scores, dim)


# ----------------------------------------------------------------------------------------------------------------
# The compiled model
# ----------------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class CompactOneHot:
    """The one-hot data rows without unused columns and without one reference column per variable.

    Each row has exactly one 1 in every variable's block, so ``onehot @ W = sum_d W[references[d]] + values @
    (W[columns] - W[column_references])`` for any ``W`` that is finite on ``columns`` and ``references``.
    """

    values: torch.Tensor  # (rows, K): the kept columns of the one-hot
    columns: torch.Tensor  # (K,) their positions in the full one-hot
    column_references: torch.Tensor  # (K,) the reference column of each kept column's variable
    references: torch.Tensor  # (D,) the reference column of every variable: its first state present in the data


@dataclass(frozen=True)
class EncodedData:
    """Data checked and encoded once for repeated evaluation (e.g. every step of full-batch training).

    ``codes`` ``(N, D)`` integer states with missing mapped to ``C``; ``values`` ``(N, D)`` floats (for Gaussian
    leaves); ``onehot`` ``(N, D (C+1))`` when the model has a tabular product layer; ``with_partition`` tells whether
    the last row is the all-missing row of the partition function.
    """

    codes: torch.Tensor
    values: torch.Tensor
    onehot: torch.Tensor | None
    with_partition: bool

    @property
    def num_rows(self) -> int:
        return self.codes.shape[0] - int(self.with_partition)

    @cached_property
    def compact(self) -> CompactOneHot | None:
        """The compact form of the one-hot data rows (computed on first use, then kept)."""
        if self.onehot is None or self.num_rows == 0:
            return None
        data = self.onehot[: self.num_rows]
        num_vars = self.codes.shape[1]
        width = data.shape[1] // num_vars
        variables = torch.arange(num_vars, device=data.device)
        used = (data.amax(dim=0) > 0).view(num_vars, width)
        first = used.to(torch.uint8).argmax(dim=1)
        references = variables * width + first
        kept = used.clone()
        kept[variables, first] = False
        columns = kept.view(-1).nonzero().squeeze(1)
        return CompactOneHot(data[:, columns].contiguous(), columns, references[columns // width], references)


@dataclass(frozen=True)
class _NodeRecord:
    """Where a symbolic node's parameters live in the compiled program, to rebuild the structure."""

    node: Node
    children: tuple[int, ...]
    location: tuple[str, int, int]  # (component, layer index or -1, row)


class CompiledSPN(nn.Module):
    """A structure compiled into a layered tensor program. Create it with :func:`compile`."""

    def __init__(self, root: Node, weights: str = "raw", floor: float = DEFAULT_FLOOR,
                 dtype: torch.dtype = torch.float32, num_vars: int | None = None, fast: bool = True):
        super().__init__()
        if weights not in WEIGHT_PARAMETRISATIONS:
            raise ConfigurationError(f"weights must be one of {WEIGHT_PARAMETRISATIONS}, got {weights!r}")
        if isinstance(floor, bool) or not isinstance(floor, (int, float)) or not (math.isfinite(floor) and floor >= 0):
            raise ConfigurationError(f"floor must be a finite number >= 0, got {floor!r}")
        if num_vars is not None and (isinstance(num_vars, bool) or not isinstance(num_vars, (int, np.integer))):
            raise ConfigurationError(f"num_vars must be an int, got {num_vars!r}")
        if dtype not in (torch.float32, torch.float64):
            raise ConfigurationError(f"dtype must be torch.float32 or torch.float64, got {dtype}")
        order = validate(root)
        self.parametrisation, self.floor, self.fast = weights, floor, fast
        self._build(order, num_vars, dtype)
        self._check_representable(dtype)

    def _check_representable(self, dtype: torch.dtype) -> None:
        """Parameters valid in float64 may overflow or underflow in float32; say so instead of returning NaN later."""
        problem = None
        for name, parameter in self.named_parameters():
            if not bool(torch.isfinite(parameter).all()):
                problem = f"parameter {name!r} is not finite in {dtype}"
        if self.gaussian is not None and not bool((torch.exp(self.gaussian.log_std) > 0).all()):
            problem = f"a Gaussian standard deviation underflows to 0 in {dtype}"
        if problem is not None:
            raise StructureError(f"{problem}: the structure's parameters do not fit this dtype; use "
                                 "dtype=torch.float64 or rescale the weights")

    # -- construction --------------------------------------------------------------------------------------------

    def _build(self, order: list[Node], num_vars: int | None, dtype: torch.dtype) -> None:
        leaves = [n for n in order if isinstance(n, Leaf)]
        max_var = max(n.var for n in leaves)
        if num_vars is None:
            num_vars = max_var + 1
        elif num_vars <= max_var:
            raise StructureError(f"num_vars={num_vars} but the structure uses variable x{max_var}")
        self.num_vars = num_vars
        cardinality = np.zeros(num_vars, dtype=np.int64)  # 0 marks a continuous (or unused) variable
        for leaf in leaves:
            if leaf.is_discrete:
                cardinality[leaf.var] = max(cardinality[leaf.var], leaf.cardinality)  # type: ignore[attr-defined]
        self.register_buffer("var_cardinality", torch.from_numpy(cardinality), persistent=False)
        # Carries the dtype (and follows .to(dtype)) even when the model has no parameters, e.g. only indicators.
        self.register_buffer("dtype_anchor", torch.zeros(0, dtype=dtype), persistent=False)
        card = max(2, int(cardinality.max()))
        self.cardinality = card

        def is_indicator_sum(node: Node) -> bool:
            return (isinstance(node, Sum) and all(isinstance(c, Indicator) for c in node.children)
                    and len({c.var for c in node.children}) == 1)  # type: ignore[attr-defined]

        discrete = [n for n in order if (isinstance(n, Leaf) and n.is_discrete) or is_indicator_sum(n)]
        gaussians = [n for n in order if isinstance(n, Gaussian)]
        inner = [n for n in order if isinstance(n, (Sum, Product)) and not is_indicator_sum(n)]
        position: dict[Node, tuple[int, int]] = {}  # node -> (layer output index, column)
        var_of: dict[Node, int] = {}
        self.discrete = DiscreteInputs(discrete, card, self.parametrisation, self.floor, dtype) if discrete else None
        self.gaussian = GaussianInputs(gaussians, dtype) if gaussians else None
        # output 0 = gathered discrete inputs, output 1 = Gaussian inputs (empty tensors when absent)
        if self.discrete is not None:
            for row, node in enumerate(self.discrete.order):
                position[node] = (0, row)
                var_of[node] = node.var if isinstance(node, Leaf) else node.children[0].var  # type: ignore[attr-defined]
        if self.gaussian is not None:
            for col, node in enumerate(self.gaussian.order):
                position[node] = (1, col)
        self.register_buffer(
            "discrete_vars",
            torch.tensor([var_of[n] for n in self.discrete.order] if self.discrete else [], dtype=torch.long),
            persistent=False)

        height: dict[Node, int] = {n: 0 for n in discrete + gaussians}
        for node in inner:
            height[node] = 1 + max(height[c] for c in node.children)
        tabular = [n for n in inner if self.discrete is not None and isinstance(n, Product)
                   and all(position.get(c, (-1,))[0] == 0 for c in n.children)] if self.fast else []
        tabular_set = set(tabular)
        groups: dict[tuple[int, str], list[Node]] = {}
        for node in inner:
            if node not in tabular_set:
                groups.setdefault((height[node], type(node).__name__), []).append(node)

        widths = [len(self.discrete.order) if self.discrete else 0, len(gaussians)]
        self.layers = nn.ModuleList()
        self.tabular: TabularProductLayer | None = None
        if tabular:
            products = np.concatenate([[p] * len(n.children) for p, n in enumerate(tabular)]).astype(np.int64)
            rows = np.array([position[c][1] for n in tabular for c in n.children], dtype=np.int64)
            vars_ = np.array([var_of[c] for n in tabular for c in n.children], dtype=np.int64)
            generic = ProductLayer(self._children(tabular, position, widths))
            self.tabular = TabularProductLayer(num_vars, card, len(self.discrete.order), rows, vars_, products,
                                               len(tabular), generic)
            widths.append(len(tabular))
            for col, node in enumerate(tabular):
                position[node] = (2, col)
        self._first_inner_output = len(widths)
        for key in sorted(groups):
            nodes = groups[key]
            gather = self._children(nodes, position, widths)
            if key[1] == "Sum":
                layer: nn.Module = SumLayer(gather, SumWeights([n.weights for n in nodes], self.parametrisation,
                                                              self.floor, dtype))
            else:
                layer = ProductLayer(gather)
            output = len(widths)
            self.layers.append(layer)
            widths.append(len(nodes))
            for col, node in enumerate(nodes):
                position[node] = (output, col)
        self._root_position = position[order[-1]]
        # whether the fast path needs the per-sample discrete input values besides the tabular products
        self._inputs_read_directly = self.tabular is None or self._root_position[0] == 0 or any(
            0 in layer.children_.sources for layer in self.layers)
        self._records = self._make_records(order, position, tabular_set)

    @staticmethod
    def _children(nodes: list[Node], position: dict[Node, tuple[int, int]], widths: list[int]) -> _Gather:
        sources = sorted({position[c][0] for n in nodes for c in n.children})
        offsets, offset = {}, 0
        for source in sources:
            offsets[source] = offset
            offset += widths[source]
        arity = max(len(n.children) for n in nodes)
        index = np.zeros((len(nodes), arity), dtype=np.int64)
        pad = np.ones((len(nodes), arity), dtype=bool)
        for row, node in enumerate(nodes):
            for col, child in enumerate(node.children):
                layer, column = position[child]
                index[row, col] = offsets[layer] + column
                pad[row, col] = False
        return _Gather(sources, index, pad, offset)

    def _make_records(self, order: list[Node], position: dict[Node, tuple[int, int]],
                      tabular: set[Node]) -> list[_NodeRecord]:
        number = {node: i for i, node in enumerate(order)}
        discrete_rows = {n: r for r, n in enumerate(self.discrete.order)} if self.discrete else {}
        records = []
        for node in order:
            children = tuple(number[c] for c in node.children)
            if node in discrete_rows:
                location = ("discrete", -1, discrete_rows[node])
            elif isinstance(node, Gaussian):
                location = ("gaussian", -1, position[node][1])
            elif node in tabular:
                location = ("tabular", -1, position[node][1])
            else:
                layer, column = position[node]
                location = ("layer", layer - self._first_inner_output, column)
            records.append(_NodeRecord(node, children, location))
        return records

    # -- data ------------------------------------------------------------------------------------------------------

    @property
    def dtype(self) -> torch.dtype:
        return self.dtype_anchor.dtype

    @property
    def device(self) -> torch.device:
        return self.var_cardinality.device

    def check_data(self, x: Any, allow_missing: bool = True) -> torch.Tensor:
        """Convert ``x`` (numpy array or torch tensor, shape ``(N, num_vars)``) to a tensor and check its values.

        Raises DataError naming the row, column and value that is wrong.
        """
        if isinstance(x, np.ndarray):
            if x.dtype.kind not in "fiub":
                raise DataError(f"data must be numeric, got a numpy array of dtype {x.dtype}")
            tensor = torch.from_numpy(np.ascontiguousarray(x))
        elif isinstance(x, torch.Tensor):
            if x.is_complex():
                raise DataError(f"data must be real, got dtype {x.dtype}")
            tensor = x
        else:
            raise DataError(f"data must be a numpy array or torch tensor, got {type(x).__name__}")
        if tensor.dim() != 2:
            raise DataError(f"data must be 2-D (rows, variables), got shape {tuple(tensor.shape)}")
        if tensor.shape[1] != self.num_vars:
            raise DataError(
                f"data has {tensor.shape[1]} columns but the model has {self.num_vars} variables")
        tensor = tensor.to(device=self.device, dtype=self.dtype)
        if tensor.shape[0] == 0:
            return tensor
        bad = torch.isinf(tensor)
        if not allow_missing:
            bad |= torch.isnan(tensor)
        card = self.var_cardinality.to(tensor.dtype)
        discrete = card > 0
        outside = discrete & ~torch.isnan(tensor) & ((tensor < 0) | (tensor >= card) | (tensor != torch.round(tensor)))
        if bool(bad.any()) or bool(outside.any()):
            row, column = (bad | outside).nonzero()[0].tolist()
            value = tensor[row, column].item()
            if math.isnan(value):
                reason = "missing values (NaN) are not allowed here"
            elif math.isinf(value):
                reason = "values must be finite"
            else:
                reason = f"variable x{column} is discrete with states 0..{int(card[column]) - 1}"
            raise DataError(f"invalid value {value!r} in row {row}, column {column}: {reason}")
        return tensor

    def encode(self, x: Any, with_partition: bool = True, allow_missing: bool = True) -> EncodedData:
        """Check and encode ``x`` once; the result can be passed to every evaluation method instead of ``x``."""
        if isinstance(x, EncodedData):
            return x
        values = self.check_data(x, allow_missing)
        if with_partition:
            values = torch.cat([values, values.new_full((1, self.num_vars), math.nan)])
        return self._encode_checked(values, with_partition)

    def _encode_checked(self, values: torch.Tensor, with_partition: bool) -> EncodedData:
        codes = torch.nan_to_num(values, nan=float(self.cardinality)).long()
        codes[:, self.var_cardinality == 0] = self.cardinality
        onehot = None
        if self.tabular is not None:
            onehot = F.one_hot(codes, self.cardinality + 1).to(values.dtype).view(len(codes), -1)
        return EncodedData(codes, values, onehot, with_partition)

    # -- evaluation ----------------------------------------------------------------------------------------------

    def _evaluate(self, data: EncodedData, mode: str = "sum", generator: Any = None,
                  inputs_out: list[torch.Tensor] | None = None, use_compact: bool = False) -> torch.Tensor:
        """Root log-values ``(N,)``; ``mode`` is "sum" (exact), "max" (max-product) or "sample" (Gumbel selection).

        With ``inputs_out`` the input-layer outputs are appended to it, for backtracking by autograd.
        ``use_compact``: use (and on first use compute) the compact one-hot of ``data``; worth it for data that is
        evaluated repeatedly, i.e. encoded by the caller.
        """
        maximise = mode == "max"
        generic = mode != "sum" or not self.fast
        rows = data.codes.shape[0]
        outputs: list[torch.Tensor] = []
        table = self.discrete.table(maximise) if self.discrete is not None else None
        if table is not None:
            width = self.cardinality + 1
            if generic or self._inputs_read_directly:
                flat_index = torch.arange(len(table), device=table.device) * width + data.codes[:, self.discrete_vars]
                outputs.append(table.reshape(-1)[flat_index])
            else:
                outputs.append(table.new_zeros((rows, 0)))
        else:
            outputs.append(data.values.new_zeros((rows, 0)))
        if self.gaussian is not None:
            outputs.append(self.gaussian(data.values, maximise))
        else:
            outputs.append(data.values.new_zeros((rows, 0)))
        if inputs_out is not None:
            # fresh leaves of the autograd graph, so that backtracking works whether or not inputs have parameters
            outputs = [tensor.detach().requires_grad_() for tensor in outputs]
            inputs_out.extend(outputs)
        if self.tabular is not None:
            if generic:
                outputs.append(self.tabular.generic(outputs))
            else:
                onehot, compact = data.onehot, data.compact if use_compact else None
                if onehot is None:
                    onehot = F.one_hot(data.codes, self.cardinality + 1).to(table.dtype).view(rows, -1)
                outputs.append(self.tabular(onehot, table, compact, data.with_partition))
        for layer in self.layers:
            if isinstance(layer, SumLayer):
                outputs.append(layer(outputs, mode, generator))
            else:
                outputs.append(layer(outputs))
        layer_index, column = self._root_position
        return outputs[layer_index][:, column]

    def log_unnormalised(self, x: Any) -> torch.Tensor:
        """``(N,)`` log f(x); NaN entries are marginalised."""
        data = self.encode(x, with_partition=False)
        values = self._evaluate(data, use_compact=isinstance(x, EncodedData))
        return values[:-1] if data.with_partition else values

    def log_partition(self) -> torch.Tensor:
        """``()`` log f(*), the network with every variable marginalised (the all-missing row)."""
        row = torch.full((1, self.num_vars), math.nan, dtype=self.dtype, device=self.device)
        return self._evaluate(self._encode_checked(row, with_partition=False))[0]

    def log_likelihood(self, x: Any) -> torch.Tensor:
        """``(N,)`` log f(x) - log f(*): normalised log-probabilities (densities for Gaussian leaves)."""
        data = self.encode(x, with_partition=True)
        values = self._evaluate(data, use_compact=isinstance(x, EncodedData))
        if not data.with_partition:
            return values - self.log_partition()
        return values[:-1] - values[-1]

    def forward(self, x: Any) -> torch.Tensor:
        return self.log_likelihood(x)

    # -- queries by backtracking -----------------------------------------------------------------------------------

    def _selected_inputs(self, values: torch.Tensor, mode: str, generator: Any) -> tuple[torch.Tensor, torch.Tensor]:
        """Which discrete ``(N, J)`` and Gaussian ``(N, G)`` inputs lie on each row's selected induced tree."""
        data = self._encode_checked(values, with_partition=False)
        inputs: list[torch.Tensor] = []
        with torch.enable_grad():
            root = self._evaluate(data, mode, generator, inputs_out=inputs)
            grads = torch.autograd.grad(root.sum(), inputs, allow_unused=True)
        selected = [torch.zeros_like(tensor, dtype=torch.bool) if grad is None else grad > 0.5
                    for tensor, grad in zip(inputs, grads)]
        return selected[0], selected[1]

    def mpe(self, x: Any) -> torch.Tensor:
        """Fill the NaN entries of ``x`` with the most probable completion (max-product); returns a new tensor."""
        values = self.check_data(x).clone()
        if values.shape[0] == 0:
            return values
        discrete_sel, gaussian_sel = self._selected_inputs(values, "max", None)
        with torch.no_grad():
            table = self.discrete.table(maximise=True) if self.discrete is not None else None
            self._fill(values, discrete_sel, gaussian_sel,
                       None if table is None else table[:, : self.cardinality].argmax(dim=1).to(values.dtype),
                       None if self.gaussian is None else self.gaussian.mean.detach())
        return values

    def sample(self, n: int, evidence: Any = None, generator: torch.Generator | None = None) -> torch.Tensor:
        """``n`` ancestral samples, conditioned on the non-NaN entries of ``evidence`` ``(D,)`` or ``(n, D)``."""
        if isinstance(n, bool) or not isinstance(n, (int, np.integer)) or n < 0:
            raise ConfigurationError(f"the number of samples must be an int >= 0, got {n!r}")
        if evidence is None:
            values = torch.full((n, self.num_vars), math.nan, dtype=self.dtype, device=self.device)
        else:
            ev = evidence
            if isinstance(ev, (np.ndarray, torch.Tensor)) and ev.ndim == 1:
                ev = ev[None, :]
            values = self.check_data(ev).clone()
            if values.shape[0] == 1:
                values = values.expand(n, -1).clone()
            elif values.shape[0] != n:
                raise DataError(f"evidence has {values.shape[0]} rows but {n} samples were asked for")
        discrete_sel, gaussian_sel = self._selected_inputs(values, "sample", generator)
        with torch.no_grad():
            drawn_discrete = drawn_gaussian = None
            if self.discrete is not None:
                table = self.discrete.table()[:, : self.cardinality]
                rows = discrete_sel.nonzero()[:, 1]
                uniform = torch.rand((len(rows), self.cardinality), generator=generator, dtype=table.dtype,
                                     device=table.device)
                gumbel = -torch.log(-torch.log(uniform.clamp_min(torch.finfo(table.dtype).tiny)))
                drawn_discrete = (table[rows] + gumbel).argmax(dim=1).to(values.dtype)
            if self.gaussian is not None:
                rows = gaussian_sel.nonzero()[:, 1]
                noise = torch.randn(len(rows), generator=generator, dtype=values.dtype, device=values.device)
                drawn_gaussian = self.gaussian.mean[rows] + torch.exp(self.gaussian.log_std[rows]) * noise
            self._fill(values, discrete_sel, gaussian_sel, drawn_discrete, drawn_gaussian, per_selection=True)
        return values

    def _fill(self, values: torch.Tensor, discrete_sel: torch.Tensor, gaussian_sel: torch.Tensor,
              discrete_values: torch.Tensor | None, gaussian_values: torch.Tensor | None,
              per_selection: bool = False) -> None:
        """Write the chosen value of every selected input into its variable where that variable is missing."""
        for selection, node_vars, chosen in (
            (discrete_sel, self.discrete_vars, discrete_values),
            (gaussian_sel, None if self.gaussian is None else self.gaussian.var, gaussian_values),
        ):
            if chosen is None or node_vars is None or selection.numel() == 0:
                continue
            sample_index, node_index = selection.nonzero(as_tuple=True)
            var = node_vars[node_index]
            fill = chosen if per_selection else chosen[node_index]
            missing = torch.isnan(values[sample_index, var])
            values[sample_index[missing], var[missing]] = fill[missing]

    # -- back to symbols -------------------------------------------------------------------------------------------

    @torch.no_grad()
    def to_structure(self) -> Node:
        """The symbolic structure with the current parameters (a new graph; sharing is preserved)."""
        discrete_weights = None
        if self.discrete is not None and self.discrete.num_indicator_sums:
            discrete_weights = self.discrete.indicator_sum_weights.weights().double().cpu().numpy()
        layer_weights = {i: layer.weights.weights().double().cpu().numpy()
                         for i, layer in enumerate(self.layers) if isinstance(layer, SumLayer)}
        built: list[Node] = []
        for record in self._records:
            node, kind = record.node, record.location[0]
            children = [built[i] for i in record.children]
            row = record.location[2]
            if isinstance(node, Indicator):
                new: Node = Indicator(node.var, node.value, name=node.name)
            elif isinstance(node, Bernoulli):
                logit = self.discrete.bernoulli_logit[row - self.discrete.num_indicators]
                new = Bernoulli(node.var, float(torch.sigmoid(logit.double())), name=node.name)
            elif isinstance(node, Categorical):
                table = self.discrete.table()[row, : node.cardinality]
                probs = torch.softmax(table.double(), dim=0).cpu().numpy()
                new = Categorical(node.var, probs, name=node.name)
            elif isinstance(node, Gaussian):
                new = Gaussian(node.var, float(self.gaussian.mean[row]),
                               float(torch.exp(self.gaussian.log_std[row].double())), name=node.name)
            elif isinstance(node, Product):
                new = Product(children, name=node.name)
            elif kind == "discrete":
                first = len(self.discrete.order) - self.discrete.num_indicator_sums
                new = Sum(children, discrete_weights[row - first, : len(children)], name=node.name)
            else:
                new = Sum(children, layer_weights[record.location[1]][row, : len(children)], name=node.name)
            built.append(new)
        return built[-1]

    def num_parameters(self) -> int:
        return sum(p.numel() for p in self.parameters())

    def raw_weight_floors(self) -> list[tuple[nn.Parameter, float]]:
        """Every raw weight parameter with the floor it is kept above (empty for other parametrisations)."""
        if self.parametrisation != "raw":
            return []
        return [(module.param, self.floor) for module in self.modules() if isinstance(module, SumWeights)]

    @torch.no_grad()
    def project_(self) -> None:
        """Put every raw weight back onto ``weight >= floor`` (in place); call it after each optimiser step."""
        for parameter, floor in self.raw_weight_floors():
            parameter.clamp_(min=floor)


def compile(root: Node, weights: str = "raw", *, floor: float = DEFAULT_FLOOR, dtype: torch.dtype = torch.float32,
            num_vars: int | None = None, fast: bool = True) -> CompiledSPN:
    """Validate ``root`` and compile it into a :class:`CompiledSPN` (a ``torch.nn.Module``).

    ``weights``: "raw" (the weights are the parameters, kept >= ``floor`` after every optimiser step), "log"
    (w = exp(p)) or "softmax" (each sum node's weights normalised). ``dtype``: float32 or float64. ``num_vars``:
    number of data columns (default: largest variable index + 1). ``fast=False`` disables the matrix-product form of
    products over discrete leaves (the generic path; used to check that both agree).
    """
    return CompiledSPN(root, weights, floor=floor, dtype=dtype, num_vars=num_vars, fast=fast)
