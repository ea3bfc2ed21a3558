"""Argument types for the command line: option values that are wrong give the same one-line errors as argparse's own."""

from __future__ import annotations

import argparse
import math
from collections.abc import Callable
from pathlib import Path


def _number(text: str, convert: Callable[[str], float], description: str, accept: Callable[[float], bool]) -> float:
    try:
        value = convert(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected {description}, got {text!r}") from None
    if not accept(value):
        raise argparse.ArgumentTypeError(f"expected {description}, got {text!r}")
    return value


def positive_float(text: str) -> float:
    """argparse type: a finite float > 0 (e.g. a learning rate)."""
    return _number(text, float, "a finite number > 0", lambda v: math.isfinite(v) and v > 0)


def finite_float(text: str) -> float:
    """argparse type: any finite float (e.g. a target log-likelihood)."""
    return _number(text, float, "a finite number", math.isfinite)


def non_negative_float(text: str) -> float:
    """argparse type: a finite float >= 0."""
    return _number(text, float, "a finite number >= 0", lambda v: math.isfinite(v) and v >= 0)


def positive_int(text: str) -> int:
    """argparse type: an int >= 1 (e.g. iterations, a batch size)."""
    return int(_number(text, int, "an integer >= 1", lambda v: v >= 1))


def non_negative_int(text: str) -> int:
    """argparse type: an int >= 0 (e.g. a seed)."""
    return int(_number(text, int, "an integer >= 0", lambda v: v >= 0))


def output_path(text: str) -> Path:
    """argparse type: a file or folder to write to; an empty name (which would mean the current folder) is refused."""
    if not text.strip():
        raise argparse.ArgumentTypeError("expected a file or folder name, got an empty one")
    return Path(text)
