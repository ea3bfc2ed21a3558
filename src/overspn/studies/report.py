"""Figures of the studies and commands, made one way: no global matplotlib state, lines told apart by colour *and*
style, legends beside the data rather than on it, and PNG files written atomically.

Figures are :class:`matplotlib.figure.Figure` objects drawn on the Agg canvas directly, so making one never switches
the backend of a caller who uses matplotlib interactively.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from overspn.atomic import atomic_output

__all__ = ["figure", "save_figure", "line_styles", "legend_beside", "NATS", "COLOURS"]

NATS = "mean log-likelihood (nats)"
# colour-blind friendly (Okabe-Ito), then matplotlib's tab10 for more
COLOURS = ("#0072B2", "#D55E00", "#009E73", "#CC79A7", "#E69F00", "#56B4E9", "#000000", "#F0E442",
           "#8c564b", "#7f7f7f")
DASHES = ("-", "--", "-.", ":", (0, (5, 1, 1, 1, 1, 1)), (0, (1, 3)))
MARKERS = ("o", "s", "^", "D", "v", "P", "X", "*")


def figure(width: float = 7.0, height: float = 4.5, rows: int = 1, columns: int = 1,
           **subplots: Any) -> tuple[Any, Any]:
    """A new figure on the Agg canvas and its axes (``rows x columns``), laid out without overlaps."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    made = Figure(figsize=(width, height), layout="constrained")
    FigureCanvasAgg(made)
    return made, made.subplots(rows, columns, **subplots)


def save_figure(made: Any, path: str | Path, dpi: int = 120) -> Path:
    """Write ``made`` as a PNG to ``path`` atomically; returns the path."""
    path = Path(path)
    with atomic_output(path) as temporary:
        made.savefig(temporary, format="png", dpi=dpi)
    return path


def line_styles(count: int | None = None, markevery: int | None = None) -> Iterator[dict[str, Any]]:
    """Keyword arguments for ``axis.plot`` that differ in colour, dash pattern and marker, line after line."""
    styles = zip(itertools.cycle(COLOURS), itertools.cycle(DASHES), itertools.cycle(MARKERS))
    for index, (colour, dash, marker) in enumerate(styles):
        if count is not None and index >= count:
            return
        style = {"color": colour, "linestyle": dash, "linewidth": 1.4}
        if markevery:
            style.update(marker=marker, markevery=(index * max(1, markevery // 7), markevery), markersize=4)
        yield style


def legend_beside(axis: Any, **options: Any) -> Any:
    """The legend to the right of the axes, so that it never covers a curve."""
    handles, labels = axis.get_legend_handles_labels()
    if not handles:
        return None
    return axis.legend(loc="upper left", bbox_to_anchor=(1.02, 1.0), borderaxespad=0.0, fontsize=8, frameon=False,
                       **options)
