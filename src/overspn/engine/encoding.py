"""Data as the engine reads it: checked once, then encoded for repeated evaluation.

Data is a ``(N, D)`` array or tensor; NaN marks a missing value, which every model marginalises. Discrete variables
take the states ``0 .. C_d - 1`` (``C_d`` from the model); continuous ones any finite value.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from functools import cached_property
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from overspn.errors import DataError

__all__ = ["as_checked_tensor", "check_data", "checked_codes", "CompactOneHot", "EncodedData"]


def as_checked_tensor(x: Any, num_vars: int, dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    """``x`` as a ``(N, num_vars)`` tensor of ``dtype`` on ``device`` (no copy when it already is one); its values
    are not checked yet. Raises DataError for a wrong type or shape."""
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
    if tensor.shape[1] != num_vars:
        raise DataError(f"data has {tensor.shape[1]} columns (shape {tuple(tensor.shape)}) but the model has "
                        f"{num_vars} variables")
    return tensor.to(device=device, dtype=dtype)


def checked_codes(tensor: torch.Tensor, cardinality: torch.Tensor, missing_code: int,
                  allow_missing: bool = True) -> torch.Tensor:
    """Check the values of ``tensor`` ``(N, D)`` against ``cardinality`` (``(D,)``, 0 for a continuous variable) and
    return their integer codes ``(N, D)``: the state of a discrete entry, ``missing_code`` for a missing (NaN) entry
    and for every entry of a continuous variable. Raises DataError naming the row, column and value that is wrong.

    The check and the encoding are one pass: a discrete entry is valid iff it survives the round trip through its
    integer code and that code lies in ``0 .. C_d - 1`` (false for NaN, infinities and fractions); a continuous entry
    iff it is finite. Valid data is checked with a handful of elementwise operations and one reduction; only bad
    data pays for locating the culprit.
    """
    if tensor.shape[0] == 0:
        return torch.empty(tensor.shape, dtype=torch.long, device=tensor.device)
    cardinality = cardinality.to(tensor.device)
    high = (cardinality - 1).clamp_min(0)
    codes = torch.nan_to_num(tensor, nan=-1.0, posinf=-1.0, neginf=-1.0).long()
    ok = (codes.to(tensor.dtype) == tensor).logical_and_(codes.clamp(torch.zeros_like(high), high) == codes)
    continuous = cardinality == 0
    any_continuous = bool(continuous.any())
    if any_continuous:
        ok = torch.where(continuous, torch.isfinite(tensor), ok)
    missing = torch.isnan(tensor)
    valid = ok.logical_or(missing) if allow_missing else ok
    if not bool(valid.all()):
        _raise_first_bad(tensor, ~valid, cardinality)
    codes.masked_fill_(missing, missing_code)
    if any_continuous:
        codes[:, continuous] = missing_code
    return codes


def _raise_first_bad(tensor: torch.Tensor, bad: torch.Tensor, cardinality: torch.Tensor) -> None:
    row, column = bad.nonzero()[0].tolist()
    value = tensor[row, column].item()
    if math.isnan(value):
        reason = "missing values (NaN) are not allowed here"
    elif math.isinf(value):
        reason = "values must be finite"
    else:
        reason = f"variable x{column} is discrete with states 0..{int(cardinality[column]) - 1}"
    raise DataError(f"invalid value {value!r} in row {row}, column {column}: {reason}")


def check_data(x: Any, num_vars: int, cardinality: torch.Tensor, dtype: torch.dtype, device: torch.device,
               allow_missing: bool = True) -> torch.Tensor:
    """``x`` as a ``(N, num_vars)`` tensor of ``dtype`` on ``device``, its values checked against ``cardinality``
    (``(D,)``, 0 for a continuous variable). Raises DataError naming the row, column and value that is wrong."""
    tensor = as_checked_tensor(x, num_vars, dtype, device)
    checked_codes(tensor, cardinality, 0, allow_missing)
    return tensor


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

    ``codes`` ``(N, D)`` integer states with missing mapped to ``C``; ``values`` ``(N, D)`` floats (for continuous
    leaves); ``onehot_width``: ``C + 1`` when the model reads discrete data as a matrix (0 when it does not), whose
    one-hot form and compact form are computed from the codes when first asked for; ``with_partition`` tells
    whether the last row is the all-missing row of the partition function.
    """

    codes: torch.Tensor
    values: torch.Tensor
    onehot_width: int
    with_partition: bool

    @property
    def num_rows(self) -> int:
        """Number of data rows (without the partition row)."""
        return self.codes.shape[0] - int(self.with_partition)

    def subset(self, rows: torch.Tensor) -> EncodedData:
        """The data rows ``rows``, with the partition row kept at the end when there is one."""
        if self.with_partition:
            rows = torch.cat([rows.to(self.codes.device), torch.tensor([self.codes.shape[0] - 1],
                                                                       device=self.codes.device)])
        return EncodedData(self.codes[rows], self.values[rows], self.onehot_width, self.with_partition)

    @cached_property
    def onehot(self) -> torch.Tensor | None:
        """``(N, D (C+1))`` the one-hot form of the codes (None when the model reads no one-hot)."""
        if not self.onehot_width:
            return None
        return F.one_hot(self.codes, self.onehot_width).to(self.values.dtype).view(len(self.codes), -1)

    @cached_property
    def compact(self) -> CompactOneHot | None:
        """The compact form of the one-hot data rows, from the codes (computed on first use, then kept)."""
        if not self.onehot_width or self.num_rows == 0:
            return None
        codes = self.codes[: self.num_rows]
        num_vars, width = codes.shape[1], self.onehot_width
        variables = torch.arange(num_vars, device=codes.device)
        slots = codes + variables * width  # each entry's column in the one-hot form
        used = torch.bincount(slots.reshape(-1), minlength=num_vars * width).view(num_vars, width) > 0
        first = used.to(torch.uint8).argmax(dim=1)
        references = variables * width + first
        kept = used.clone()
        kept[variables, first] = False
        columns = kept.view(-1).nonzero().squeeze(1)
        values = (slots[:, columns // width] == columns).to(self.values.dtype)
        return CompactOneHot(values, columns, references[columns // width], references)
