"""The pictures of the layer analysis: tokens × layers heatmaps and depth curves.

:func:`heatmap` and :func:`depth_curves` write ``.png``/``.svg`` files;
:func:`heatmap_figure` and :func:`curves_figure` make the figures the pages embed
(:mod:`comparisons.layers.page`, through :func:`comparisons.html.figure_data_uri`).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from captum_perturb import LayerInformation


def _save(fig: Any, path: str | Path) -> Path:
    path = Path(path)
    fmt = path.suffix.lstrip(".").lower()
    if fmt not in ("png", "svg"):
        raise ValueError(f"write a .png or .svg file, got {path.name!r}")
    fig.savefig(path, format=fmt, dpi=120)
    return path


def heatmap_figure(info: LayerInformation, sentence: int, title: str | None) -> Any:
    """The figure of :func:`heatmap` (a ``matplotlib.figure.Figure``)."""
    import matplotlib as mpl
    from matplotlib.figure import Figure

    real = [t for t in range(len(info.tokens[sentence])) if bool(info.mask[sentence, t])]
    grid = info.nats_kept[sentence][:, real].numpy()
    special = [bool(info.special[sentence, t]) for t in real]
    labels = [
        tok if not sp or tok[:1] in "[<" else f"[{tok}]"
        for tok, sp in zip([info.tokens[sentence][t] for t in real], special, strict=True)
    ]
    fig = Figure(figsize=(2.0 + 0.42 * len(real), 1.6 + 0.42 * len(info.layers)))
    ax = fig.subplots()
    cmap = mpl.colormaps["viridis"].with_extremes(bad="lightgrey")
    im = ax.imshow(grid, cmap=cmap, aspect="auto")
    ax.set_xticks(range(len(real)), labels, rotation=60, ha="right")
    for tick, sp in zip(ax.get_xticklabels(), special, strict=True):
        if sp:
            tick.set_color("grey")
    ax.set_yticks(range(len(info.layers)), info.layer_names())
    fig.colorbar(im, ax=ax, label="nats kept")
    name = info.meta.get("model")
    ax.set_title(title or (f"{name}: " if name else "") + "information kept per token", loc="left")
    fig.tight_layout()
    return fig


def heatmap(
    info: LayerInformation, sentence: int, path: str | Path, title: str | None = None
) -> Path:
    """Tokens × layers heatmap of the nats kept for one sentence (``.png`` or ``.svg``).

    Padding is left out; special tokens are labelled in grey and brackets.
    """
    return _save(heatmap_figure(info, sentence, title), path)


Intervals = Mapping[str, Mapping[str, Sequence[Sequence[float]]]]


def curves_figure(
    curves: Mapping[str, Mapping[str, Sequence[float]]],
    layer_names: Sequence[str],
    title: str,
    intervals: Intervals | None = None,
) -> Any:
    """The figure of :func:`depth_curves` (a ``matplotlib.figure.Figure``)."""
    from matplotlib.figure import Figure

    fig = Figure(figsize=(1.0 + 4.2 * max(len(curves), 1), 4.2))
    axes = fig.subplots(1, max(len(curves), 1), sharey=True, squeeze=False)[0]
    for ax, (model, groups) in zip(axes, curves.items(), strict=False):
        for group, values in groups.items():
            (line,) = ax.plot(range(len(values)), list(values), marker="o", label=group)
            band = (intervals or {}).get(model, {}).get(group)
            if band is not None:
                lo, hi = zip(*band, strict=True)
                ax.fill_between(range(len(band)), lo, hi, color=line.get_color(), alpha=0.2)
        n = max((len(v) for v in groups.values()), default=0)
        ax.set_xticks(range(n), list(layer_names)[:n], rotation=45, ha="right")
        ax.set_title(model)
        ax.grid(alpha=0.3)
    axes[0].set_ylabel("mean nats kept per token")
    axes[-1].legend(fontsize="small")
    fig.suptitle(title)
    fig.tight_layout()
    return fig


def depth_curves(
    curves: Mapping[str, Mapping[str, Sequence[float]]],
    layer_names: Sequence[str],
    path: str | Path,
    title: str,
    intervals: Intervals | None = None,
) -> Path:
    """Information kept vs depth: one panel per model (shared y), one line per group.

    Args:
        curves: ``{model: {group: [mean nats kept, one per layer]}}``.
        layer_names: the x tick labels (``LayerInformation.layer_names()``).
        intervals: ``{model: {group: [[lo, hi], one per layer]}}`` drawn as shaded bands
            (``comparisons.layers.curves.bootstrap_curves(...)["curves"]``).
    """
    return _save(curves_figure(curves, layer_names, title, intervals), path)
