"""The fenced code blocks of a Markdown file, as the docs test and the wheel check read
them (no test framework needed: the wheel check runs in a bare virtual environment)."""

from __future__ import annotations

import re
import textwrap
from dataclasses import dataclass

PYTHON_LANGUAGES = frozenset({"python", "python3", "py"})
"""Language tags whose blocks are executed."""

MD_FENCE = re.compile(r"^(?P<indent>[ \t]*)```(?P<lang>[^`\s]*)[ \t]*$")


@dataclass(frozen=True)
class Snippet:
    """One code block of a documentation file.

    Attributes:
        language: its language tag (``"python"`` for an RST literal block or a directive
            without one).
        line: 1-based line of the file where the code starts.
        code: the code, dedented; blank lines inside are kept so line numbers match.
    """

    language: str
    line: int
    code: str

    @property
    def is_python(self) -> bool:
        """Whether the test executes it."""
        return self.language.lower() in PYTHON_LANGUAGES


def markdown_snippets(text: str) -> list[Snippet]:
    """The fenced code blocks of a Markdown text.

    Raises:
        ValueError: a fence without a language tag, or one that is never closed.
    """
    lines = text.splitlines()
    out: list[Snippet] = []
    i = 0
    while i < len(lines):
        m = MD_FENCE.match(lines[i])
        if m is None:
            i += 1
            continue
        if not m["lang"]:
            raise ValueError(
                f"line {i + 1}: a ``` fence without a language tag; tag it (python, bash, "
                "text, ...) so the docs test knows whether to run it"
            )
        end = i + 1
        while end < len(lines) and lines[end].strip() != "```":
            end += 1
        if end == len(lines):
            raise ValueError(f"line {i + 1}: the ```{m['lang']} fence is never closed")
        body = lines[i + 1 : end]
        out.append(Snippet(m["lang"], i + 2, textwrap.dedent("\n".join(body)) + "\n"))
        i = end + 1
    return out


def markdown_sections(text: str) -> list[tuple[str, Snippet]]:
    """Each code block with the ``##`` heading it sits under."""
    heading, out = "", []
    blocks = {b.line: b for b in markdown_snippets(text)}
    for number, line in enumerate(text.splitlines(), start=1):
        if line.startswith("## "):
            heading = line[3:].strip()
        if number + 1 in blocks:
            out.append((heading, blocks[number + 1]))
    return out
