"""The jinja2 environment of the harness's pages and the number formats they use."""

from __future__ import annotations

import functools
import math
import re
from typing import Any

import jinja2
from markupsafe import Markup, escape

DASH = "\u2013"
"""What a missing or non-finite number is written as: an en dash."""


def fmt(x: float | None, digits: int = 3) -> str:
    """``x`` to ``digits`` significant digits; None or non-finite: :data:`DASH`.

    Numbers from 1,000 to 1,000,000 are written without an exponent (``1234``).

    Example:
        >>> fmt(0.123456), fmt(2.0), fmt(1234.5), fmt(-0.0001234), fmt(float("nan")) == DASH
        ('0.123', '2', '1234', '-0.000123', True)
    """
    if x is None or not math.isfinite(x):
        return DASH
    if 1e3 <= abs(x) < 1e6:
        return f"{x:.0f}"
    text = f"{x:.{digits}g}"
    return "0" if text == "-0" else text


def interval(mean: float | None, lo: float | None, hi: float | None) -> str:
    """``mean [lo, hi]``, each by :func:`fmt`; :data:`DASH` when the mean is missing.

    Example:
        >>> interval(0.5, 0.41234, 0.6), interval(float("nan"), 0.0, 1.0) == DASH
        ('0.5 [0.412, 0.6]', True)
    """
    if mean is None or not math.isfinite(mean):
        return DASH
    return f"{fmt(mean)} [{fmt(lo)}, {fmt(hi)}]"


def percent(x: float | None) -> str:
    """A fraction as a percentage with at most 3 significant digits (:data:`DASH` for
    None or non-finite).

    Example:
        >>> percent(0.25), percent(0.0), percent(None) == DASH
        ('25 %', '0 %', True)
    """
    if x is None or not math.isfinite(x):
        return DASH
    return f"{fmt(100 * x)} %"


def breakable(name: object) -> Markup:
    """``name`` escaped, with a line-break opportunity (``<wbr>``) after ``/``, ``_``,
    ``|`` and ``-``, so that long metric names wrap inside narrow table headers.

    Example:
        >>> str(breakable("tau_loo/<mask>"))
        'tau_<wbr>loo/<wbr>&lt;mask&gt;'
    """
    parts = re.split(r"(?<=[/_|-])", str(name))
    return Markup("<wbr>").join(escape(p) for p in parts)


@functools.lru_cache(maxsize=1)
def environment() -> jinja2.Environment:
    """The one environment: templates of ``comparisons.html``, autoescaped, strict.

    An undefined name in a template raises; :func:`fmt`, :func:`interval`,
    :func:`percent` and :func:`breakable` are filters.
    """
    env = jinja2.Environment(
        loader=jinja2.PackageLoader("comparisons.html", "templates"),
        autoescape=True,
        undefined=jinja2.StrictUndefined,
        trim_blocks=True,
        lstrip_blocks=True,
        keep_trailing_newline=True,
    )
    env.filters.update(fmt=fmt, interval=interval, percent=percent, breakable=breakable)
    return env


def render(template_name: str, **context: Any) -> str:
    """Render the template ``template_name`` of ``comparisons/html/templates/``.

    Args:
        template_name: e.g. ``"study_report.html.j2"``.
        **context: the template's names; strings are escaped unless they are
            ``markupsafe.Markup``.

    Returns:
        The page (or fragment) as a string.

    Example:
        >>> page = render("base.html.j2", title="a <b> & c")
        >>> "<title>a &lt;b&gt; &amp; c</title>" in page
        True
    """
    return environment().get_template(template_name).render(**context)
