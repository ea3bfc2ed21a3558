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
import weakref
from typing import TYPE_CHECKING, Any, ClassVar

import numpy as np
import torch
from torch import nn

from overspn.engine.encoding import EncodedData, as_checked_tensor, checked_codes
from overspn.engine.weights import check_weight_options
from overspn.errors import ConfigurationError, ModelFileError

if TYPE_CHECKING:
    from overspn.engine.compiled import CompiledSPN
    from overspn.symbolic.structure import Node

__all__ = ["SPNModule", "MODEL_KINDS", "check_dtype", "EncodingCache"]

#: every model class by the ``kind`` under which model files store it
MODEL_KINDS: dict[str, type[SPNModule]] = {}


def check_dtype(dtype: object) -> None:
    if dtype not in (torch.float32, torch.float64):
        raise ConfigurationError(f"dtype must be torch.float32 or torch.float64, got {dtype}")


def layout_from_file(config: dict[str, Any], layout: type[Any], what: str) -> Any:
    """The layout dataclass ``layout`` stored under ``config["config"]`` by a tensorised model's ``file_config``;
    ModelFileError when the stored fields are not exactly the dataclass's (its own checks then validate values)."""
    settings = config.get("config")
    fields = layout.__dataclass_fields__
    if not isinstance(settings, dict) or set(settings) != set(fields):
        raise ModelFileError(f"the {what} configuration must name {sorted(fields)}, got {settings!r}")
    return layout(**settings)


class EncodingCache:
    """The encodings of the last few torch tensors a model evaluated, so that evaluating the same tensor again (every
    step of full-batch training, written the plain torch way) skips checking and encoding it.

    An entry is used only for the very same tensor object (held by a weak reference, so the cache never keeps the
    input alive, and its entry is dropped when the input is freed) whose data pointer, shape, strides, dtype, device
    and autograd version counter are unchanged -- an in-place change of the tensor (or of any view of its storage)
    bumps the version counter and invalidates the entry -- and only for the model dtype and device, and the grad and
    inference mode, under which it was encoded. Not cached: numpy arrays (numpy has no version counter, so an
    in-place change could not be detected; convert once with ``torch.as_tensor`` or call ``model.encode``), tensors
    that require grad, inference tensors, and tensors seen while tracing or compiling. Changes the version counter
    does not see are not detected either: writes through ``tensor.data`` or through memory shared with numpy.
    """

    def __init__(self, size: int = 2) -> None:
        self.size = size
        self.entries: list[tuple[weakref.ref, tuple[Any, ...], EncodedData]] = []

    @staticmethod
    def key(x: Any, *settings: Any) -> tuple[Any, ...] | None:
        """What identifies ``x``'s content (with ``settings``), or None when ``x`` is not cacheable."""
        if (type(x) is not torch.Tensor or x.requires_grad or x.is_inference() or x.is_sparse
                or torch.compiler.is_compiling()):
            return None
        try:
            return (x.data_ptr(), x.storage_offset(), tuple(x.shape), x.stride(), x.dtype, x.device, x._version,
                    torch.is_inference_mode_enabled(), *settings)
        except (RuntimeError, NotImplementedError):  # tensors without storage (functorch or fake tensors)
            return None

    def get(self, x: torch.Tensor, key: tuple[Any, ...]) -> EncodedData | None:
        for reference, entry_key, data in self.entries:
            if reference() is x and entry_key == key:
                return data
        return None

    def put(self, x: torch.Tensor, key: tuple[Any, ...], data: EncodedData) -> None:
        entries = [entry for entry in self.entries if entry[0]() is not None and entry[0]() is not x]
        entries.insert(0, (weakref.ref(x, self._forget), key, data))
        self.entries = entries[: self.size]

    def _forget(self, reference: weakref.ref) -> None:
        self.entries = [entry for entry in self.entries if entry[0] is not reference]

    def clear(self) -> None:
        self.entries = []


class SPNModule(nn.Module):
    """A sum-product network as a ``torch.nn.Module``: ``model(x)`` is ``log_likelihood(x)``.

    ``weights`` is the parametrisation of the sum weights ("raw", "log" or "softmax", see
    :mod:`overspn.engine.weights`); ``floor`` the lower bound of raw weights, restored by :meth:`project_`.
    ``cardinality`` ``(D,)``: the number of states of every discrete variable, 0 for a continuous one.
    """

    kind: ClassVar[str] = ""
    #: whether :meth:`em_step` is available
    supports_em: ClassVar[bool] = False
    #: how many recently evaluated input tensors keep their encoding (see :class:`EncodingCache`); 0 disables it
    encoding_cache_size: int = 2
    var_cardinality: torch.Tensor
    dtype_anchor: torch.Tensor

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
        tensor = as_checked_tensor(x, self.num_vars, self.dtype, self.device)
        checked_codes(tensor, self.var_cardinality, self.cardinality, allow_missing)
        return tensor

    def encode(self, x: Any, with_partition: bool = True, allow_missing: bool = True) -> EncodedData:
        """Check and encode ``x`` once; the result can be passed to every evaluation method instead of ``x``."""
        if isinstance(x, EncodedData):
            return x
        if with_partition:
            return self._cached_encoding(x, allow_missing)
        return self._encode_uncached(x, with_partition, allow_missing)

    def _encode_uncached(self, x: Any, with_partition: bool, allow_missing: bool) -> EncodedData:
        values = as_checked_tensor(x, self.num_vars, self.dtype, self.device)
        codes = checked_codes(values, self.var_cardinality, self.cardinality, allow_missing)
        if with_partition:
            values = torch.cat([values, values.new_full((1, self.num_vars), math.nan)])
            codes = torch.cat([codes, codes.new_full((1, self.num_vars), self.cardinality)])
        return self._encode_codes(codes, values, with_partition)

    def _encode_codes(self, codes: torch.Tensor, values: torch.Tensor, with_partition: bool) -> EncodedData:
        """Encoded data from checked ``values`` and their ``codes`` (missing and continuous entries = C)."""
        return EncodedData(codes, values, 0, with_partition)

    def _encode_checked(self, values: torch.Tensor, with_partition: bool) -> EncodedData:
        codes = torch.nan_to_num(values, nan=float(self.cardinality)).long()
        codes[:, self.var_cardinality == 0] = self.cardinality
        return self._encode_codes(codes, values, with_partition)

    @property
    def encoding_cache(self) -> EncodingCache:
        """The encodings of recently evaluated input tensors (kept outside the module's state; see
        :class:`EncodingCache`)."""
        cache = self.__dict__.get("_encoding_cache")
        if cache is None:
            cache = EncodingCache(self.encoding_cache_size)
            self.__dict__["_encoding_cache"] = cache
        return cache

    def clear_encoding_cache(self) -> None:
        """Forget the encodings of recently evaluated inputs."""
        self.__dict__.pop("_encoding_cache", None)

    def _cached_encoding(self, x: Any, allow_missing: bool) -> EncodedData:
        """``x`` encoded with the partition row, from the cache when ``x`` is a tensor evaluated recently."""
        if self.encoding_cache_size <= 0:
            return self._encode_uncached(x, True, allow_missing)
        key = EncodingCache.key(x, self.dtype, self.device, allow_missing)
        if key is None:
            return self._encode_uncached(x, True, allow_missing)
        cache = self.encoding_cache
        data = cache.get(x, key)
        if data is None:
            data = self._encode_uncached(x, True, allow_missing)
            cache.put(x, key, data)
        return data

    def __getstate__(self) -> dict[str, Any]:
        # copies and pickles of a model do not carry the encodings of its past inputs
        state = dict(super().__getstate__())
        state.pop("_encoding_cache", None)
        return state

    def _apply(self, *args: Any, **kwargs: Any) -> Any:
        # .to(), .double(), .cuda() ...: encodings for the old dtype or device are of no further use
        self.clear_encoding_cache()
        return super()._apply(*args, **kwargs)

    def type(self, dst_type: torch.dtype | str) -> Any:
        """Cast the floating-point parameters and buffers to ``dst_type`` (and move them to the device a tensor
        type names, such as ``"torch.cuda.FloatTensor"``), as ``.to`` does: torch's ``Module.type`` would also cast
        the integer index buffers, which must stay integers."""
        probe = torch.empty(0, device=self.device).type(dst_type)
        if not probe.dtype.is_floating_point:
            raise ConfigurationError(f"a model computes in floating point; cannot cast it to {probe.dtype}")
        return self.to(device=probe.device, dtype=probe.dtype)

    # -- evaluation ----------------------------------------------------------------------------------------------

    def _data_for(self, x: Any) -> EncodedData:
        """Encoded data of ``x`` with the partition row: ``x`` itself when encoded, else through the cache."""
        if isinstance(x, EncodedData):
            return x
        return self._cached_encoding(x, True)

    def log_unnormalised(self, x: Any) -> torch.Tensor:
        """``(N,)`` log f(x); NaN entries are marginalised."""
        data = self._data_for(x)
        values = self._evaluate(data, use_compact=True)
        return values[:-1] if data.with_partition else values

    def log_partition(self) -> torch.Tensor:
        """``()`` log f(*), the network with every variable marginalised (the all-missing row)."""
        row = torch.full((1, self.num_vars), math.nan, dtype=self.dtype, device=self.device)
        return self._evaluate(self._encode_checked(row, with_partition=False))[0]

    def log_likelihood(self, x: Any) -> torch.Tensor:
        """``(N,)`` log f(x) - log f(*): normalised log-probabilities (densities for continuous leaves).

        ``x``: an array or tensor ``(N, num_vars)`` (NaN = missing), or ``model.encode(x)``. A torch tensor
        evaluated again unchanged reuses its checked encoding (see :class:`EncodingCache`), so calling this on
        the same tensor every step costs about as much as passing ``model.encode(x)``; results are identical.
        """
        if self.normalised_by_construction:
            return self.log_unnormalised(x)
        data = self._data_for(x)
        values = self._evaluate(data, use_compact=True)
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
