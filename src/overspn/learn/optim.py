"""Depth as an optimizer: train a model's weights as if each were a product of ``L`` factors.

:class:`Overparametrized` keeps, for every parameter tensor ``p``, ``L`` factor tensors whose product is ``p``. A step
runs plain gradient descent (or ascent) on the factors -- the gradient of a factor is the gradient of ``p`` times the
product of the other factors -- and writes the new product back into ``p``. The model itself is unchanged: it still
evaluates ``p`` directly, so inference costs what it cost before; only the optimizer's state grows.

With ``branching=(b_0, ..., b_{L-1})`` a weight vector of ``K = prod(branching)`` entries (e.g. the weights of a sum
node over ``K`` children) shares its factors the way :func:`overspn.overparametrize` does: layer ``l`` holds
``prod(branching[:l+1])`` factors and entry ``k`` uses factor ``phi(branching, k, l)`` of it. Gradient descent on these
factors is then exactly gradient descent on the overparametrized SPN, collapsed after every step.

Raw SPN weights have a floor, handed over as ``floors=model.raw_weight_floors()``: every factor is clamped to
``factor_floor`` after each step, and the factor floor is chosen so that the product never falls below the weight's
own floor.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import torch

from overspn.engine.compiled import CompiledSPN, SumLayer
from overspn.errors import ConfigurationError

__all__ = ["Overparametrized", "root_weight_parameter", "default_factor_floor"]

_INITS = ("balanced", "overparametrize")


def default_factor_floor(floor: float, depth: int) -> float:
    """The smallest ``c`` with ``c ** depth >= floor`` in floating point: factors above it keep the product above
    ``floor``, so the floor every raw weight carries is never undercut by rounding."""
    factor = floor ** (1.0 / depth)
    while factor**depth < floor:
        factor = math.nextafter(factor, math.inf)
    return factor


def root_weight_parameter(model: CompiledSPN) -> torch.nn.Parameter:
    """The parameter holding the weights of the root of ``model``, which must be a sum node alone in its layer."""
    layer = model.layers[-1] if len(model.layers) else None
    if not isinstance(layer, SumLayer) or layer.weights.index.shape[0] != 1:
        raise ConfigurationError("the model's root is not a sum node with its own weight parameter")
    return layer.weights.param


class Overparametrized(torch.optim.Optimizer):
    """Gradient descent on ``L`` factors per weight, the product written back into the weight after every step.

    Per parameter group (all keyword arguments may be set per group):

    * ``lr``: learning rate of the factors.
    * ``depth``: number of factors ``L`` (1 is plain gradient descent). With ``branching`` it defaults to, and must
      equal, ``len(branching)``.
    * ``branching``: share factors along this branching; every parameter in the group must have a multiple of
      ``prod(branching)`` entries, read as consecutive weight vectors of that length, each with its own factor tree.
    * ``init``: how the current value is factored at the first step. ``"balanced"``: every factor above the bottom
      layer is the ``L``-th root of the geometric mean of ``|p|`` over the entries below it. ``"overparametrize"``:
      the factorisation :func:`overspn.overparametrize` uses (the top layer carries the totals of the entries below
      it, lower layers the ratios). A number ``c``: every factor above the bottom layer starts at ``c``. In all cases
      the bottom factor, which belongs to one entry alone, makes the product equal the current value.
    * ``factor_floor``: lower bound of every factor after a step. Default: for a parameter with a floor (see
      ``floors``) the smallest value whose ``L``-th power reaches that floor; otherwise no bound. A value given for
      such a parameter must keep the product above its floor (``factor_floor ** L >= floor``).
    * ``maximize``: ascend instead of descend.

    ``floors`` (for all groups): the floor of each raw weight parameter, as ``{parameter: floor}`` or pairs
    ``(parameter, floor)`` such as ``model.raw_weight_floors()``; parameters not named have none.
    """

    def __init__(self, params: Iterable[Any], lr: float, depth: int | None = None,
                 branching: Sequence[int] | None = None, init: str | float = "balanced",
                 factor_floor: float | None = None, maximize: bool = False,
                 floors: Mapping[torch.Tensor, float] | Iterable[tuple[torch.Tensor, float]] | None = None) -> None:
        pairs = floors.items() if isinstance(floors, Mapping) else (floors or ())
        self._floors = {id(parameter): float(floor) for parameter, floor in pairs}
        defaults = dict(lr=lr, depth=depth, branching=branching, init=init, factor_floor=factor_floor,
                        maximize=maximize)
        super().__init__(params, defaults)

    def floor(self, parameter: torch.Tensor) -> float | None:
        """The floor of ``parameter`` given in ``floors`` (None: it has none)."""
        return getattr(self, "_floors", {}).get(id(parameter))

    def add_param_group(self, param_group: dict[str, Any]) -> None:
        super().add_param_group(param_group)
        group = self.param_groups[-1]
        lr = group["lr"]
        if not (isinstance(lr, (int, float)) and math.isfinite(lr) and lr > 0):
            raise ConfigurationError(f"lr must be a finite number > 0, got {lr!r}")
        branching = group["branching"]
        if branching is not None:
            branching = tuple(int(b) for b in branching)
            if not branching or any(b < 1 for b in branching):
                raise ConfigurationError(f"branching must be a non-empty sequence of positive ints, got {branching}")
            if group["depth"] is not None and group["depth"] != len(branching):
                raise ConfigurationError(
                    f"depth={group['depth']} disagrees with branching {branching} ({len(branching)} layers)")
            group["branching"], group["depth"] = branching, len(branching)
            width = math.prod(branching)
            for parameter in group["params"]:
                if parameter.numel() % width:
                    raise ConfigurationError(
                        f"a parameter of {parameter.numel()} entries cannot be read as weight vectors of "
                        f"prod(branching) = {width} entries")
        depth = 2 if group["depth"] is None else group["depth"]
        if isinstance(depth, bool) or not isinstance(depth, int) or depth < 1:
            raise ConfigurationError(f"depth must be an int >= 1, got {depth!r}")
        group["depth"] = depth
        init = group["init"]
        if isinstance(init, str):
            if init not in _INITS:
                raise ConfigurationError(f"init must be one of {_INITS} or a positive number, got {init!r}")
        elif not (isinstance(init, (int, float)) and math.isfinite(init) and init > 0):
            raise ConfigurationError(f"init must be one of {_INITS} or a positive number, got {init!r}")
        factor_floor = group["factor_floor"]
        if factor_floor is not None and not (math.isfinite(factor_floor) and factor_floor >= 0):
            raise ConfigurationError(f"factor_floor must be finite and >= 0, got {factor_floor!r}")
        for parameter in group["params"]:
            floor = self.floor(parameter)
            if floor is not None and factor_floor is not None and factor_floor**depth < floor * (1 - 1e-12):
                raise ConfigurationError(
                    f"factor_floor={factor_floor} lets a product of {depth} factors reach {factor_floor**depth}, "
                    f"below the weights' floor {floor}; compile the model with floor <= factor_floor ** depth")

    # -- factor trees --------------------------------------------------------------------------------------------

    @staticmethod
    def _layout(parameter: torch.Tensor, group: dict[str, Any]) -> tuple[tuple[int, ...], int]:
        """The layer widths and the number of weight vectors: elementwise factors are one layer-wide vector each."""
        if group["branching"] is None:
            return (1,) * group["depth"], parameter.numel()
        branching = group["branching"]
        widths = tuple(math.prod(branching[: layer + 1]) for layer in range(len(branching)))
        return widths, parameter.numel() // widths[-1]

    @staticmethod
    def _expand(factor: torch.Tensor, size: int) -> torch.Tensor:
        """Factors of one layer ``(vectors, width)`` repeated onto the ``size`` entries of each vector."""
        return factor.repeat_interleave(size // factor.shape[1], dim=1)

    @staticmethod
    def _reduce(values: torch.Tensor, width: int) -> torch.Tensor:
        """Per-entry values ``(vectors, size)`` summed over the entries that share each of ``width`` factors."""
        return values.view(values.shape[0], width, -1).sum(dim=2)

    def _initial_factors(self, value: torch.Tensor, group: dict[str, Any]) -> list[torch.Tensor]:
        widths, vectors = self._layout(value, group)
        size = widths[-1]
        entries = value.detach().reshape(vectors, size)
        init = group["init"]
        upper: list[torch.Tensor] = []
        if init == "overparametrize":
            # the top layer carries the total below each factor, lower layers the ratio of totals to the parent's
            parent = None
            for width in widths[:-1]:
                total = self._reduce(entries, width)
                if parent is None:
                    upper.append(total)
                else:
                    expanded = parent.repeat_interleave(width // parent.shape[1], dim=1)
                    upper.append(torch.where(expanded > 0, total / torch.where(expanded > 0, expanded, 1.0), 1.0))
                parent = total
        elif init == "balanced":
            magnitude = entries.abs()
            for width in widths[:-1]:
                log_mean = self._reduce(torch.log(magnitude), width) / (size // width)
                upper.append(torch.exp(log_mean / len(widths)))
        else:
            upper = [entries.new_full((vectors, width), float(init)) for width in widths[:-1]]
        above = entries.new_ones((vectors, size))
        for factor in upper:
            above = above * self._expand(factor, size)
        bottom = torch.where(above != 0, entries / torch.where(above != 0, above, 1.0), torch.zeros_like(entries))
        return [factor.clone() for factor in upper] + [bottom.clone()]

    def factors(self, parameter: torch.Tensor) -> list[torch.Tensor]:
        """The current factors of ``parameter``, top layer first, each ``(vectors, width)``; empty before a step."""
        return list(self.state[parameter].get("factors", []))

    # -- the step ------------------------------------------------------------------------------------------------

    @torch.no_grad()
    def step(self, closure: Any = None) -> Any:
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            for parameter in group["params"]:
                if parameter.grad is None:
                    continue
                state = self.state[parameter]
                if "factors" not in state:
                    state["factors"] = self._initial_factors(parameter, group)
                self._update(parameter, state["factors"], group)
        return loss

    def _update(self, parameter: torch.Tensor, factors: list[torch.Tensor], group: dict[str, Any]) -> None:
        size = factors[-1].shape[1]
        assert parameter.grad is not None, "step() updates only parameters that have a gradient"
        gradient = parameter.grad.reshape(factors[-1].shape)
        if group["maximize"]:
            gradient = -gradient
        expanded = [self._expand(factor, size) for factor in factors]
        # product of all factors but one, from prefix and suffix products (no division: factors may be zero)
        prefix = [torch.ones_like(expanded[0])]
        for factor in expanded[:-1]:
            prefix.append(prefix[-1] * factor)
        suffix = [torch.ones_like(expanded[0])]
        for factor in reversed(expanded[1:]):
            suffix.append(suffix[-1] * factor)
        suffix.reverse()
        factor_floor = group["factor_floor"]
        floor = self.floor(parameter)
        if factor_floor is None and floor is not None:
            factor_floor = default_factor_floor(floor, len(factors))
        # every factor's gradient is taken at the current point before any factor moves
        steps = [self._reduce(gradient * prefix[layer] * suffix[layer], factor.shape[1])
                 for layer, factor in enumerate(factors)]
        product = torch.ones_like(expanded[0])
        for factor, step in zip(factors, steps):
            factor.sub_(group["lr"] * step)
            if factor_floor is not None:
                factor.clamp_(min=factor_floor)
            product = product * self._expand(factor, size)
        parameter.copy_(product.view_as(parameter))
