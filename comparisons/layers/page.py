"""The HTML pages of the layer analysis: ``layers.html`` per model and ``index.html``.

:func:`layers_html` writes one Captum ``visualize_text`` row per layer and sentence
(template ``layers_page.html.j2``); :func:`write_index` the self-contained summary page
of a run (``layers_index.html.j2``: figures inline, tables of the means, the group
ratios with their intervals and the tokens per group). Both are built with the page
helpers of :mod:`comparisons.html`.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import torch

from captum_perturb import LayerInformation
from comparisons.html import (
    MAX_COLUMNS,
    chunks,
    figure_data_uri,
    fmt,
    interval,
    render,
    text_record,
    text_table,
)
from comparisons.layers.groups import SENTIMENT, contrasts
from comparisons.layers.plots import curves_figure, heatmap_figure

Curves = Mapping[str, Mapping[str, Sequence[float]]]
Table = dict[str, Any]

LAYER_COLUMNS = ("Sentence", "Row maximum (nats)", "Layer", "Total nats")
"""The headers that replace Captum's label columns on ``layers.html``."""

HEATMAP_SENTENCES = 3
"""Sentences whose heatmaps ``index.html`` shows."""


def model_folder(name: str) -> str:
    """The folder of a model's files in a run: ``name`` with only ``[A-Za-z0-9._-]``.

    Example:
        >>> model_folder("tuned/cls")
        'tuned_cls'
    """
    return re.sub(r"[^A-Za-z0-9._-]+", "_", name).strip("._") or "model"


def _records(info: LayerInformation, n: int) -> list[Any]:
    """Captum's rows of sentence ``n``, one per layer, padding left out."""
    real = [t for t in range(len(info.tokens[n])) if bool(info.mask[n, t])]
    words = [info.tokens[n][t] for t in real]
    records = []
    for j, name in enumerate(info.layer_names()):
        nats = torch.nan_to_num(info.nats_kept[n, j, real].double(), nan=0.0)
        top = float(nats.abs().max()) if real else 0.0
        label = f"sentence {n}"
        records.append(text_record(nats.numpy(), words, name, label=label, pred="max", prob=top))
    return records


def layers_html(
    info: LayerInformation, sentences: Sequence[int] | None, path: str | Path, title: str
) -> Path:
    """One Captum ``visualize_text`` row per layer per sentence, in a self-contained page.

    Colour: the nats a layer keeps of each token divided by the row's largest (a
    negative estimate would show red); Total nats: the row's sum, NaN counted as 0.
    """
    chosen = range(len(info.tokens)) if sentences is None else sentences
    records = [r for n in chosen for r in _records(info, n)]
    table = text_table(records, legend=False, columns=LAYER_COLUMNS)
    path = Path(path)
    path.write_text(render("layers_page.html.j2", title=title, table=table), encoding="utf-8")
    return path


# ---------------------------------------------------------------------------- index.html
def _layer_tables(
    caption: str, columns: Sequence[str], names: Sequence[str], cell: Callable[[str, int], str]
) -> list[Table]:
    """A row per layer, a column per item of ``columns`` (``cell(column, layer index)``,
    kept on one line), in tables of at most :data:`MAX_COLUMNS` columns."""
    return [
        {
            "caption": caption,
            "columns": ["layer", *part],
            "rows": [
                [layer, *({"text": cell(c, j), "class": "nowrap"} for c in part)]
                for j, layer in enumerate(names)
            ],
        }
        for part in chunks(columns, MAX_COLUMNS - 1)
    ]


def _means_tables(
    models: Sequence[str],
    curves: Curves,
    groups: Sequence[str],
    names: Sequence[str],
    boot: Mapping[str, Any] | None,
) -> list[Table]:
    """Mean nats per layer and group, a table per model, with the bootstrap intervals
    when known."""
    bands = {} if boot is None else boot["curves"]
    tables = []
    for m in models:

        def cell(g: str, j: int, m: str = m) -> str:
            band = bands.get(m, {}).get(g)
            mean = curves[m][g][j]
            return fmt(mean) if band is None else interval(mean, *band[j])

        tables += _layer_tables(m, groups, names, cell)
    return tables


def _ratio_tables(
    models: Sequence[str],
    curves: Curves,
    groups: Sequence[str],
    names: Sequence[str],
    boot: Mapping[str, Any] | None,
) -> list[Table]:
    """Per group ratio, a table of its value per layer and model, then its paired
    changes between models, with intervals when known."""
    ratios = {} if boot is None else boot["ratios"]
    changes = {} if boot is None else boot.get("ratio_change", {})
    tables = []
    for a, b in contrasts(groups):
        label = f"{a} / {b}"

        def cell(m: str, j: int, a: str = a, b: str = b, label: str = label) -> str:
            got = (ratios.get(m) or changes.get(m) or {}).get(label)
            if got is not None:
                return interval(*got[j])
            num, den = curves[m][a][j], curves[m][b][j]
            return fmt(num / den) if den else fmt(None)

        tables += _layer_tables(label, [*models, *changes], names, cell)
    return tables


def _count_tables(
    masks: Mapping[str, Mapping[str, torch.Tensor]], groups: Sequence[str]
) -> list[Table]:
    """Tokens per group and model."""
    return [
        {
            "columns": ["model", *part],
            "rows": [[m, *(int(chosen[g].sum()) for g in part)] for m, chosen in masks.items()],
        }
        for part in chunks(groups, MAX_COLUMNS - 1)
    ]


def _heatmaps(infos: Mapping[str, LayerInformation]) -> list[tuple[int, list[tuple[str, str]]]]:
    """Per sentence (the first :data:`HEATMAP_SENTENCES`): ``(data URI, alt)`` per model."""
    shown = min(HEATMAP_SENTENCES, len(next(iter(infos.values())).tokens))
    return [
        (
            n,
            [
                (figure_data_uri(heatmap_figure(info, n, m)), f"{m}, sentence {n}")
                for m, info in infos.items()
            ],
        )
        for n in range(shown)
    ]


def write_index(
    path: Path,
    infos: Mapping[str, LayerInformation],
    curves: Curves,
    masks: Mapping[str, Mapping[str, torch.Tensor]],
    summary: Mapping[str, Any],
) -> None:
    """The run's self-contained ``index.html``.

    Args:
        path: the page.
        infos: ``{model: LayerInformation}``, in the order shown.
        curves: ``{model: {group: [mean nats kept, one per layer]}}``.
        masks: ``{model: {group: (N, T) bool}}``, the tokens of each group.
        summary: what ``curves.json`` holds (``layer_names``, ``sentences``,
            ``seconds``, ``seed``, ``corpus_size``, ``bootstrap``).
    """
    groups = list(next(iter(masks.values())))
    models, names = list(infos), summary["layer_names"]
    boot = summary.get("bootstrap")
    bands = None if boot is None else boot["curves"]
    page = render(
        "layers_index.html.j2",
        title="Information kept per layer",
        sentences=summary["sentences"],
        seconds=[(m, summary["seconds"][m]) for m in models],
        seed=summary["seed"],
        corpus_size=summary["corpus_size"],
        sentiment=SENTIMENT in groups,
        curves=figure_data_uri(curves_figure(curves, names, "", bands)),
        boot=boot,
        heatmaps=_heatmaps(infos),
        means_tables=_means_tables(models, curves, groups, names, boot),
        ratio_tables=_ratio_tables(models, curves, groups, names, boot),
        count_tables=_count_tables(masks, groups),
        folders=[(m, model_folder(m)) for m in models],
    )
    path.write_text(page, encoding="utf-8")
