"""Captum's ``visualize_text`` rows, escaped, and the error bars it does not draw.

:func:`text_record` and :func:`text_table` are the one way this project writes Captum's
word-colouring table (the comparison harness uses them too); :func:`error_bars` adds one
row of bars per text, each word's score with ± one standard error, in plain HTML and
CSS so that a page opens offline.
"""

from __future__ import annotations

import contextlib
import html
import io
import math
from collections.abc import Sequence
from typing import Any

import numpy as np
from numpy.typing import ArrayLike

COLUMNS = ("True Label", "Predicted Label", "Attribution Label", "Attribution Score")
"""The headers of the four label columns of Captum's ``visualize_text`` table."""


class _Blank:
    """Formats as ``n/a`` under any format spec (``visualize_text`` needs a number)."""

    def __format__(self, spec: str) -> str:
        return "n/a"


def text_record(
    scores: ArrayLike,
    tokens: Sequence[str],
    name: str,
    *,
    label: object = None,
    pred: object = None,
    prob: float | None = None,
) -> Any:
    """One row of :func:`text_table`: ``scores`` divided by their largest ``|score|``.

    Non-finite scores count as 0; the Attribution Score column is the sum of the
    scores. Strings are escaped here, since Captum writes them into its HTML as given;
    a missing ``label`` or ``pred`` shows as a dash, a missing ``prob`` as ``n/a``.

    Args:
        scores: ``(T,)`` one score per token or word.
        tokens: ``(T,)`` the tokens or words.
        name: the row's name (Attribution Label).
        label: the true label (True Label).
        pred: the predicted label (Predicted Label).
        prob: the predicted probability, shown next to ``pred``.
    """
    from captum.attr import visualization as viz

    x = np.asarray(scores, dtype=float)
    x = np.where(np.isfinite(x), x, 0.0)
    top = float(np.abs(x).max()) if x.size else 0.0
    return viz.VisualizationDataRecord(
        (x / top if top > 0 else x).tolist(),
        _Blank() if prob is None else float(prob),
        "&ndash;" if pred is None else html.escape(str(pred)),
        "&ndash;" if label is None else html.escape(str(label)),
        html.escape(name),
        float(x.sum()),
        [html.escape(t) for t in tokens],
        math.nan,
    )


def text_table(
    records: Sequence[Any], legend: bool = True, columns: Sequence[str] | None = None
) -> str:
    """Captum's ``visualize_text`` table of ``records`` (:func:`text_record`), as HTML.

    Args:
        records: the rows.
        legend: Captum's colour legend above the table.
        columns: new headers for the four label columns (:data:`COLUMNS`), escaped;
            None keeps Captum's.

    Raises:
        ValueError: ``columns`` of another length than :data:`COLUMNS`.
    """
    from captum.attr import visualization as viz

    if columns is not None and len(columns) != len(COLUMNS):
        raise ValueError(f"columns: {len(COLUMNS)} headers ({', '.join(COLUMNS)})")
    with contextlib.redirect_stdout(io.StringIO()):  # it display()s and prints
        out = str(viz.visualize_text(list(records), legend=legend).data)
    for old, new in zip(COLUMNS, columns or COLUMNS, strict=True):
        out = out.replace(f"<th>{old}</th>", f"<th>{html.escape(new)}</th>", 1)
    return out


#: the style of :func:`error_bars` (one block per page)
ERROR_BAR_CSS = """
.cp-bars { display: flex; flex-wrap: wrap; gap: 4px 10px; align-items: flex-end;
           margin: 4px 0 14px 0; font: 13px sans-serif; }
.cp-word { display: flex; flex-direction: column; align-items: center; min-width: 34px; }
.cp-track { position: relative; width: 14px; height: 60px; background: #f2f2f2; }
.cp-bar { position: absolute; bottom: 0; left: 0; width: 14px; }
.cp-bar.for { background: #3a923a; } .cp-bar.against { background: #c0392b; }
.cp-bar.unsigned { background: #4f6fa8; }
.cp-err { position: absolute; left: 6px; width: 2px; background: #111; }
.cp-label { margin-top: 2px; white-space: nowrap; }
"""


def error_bars(
    words: Sequence[str],
    scores: ArrayLike,
    std_errors: ArrayLike,
    direction: ArrayLike | None = None,
    top: float | None = None,
) -> str:
    """One row of vertical bars, a word's score (nats) with ± one standard error as a
    black line; green / red where ``direction`` says the word pushes for / against the
    target, blue where unsigned. Heights are relative to ``top`` (default: the largest
    score + standard error here). Every string is escaped."""
    x = np.nan_to_num(np.asarray(scores, dtype=float))
    se = np.nan_to_num(np.asarray(std_errors, dtype=float))
    sign = None if direction is None else np.asarray(direction, dtype=float)
    scale = top if top is not None else float((x + se).max(initial=0.0))
    scale = scale if scale > 0 else 1.0
    cells = []
    for i, word in enumerate(words):
        kind = (
            "unsigned" if sign is None else {1: "for", -1: "against"}.get(int(sign[i]), "unsigned")
        )
        h = 100 * x[i] / scale
        lo, hi = 100 * max(x[i] - se[i], 0.0) / scale, 100 * min(x[i] + se[i], scale) / scale
        tip = f"{word}: {x[i]:.3g} ± {se[i]:.2g} nats"
        cells.append(
            f'<div class="cp-word" title="{html.escape(tip)}"><div class="cp-track">'
            f'<div class="cp-bar {kind}" style="height:{h:.1f}%"></div>'
            f'<div class="cp-err" style="bottom:{lo:.1f}%;height:{max(hi - lo, 3.0):.1f}%"></div>'
            f'</div><div class="cp-label">{html.escape(word)}</div></div>'
        )
    return '<div class="cp-bars">' + "".join(cells) + "</div>"
