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
* A root sum over all the tabular products, in order (a mixture of factorised components, such as the paper's
  models), adds its log-weights to the matrix product's offset instead of to its ``(N, P)`` result.
* Every other product layer is a gather + sum over ``(N, P, A)``; every sum layer a gather + log-sum-exp over
  ``(N, S, A)`` with log-weights ``(S, A)`` (padding carries log-weight -inf) (:mod:`overspn.engine.layers`).

The partition function is the same program applied to the all-missing row, which ``log_likelihood`` appends to the
batch, so one pass serves data and partition function alike.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import torch
from torch import nn

from overspn.engine import compiled_structure, program, queries
from overspn.engine.base import SPNModule
from overspn.engine.encoding import EncodedData
from overspn.engine.layers import Gather, ProductLayer, SumLayer, TabularProductLayer
from overspn.engine.semiring import logsumexp
from overspn.engine.weights import DEFAULT_FLOOR, SumWeights
from overspn.errors import ConfigurationError, StructureError
from overspn.limits import check_compile_memory
from overspn.structure_columns import columns_from_entries, is_columns, read_columns, to_entries
from overspn.symbolic.flat import BERNOULLI, CATEGORICAL, GAUSSIAN, INDICATOR, PRODUCT, SUM, FlatStructure
from overspn.symbolic.nodes import Node
from overspn.symbolic.validation import check_flat, flatten

__all__ = ["compile_structure", "compile", "CompiledSPN"]


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
    discrete_vars: torch.Tensor

    def __init__(self, root: Node | FlatStructure, weights: str = "raw", floor: float = DEFAULT_FLOOR,
                 dtype: torch.dtype = torch.float32, num_vars: int | None = None, fast: bool = True):
        if num_vars is not None and (isinstance(num_vars, bool) or not isinstance(num_vars, (int, np.integer))):
            raise ConfigurationError(f"num_vars must be an int, got {num_vars!r}")
        # a FlatStructure comes checked (from a model file); a node is checked here
        flat = root if isinstance(root, FlatStructure) else flatten(root)
        kind = flat.kind
        leaves = kind < SUM
        max_var = int(flat.var[leaves].max())
        if num_vars is None:
            num_vars = max_var + 1
        elif num_vars <= max_var:
            raise StructureError(f"num_vars={num_vars} but the structure uses variable x{max_var}")
        cardinality = np.zeros(num_vars, dtype=np.int64)  # 0 marks a continuous (or unused) variable
        leaf_card = np.where(kind == INDICATOR, flat.value + 1, 0)
        leaf_card[kind == BERNOULLI] = 2
        if flat.probs:
            leaf_card[kind == CATEGORICAL] = np.fromiter(map(len, flat.probs), np.int64, len(flat.probs))
        discrete_leaf = leaves & (kind != GAUSSIAN)
        np.maximum.at(cardinality, flat.var[discrete_leaf], leaf_card[discrete_leaf])
        check_compile_memory(len(kind), int((kind == PRODUCT).sum()), int(num_vars),
                             max(2, int(cardinality.max(initial=0))), fast)
        super().__init__(num_vars, cardinality, weights, floor, dtype)
        self.fast = fast
        self._build(flat, num_vars, dtype)
        self._check_representable(dtype)

    def _check_representable(self, dtype: torch.dtype) -> None:
        """Parameters valid in float64 may overflow or underflow in float32; say so instead of returning NaN later."""
        problem = None
        for name, parameter in self.named_parameters():
            if not bool(torch.isfinite(parameter).all()):
                problem = f"parameter {name!r} is not finite in {dtype}"
        if self.gaussian is not None and not bool((torch.exp(self.gaussian.log_std) > 0).all()):
            problem = f"a Gaussian standard deviation underflows to 0 in {dtype}"
        if problem is None:
            # weights that are positive in float64 may all round to 0 in float32 (e.g. 1e-50): f(*) = 0 and every
            # log-likelihood NaN, so the compiled model is refused rather than returned
            with torch.no_grad():
                log_partition = float(self.log_partition())
            if not math.isfinite(log_partition):
                problem = (f"the log partition function is {log_partition} in {dtype} (sum weights that round to 0 "
                           f"below {torch.finfo(dtype).tiny:.1e}, or that overflow)")
        if problem is not None:
            raise StructureError(f"{problem}: the structure's parameters do not fit this dtype; use "
                                 "dtype=torch.float64 or rescale the weights")

    # -- construction --------------------------------------------------------------------------------------------

    def _build(self, flat: FlatStructure, num_vars: int, dtype: torch.dtype) -> None:
        """Group the nodes into layers with numpy over the flat form (no per-node Python; the steps are in
        :mod:`overspn.engine.program`). Modules are registered in a fixed order (inputs, layers, tabular products),
        which fixes the order of the parameters."""
        groups = program.input_groups(flat)
        placement = program.Placement(len(flat))
        placement.place(groups.discrete)  # output 0
        placement.place(groups.gaussians)  # output 1
        self.discrete = program.discrete_inputs(flat, groups, self.cardinality, self.parametrisation, dtype)
        self.gaussian = program.gaussian_inputs(flat, groups, dtype)
        self.register_buffer("discrete_vars", torch.from_numpy(groups.var_of[groups.discrete]), persistent=False)
        inner = ~groups.mask(len(flat))  # sums and products that are not indicator sums
        height = flat.levels(~inner)
        tabular = np.zeros(0, np.int64)
        if self.fast and self.discrete is not None:
            tabular = program.tabular_products(flat, inner, placement)
        self.layers = nn.ModuleList()
        self.tabular: TabularProductLayer | None = None
        if len(tabular):
            self.tabular = program.tabular_layer(flat, tabular, groups, placement, num_vars, self.cardinality)
            placement.place(tabular)  # output 2
        self._first_inner_output = len(placement.widths)
        in_tabular = np.zeros(len(flat), bool)
        in_tabular[tabular] = True
        self.layers.extend(program.inner_layers(flat, np.flatnonzero(inner & ~in_tabular), height, placement,
                                                self.parametrisation, dtype))
        # the weight modules never change after the build; projecting raw weights after every step reads them
        self._sum_weights = tuple(module for module in self.modules() if isinstance(module, SumWeights))
        self._root_position = placement.position(len(flat) - 1)
        # a mixture of products of discrete leaves: one sum over all the tabular products, in order
        self._weighted_tabular = (self.tabular is not None and len(self.layers) == 1
                                  and isinstance(self.layers[0], SumLayer) and self.layers[0].children_.identity
                                  and self.layers[0].children_.sources == [2])
        self._set_flat_layout(placement.widths)
        # whether the fast path needs the per-sample discrete input values besides the tabular products
        self._inputs_read_directly = self.tabular is None or self._root_position[0] == 0 or any(
            isinstance(layer, (ProductLayer, SumLayer)) and 0 in layer.children_.sources for layer in self.layers)
        # what to_structure needs: the structure's arrays and where every node's parameters live
        self._structure = flat
        self._layer_of, self._col_of = placement.layer_of, placement.col_of
        self._first_indicator_sum = len(groups.discrete) - len(groups.indicator_sums)

    def _set_flat_layout(self, widths: list[int]) -> None:
        """Output k in rows offsets[k] .. offsets[k] + widths[k] of one node-major ``(total, N)`` tensor."""
        offsets = np.concatenate([[0], np.cumsum(widths)]).astype(np.int64).tolist()
        self._flat_offsets, self._flat_widths, self._flat_total = offsets[:-1], list(widths), offsets[-1]
        for module in self.modules():
            if isinstance(module, Gather):
                module.set_flat_layout(self._flat_offsets, self._flat_widths)

    # -- data and evaluation ---------------------------------------------------------------------------------------

    def _encode_codes(self, codes: torch.Tensor, values: torch.Tensor, with_partition: bool) -> EncodedData:
        return EncodedData(codes, values, self.cardinality + 1 if self.tabular is not None else 0, with_partition)

    def _evaluate(self, data: EncodedData, use_compact: bool = False, *, mode: str = "sum", generator: Any = None,
                  inputs_out: list[torch.Tensor] | None = None) -> torch.Tensor:
        """Root log-values ``(N,)``; ``mode`` is "sum" (exact), "max" (max-product) or "sample" (Gumbel selection).

        With ``inputs_out`` the input-layer outputs are appended to it, for backtracking by autograd.
        ``use_compact``: use (and on first use compute) the compact one-hot of ``data``; worth it for data that is
        evaluated repeatedly, i.e. encoded by the caller.
        """
        generic = mode != "sum" or not self.fast
        table = self.discrete.table(mode == "max") if self.discrete is not None else None
        outputs = self._input_values(data, table, generic, mode == "max")
        if inputs_out is not None:
            # fresh leaves of the autograd graph, so that backtracking works whether or not inputs have parameters
            outputs = [tensor.detach().requires_grad_() for tensor in outputs]
            inputs_out.extend(outputs)
        if self._weighted_tabular and not generic:
            # the root mixes all the tabular products: its log-weights go into their matrix product's offset,
            # which saves a pass over (and an allocation of) the (N, P) scores
            root = self.layers[0]
            assert isinstance(root, SumLayer), "checked when built"
            bias = root.weights.log_weights().view(-1)
            assert self.tabular is not None and table is not None, "checked when built"
            rows, partition = self.tabular.rows_and_partition(data, table, use_compact, bias)
            if partition is None:
                return logsumexp(rows, dim=1)
            # the partition row on its own: no copy of the (N, P) scores to append it
            return torch.cat([logsumexp(rows, dim=1), logsumexp(partition.unsqueeze(0), dim=1)])
        flat = None
        if (self.flat_outputs and mode == "sum" and inputs_out is None and not torch.is_grad_enabled()
                and len(self.layers)):
            # one node-major (total, N) tensor of node values; every output is written into its block of rows
            flat = outputs[0].new_empty((self._flat_total, data.codes.shape[0]))
            for index in range(len(outputs)):
                self._write_flat(flat, index, outputs[index])
        if self.tabular is not None:
            outputs.append(self._tabular_values(data, outputs, flat, table, generic, use_compact))
            if flat is not None:
                self._write_flat(flat, len(outputs) - 1, outputs[-1])
        layer_index, column = self._root_position
        if flat is not None:
            for index, layer in enumerate(self.layers, start=self._first_inner_output):
                start = self._flat_offsets[index]
                layer(flat, out=flat[start: start + self._flat_widths[index]])  # written in place
            return flat[self._flat_offsets[layer_index] + column].clone()
        for layer in self.layers:
            if isinstance(layer, SumLayer):
                outputs.append(layer(outputs, mode, generator))
            else:
                outputs.append(layer(outputs))
        return outputs[layer_index][:, column]

    def _input_values(self, data: EncodedData, table: torch.Tensor | None, generic: bool,
                      maximize: bool) -> list[torch.Tensor]:
        """Outputs 0 and 1, ``(N, width)``: the discrete inputs' values per sample (empty when the fast path reads
        them only through the tabular products) and the Gaussian densities."""
        rows = data.codes.shape[0]
        outputs: list[torch.Tensor] = []
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
            outputs.append(self.gaussian(data.values, maximize))
        else:
            outputs.append(data.values.new_zeros((rows, 0)))
        return outputs

    def _tabular_values(self, data: EncodedData, outputs: list[torch.Tensor], flat: torch.Tensor | None,
                        table: torch.Tensor | None, generic: bool, use_compact: bool) -> torch.Tensor:
        """Output 2, ``(N, tabular products)``: gathered from the inputs (generic), else one matrix product."""
        assert self.tabular is not None, "called only for a program with tabular products"
        if generic:
            return self.tabular.generic(outputs) if flat is None else self.tabular.generic(flat).T
        assert table is not None, "a tabular layer reads discrete inputs"
        return self.tabular(data, table, use_compact)

    def _write_flat(self, flat: torch.Tensor, index: int, output: torch.Tensor, node_major: bool = False) -> None:
        """Write an ``(N, width)`` output (``(width, N)`` when ``node_major``) into its block of ``flat``."""
        width = output.shape[0] if node_major else output.shape[1]
        if width:  # (an input the fast path does not read directly is left empty)
            start = self._flat_offsets[index]
            flat[start: start + width] = output if node_major else output.T

    def to_structure(self) -> Node:
        """The symbolic structure with the current parameters (a new graph; sharing is preserved)."""
        return compiled_structure.structure_nodes(self)

    # -- parameters, queries, files -------------------------------------------------------------------------------

    def sum_weight_parameters(self) -> list[nn.Parameter]:
        return [module.param for module in self._sum_weights]

    def mpe(self, x: Any) -> torch.Tensor:
        return queries.mpe(self, x)

    def sample(self, n: int, evidence: Any = None, generator: torch.Generator | None = None) -> torch.Tensor:
        return queries.sample(self, n, evidence, generator)

    def to_compiled(self, fast: bool = True) -> CompiledSPN:
        return self if fast == self.fast else super().to_compiled(fast)

    def file_config(self) -> dict[str, Any]:
        return {"weights": self.parametrisation, "floor": self.floor, "num_vars": self.num_vars, "fast": self.fast,
                "structure": compiled_structure.structure_columns(self)}

    @classmethod
    def from_file_config(cls, config: dict[str, Any], dtype: torch.dtype) -> CompiledSPN:
        from overspn.serialization import structure_from_dict

        # A valid structure is read straight into arrays (the loader reads it first, for its estimate; the node
        # list of older files through its column form); anything else is rebuilt node by node, which names the
        # problem.
        description = config["structure"]
        if not isinstance(description, FlatStructure):
            columns = description if is_columns(description) else columns_from_entries(description)
            description = description if columns is None else read_columns(columns)
        flat = description if isinstance(description, FlatStructure) and check_flat(description, None) else None
        if flat is None and isinstance(description, FlatStructure):
            description = to_entries(description)
        structure = flat if flat is not None else structure_from_dict(description)
        return cls(structure, config["weights"], floor=config["floor"], dtype=dtype, num_vars=config["num_vars"],
                   fast=config["fast"])


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
