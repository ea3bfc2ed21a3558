"""Inner layers of a compiled structure: every node of one height and type evaluated by one batched operation.

Layouts: ``N`` rows, a layer of ``P`` products or ``S`` sums with at most ``A`` children each, gathered from the
outputs of earlier layers into ``(N, P, A)`` / ``(N, S, A)``; padding children contribute log 1 to a product and
weight 0 to a sum.
"""

from __future__ import annotations

import math
import weakref
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from overspn.engine.semiring import logsumexp
from overspn.engine.weights import SumWeights

if TYPE_CHECKING:
    from overspn.engine.encoding import CompactOneHot, EncodedData

__all__ = ["Gather", "ProductLayer", "SumLayer", "TabularProductLayer"]


class Gather(nn.Module):
    """Children of a layer, as a padded ``(nodes, arity)`` index into the concatenation of its source layers.

    The outputs of earlier layers come either as a list (one tensor per layer; the sources are concatenated) or as
    one flat ``(N, total)`` tensor holding every layer's output in its own block of columns (the index is then into
    that tensor: :meth:`set_flat_layout` must have been called).
    """

    index: torch.Tensor
    pad_mask: torch.Tensor
    flat_index: torch.Tensor
    part_index: torch.Tensor | None
    part_order: torch.Tensor

    def __init__(self, sources: list[int], index: np.ndarray, pad_mask: np.ndarray, source_width: int,
                 widths: list[int] | None = None):
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
        # When the sources are much wider than what the layer reads (a deep layer reading a few columns of a wide
        # input layer), concatenating them would cost their whole width per layer: read each source's columns
        # instead, then put them in place with one more gather.
        self.register_buffer("part_index", None, persistent=False)
        self.register_buffer("part_order", None, persistent=False)
        if widths is not None and len(sources) > 1 and source_width > 2 * index.size:
            local = index.reshape(-1)
            columns = np.unique(local)
            starts = np.cumsum([0] + list(widths))
            self.part_bounds = np.searchsorted(columns, starts).tolist()
            source_of = np.searchsorted(starts, columns, side="right") - 1
            self.part_index = torch.from_numpy(columns - starts[source_of])
            self.part_order = torch.from_numpy(np.searchsorted(columns, local))
        self.register_buffer("flat_index", None, persistent=False)
        self.flat_start = 0

    def set_flat_layout(self, offsets: list[int], widths: list[int]) -> None:
        """Index the flat tensor in which output ``k`` occupies rows ``offsets[k] .. offsets[k] + widths[k]``."""
        local = self.index.cpu().numpy()
        starts = np.cumsum([0] + [widths[s] for s in self.sources])
        source = np.searchsorted(starts, local, side="right") - 1
        shift = np.array([offsets[s] for s in self.sources], dtype=np.int64) - starts[:-1]
        self.flat_index = torch.from_numpy((local + shift[source]).astype(np.int64)).to(self.index.device)
        self.flat_start = offsets[self.sources[0]]

    def gather(self, outputs: list[torch.Tensor] | torch.Tensor) -> torch.Tensor:
        if isinstance(outputs, torch.Tensor):  # node-major (total, N): returns (nodes, arity, N)
            if self.identity:
                return outputs[self.flat_start: self.flat_start + self.index.numel()].unsqueeze(0)
            return outputs.index_select(0, self.flat_index).view(-1, self.arity, outputs.shape[1])
        if self.part_index is not None:
            bounds = self.part_bounds
            source = torch.cat([outputs[s].index_select(1, self.part_index[bounds[k]: bounds[k + 1]])
                                for k, s in enumerate(self.sources)], 1)
            return source.index_select(1, self.part_order).view(source.shape[0], -1, self.arity)
        if len(self.sources) == 1:
            source = outputs[self.sources[0]]
        else:
            source = torch.cat([outputs[s] for s in self.sources], 1)
        if self.identity:
            return source.unsqueeze(1)
        return source.index_select(1, self.index).view(source.shape[0], -1, self.arity)


class ProductLayer(nn.Module):
    """Products as gather + sum over ``(N, P, A)``; padding contributes log 1 = 0."""

    def __init__(self, children: Gather):
        super().__init__()
        self.children_ = children

    def forward(self, outputs: list[torch.Tensor] | torch.Tensor, out: torch.Tensor | None = None) -> torch.Tensor:
        """``out``: node-major only, the ``(P, N)`` block to write the result into."""
        gathered = self.children_.gather(outputs)
        if isinstance(outputs, torch.Tensor):  # node-major: (P, A, N) -> (P, N)
            if self.children_.has_padding:
                gathered = gathered.masked_fill(self.children_.pad_mask.unsqueeze(2), 0.0)
            if self.children_.arity == 2:
                return torch.add(gathered[:, 0], gathered[:, 1], out=out)
            return torch.sum(gathered, dim=1, out=out)
        if self.children_.has_padding:
            gathered = gathered.masked_fill(self.children_.pad_mask, 0.0)
        return gathered.sum(dim=2)


class SumLayer(nn.Module):
    """Sums as gather + log-sum-exp over ``(N, S, A)`` with log-weights ``(S, A)`` (padding has weight 0)."""

    def __init__(self, children: Gather, weights: SumWeights):
        super().__init__()
        self.children_ = children
        self.weights = weights

    def forward(self, outputs: list[torch.Tensor] | torch.Tensor, mode: str = "sum",
                generator: Any = None, out: torch.Tensor | None = None) -> torch.Tensor:
        """``out``: node-major only, the ``(S, N)`` block to write the result into."""
        if isinstance(outputs, torch.Tensor):  # node-major: (S, A, N) -> (S, N), exact sums only
            scores = self.children_.gather(outputs) + self.weights.log_weights().unsqueeze(2)
            if self.children_.arity == 2:  # one kernel instead of log-sum-exp's max, subtract, exp, sum and log
                return torch.logaddexp(scores[:, 0], scores[:, 1], out=out)
            return torch.logsumexp(scores, dim=1, out=out)
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

    source: torch.Tensor
    missing_columns: torch.Tensor

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
        self._compact_indices: list[tuple[weakref.ref, torch.Tensor]] = []

    def matrix(self, table: torch.Tensor) -> torch.Tensor:
        """W ``(D (C+1), P)``, a column-major view."""
        return self._flat_table(table)[self.source].T

    def _compact_index(self, compact: CompactOneHot) -> torch.Tensor:
        """``(P, 2 K + 2 D)`` positions in the flat table of what the compact product of ``compact`` reads;
        computed once per compact encoding (the last two are kept)."""
        for reference, index in self._compact_indices:
            if reference() is compact:
                return index
        source = self.source
        index = torch.cat([source[:, compact.columns], source[:, compact.column_references],
                           source[:, compact.references], source[:, self.missing_columns]], dim=1)
        self._compact_indices = [(weakref.ref(compact), index)] + [
            entry for entry in self._compact_indices[:1] if entry[0]() is not None]
        return index

    def __getstate__(self) -> dict[str, Any]:
        # copies and pickles do not carry indices for the encodings of past inputs (nor their weak references)
        state = dict(super().__getstate__())
        state["_compact_indices"] = []
        return state

    def _apply(self, *args: Any, **kwargs: Any) -> Any:
        self._compact_indices = []  # indices on the old device
        return super()._apply(*args, **kwargs)

    def _compact_sizes(self, compact: CompactOneHot) -> list[int]:
        kept, num_vars = len(compact.columns), self.num_vars
        return [kept, kept, num_vars, num_vars]

    @staticmethod
    def _flat_table(table: torch.Tensor) -> torch.Tensor:
        return torch.cat([table.reshape(-1), table.new_zeros(1)])

    def forward(self, data: EncodedData, table: torch.Tensor, use_compact: bool = False) -> torch.Tensor:
        """``(N, P)`` log-products of the rows of ``data``; with ``use_compact`` the narrower matrix product of
        their compact one-hot form (the data rows, then the partition row when there is one) is used whenever the
        table is finite on the columns it keeps, else the full one-hot form."""
        rows, partition = self.rows_and_partition(data, table, use_compact)
        return rows if partition is None else torch.cat([rows, partition.unsqueeze(0)])

    def rows_and_partition(self, data: EncodedData, table: torch.Tensor, use_compact: bool = False,
                           bias: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor | None]:
        """:meth:`forward`'s log-products with the partition row apart, ``(P,)``, where the compact product
        computes it separately (None: every row of ``data``, the partition row included, is in the first).
        ``bias`` ``(P,)``, added to every row: the log-weights of a sum over all the products, folded into the
        product."""
        compact, partition_row = data.compact if use_compact else None, data.with_partition
        if compact is not None:
            # every table entry the compact product reads, in one gather: kept columns, their references, every
            # variable's reference and (for the partition row) every variable's marginal
            entries = self._flat_table(table)[self._compact_index(compact)]
            kept, kept_references, references, marginals = entries.split(self._compact_sizes(compact), dim=1)
            # one check (and, on an accelerator, one synchronisation): the entries are finite or -inf
            if bool(torch.isfinite(entries.sum())):
                offset, partition = references.sum(1), marginals.sum(1)
                if bias is not None:
                    offset, partition = offset + bias, partition + bias
                product = torch.addmm(offset, compact.values, (kept - kept_references).T)
                return product, partition if partition_row else None
        onehot = data.onehot
        if onehot is None:  # encoded by a model that reads no one-hot form
            onehot = F.one_hot(data.codes, self.cardinality + 1).to(table.dtype).view(len(data.codes), -1)
        matrix = self.matrix(table)
        impossible = torch.isinf(matrix)
        if not bool(impossible.any()):
            product = onehot @ matrix
        else:
            # 0 * -inf would be NaN: multiply the finite part and mark rows that hit an impossible state separately.
            finite = torch.where(impossible, torch.zeros_like(matrix), matrix)
            hits = onehot @ impossible.to(onehot.dtype)
            product = (onehot @ finite).masked_fill(hits > 0, -math.inf)
        return (product if bias is None else product + bias), None
