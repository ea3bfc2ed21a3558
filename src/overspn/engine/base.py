"""The base class of every model: what a user can ask of any SPN, whatever its layout.

A model evaluates ``log f(x)`` for a batch of rows in one pass of batched tensor operations; the partition function
``f(*)`` is the same pass applied to the all-missing row, which :meth:`SPNModule.log_likelihood` appends to the
batch. Subclasses say how to build their layers and how to evaluate encoded data (``_evaluate``); the base class owns
everything else: checking data (dtype and device), encoding, normalising, the floor of raw weights, the number of
parameters, conversion to a symbolic structure, and the queries (sampling, MPE) that a subclass may answer through
its structure. Every subclass registers a ``kind`` under which :func:`overspn.save` stores it and
:func:`overspn.load` rebuilds it.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Any, ClassVar

import numpy as np
import torch
from torch import nn

from overspn.engine.encoding import EncodedData, check_data
from overspn.engine.weights import check_weight_options
from overspn.errors import ConfigurationError

if TYPE_CHECKING:
    from overspn.engine.compiled import CompiledSPN
    from overspn.symbolic.structure import Node

__all__ = ["SPNModule", "MODEL_KINDS", "check_dtype"]

#: every model class by the ``kind`` under which model files store it
MODEL_KINDS: dict[str, type[SPNModule]] = {}


def check_dtype(dtype: object) -> None:
    if dtype not in (torch.float32, torch.float64):
        raise ConfigurationError(f"dtype must be torch.float32 or torch.float64, got {dtype}")


class SPNModule(nn.Module):
    """A sum-product network as a ``torch.nn.Module``: ``model(x)`` is ``log_likelihood(x)``.

    ``weights`` is the parametrisation of the sum weights ("raw", "log" or "softmax", see
    :mod:`overspn.engine.weights`); ``floor`` the lower bound of raw weights, restored by :meth:`project_`.
    ``cardinality`` ``(D,)``: the number of states of every discrete variable, 0 for a continuous one.
    """

    kind: ClassVar[str] = ""
    #: whether :meth:`em_step` is available
    supports_em: ClassVar[bool] = False

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        if cls.kind:
            MODEL_KINDS[cls.kind] = cls

    def __init__(self, num_vars: int, cardinality: np.ndarray, weights: str, floor: float, dtype: torch.dtype):
        super().__init__()
        check_weight_options(weights, floor)
        check_dtype(dtype)
        self.num_vars, self.parametrisation, self.floor = int(num_vars), weights, float(floor)
        cardinality = np.asarray(cardinality, dtype=np.int64)
        self.register_buffer("var_cardinality", torch.from_numpy(cardinality), persistent=False)
        # Carries the dtype (and follows .to(dtype)) even when the model has no parameters, e.g. only indicators.
        self.register_buffer("dtype_anchor", torch.zeros(0, dtype=dtype), persistent=False)
        self.cardinality = max(2, int(cardinality.max(initial=0)))

    # -- what subclasses provide ---------------------------------------------------------------------------------

    def _evaluate(self, data: EncodedData, use_compact: bool = False) -> torch.Tensor:
        """``(rows,)`` root log-values of encoded data (the partition row included when ``data`` has one)."""
        raise NotImplementedError

    def to_structure(self) -> Node:
        """The same network as symbolic nodes, with the current parameters."""
        raise NotImplementedError

    def sum_weight_parameters(self) -> list[nn.Parameter]:
        """The parameters that hold sum weights (in the model's parametrisation); the rest are leaf parameters."""
        raise NotImplementedError

    def raw_weight_floors(self) -> list[tuple[nn.Parameter, float]]:
        """Every raw weight parameter with the floor it is kept above (empty for other parametrisations)."""
        if self.parametrisation != "raw":
            return []
        return [(parameter, self.floor) for parameter in self.sum_weight_parameters()]

    def file_config(self) -> dict[str, Any]:
        """JSON-compatible arguments that rebuild this model's layout (the parameters are stored apart)."""
        raise NotImplementedError

    @classmethod
    def from_file_config(cls, config: dict[str, Any], dtype: torch.dtype) -> SPNModule:
        """The model described by :meth:`file_config`, with parameters to be loaded; raises OverspnError."""
        raise NotImplementedError

    @property
    def normalised_by_construction(self) -> bool:
        """True when f(*) = 1 whatever the parameters, so the partition row can be skipped."""
        return False

    # -- data ----------------------------------------------------------------------------------------------------

    @property
    def dtype(self) -> torch.dtype:
        return self.dtype_anchor.dtype

    @property
    def device(self) -> torch.device:
        return self.dtype_anchor.device

    def check_data(self, x: Any, allow_missing: bool = True) -> torch.Tensor:
        """``x`` (array or tensor ``(N, num_vars)``, NaN = missing) as a checked tensor of the model's dtype and
        device; raises DataError naming the row, column and value that is wrong."""
        return check_data(x, self.num_vars, self.var_cardinality, self.dtype, self.device, allow_missing)

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
        return EncodedData(codes, values, None, with_partition)

    # -- evaluation ----------------------------------------------------------------------------------------------

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
        """``(N,)`` log f(x) - log f(*): normalised log-probabilities (densities for continuous leaves)."""
        if self.normalised_by_construction:
            return self.log_unnormalised(x)
        data = self.encode(x, with_partition=True)
        values = self._evaluate(data, use_compact=isinstance(x, EncodedData))
        if not data.with_partition:
            return values - self.log_partition()
        return values[:-1] - values[-1]

    def forward(self, x: Any) -> torch.Tensor:
        return self.log_likelihood(x)

    # -- parameters ----------------------------------------------------------------------------------------------

    @torch.no_grad()
    def project_(self) -> None:
        """Put every raw weight back onto ``weight >= floor`` (in place); training calls it after every step."""
        for parameter, floor in self.raw_weight_floors():
            parameter.clamp_(min=floor)

    def num_parameters(self) -> int:
        """Number of trainable scalars the model stores."""
        return sum(p.numel() for p in self.parameters() if p.requires_grad)

    def em_step(self, x: Any, step_size: float, pseudo_count: float = 1e-6) -> float:
        """One step of (online) expectation-maximisation on the batch ``x``; see the subclasses that support it."""
        raise ConfigurationError(f"EM is not available for {type(self).__name__}; train it with a gradient "
                                 "optimizer (adam or sgd)")

    # -- queries -------------------------------------------------------------------------------------------------

    def to_compiled(self, fast: bool = True) -> CompiledSPN:
        """The generic compiled program of :meth:`to_structure`, with the same parametrisation and dtype."""
        from overspn.engine.compiled import compile_structure

        return compile_structure(self.to_structure(), self.parametrisation, floor=self.floor, dtype=self.dtype,
                                 num_vars=self.num_vars, fast=fast).to(self.device)

    def sample(self, n: int, evidence: Any = None, generator: torch.Generator | None = None) -> torch.Tensor:
        """``n`` ancestral samples, conditioned on the non-NaN entries of ``evidence`` ``(D,)`` or ``(n, D)``."""
        return self.to_compiled().sample(n, evidence, generator)

    def mpe(self, x: Any) -> torch.Tensor:
        """Fill the NaN entries of ``x`` with the most probable completion (max-product); returns a new tensor."""
        return self.to_compiled().mpe(x)
