"""Matplotlib figures for the pages: PNG data URIs, colours, interval panels."""

from __future__ import annotations

import base64
import io
from collections.abc import Callable, Mapping, Sequence
from typing import Any

DPI = 100
"""Pixels per inch of every embedded figure: a figure ``w`` inches wide is ``100 w`` px."""


def figure_data_uri(fig: Any, dpi: int = DPI) -> str:
    """``fig`` as a ``data:image/png;base64,…`` URI; the figure is closed.

    Args:
        fig: a matplotlib ``Figure`` (made by ``pyplot`` or not).
        dpi: pixels per inch.

    Returns:
        The URI, for an ``<img src>`` (the ``figure`` macro).

    Example:
        >>> from matplotlib.figure import Figure
        >>> fig = Figure(figsize=(1, 1))
        >>> _ = fig.subplots().plot([0, 1])
        >>> figure_data_uri(fig)[:30]
        'data:image/png;base64,iVBORw0K'
    """
    from matplotlib import pyplot as plt

    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=dpi, bbox_inches="tight")
    plt.close(fig)
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode("ascii")


def palette(names: Sequence[str], key: Callable[[str], str] = str) -> dict[str, Any]:
    """A ``tab10`` colour per name, names with the same ``key`` sharing one."""
    import matplotlib

    cmap = matplotlib.colormaps["tab10"]
    keys = list(dict.fromkeys(key(n) for n in names))
    return {n: cmap(keys.index(key(n)) % 10) for n in names}


def interval_panel(
    ax: Any,
    rows: Sequence[tuple[str, float, float, float]],
    colors: Mapping[str, Any],
    light: Callable[[str], bool] = lambda label: False,
) -> None:
    """Horizontal 95 % intervals, one per row, the first row at the top.

    Args:
        ax: a matplotlib ``Axes``.
        rows: ``(label, mean, lo, hi)``, in the order to show top to bottom.
        colors: label → colour.
        light: labels drawn lighter, with an open marker.
    """
    for y, (label, mean, lo, hi) in enumerate(reversed(rows)):
        pale = light(label)
        ax.errorbar(
            mean,
            y,
            xerr=[[mean - lo], [hi - mean]],
            fmt="o",
            capsize=3,
            color=colors[label],
            alpha=0.5 if pale else 1.0,
            mfc="white" if pale else colors[label],
        )
    ax.set_yticks(range(len(rows)), [r[0] for r in reversed(rows)], fontsize=9)
    ax.set_ylim(-0.6, len(rows) - 0.4)
    ax.grid(axis="x", color="0.9")
