"""The per-example section of the report: one Captum ``visualize_text`` row per method.

:func:`example_sections` turns the stored explanations
(:meth:`comparisons.study.store.RunStore.explanations`) into the heatmaps of the first
examples, with :func:`comparisons.html.text_record` and
:func:`comparisons.html.text_table`. A ranking ``"<name>|abs"`` ranks the explanation of
``<name>``, so it gets no row of its own when ``<name>`` has one.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from comparisons.html import text_record, text_table
from comparisons.study.summary import base_method, is_abs


def _shown(explanation: Mapping[str, Any]) -> np.ndarray:
    """The scores of an explanation, special tokens (never ranked) set to 0.

    Example:
        >>> _shown({"scores": [0.5, -1.0, 2.0], "special": [True, False, False]})
        array([ 0., -1.,  2.])
    """
    scores = np.asarray(explanation["scores"], dtype=float)
    special = explanation.get("special")
    return scores if special is None else np.where(np.asarray(special, bool), 0.0, scores)


def _record(explanation: Mapping[str, Any]) -> Any:
    """Captum's record of one explanation (its method as the attribution label)."""
    return text_record(
        _shown(explanation),
        explanation["tokens"],
        explanation["method"],
        label=explanation["label"],
        pred=explanation["pred"],
        prob=explanation.get("prob"),
    )


def example_sections(
    explanations: Sequence[Mapping[str, Any]], methods: Sequence[str], max_examples: int
) -> list[dict[str, Any]]:
    """Per example (the first ``max_examples``): its id, text, Captum's table of one
    row per method (special tokens uncoloured) and the methods that did not explain it."""
    latest = {(e["method"], e["example"]): e for e in explanations}
    explained = {m for m, _ in latest}  # '<m>|abs' is a second ranking of m's explanation
    methods = [
        m for m in methods if m in explained and not (is_abs(m) and base_method(m) in methods)
    ]
    examples = list(dict.fromkeys(e["example"] for e in explanations))[:max_examples]
    out = []
    for i, example in enumerate(examples):
        rows = [latest[(m, example)] for m in methods if (m, example) in latest]
        missing = [m for m in methods if (m, example) not in latest]
        table = text_table([_record(r) for r in rows], legend=i == 0)
        out.append({"id": example, "text": rows[0]["text"], "html": table, "missing": missing})
    return out
