"""Tables that fit the page: split wide ones, and the Markdown form of a table.

A table is the mapping the ``table`` macro takes (see :mod:`comparisons.html`).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, TypeVar

MAX_COLUMNS = 7
"""The most columns a table of a page has, its row header included."""

T = TypeVar("T")


def chunks(items: Sequence[T], size: int) -> list[list[T]]:
    """``items`` in consecutive runs of at most ``size`` (one empty run when empty).

    Example:
        >>> chunks("abcde", 2)
        [['a', 'b'], ['c', 'd'], ['e']]
    """
    return [list(items[i : i + size]) for i in range(0, len(items), size)] or [[]]


def pack(groups: Sequence[Sequence[T]], size: int) -> list[list[T]]:
    """Consecutive groups packed into runs of at most ``size``; a group is kept in one
    run where it fits in one, and split otherwise.

    Example:
        >>> pack([["a1", "a2"], ["b1"], ["c1", "c2", "c3"]], 3)
        [['a1', 'a2', 'b1'], ['c1', 'c2', 'c3']]
    """
    out: list[list[T]] = []
    for group in groups:
        for part in chunks(group, size):
            if out and len(out[-1]) + len(part) <= size:
                out[-1] += part
            elif part:
                out.append(part)
    return out or [[]]


def _text(cell: Any) -> str:
    text = str(cell["text"] if isinstance(cell, Mapping) else cell).replace("|", "\\|")
    return f"**{text}** ★" if isinstance(cell, Mapping) and cell.get("best") else text


def markdown(table: Mapping[str, Any]) -> str:
    r"""A table as GitHub Markdown: a column's ``sub`` in parentheses, best cells bold
    with a ★, ``|`` escaped.

    Example:
        >>> t = {
        ...     "columns": ["method", {"label": "acc", "sub": "n = 3"}],
        ...     "rows": [["a|abs", {"text": "0.9", "best": True}], ["b", "0.5"]],
        ... }
        >>> print(markdown(t), end="")
        | method | acc (n = 3) |
        |---|---|
        | a\|abs | **0.9** ★ |
        | b | 0.5 |
    """
    head = [
        _text(f"{c['label']} ({c['sub']})" if c.get("sub") else c["label"])
        for c in (c if isinstance(c, Mapping) else {"label": c} for c in table["columns"])
    ]
    lines = ["| " + " | ".join(head) + " |", "|---" * len(head) + "|"]
    lines += ["| " + " | ".join(_text(c) for c in row) + " |" for row in table["rows"]]
    return "\n".join(lines) + "\n"
