"""The HTML report of a run folder: one self-contained page that opens offline.

:func:`write_report` reads a run folder (see :mod:`comparisons.store`) and writes one
HTML file holding

* the run's description (model, data, date, command, notes) and how each method's
  scores are turned into a token ranking (signed, or by absolute value);
* a summary table, methods × metrics, of ``mean [lo, hi]`` (95 % bootstrap interval,
  :func:`comparisons.store.summarize`), the best mean per metric in bold with a ★, the
  seconds per example as a column;
* when ``meta.json`` names a ``reference`` method: each method's paired difference from
  it (:func:`comparisons.store.paired_differences`), and a ★ only where the best mean's
  paired interval against the runner-up excludes 0 (:func:`comparisons.store.paired_best`);
* figures, as embedded PNGs: mean deletion/insertion curves per method; faithfulness
  against seconds per example; mean sanity-check Spearman ρ per randomisation stage;
* per example, one Captum ``visualize_text`` row per method.

No script, stylesheet or image is fetched from anywhere: everything is inline. Every
string that comes from the run's data is HTML-escaped.
"""

from __future__ import annotations

import base64
import contextlib
import html
import io
import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from comparisons.store import (
    BOOTSTRAP_RESAMPLES,
    RunStore,
    paired_best,
    paired_differences,
    summarize,
)

FAITHFULNESS_DEFAULTS = ("aopc_comprehensiveness/eraser/mask", "tau_loo/mask")
"""The metrics the trade-off figure plots by default, in order of preference."""

_FAITHFUL_WORDS = ("comprehensiveness", "tau_loo", "deletion", "insertion", "sufficiency")
_SECONDS = "seconds"
_CURVE_GRID = np.linspace(0.0, 1.0, 101)
_CSS = """
body { font-family: sans-serif; margin: 2em; max-width: 75em; }
table.summary { border-collapse: collapse; }
table.summary th, table.summary td { border: 1px solid #bbb; padding: 0.3em 0.6em; }
table.summary td { text-align: right; font-variant-numeric: tabular-nums; }
table.summary td.best { background: #e8f4e8; }
table.summary td.text { text-align: left; }
div.wide { overflow-x: auto; }
th[title] { text-decoration: underline dotted; cursor: help; }
p.note { color: #666; font-style: italic; }
img { max-width: 100%; }
code { background: #f4f4f4; padding: 0.1em 0.3em; }
"""


def _esc(value: object) -> str:
    return html.escape(str(value))


def _fmt(x: float) -> str:
    return "nan" if not math.isfinite(x) else f"{x:.3g}"


def _ordered(first: Sequence[str], seen: Sequence[str]) -> list[str]:
    """``first`` then the names of ``seen`` not in it, each once, in order."""
    return list(dict.fromkeys([*first, *seen]))


class _Blank:
    """Formats as ``n/a`` under any format spec (``visualize_text`` needs a number)."""

    def __format__(self, spec: str) -> str:
        return "n/a"


def _png(fig: Any, alt: str) -> str:
    """An ``<img>`` holding ``fig`` as a base64 PNG data URI."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    FigureCanvasAgg(fig)
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=100, bbox_inches="tight")
    data = base64.b64encode(buf.getvalue()).decode("ascii")
    return f'<img alt="{_esc(alt)}" src="data:image/png;base64,{data}">'


def _figure(ncols: int = 1, width: float = 5.5, height: float = 4.0) -> tuple[Any, Any]:
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width * ncols, height), layout="constrained")
    return fig, fig.subplots(1, ncols, squeeze=False)[0]


def _colors(methods: Sequence[str]) -> dict[str, Any]:
    import matplotlib

    cmap = matplotlib.colormaps["tab10"]
    return {m: cmap(i % 10) for i, m in enumerate(methods)}


def _header(meta: Mapping[str, Any], title: str) -> str:
    facts = "".join(
        f"<tr><th>{_esc(k)}</th><td>{_esc(meta.get(k, '?'))}</td></tr>"
        for k in ("model", "data", "task", "seed", "date")
    )
    facts += f"<tr><th>command</th><td><code>{_esc(meta.get('command', '?'))}</code></td></tr>"
    notes = "".join(f"<li>{_esc(n)}</li>" for n in meta.get("notes", []))
    rows = "".join(
        f"<tr><td>{_esc(name)}</td><td>{_esc(m.get('family', '?'))}</td>"
        f"<td>{'signed score' if m.get('signed') else '|score|'}</td>"
        f"<td>{'yes' if m.get('stochastic') else 'no'}</td>"
        f'<td class="text">{_esc(m.get("description", ""))}</td></tr>'
        for name, m in meta.get("methods", {}).items()
    )
    return (
        f"<h1>{_esc(title)}</h1><table>{facts}</table>"
        + (f"<h3>Notes</h3><ul>{notes}</ul>" if notes else "")
        + "<h2>Methods</h2><p>Token rankings (top-k rationales, deletion order) use the "
        "signed score (evidence for the predicted class first) or its absolute value "
        "(importance in either direction), as listed.</p>"
        '<table class="summary"><tr><th>method</th><th>family</th><th>ranked by</th>'
        f"<th>stochastic</th><th>description</th></tr>{rows}</table>"
    )


def _summary_table(
    summary: list[dict[str, Any]],
    methods: Sequence[str],
    metrics: Sequence[str],
    info: Mapping[str, Mapping[str, str]],
    seed: int,
    best_rule: str = "the best mean of the column",
) -> str:
    cells = {(s["method"], s["metric"]): s for s in summary}
    arrows = {"higher": "↑", "lower": "↓"}
    head = "".join(
        f'<th title="{_esc(info.get(m, {}).get("description", ""))}">{_esc(m)}&nbsp;'
        f"{arrows.get(info.get(m, {}).get('better', ''), '')}</th>"
        for m in metrics
    )
    body = []
    for method in methods:
        row = [f"<th>{_esc(method)}</th>"]
        for metric in metrics:
            s = cells.get((method, metric))
            if s is None:
                row.append("<td>&ndash;</td>")
                continue
            text = f"{_fmt(s['mean'])} [{_fmt(s['lo'])}, {_fmt(s['hi'])}]"
            if s["best"]:
                row.append(f'<td class="best" title="n = {s["n"]}"><b>{text}</b>&nbsp;★</td>')
            else:
                row.append(f'<td title="n = {s["n"]}">{text}</td>')
        body.append("<tr>" + "".join(row) + "</tr>")
    legend = "".join(
        f"<dt><b>{_esc(m)}</b> ({_esc(info.get(m, {}).get('better', '?'))} is better)</dt>"
        f"<dd>{_esc(info.get(m, {}).get('description', ''))}</dd>"
        for m in metrics
    )
    return (
        "<h2>Summary</h2>"
        f'<div class="wide"><table class="summary"><tr><th>method</th>{head}</tr>'
        f"{''.join(body)}</table></div>"
        "<p>Cells: mean over examples [95 % percentile bootstrap interval over examples, "
        f"{BOOTSTRAP_RESAMPLES} resamples, seed {seed}]; NaN values left out. "
        f"<b>Bold</b> with ★: {_esc(best_rule)}. ↑ higher is better, ↓ lower.</p>"
        f"<dl>{legend}</dl>"
    )


def _paired_table(
    diffs: list[dict[str, Any]],
    best: Mapping[str, Mapping[str, Any]],
    methods: Sequence[str],
    metrics: Sequence[str],
    info: Mapping[str, Mapping[str, str]],
    reference: str,
) -> str:
    """Methods × metrics of ``diff [lo, hi]`` against ``reference``, and the best rule."""
    cells = {(d["method"], d["metric"]): d for d in diffs}
    head = "".join(f"<th>{_esc(m)}</th>" for m in metrics)
    body = []
    for method in (m for m in methods if m != reference):
        row = [f"<th>{_esc(method)}</th>"]
        for metric in metrics:
            d = cells.get((method, metric))
            if d is None:
                row.append("<td>&ndash;</td>")
                continue
            text = f"{_fmt(d['diff'])} [{_fmt(d['lo'])}, {_fmt(d['hi'])}]"
            sign = {"higher": 1.0, "lower": -1.0}.get(info.get(metric, {}).get("better", ""), 0.0)
            excludes = d["lo"] > 0 or d["hi"] < 0
            if excludes and sign * d["diff"] > 0:
                row.append(f'<td class="best" title="n = {d["n"]}">{text}&nbsp;▲</td>')
            elif excludes and sign * d["diff"] < 0:
                row.append(f'<td title="n = {d["n"]}">{text}&nbsp;▼</td>')
            else:
                row.append(f'<td title="n = {d["n"]}">{text}</td>')
        body.append("<tr>" + "".join(row) + "</tr>")
    rules = "".join(
        f"<li>{_esc(metric)}: leader {_esc(b['leader'])}, runner-up {_esc(b['runner_up'])}, "
        f"difference {_fmt(b['diff'])} [{_fmt(b['lo'])}, {_fmt(b['hi'])}] (n = {b['n']}) "
        f"&rarr; best: <b>{_esc(b['method'] or 'none')}</b></li>"
        for metric, b in best.items()
        if metric in metrics
    )
    return (
        f"<h2>Paired differences from {_esc(reference)}</h2>"
        f'<div class="wide"><table class="summary"><tr><th>method</th>{head}</tr>'
        f"{''.join(body)}</table></div>"
        f"<p>Cells: mean over examples of (method − {_esc(reference)}) [95 % paired "
        "percentile bootstrap interval: the same resamples of the examples for every "
        "method]. ▲: the interval lies on the better side of 0 (green), ▼: on the worse "
        "side.</p><h3>Best method per metric</h3><p>The method with the best mean is "
        "marked best only where its paired interval against the runner-up excludes 0 (the "
        "floor left out; a method's two rankings, signed and |score|, are not each other's "
        f"runner-up).</p><ul>{rules}</ul>"
    )


def _curves_figure(curves: list[dict[str, Any]], methods: Sequence[str]) -> Any | None:
    """One panel per curve kind, the mean curve of each method over its examples."""
    kinds = list(dict.fromkeys(c["curve"] for c in curves))
    if not kinds:
        return None
    colors = _colors(methods)
    fig, axes = _figure(len(kinds), width=4.5)
    for ax, kind in zip(axes, kinds, strict=True):
        for method in methods:
            grid = [
                np.interp(_CURVE_GRID, np.linspace(0, 1, len(c["values"])), c["values"])
                if len(c["values"]) > 1
                else np.full_like(_CURVE_GRID, c["values"][0])
                for c in curves
                if c["curve"] == kind and c["method"] == method and c["values"]
            ]
            grid = [g for g in grid if np.isfinite(g).all()]
            if not grid:
                continue
            mean = np.mean(grid, axis=0)
            area = float(np.sum((mean[1:] + mean[:-1]) / 2 * np.diff(_CURVE_GRID)))
            label = f"{method} (area {area:.3f}, n={len(grid)})"
            ax.plot(_CURVE_GRID, mean, color=colors[method], label=label)
        ax.set_title(kind)
        ax.set_xlabel("fraction of tokens, in the method's order")
        ax.set_ylabel("mean over examples")
        ax.legend(fontsize="small")
    return fig


def _tradeoff_figure(
    summary: list[dict[str, Any]], methods: Sequence[str], metric: str, better: str
) -> Any | None:
    """Mean faithfulness against mean seconds per example, one labelled point per method."""
    cells = {(s["method"], s["metric"]): s for s in summary}
    points = [
        (m, cells[(m, _SECONDS)], cells[(m, metric)])
        for m in methods
        if (m, _SECONDS) in cells and (m, metric) in cells
    ]
    points = [p for p in points if p[1]["mean"] > 0 and math.isfinite(p[2]["mean"])]
    points = [p for p in points if not p[0].endswith("|abs")]  # the table has those
    if not points:
        return None
    colors = _colors(methods)
    fig, (ax,) = _figure()
    for method, sec, val in points:
        err = [[val["mean"] - val["lo"]], [val["hi"] - val["mean"]]]
        ax.errorbar(sec["mean"], val["mean"], yerr=err, fmt="o", color=colors[method], label=method)
    ax.legend(fontsize="small", loc="upper left", bbox_to_anchor=(1.01, 1.0))
    ax.set_xscale("log")
    ax.set_xlabel("seconds per example (mean, log scale)")
    ax.set_ylabel(f"{metric} ({better} is better)")
    ax.set_title("Faithfulness against cost")
    return fig


def _sanity_figure(sanity: list[dict[str, Any]], methods: Sequence[str]) -> Any | None:
    """Mean Spearman ρ against randomisation stage, one line per method."""
    if not sanity:
        return None
    stages: dict[int, str] = {}
    for r in sanity:
        stages.setdefault(int(r["stage_index"]), str(r["stage"]))
    order = sorted(stages)
    colors = _colors(methods)
    fig, (ax,) = _figure(width=6.5)
    for method in methods:
        means = []
        for k in order:
            v = [r["spearman"] for r in sanity if r["method"] == method and r["stage_index"] == k]
            v = [x for x in v if math.isfinite(x)]
            means.append(float(np.mean(v)) if v else math.nan)
        if any(math.isfinite(x) for x in means):
            ax.plot(range(len(order)), means, marker="o", color=colors[method], label=method)
    ax.axhline(0.0, color="grey", linewidth=0.8)
    ax.set_xticks(range(len(order)), [stages[k] for k in order], rotation=30, ha="right")
    ax.set_ylabel("Spearman ρ with the original explanation")
    ax.set_xlabel("randomisation stage (weights re-initialised from the top down)")
    ax.set_title("Sanity check (near 0 passes)")
    ax.legend(fontsize="small", loc="upper left", bbox_to_anchor=(1.01, 1.0))
    return fig


def _example_tables(
    explanations: list[dict[str, Any]], methods: Sequence[str], max_examples: int
) -> str:
    """One Captum ``visualize_text`` table per example, one row per method."""
    from captum.attr import visualization as viz

    latest = {(e["method"], e["example"]): e for e in explanations}
    # '<m>|abs' is a second ranking of m's explanation, not an explanation of its own
    methods = [m for m in methods if not (m.endswith("|abs") and m[: -len("|abs")] in methods)]
    examples = list(dict.fromkeys(e["example"] for e in explanations))
    parts = [
        f"<h2>Examples ({min(max_examples, len(examples))} of {len(examples)})</h2>"
        "<p>One row per method. Colour: the stored score divided by the row's largest "
        "|score| (green positive, red negative); Attribution Score: the sum of the "
        "stored scores.</p>"
    ]
    for i, example in enumerate(examples[:max_examples]):
        rows = [latest[(m, example)] for m in methods if (m, example) in latest]
        records = []
        for r in rows:
            scores = np.asarray(r["scores"], dtype=float)
            scores = np.where(np.isfinite(scores), scores, 0.0)
            if r.get("special") is not None:  # never ranked: not coloured, not scaled by
                scores = np.where(np.asarray(r["special"], dtype=bool), 0.0, scores)
            top = float(np.abs(scores).max()) if scores.size else 0.0
            scaled = scores / top if top > 0 else scores
            prob = r.get("prob")
            records.append(
                viz.VisualizationDataRecord(
                    scaled.tolist(),
                    _Blank() if prob is None else float(prob),
                    "&ndash;" if r["pred"] is None else _esc(r["pred"]),
                    "&ndash;" if r["label"] is None else _esc(r["label"]),
                    _esc(r["method"]),
                    float(np.sum(scores)),
                    [_esc(t) for t in r["tokens"]],
                    math.nan,
                )
            )
        with contextlib.redirect_stdout(io.StringIO()):  # it display()s and prints
            table = viz.visualize_text(records, legend=i == 0).data
        missing = [m for m in methods if (m, example) not in latest]
        parts.append(
            f"<h3>{_esc(example)}</h3><p>{_esc(rows[0]['text'])}</p>{table}"
            + (f'<p class="note">Not explained: {_esc(", ".join(missing))}</p>' if missing else "")
        )
    return "".join(parts)


def _pick_metric(metrics: Sequence[str], available: set[str]) -> str | None:
    for m in FAITHFULNESS_DEFAULTS:
        if m in available:
            return m
    faithful = [m for m in metrics if any(w in m for w in _FAITHFUL_WORDS) and m in available]
    others = [m for m in metrics if m != _SECONDS and m in available]
    candidates = faithful or others
    return candidates[0] if candidates else None


def write_report(
    run_dir: Path | str,
    path: Path | str | None = None,
    *,
    max_examples: int = 10,
    title: str | None = None,
    faithfulness_metric: str | None = None,
    seed: int = 0,
) -> Path:
    """Write the self-contained HTML report of a run folder.

    Args:
        run_dir: the run folder (``meta.json`` must exist; the other files may not).
        path: where to write it (default: ``run_dir / "report.html"``).
        max_examples: how many examples get per-token heatmaps (the first written).
        title: the page title (default: from the model and data of ``meta.json``).
        faithfulness_metric: the y axis of the faithfulness-against-seconds figure
            (default: the first of :data:`FAITHFULNESS_DEFAULTS` present, else the
            first metric that looks like a faithfulness metric, else the first metric).
        seed: seed of the bootstrap intervals.

    Returns:
        The path written.
    """
    if not (Path(run_dir) / RunStore.META).is_file():
        raise FileNotFoundError(f"{run_dir} holds no {RunStore.META}: not a run folder")
    store = RunStore(run_dir)
    meta = store.read_meta()
    out = Path(path) if path is not None else store.run_dir / "report.html"
    results, explanations = store.results(), store.explanations()
    curves, sanity = store.curves(), store.sanity()
    if not any(r["metric"] == _SECONDS for r in results):  # fall back on the explanations
        results += [
            {
                "method": e["method"],
                "example": e["example"],
                "metric": _SECONDS,
                "value": e["seconds"],
            }
            for e in {(e["method"], e["example"]): e for e in explanations}.values()
        ]
    info: dict[str, dict[str, str]] = {k: dict(v) for k, v in meta.get("metrics", {}).items()}
    info.setdefault(_SECONDS, {"better": "lower", "description": "wall time per example (s)"})
    seen = [r["method"] for r in results] + [e["method"] for e in explanations]
    methods = _ordered(list(meta.get("methods", {})), seen)
    metrics = _ordered([m for m in info if m != _SECONDS], [r["metric"] for r in results])
    metrics = [m for m in metrics if m != _SECONDS] + [_SECONDS]
    better = {m: v["better"] for m, v in info.items() if "better" in v}
    summary = summarize(results, better, seed=seed)
    # the floor (e.g. 'random': sensitivity 0, seconds ~0) is a reference, never the best
    floors = {m for m, v in meta.get("methods", {}).items() if v.get("family") == "floor"}
    for s in summary:
        if s["best"] and s["method"] in floors:
            s["best"] = False
            rest = [
                t for t in summary
                if t["metric"] == s["metric"] and t["method"] not in floors
                and math.isfinite(t["mean"])
            ]  # fmt: skip
            if rest:
                pick = max if better.get(s["metric"]) == "higher" else min
                top = pick(t["mean"] for t in rest)
                for t in rest:
                    t["best"] = t["best"] or t["mean"] == top
    title = title or f"Attribution methods compared: {meta.get('model')} on {meta.get('data')}"

    reference = meta.get("reference")
    if reference:  # a ★ needs a paired interval against the runner-up that excludes 0
        best = paired_best(
            results, better, exclude=floors, seed=seed, group=lambda m: m.removesuffix("|abs")
        )
        for s in summary:
            s["best"] = best.get(s["metric"], {}).get("method") == s["method"]
        rule = "the best mean, where its paired interval against the runner-up excludes 0"
        body = [_header(meta, title), _summary_table(summary, methods, metrics, info, seed, rule)]
        diffs = paired_differences(results, reference, seed=seed)
        body.append(_paired_table(diffs, best, methods, metrics, info, reference))
    else:
        body = [_header(meta, title), _summary_table(summary, methods, metrics, info, seed)]
    body.append("<h2>Figures</h2>")
    available = {s["metric"] for s in summary}
    chosen = faithfulness_metric or _pick_metric(metrics, available)
    figures = [
        (
            "Deletion and insertion curves",
            _curves_figure(curves, methods),
            "no curves.jsonl rows",
            "Each example's curve is interpolated onto 101 points in [0, 1], then averaged. "
            "On a classifier (p of the predicted class) a lower deletion area and a higher "
            "insertion area are better.",
        ),
        (
            f"Faithfulness ({chosen}) against seconds per example",
            _tradeoff_figure(summary, methods, chosen, better.get(chosen, "?")) if chosen else None,
            f"no positive seconds and finite {chosen!s} for any method",
            "Error bars: the 95 % bootstrap interval of the summary table.",
        ),
        (
            "Sanity check",
            _sanity_figure(sanity, methods),
            "no sanity.jsonl rows",
            "Mean Spearman ρ between each explanation and the one of the model randomised "
            "down to that stage: near 0 means the explanation depends on the weights.",
        ),
    ]
    for caption, fig, why, note in figures:
        body.append(f"<h3>{_esc(caption)}</h3>")
        if fig is None:
            body.append(f'<p class="note">Skipped: {_esc(why)}.</p>')
        else:
            body.append(f"{_png(fig, caption)}<p>{_esc(note)}</p>")
    if explanations:
        body.append(_example_tables(explanations, methods, max_examples))
    else:
        body.append('<p class="note">No explanations stored: example heatmaps skipped.</p>')
    page = (
        '<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
        f"<title>{_esc(title)}</title><style>{_CSS}</style></head><body>"
        + "".join(body)
        + f'<p class="note">Written by comparisons.report from the run folder '
        f"{_esc(store.run_dir.name)}.</p></body></html>\n"
    )
    out.write_text(page, encoding="utf-8")
    return out


def degenerate_examples(run_dir: str | Path, method: str) -> set[str]:
    """Examples whose explanation by ``method`` is all zeros (it ranks nothing)."""
    return {
        e["example"]
        for e in RunStore(run_dir).explanations()
        if e["method"] == method and not any(abs(float(x)) > 0 for x in e["scores"])
    }


def summary_markdown(
    run_dir: str | Path,
    metrics: Sequence[str],
    *,
    seed: int = 0,
    digits: int = 3,
    exclude: set[str] | None = None,
) -> str:
    """The summary (mean [95 % interval], n) of chosen metrics as a Markdown table.

    For the README and the docs: one row per method, one column per metric, the best
    mean of each column in bold. ``exclude``: examples left out (for every method).
    """
    store = RunStore(run_dir)
    meta = store.read_meta()
    info = meta.get("metrics", {})
    better = {m: v["better"] for m, v in info.items() if "better" in v}
    better.setdefault(_SECONDS, "lower")
    rows = [r for r in store.results() if not exclude or r["example"] not in exclude]
    summary = summarize(rows, better, seed=seed)
    cell = {(r["metric"], r["method"]): r for r in summary}
    methods = _ordered(list(meta.get("methods", {})), [r["method"] for r in summary])
    arrows = {"higher": " ↑", "lower": " ↓"}
    head = "| method | " + " | ".join(f"{m}{arrows.get(better.get(m, ''), '')}" for m in metrics)
    lines = [head + " |", "|---" * (len(metrics) + 1) + "|"]
    for method in methods:
        row = [method]
        for m in metrics:
            r = cell.get((m, method))
            if r is None or not math.isfinite(r["mean"]):
                row.append("—")
                continue
            text = f"{r['mean']:.{digits}g} [{r['lo']:.{digits}g}, {r['hi']:.{digits}g}] ({r['n']})"
            row.append(f"**{text}**" if r["best"] else text)
        lines.append("| " + " | ".join(row) + " |")
    return "\n".join(lines) + "\n"
