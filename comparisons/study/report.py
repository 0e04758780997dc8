"""The HTML report of a run folder: one self-contained page, read at a glance.

:func:`write_report` reads a run folder (see :mod:`comparisons.study.store`) and writes
one HTML page (template ``study_report.html.j2`` of :mod:`comparisons.html`), top to
bottom:

* a header line: model, data, number of examples, date, command;
* one figure: per headline metric, each ranking's paired difference from the reference
  method with its 95 % interval, and the seconds per example on a log axis
  (:mod:`comparisons.study.figures`);
* a verdict paragraph written from the numbers (:mod:`comparisons.study.verdict`);
* the headline table, the tables of every metric and of the subset comparisons
  (:mod:`comparisons.study.tables`);
* the sanity check (:mod:`comparisons.study.sanity`): ρ per stage, pass or fail;
* the mean deletion/insertion curves and, per example, one Captum ``visualize_text``
  row per method (:mod:`comparisons.study.heatmaps`);
* the methods and metrics of the run.

Every number comes from :func:`comparisons.stats.summarize` (means, paired differences
from the reference, the ★; see :mod:`comparisons.study.summary`) or
:func:`comparisons.study.sanity.sanity_summary`. The *headline* metrics and the
*reference* come from ``meta.json`` (``headline``, ``reference``), else from
:data:`~comparisons.study.vocabulary.HEADLINE` and
:data:`~comparisons.study.vocabulary.REFERENCE`. Nothing is fetched from anywhere; every
string from the run's data is escaped by the templates.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from comparisons.html import figure_data_uri, markdown, render
from comparisons.stats import BOOTSTRAP_RESAMPLES
from comparisons.study.figures import curves_figure, overview_figure, sanity_figure
from comparisons.study.heatmaps import example_sections
from comparisons.study.sanity import sanity_summary, sanity_verdicts
from comparisons.study.store import RunStore
from comparisons.study.summary import (
    headline_of,
    ordered,
    reference_of,
    study_summary,
    with_known_metrics,
)
from comparisons.study.tables import (
    definitions_tables,
    headline_tables,
    metric_tables,
    sanity_tables,
)
from comparisons.study.verdict import verdict
from comparisons.study.vocabulary import ABSTAINED, SECONDS

STAR_RULE = (
    "Best method per metric (bold, ★): the best mean, only where the paired 95 % interval "
    "of leader − runner-up excludes 0 (the floor is never best; a method's signed and "
    "|score| rankings are not each other's runner-up)."
)


def _with_seconds(
    results: list[dict[str, Any]], explanations: Sequence[Mapping[str, Any]]
) -> list[dict[str, Any]]:
    """The results, with the explanations' seconds where the results have none."""
    if any(r["metric"] == SECONDS for r in results):
        return results
    latest = {(e["method"], e["example"]): e for e in explanations}
    extra = [
        {"method": m, "example": ex, "metric": SECONDS, "value": e["seconds"]}
        for (m, ex), e in latest.items()
    ]
    return results + extra


def _header(meta: Mapping[str, Any], n_examples: int, title: str | None) -> dict[str, Any]:
    """The title, the header line and the command of the page."""
    return {
        "title": title
        or f"Attribution methods compared: {meta.get('model')} on {meta.get('data')}",
        "header": [
            f"model {meta.get('model', '?')}",
            f"data {meta.get('data', '?')}",
            f"{n_examples} examples",
            str(meta.get("date", "?")),
        ],
        "command": meta.get("command", "?"),
    }


def _context(store: RunStore, title: str | None, settings: Mapping[str, Any]) -> dict[str, Any]:
    """The names of ``study_report.html.j2`` for the run of ``store``."""
    explanations, sanity_rows = store.explanations(), store.sanity()
    results = _with_seconds(store.results(), explanations)
    meta = with_known_metrics(store.read_meta(), results)
    methods = ordered(meta.get("methods", {}), (r["method"] for r in [*results, *explanations]))
    ref = reference_of(meta, results, settings["reference"])
    summary = study_summary(results, meta, ref, settings["seed"])
    chosen = list(settings["headline"] or headline_of(meta, (s["metric"] for s in summary)))
    verdicts = sanity_verdicts(sanity_rows)
    sanity = sanity_summary(sanity_rows, settings["seed"])
    subsets = dict.fromkeys(s["comparison"] for s in summary if s["comparison"] != "all")
    figures = {
        "overview": overview_figure(summary, meta, chosen, ref),
        "curves": curves_figure(store.curves(), methods),
        "sanity": sanity_figure(sanity),
    }
    return {
        **_header(meta, len({r["example"] for r in [*results, *explanations]}), title),
        "reference": ref,
        "figures": {k: None if f is None else figure_data_uri(f) for k, f in figures.items()},
        "verdict": verdict(summary, results, verdicts, meta, chosen, ref, settings["seed"]),
        "headline_tables": headline_tables(summary, meta, chosen),
        "metric_tables": metric_tables(summary, meta, "all"),
        "subset_tables": [(label, metric_tables(summary, meta, label)) for label in subsets],
        "star_rule": STAR_RULE,
        "resamples": BOOTSTRAP_RESAMPLES,
        "seed": settings["seed"],
        "abstained": any(s["metric"] == ABSTAINED for s in summary),
        "sanity_tables": sanity_tables(sanity, verdicts) if sanity else [],
        "sanity_bound": next(iter(verdicts.values()), {}).get("bound", math.nan),
        "examples": example_sections(explanations, methods, settings["max_examples"]),
        "n_examples": len({e["example"] for e in explanations}),
        "definitions": definitions_tables(meta),
        "notes": meta.get("notes", []),
        "run_name": store.run_dir.name,
    }


def write_report(
    run_dir: Path | str,
    path: Path | str | None = None,
    *,
    max_examples: int = 10,
    title: str | None = None,
    seed: int = 0,
    reference: str | None = None,
    headline: Sequence[str] | None = None,
) -> Path:
    """Write the self-contained HTML report of a run folder.

    Args:
        run_dir: the run folder (``meta.json`` must exist; the other files may not).
        path: where to write it (default: ``run_dir / "report.html"``).
        max_examples: how many examples get per-token heatmaps (the first written).
        title: the page title (default: from the model and data of ``meta.json``).
        seed: seed of the bootstrap intervals.
        reference: the method differences are taken from (default: :func:`reference_of`).
        headline: the metrics of the top figure and the verdict (default:
            :func:`headline_of`).

    Returns:
        The path written.
    """
    if not (Path(run_dir) / RunStore.META).is_file():
        raise FileNotFoundError(f"{run_dir} holds no {RunStore.META}: not a run folder")
    store = RunStore(run_dir)
    settings = {"max_examples": max_examples, "seed": seed, "reference": reference}
    context = _context(store, title, {**settings, "headline": headline})
    out = Path(path) if path is not None else store.run_dir / "report.html"
    out.write_text(render("study_report.html.j2", **context), encoding="utf-8")
    return out


def summary_markdown(
    run_dir: str | Path,
    metrics: Sequence[str] | None = None,
    *,
    seed: int = 0,
    reference: str | None = None,
) -> str:
    """The headline table of a run as one Markdown table, for the README and the docs.

    Per metric, ``mean [95 % interval]`` (bold with ★ by :data:`STAR_RULE`) and the
    paired difference from the reference, with ``n`` in the header; then the abstained
    rate and the seconds per example.

    Args:
        run_dir: the run folder.
        metrics: the metrics (default: the headline metrics, :func:`headline_of`).
        seed: seed of the bootstrap.
        reference: the method differences are from (default: :func:`reference_of`).
    """
    store = RunStore(run_dir)
    rows = store.results()
    meta = with_known_metrics(store.read_meta(), rows)
    ref = reference_of(meta, rows, reference)
    summary = study_summary(rows, meta, ref, seed)
    chosen = list(metrics or headline_of(meta, (s["metric"] for s in summary)))
    (table,) = headline_tables(summary, meta, chosen, max_columns=None)
    return markdown(table)
