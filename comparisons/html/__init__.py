"""The page helpers every HTML page of the harness is built with.

One jinja2 environment (templates in ``comparisons/html/templates/``, autoescaped, an
undefined name an error) renders every page: :func:`render` fills a template, the
templates extend ``base.html.j2`` (the page shell and its one stylesheet) and import the
``table`` and ``figure`` macros of ``macros.html.j2``. Figures are embedded as PNG data
URIs (:func:`figure_data_uri`), so a page opens offline; numbers are written by
:func:`fmt`, :func:`interval` and :func:`percent`, also available in the templates as
filters of the same names.

* :mod:`.templating` — the environment, :func:`render` and the number formats;
* :mod:`.figures` — :func:`figure_data_uri`, :func:`palette`, :func:`interval_panel`;
* :mod:`.tables` — :data:`MAX_COLUMNS`, :func:`chunks` and :func:`pack` to split wide
  tables, :func:`markdown` for a table in a README;
* :mod:`.captum` — Captum's ``visualize_text`` rows (:func:`text_record`,
  :func:`text_table`), inputs escaped.

A table, as the ``table`` macro takes it, is a mapping with ``columns`` (each a string
or ``{"label", "title", "sub", "width"}``: a tooltip, a second line, a share of the
width), ``rows`` (lists of cells; the first cell of a row is its header) and optional
``caption``, ``note`` and ``width`` (percent of the page). A cell is a value, or a
mapping with ``text`` and optional ``title`` (a tooltip), ``best`` (bold, with a ★) and
``class`` (``text``: left-aligned; ``nowrap``: on one line; ``better``/``worse``:
green/red).
"""

from comparisons.html.captum import text_record, text_table
from comparisons.html.figures import figure_data_uri, interval_panel, palette
from comparisons.html.tables import MAX_COLUMNS, chunks, markdown, pack
from comparisons.html.templating import DASH, breakable, environment, fmt, interval, percent, render

__all__ = [
    "DASH",
    "MAX_COLUMNS",
    "breakable",
    "chunks",
    "environment",
    "figure_data_uri",
    "fmt",
    "interval",
    "interval_panel",
    "markdown",
    "pack",
    "palette",
    "percent",
    "render",
    "text_record",
    "text_table",
]
