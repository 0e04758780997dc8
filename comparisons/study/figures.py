"""The figures of the report: the overview, the mean curves and the sanity check.

Each function returns a :class:`matplotlib.figure.Figure` (made without pyplot, so no
global state is touched), or None when there is nothing to draw; the report embeds it
with :func:`comparisons.html.figure_data_uri`. A method's colour is shared by its
``|abs`` ranking (drawn lighter, with an open marker, in the interval panels).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from comparisons.html import interval_panel, palette
from comparisons.study.summary import base_method, better_of, is_abs, main_rows
from comparisons.study.vocabulary import SECONDS

_CURVE_GRID = np.linspace(0.0, 1.0, 101)


def _star(ax: Any, rows: Sequence[Mapping[str, Any]]) -> None:
    """A ★ after the tick label of the best row (rows as drawn, top first)."""
    labels = [s["method"] + (" ★" if s["best"] else "") for s in reversed(rows)]
    ax.set_yticks(range(len(rows)), labels, fontsize=9)


def _difference_panel(
    ax: Any,
    rows: list[Mapping[str, Any]],
    metric: str,
    better: str,
    reference: str,
    colors: Mapping[str, Any],
) -> None:
    """The paired differences of ``metric`` from ``reference``, best first."""
    up = better == "higher"
    rows.sort(key=lambda s: -s["diff"] if up else s["diff"])
    interval_panel(
        ax,
        [(s["method"], s["diff"], s["diff_lo"], s["diff_hi"]) for s in rows],
        colors,
        is_abs,
    )
    _star(ax, rows)
    ax.axvline(0.0, color="0.3", linewidth=0.9, linestyle="--")
    ax.set_title(f"{metric}\nminus {reference}", fontsize=10)
    ax.set_xlabel("paired difference, 95 % interval   " + ("better →" if up else "← better"))


def _seconds_panel(ax: Any, seconds: list[Mapping[str, Any]], colors: Mapping[str, Any]) -> None:
    """The mean seconds per example, fastest first, on a log axis."""
    seconds.sort(key=lambda s: s["mean"])
    interval_panel(ax, [(s["method"], s["mean"], s["lo"], s["hi"]) for s in seconds], colors)
    _star(ax, seconds)
    ax.set_xscale("log")
    ax.set_title("seconds per example", fontsize=10)
    ax.set_xlabel("mean, 95 % interval, log scale   ← better")


def overview_figure(
    summary: Sequence[Mapping[str, Any]],
    meta: Mapping[str, Any],
    headline: Sequence[str],
    reference: str,
) -> Any | None:
    """Paired differences from ``reference`` per headline metric, and seconds (log axis).

    None when there is nothing to draw.
    """
    from matplotlib.figure import Figure

    better = better_of(meta)
    panels = [m for m in headline if any(math.isfinite(s["diff"]) for s in main_rows(summary, m))]
    seconds = [s for s in main_rows(summary, SECONDS) if s["mean"] > 0 and not is_abs(s["method"])]
    n = len(panels) + bool(seconds)
    if n == 0:
        return None
    ncols = min(n, 2)
    nrows = math.ceil(n / ncols)
    tall = max(len(main_rows(summary, m)) for m in [*panels, SECONDS])
    fig = Figure(figsize=(11, nrows * (0.3 * tall + 1.4)), layout="constrained")
    axes = list(fig.subplots(nrows, ncols, squeeze=False).ravel())
    colors = palette([s["method"] for s in summary], base_method)
    for ax, metric in zip(axes, panels, strict=False):
        rows = [s for s in main_rows(summary, metric) if math.isfinite(s["diff"])]
        _difference_panel(ax, rows, metric, better.get(metric, ""), reference, colors)
    if seconds:
        _seconds_panel(axes[len(panels)], seconds, colors)
    for ax in axes[n:]:
        ax.set_visible(False)
    return fig


def _mean_curve(
    curves: Sequence[Mapping[str, Any]], kind: str, method: str
) -> tuple[np.ndarray, int] | None:
    """The mean of ``method``'s finite ``kind`` curves on a grid of 101 fractions, and
    how many there are; None without any."""
    grid = [
        np.interp(_CURVE_GRID, np.linspace(0, 1, len(c["values"])), c["values"])
        for c in curves
        if c["curve"] == kind and c["method"] == method and c["values"]
    ]
    grid = [g for g in grid if np.isfinite(g).all()]
    return (np.mean(grid, axis=0), len(grid)) if grid else None


def curves_figure(curves: Sequence[Mapping[str, Any]], methods: Sequence[str]) -> Any | None:
    """One panel per curve kind, the mean curve of each method over its examples."""
    from matplotlib.figure import Figure

    kinds = list(dict.fromkeys(c["curve"] for c in curves))
    if not kinds:
        return None
    colors = palette(methods, base_method)
    fig = Figure(figsize=(11, 4.2), layout="constrained")
    for ax, kind in zip(fig.subplots(1, len(kinds), squeeze=False)[0], kinds, strict=True):
        for method in methods:
            found = _mean_curve(curves, kind, method)
            if found is not None:
                mean, n = found
                area = float(np.sum((mean[1:] + mean[:-1]) / 2 * np.diff(_CURVE_GRID)))
                label = f"{method} (area {area:.3f}, n={n})"
                ax.plot(_CURVE_GRID, mean, color=colors[method], label=label)
        ax.set_title(kind, fontsize=10)
        ax.set_xlabel("fraction of tokens, in the method's order")
        ax.set_ylabel("mean over examples")
        ax.legend(fontsize="small")
    return fig


def sanity_figure(rows: Sequence[Mapping[str, Any]]) -> Any | None:
    """Mean ρ (signed: solid, |score|: dashed) against the randomisation stage."""
    from matplotlib.figure import Figure

    if not rows:
        return None
    stages = list(dict.fromkeys(r["stage"] for r in rows))
    methods = list(dict.fromkeys(r["method"] for r in rows))
    colors = palette(methods, base_method)
    fig = Figure(figsize=(9, 4), layout="constrained")
    ax = fig.subplots()
    for m in methods:
        mine = [r for r in rows if r["method"] == m]
        x = [stages.index(r["stage"]) for r in mine]
        ax.plot(x, [r["rho"] for r in mine], marker="o", color=colors[m], label=m)
        ax.plot(x, [r["rho_abs"] for r in mine], linestyle="--", color=colors[m])
    ax.axhline(0.0, color="grey", linewidth=0.8)
    ax.set_xticks(range(len(stages)), stages, rotation=30, ha="right")
    ax.set_ylabel("Spearman ρ with the original explanation")
    ax.set_xlabel("randomisation stage (weights re-initialised from the top down)")
    ax.legend(fontsize="small", loc="upper left", bbox_to_anchor=(1.01, 1.0))
    return fig
