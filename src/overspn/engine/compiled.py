"""The compiled tensor program that evaluates any structure.

``compile_structure(root)`` turns a validated symbolic structure into a :class:`CompiledSPN`. Evaluation never loops
over nodes or samples in Python: each layer is one batched tensor operation.

Layout of the program (``N`` rows of data, ``D`` variables, ``C`` the largest cardinality):

* Discrete inputs -- indicator, Bernoulli and categorical leaves, and sums whose children are indicators of one
  variable (the "indicator sums" of the paper's models) -- are all described by one log-table ``(J, C + 1)``: entry
  ``[j, c]`` is log f_j(x = c) and the extra column ``C`` holds the log-marginal (the value when x is missing).
  Rows are gathered per sample with one ``take`` over the integer codes of the data
  (:mod:`overspn.engine.inputs`).
* Gaussian leaves are one vectorised log-density ``(N, G)``.
* Products whose children are all discrete inputs are evaluated as a matrix product ``onehot(codes) @ table``
  ``(N, D (C + 1)) @ (D (C + 1), P)``: the fast form of a product of univariate leaves over many variables. Data
  encoded once by the caller (``model.encode``, as training does) also gets a compact one-hot without one reference
  column per variable and without unused columns.
* Every other product layer is a gather + sum over ``(N, P, A)``; every sum layer a gather + log-sum-exp over
  ``(N, S, A)`` with log-weights ``(S, A)`` (padding carries log-weight -inf) (:mod:`overspn.engine.layers`).

The partition function is the same program applied to the all-missing row, which ``log_likelihood`` appends to the
batch, so one pass serves data and partition function alike.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from overspn.engine import queries
from overspn.engine.base import SPNModule
from overspn.engine.encoding import EncodedData
from overspn.engine.inputs import DiscreteInputs, GaussianInputs
from overspn.engine.layers import Gather, ProductLayer, SumLayer, TabularProductLayer
from overspn.engine.weights import DEFAULT_FLOOR, SumWeights
from overspn.errors import ConfigurationError, StructureError
from overspn.symbolic.structure import Bernoulli, Categorical, Gaussian, Indicator, Leaf, Node, Product, Sum, validate

__all__ = ["compile_structure", "compile", "CompiledSPN"]


@dataclass(frozen=True)
class _NodeRecord:
    """Where a symbolic node's parameters live in the compiled program, to rebuild the structure."""

    node: Node
    children: tuple[int, ...]
    location: tuple[str, int, int]  # (component, layer index or -1, row)


class CompiledSPN(SPNModule):
    """A structure compiled into a layered tensor program. Create it with :func:`compile_structure`.

    Without autograd (``torch.no_grad()``, ``torch.inference_mode()``; exact sums) every layer writes its output into
    its own block of rows of one preallocated node-major ``(total nodes, N)`` tensor and gathers its children from
    that tensor with one precomputed row index (contiguous row copies), so a layer costs its own gather and
    reduction, whatever the number of layers it reads from. ``flat_outputs = False`` restores the list of per-layer
    ``(N, width)`` outputs, whose sources each layer concatenates; autograd always uses that path. The two agree to
    rounding, not bit for bit: a node's children are reduced in the other memory layout, which may add them in
    another order (differences of a few ulps, e.g. <= 1e-15 absolute in float64 on log-values of order 10).
    """

    kind = "compiled"
    #: evaluate through one flat tensor of node values when autograd is off (see the class docstring)
    flat_outputs: bool = True

    def __init__(self, root: Node, weights: str = "raw", floor: float = DEFAULT_FLOOR,
                 dtype: torch.dtype = torch.float32, num_vars: int | None = None, fast: bool = True):
        if num_vars is not None and (isinstance(num_vars, bool) or not isinstance(num_vars, (int, np.integer))):
            raise ConfigurationError(f"num_vars must be an int, got {num_vars!r}")
        order = validate(root)
        leaves = [n for n in order if isinstance(n, Leaf)]
        max_var = max(n.var for n in leaves)
        if num_vars is None:
            num_vars = max_var + 1
        elif num_vars <= max_var:
            raise StructureError(f"num_vars={num_vars} but the structure uses variable x{max_var}")
        cardinality = np.zeros(num_vars, dtype=np.int64)  # 0 marks a continuous (or unused) variable
        for leaf in leaves:
            if leaf.is_discrete:
                cardinality[leaf.var] = max(cardinality[leaf.var], leaf.cardinality)  # type: ignore[attr-defined]
        super().__init__(num_vars, cardinality, weights, floor, dtype)
        self.fast = fast
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

    def _build(self, order: list[Node], num_vars: int, dtype: torch.dtype) -> None:
        card = self.cardinality

        def is_indicator_sum(node: Node) -> bool:
            return (isinstance(node, Sum) and all(isinstance(c, Indicator) for c in node.children)
                    and len({c.var for c in node.children}) == 1)  # type: ignore[attr-defined]

        discrete = [n for n in order if (isinstance(n, Leaf) and n.is_discrete) or is_indicator_sum(n)]
        gaussians = [n for n in order if isinstance(n, Gaussian)]
        inner = [n for n in order if isinstance(n, (Sum, Product)) and not is_indicator_sum(n)]
        position: dict[Node, tuple[int, int]] = {}  # node -> (layer output index, column)
        var_of: dict[Node, int] = {}
        self.discrete = DiscreteInputs(discrete, card, self.parametrisation, dtype) if discrete else None
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
                layer: nn.Module = SumLayer(gather, SumWeights([n.weights for n in nodes], self.parametrisation, dtype))
            else:
                layer = ProductLayer(gather)
            output = len(widths)
            self.layers.append(layer)
            widths.append(len(nodes))
            for col, node in enumerate(nodes):
                position[node] = (output, col)
        self._root_position = position[order[-1]]
        # the flat layout: output k in columns offsets[k] .. offsets[k] + widths[k] of one (N, total) tensor
        offsets = np.concatenate([[0], np.cumsum(widths)]).astype(np.int64).tolist()
        self._flat_offsets, self._flat_widths, self._flat_total = offsets[:-1], list(widths), offsets[-1]
        for module in self.modules():
            if isinstance(module, Gather):
                module.set_flat_layout(self._flat_offsets, self._flat_widths)
        # whether the fast path needs the per-sample discrete input values besides the tabular products
        self._inputs_read_directly = self.tabular is None or self._root_position[0] == 0 or any(
            0 in layer.children_.sources for layer in self.layers)
        self._records = self._make_records(order, position, tabular_set)

    @staticmethod
    def _children(nodes: list[Node], position: dict[Node, tuple[int, int]], widths: list[int]) -> Gather:
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
        return Gather(sources, index, pad, offset)

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

    # -- data and evaluation ---------------------------------------------------------------------------------------

    def _encode_codes(self, codes: torch.Tensor, values: torch.Tensor, with_partition: bool) -> EncodedData:
        onehot = None
        if self.tabular is not None:
            onehot = F.one_hot(codes, self.cardinality + 1).to(values.dtype).view(len(codes), -1)
        return EncodedData(codes, values, onehot, with_partition)

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
        flat = None
        if (self.flat_outputs and mode == "sum" and inputs_out is None and not torch.is_grad_enabled()
                and len(self.layers)):
            # one node-major (total, N) tensor of node values; every output is written into its block of rows
            flat = outputs[0].new_empty((self._flat_total, rows))
            for index in range(len(outputs)):
                self._write_flat(flat, index, outputs[index])
        if self.tabular is not None:
            if generic:
                tabular = self.tabular.generic(outputs) if flat is None else self.tabular.generic(flat).T
            else:
                onehot, compact = data.onehot, data.compact if use_compact else None
                if onehot is None:
                    onehot = F.one_hot(data.codes, self.cardinality + 1).to(table.dtype).view(rows, -1)
                tabular = self.tabular(onehot, table, compact, data.with_partition)
            outputs.append(tabular)
            if flat is not None:
                self._write_flat(flat, len(outputs) - 1, tabular)
        if flat is not None:
            for index, layer in enumerate(self.layers, start=self._first_inner_output):
                self._write_flat(flat, index, layer(flat), node_major=True)
            layer_index, column = self._root_position
            return flat[self._flat_offsets[layer_index] + column].clone()
        for layer in self.layers:
            if isinstance(layer, SumLayer):
                outputs.append(layer(outputs, mode, generator))
            else:
                outputs.append(layer(outputs))
        layer_index, column = self._root_position
        return outputs[layer_index][:, column]

    def _write_flat(self, flat: torch.Tensor, index: int, output: torch.Tensor, node_major: bool = False) -> None:
        """Write an ``(N, width)`` output (``(width, N)`` when ``node_major``) into its block of ``flat``."""
        width = output.shape[0] if node_major else output.shape[1]
        if width:  # (an input the fast path does not read directly is left empty)
            start = self._flat_offsets[index]
            flat[start: start + width] = output if node_major else output.T

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

    # -- parameters, queries, files -------------------------------------------------------------------------------

    def sum_weight_parameters(self) -> list[nn.Parameter]:
        return [module.param for module in self.modules() if isinstance(module, SumWeights)]

    def mpe(self, x: Any) -> torch.Tensor:
        return queries.mpe(self, x)

    def sample(self, n: int, evidence: Any = None, generator: torch.Generator | None = None) -> torch.Tensor:
        return queries.sample(self, n, evidence, generator)

    def to_compiled(self, fast: bool = True) -> CompiledSPN:
        return self if fast == self.fast else super().to_compiled(fast)

    def file_config(self) -> dict[str, Any]:
        from overspn.serialization import structure_for_file

        return {"weights": self.parametrisation, "floor": self.floor, "num_vars": self.num_vars, "fast": self.fast,
                "structure": structure_for_file(self.to_structure())}

    @classmethod
    def from_file_config(cls, config: dict[str, Any], dtype: torch.dtype) -> CompiledSPN:
        from overspn.serialization import structure_from_dict

        return cls(structure_from_dict(config["structure"]), config["weights"], floor=config["floor"], dtype=dtype,
                   num_vars=config["num_vars"], fast=config["fast"])


def compile_structure(root: Node, weights: str = "raw", *, floor: float = DEFAULT_FLOOR,
                      dtype: torch.dtype = torch.float32, num_vars: int | None = None,
                      fast: bool = True) -> CompiledSPN:
    """Validate ``root`` and compile it into a :class:`CompiledSPN` (a ``torch.nn.Module``).

    ``weights``: "raw" (the weights are the parameters, kept >= ``floor`` by ``model.project_()``, which
    :func:`overspn.fit` calls after every step), "log" (w = exp(p)) or "softmax" (each sum node's weights
    normalised). ``dtype``: float32 or float64. ``num_vars``: number of data columns (default: largest variable
    index + 1). ``fast=False`` disables the matrix-product form of products over discrete leaves (the generic path;
    used to check that both agree).
    """
    return CompiledSPN(root, weights, floor=floor, dtype=dtype, num_vars=num_vars, fast=fast)


#: the short name; ``compile_structure`` is the documented one (it does not shadow the builtin)
compile = compile_structure  # noqa: A001
