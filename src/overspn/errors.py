"""The exceptions overspn raises.

Every error the library raises on purpose derives from :class:`OverspnError`, so a caller can catch all of them at
once; the ones caused by a bad value also derive from :class:`ValueError`, the type Python code expects for that.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from overspn.learn.history import History


class OverspnError(Exception):
    """Base class of every error raised by overspn."""


class StructureError(OverspnError, ValueError):
    """A structure breaks a rule of valid SPNs (completeness, decomposability, acyclicity, parameters)."""


class DataError(OverspnError, ValueError):
    """Input data has the wrong shape, type or values for the model it is given to."""


class ModelFileError(OverspnError, ValueError):
    """A model file is missing, corrupted, truncated, foreign or of an unsupported version."""


class ConfigurationError(OverspnError, ValueError):
    """An option has a value outside its allowed range (e.g. a learning rate <= 0)."""


class DivergenceError(OverspnError, ArithmeticError):
    """Training produced a non-finite objective; the history up to that point is attached."""

    def __init__(self, message: str, iteration: int, history: History | None = None) -> None:
        super().__init__(message)
        self.iteration = iteration
        self.history = history
