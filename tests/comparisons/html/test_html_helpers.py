"""The page helpers of ``comparisons.html``: escaping, number formats, figures, tables."""

from __future__ import annotations

import base64
import math

import pytest

from comparisons.html import (
    DASH,
    chunks,
    figure_data_uri,
    fmt,
    interval,
    markdown,
    pack,
    percent,
    render,
    text_record,
    text_table,
)

TABLE_PAGE = '{% extends "base.html.j2" %}{% from "macros.html.j2" import table %}'
TABLE_PAGE += "{% block body %}{{ table(t) }}{% endblock %}"


def render_table(t: dict[str, object]) -> str:
    from comparisons.html import environment

    return environment().from_string(TABLE_PAGE).render(title="t", t=t)


def test_autoescape_of_names_in_tables() -> None:
    page = render_table(
        {
            "caption": "a <caption>",
            "columns": ["method", {"label": "m<1>", "title": 'say "hi"', "sub": "n = 2"}],
            "rows": [["<script>x", {"text": "1 < 2", "best": True, "title": "<t>"}]],
            "note": "&",
        }
    )
    assert "<script>" not in page and "&lt;script&gt;x" in page
    assert "m&lt;1&gt;" in page and 'title="say &#34;hi&#34;"' in page
    assert "<b>1 &lt; 2</b>&nbsp;★" in page and 'title="&lt;t&gt;"' in page
    assert "a &lt;caption&gt;" in page and '<p class="note">&amp;</p>' in page


def test_undefined_names_raise() -> None:
    import jinja2

    with pytest.raises(jinja2.UndefinedError):
        render("base.html.j2")  # no title


def test_number_formats() -> None:
    assert fmt(math.nan) == DASH == "\u2013" and fmt(None) == DASH and fmt(math.inf) == DASH
    assert fmt(0.000123456) == "0.000123" and fmt(12.345) == "12.3" and fmt(-0.0) == "0"
    assert fmt(123456.7) == "123457" and fmt(1.5e7) == "1.5e+07"
    assert interval(1.0, 0.5, math.nan) == f"1 [0.5, {DASH}]" and interval(None, 0, 1) == DASH
    assert percent(0.125) == "12.5 %" and percent(math.nan) == DASH


def test_figure_data_uri_decodes_to_png() -> None:
    from matplotlib.figure import Figure

    fig = Figure(figsize=(2, 1))
    fig.subplots().plot([0, 1], [1, 0])
    uri = figure_data_uri(fig)
    prefix = "data:image/png;base64,"
    assert uri.startswith(prefix)
    data = base64.b64decode(uri[len(prefix) :], validate=True)
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 100


def test_pyplot_figures_are_closed() -> None:
    from matplotlib import pyplot as plt

    fig, _ = plt.subplots()
    assert plt.fignum_exists(fig.number)
    figure_data_uri(fig)
    assert not plt.fignum_exists(fig.number)


def test_split_and_markdown() -> None:
    assert chunks([], 3) == [[]] and chunks([1, 2, 3, 4], 3) == [[1, 2, 3], [4]]
    assert pack([[1, 2, 3, 4], [5], [6, 7]], 3) == [[1, 2, 3], [4, 5], [6, 7]]
    text = markdown({"columns": ["a|b"], "rows": [[{"text": "x|y"}]]})
    assert text.splitlines() == ["| a\\|b |", "|---|", "| x\\|y |"]


def test_captum_rows_are_escaped_and_scaled() -> None:
    pytest.importorskip("IPython")
    record = text_record([2.0, -4.0, math.nan], ["<a>", "b", "c"], "m&n", pred=1, prob=0.5)
    assert record.word_attributions == [0.5, -1.0, 0.0] and record.attr_score == -2.0
    html = str(text_table([record]))
    assert "&lt;a&gt;" in html and "m&amp;n" in html and "<a>" not in html
    assert "Legend" in html and "&ndash;" in html  # no label: a dash


def test_captum_table_renames_its_label_columns() -> None:
    pytest.importorskip("IPython")
    record = text_record([1.0, 0.5], ["a", "b"], "layer 1", label="s 0", pred="max", prob=1.0)
    html = str(text_table([record], legend=False, columns=["S<1>", "Max", "Layer", "Sum"]))
    assert "<th>S&lt;1&gt;</th><th>Max</th><th>Layer</th><th>Sum</th><th>Word Importance" in html
    assert "True Label" not in html and "Legend" not in html and "<b>max (1.00)</b>" in html
    assert "<th>True Label</th>" in str(text_table([record]))  # Captum's by default
    with pytest.raises(ValueError, match="4 headers"):
        text_table([record], columns=["one"])


def test_nowrap_cells_and_layer_page_template() -> None:
    page = render_table(
        {"columns": ["layer", "m"], "rows": [["l1", {"text": "1 [0, 2]", "class": "nowrap"}]]}
    )
    assert '<td class="nowrap">1 [0, 2]</td>' in page and "td.nowrap" in page
    from markupsafe import Markup

    page = render(
        "layers_page.html.j2", title="a <b>", table=Markup("<table><tr><td>x</td></table>")
    )
    assert "<h1>a &lt;b&gt;</h1>" in page and '<div class="captum"><table><tr><td>x' in page


def test_llm_page_template() -> None:
    page = render(
        "llm_page.html.j2",
        title="LLM",
        model="gpt <2>",
        prompt="the <film> is a",
        answer="great & fun",
        std_error=0.01234,
        converged=True,
        seq_attr="data:image/png;base64,AAAA",
        token_attr="data:image/png;base64,BBBB",
        layers_png="layers.png",
    )
    assert "<code>the &lt;film&gt; is a</code>" in page and "great &amp; fun" in page
    assert "largest standard error 0.012 nats" in page and "gpt &lt;2&gt;" in page
    assert 'src="layers.png"' in page and page.count('src="data:image/png;base64,') == 2
    assert '<a href="layers.html">' in page
