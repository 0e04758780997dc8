"""Captum's ``visualize_text`` rows as a page fragment, every input string escaped.

The helpers are the package's (:mod:`captum_perturb.hf`, one set of HTML helpers for the
library's explanations and the harness's pages); here the table comes back as markup for
the harness's jinja2 templates.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from markupsafe import Markup

from captum_perturb.hf import text_record
from captum_perturb.hf import text_table as _text_table


def text_table(
    records: Sequence[Any], legend: bool = True, columns: Sequence[str] | None = None
) -> Markup:
    """:func:`captum_perturb.hf.text_table` as markup (its strings are escaped there)."""
    return Markup(_text_table(records, legend=legend, columns=columns))


__all__ = ["text_record", "text_table"]
