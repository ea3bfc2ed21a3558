"""Data-parallel training over the processes of a ``torch.distributed`` group (e.g. started by ``torchrun``).

Every process draws the same batches, evaluates its share of each, and the gradients are summed across processes
before every step, so the parameters follow single-process training up to rounding.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.distributed as dist

from overspn.errors import ConfigurationError

__all__ = ["Processes"]


class Processes:
    """This process's place among the data-parallel processes (rank 0 of 1 without ``torch.distributed``)."""

    def __init__(self, distributed: bool) -> None:
        if distributed and not (dist.is_available() and dist.is_initialized()):
            raise ConfigurationError("distributed training needs an initialised torch.distributed process group "
                                     "(run under torchrun)")
        self.distributed = distributed
        self.size = dist.get_world_size() if distributed else 1
        self.rank = dist.get_rank() if distributed else 0

    def shard(self, rows: torch.Tensor) -> torch.Tensor:
        """This process's share of ``rows`` (every ``size``-th, from its rank)."""
        return rows[self.rank:: self.size]

    def total(self, value: float, op: str = "sum") -> float:
        """``value`` summed (or maximised, ``op="max"``) over the processes."""
        if self.size == 1:
            return value
        tensor = torch.tensor([value], dtype=torch.float64)
        dist.all_reduce(tensor, op=dist.ReduceOp.SUM if op == "sum" else dist.ReduceOp.MAX)
        return float(tensor)

    def sum_gradients(self, parameters: Sequence[torch.Tensor]) -> None:
        """Replace every gradient by its sum over the processes (a missing gradient counts as zeros)."""
        if self.size == 1:
            return
        grads = [p.grad if p.grad is not None else torch.zeros_like(p) for p in parameters]
        flat = torch.cat([g.reshape(-1) for g in grads])
        dist.all_reduce(flat)
        offset = 0
        for parameter in parameters:
            parameter.grad = flat[offset: offset + parameter.numel()].view_as(parameter).clone()
            offset += parameter.numel()
