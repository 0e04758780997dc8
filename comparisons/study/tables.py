"""The tables of the report: headline, every metric, the sanity check, the definitions.

A table is a dict ``{"columns", "rows"}`` (plus an optional ``"caption"`` and
``"width"``) that the templates of :mod:`comparisons.html` render and
:func:`comparisons.html.markdown` writes as Markdown. A column is a name or a dict
``{"label", "title", "sub"}``; a cell is a value or a dict ``{"text", "best", "class",
"title"}`` (``"best"``: bold with ★; ``"class"``: ``"better"``, ``"worse"`` or
``"text"``). Every number is a row of :func:`comparisons.study.summary.study_summary` or
of :func:`comparisons.study.sanity.sanity_summary`.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

from comparisons.html import DASH, MAX_COLUMNS, chunks, fmt, interval, pack, percent
from comparisons.study.summary import (
    DEFAULT_BETTER,
    better_of,
    comparison_words,
    difference_text,
    ordered,
)
from comparisons.study.vocabulary import ABSTAINED, SECONDS

_ARROWS = {"higher": "↑", "lower": "↓"}


# ----------------------------------------------------------------------------- cells
def _column(metric: str, info: Mapping[str, Any], sub: str = "") -> dict[str, str]:
    """The column of ``metric``: its name and direction, its description as a tooltip."""
    about = info.get(metric, {})
    arrow = _ARROWS.get(about.get("better", DEFAULT_BETTER.get(metric, "")), "")
    return {"label": f"{metric} {arrow}".strip(), "title": about.get("description", ""), "sub": sub}


def _mean_cell(s: Mapping[str, Any] | None) -> Any:
    """``mean [lo, hi]``, bold with ★ when best; the tooltip: n and the difference."""
    if s is None:
        return DASH
    title = f"n = {s['n']}"
    if math.isfinite(s["diff"]) and s["diff_lo"] != s["diff_hi"]:
        title += f"; minus {s['reference']}: " + interval(s["diff"], s["diff_lo"], s["diff_hi"])
    return {"text": interval(s["mean"], s["lo"], s["hi"]), "best": s["best"], "title": title}


def _diff_cell(s: Mapping[str, Any] | None, better: str) -> Any:
    """The paired difference from the reference, coloured when its interval excludes 0."""
    if s is None or not math.isfinite(s["diff"]):
        return DASH
    if s["method"] == s["reference"]:
        return {"text": "reference", "class": "text"}
    words = comparison_words(s, better)
    text = difference_text(s)
    return {"text": text, "class": "" if words == "indistinguishable" else words, "title": words}


def _plain_cell(s: Mapping[str, Any] | None, metric: str) -> Any:
    """The mean alone: a percentage for the abstained rate."""
    return DASH if s is None else (percent if metric == ABSTAINED else fmt)(s["mean"])


# ---------------------------------------------------------------------- metric tables
def _headline_rows(
    cell: Mapping[tuple[str, str], Mapping[str, Any]],
    meta: Mapping[str, Any],
    metrics: Sequence[str],
    extra: Sequence[str],
) -> list[list[Any]]:
    """Per method scored on any of ``metrics`` (``cell``: summary rows by metric and
    method): mean and difference per metric, then the means of ``extra``."""
    better = better_of(meta)
    rows = []
    for method in ordered(meta.get("methods", {}), (k[1] for k in cell if k[0] in metrics)):
        if not any((m, method) in cell for m in metrics):
            continue
        row: list[Any] = [method]
        for m in metrics:
            s = cell.get((m, method))
            row += [_mean_cell(s), _diff_cell(s, better.get(m, ""))]
        row += [_plain_cell(cell.get((m, method)), m) for m in extra]
        rows.append(row)
    return rows


def headline_tables(
    summary: Sequence[Mapping[str, Any]],
    meta: Mapping[str, Any],
    headline: Sequence[str],
    max_columns: int | None = MAX_COLUMNS,
) -> list[dict[str, Any]]:
    """The headline table: per metric the mean and the paired difference from the
    reference, then the abstained rate and the seconds; one table per metric where one
    would have more than ``max_columns`` columns (None: never split)."""
    info = meta.get("metrics", {})
    cell = {(s["metric"], s["method"]): s for s in summary if s["comparison"] == "all"}
    ref = next((s["reference"] for s in cell.values() if s["reference"]), "the reference")
    extra = [m for m in (ABSTAINED, SECONDS) if m not in headline and any(k[0] == m for k in cell)]
    split = max_columns is not None and 1 + 2 * len(headline) + len(extra) > max_columns
    tables = []
    for metrics in chunks(headline, 1 if split else max(len(headline), 1)):
        n = {m: max((s["n"] for k, s in cell.items() if k[0] == m), default=0) for m in metrics}
        columns: list[Any] = ["method"]
        for m in metrics:
            columns += [_column(m, info, f"mean [95 % interval], n = {n[m]}"), f"minus {ref}"]
        columns += [_column(m, info) for m in extra]
        rows = _headline_rows(cell, meta, metrics, extra)
        tables.append({"columns": columns, "rows": rows, "caption": ", ".join(metrics)})
    return tables


def metric_tables(
    summary: Sequence[Mapping[str, Any]], meta: Mapping[str, Any], comparison: str
) -> list[dict[str, Any]]:
    """Every metric of one comparison, ``mean [lo, hi]`` (the difference from the
    reference as a tooltip), in tables of at most :data:`~comparisons.html.MAX_COLUMNS`
    columns."""
    rows = [s for s in summary if s["comparison"] == comparison]
    info = meta.get("metrics", {})
    cell = {(s["metric"], s["method"]): s for s in rows}
    metrics = sorted({s["metric"] for s in rows}, key=lambda m: (m in DEFAULT_BETTER, m))
    tables = []
    families: dict[str, list[str]] = {}
    for m in metrics:  # a family: the metrics named alike up to the first '/'
        families.setdefault(m.split("/")[0], []).append(m)
    for group in pack(list(families.values()), MAX_COLUMNS - 1):
        methods = ordered(meta.get("methods", {}), (s["method"] for s in rows))
        methods = [m for m in methods if any((x, m) in cell for x in group)]
        n = {m: max(cell[(m, x)]["n"] for x in methods if (m, x) in cell) for m in group}
        columns = ["method", *(_column(m, info, f"n = {n[m]}") for m in group)]
        body = [[method, *(_mean_cell(cell.get((m, method))) for m in group)] for method in methods]
        tables.append({"columns": columns, "rows": body})
    return tables


# ---------------------------------------------------------------------- sanity tables
def _sanity_cell(s: Mapping[str, Any] | None) -> Any:
    """Mean ρ signed / |score|, their intervals as a tooltip."""
    if s is None:
        return DASH
    signed = interval(s["rho"], s["rho_lo"], s["rho_hi"])
    title = f"signed {signed}; |score| {interval(s['rho_abs'], s['rho_abs_lo'], s['rho_abs_hi'])}"
    return {"text": f"{fmt(s['rho'])} / {fmt(s['rho_abs'])}", "title": title}


def _verdict_cell(v: Mapping[str, Any] | None) -> Any:
    """Pass or fail (or n/a for a run without |score| ρ), the numbers as a tooltip."""
    if v is None or v["passed"] is None:
        return {"text": "n/a", "title": "no |score| ρ or token counts in this run"}
    title = f"ρ {fmt(v['rho'])}, |score| ρ {fmt(v['rho_abs'])}, bound {fmt(v['bound'])}"
    word = "pass" if v["passed"] else "fail"
    return {"text": word, "class": "better" if v["passed"] else "worse", "title": title}


def sanity_tables(
    summary: Sequence[Mapping[str, Any]], verdicts: Mapping[str, Mapping[str, Any]]
) -> list[dict[str, Any]]:
    """Mean ρ signed / |score| per method and stage (stages split over tables of at
    most :data:`~comparisons.html.MAX_COLUMNS` columns), the verdict in the last column."""
    stages = list(dict.fromkeys(s["stage"] for s in summary))
    methods = list(dict.fromkeys(s["method"] for s in summary))
    cell = {(s["stage"], s["method"]): s for s in summary}
    n = {s["stage"]: s["n"] for s in summary}
    groups = chunks(stages, MAX_COLUMNS - 2)
    tables = []
    for i, group in enumerate(groups):
        last = i == len(groups) - 1
        columns = ["method", *({"label": st, "sub": f"n = {n[st]}"} for st in group)]
        rows = [[m, *(_sanity_cell(cell.get((st, m))) for st in group)] for m in methods]
        if last:
            columns.append("verdict")
            for m, row in zip(methods, rows, strict=True):
                row.append(_verdict_cell(verdicts.get(m)))
        tables.append({"columns": columns, "rows": rows})
    return tables


# ------------------------------------------------------------------------ definitions
def definitions_tables(meta: Mapping[str, Any]) -> list[dict[str, Any]]:
    """The run's methods (family, how a ranking is made, description) and metrics."""

    def text(x: object) -> dict[str, Any]:
        return {"text": x, "class": "text"}

    methods = [
        [
            name,
            text(m.get("family", "?")),
            text("signed score" if m.get("signed") else "|score|"),
            text(m.get("description", "")),
        ]
        for name, m in meta.get("methods", {}).items()
    ]
    metrics = [
        [name, text(m.get("better", "?")), text(m.get("description", ""))]
        for name, m in meta.get("metrics", {}).items()
    ]
    wide = {"label": "description", "width": "55%"}
    return [
        {"columns": ["method", "family", "ranked by", wide], "rows": methods, "width": 100},
        {"columns": ["metric", "better", wide], "rows": metrics, "width": 100},
    ]
