"""Captum's ``visualize_text`` rows as a page fragment, every input string escaped."""

from __future__ import annotations

import contextlib
import io
import math
from collections.abc import Sequence
from typing import Any

import numpy as np
from markupsafe import Markup, escape
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
        scores: ``(T,)`` one score per token.
        tokens: ``(T,)`` the tokens.
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
        "&ndash;" if pred is None else str(escape(pred)),
        "&ndash;" if label is None else str(escape(label)),
        str(escape(name)),
        float(x.sum()),
        [str(escape(t)) for t in tokens],
        math.nan,
    )


def text_table(
    records: Sequence[Any], legend: bool = True, columns: Sequence[str] | None = None
) -> Markup:
    """Captum's ``visualize_text`` table of ``records`` (:func:`text_record`), as markup.

    Args:
        records: the rows.
        legend: Captum's colour legend above the table.
        columns: new headers for the four label columns (:data:`COLUMNS`), escaped;
            None keeps Captum's.
    """
    from captum.attr import visualization as viz

    if columns is not None and len(columns) != len(COLUMNS):
        raise ValueError(f"columns: {len(COLUMNS)} headers ({', '.join(COLUMNS)})")
    with contextlib.redirect_stdout(io.StringIO()):  # it display()s and prints
        html = str(viz.visualize_text(list(records), legend=legend).data)
    for old, new in zip(COLUMNS, columns or COLUMNS, strict=True):
        html = html.replace(f"<th>{old}</th>", f"<th>{escape(new)}</th>", 1)
    return Markup(html)
