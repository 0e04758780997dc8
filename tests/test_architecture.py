"""The import graph: no module of ``captum_perturb`` or ``comparisons`` imports itself back.

An import circle (``a`` imports ``b`` ... imports ``a``, lazy imports inside functions
included) is a sign that a rule lives in the wrong room; the map of the rooms is
``docs/architecture.rst``. The graph is grimp's (the import-linter's graph library), and
the circles are its strongly connected components.
"""

from __future__ import annotations

import grimp
import pytest


def strongly_connected(graph: grimp.ImportGraph, modules: set[str]) -> list[list[str]]:
    """Tarjan's strongly connected components of more than one module (the circles)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in sorted(graph.find_modules_directly_imported_by(v) & modules):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for v in sorted(modules):
        if v not in index:
            visit(v)
    return found


def test_strongly_connected_finds_a_circle_and_nothing_else() -> None:
    graph = grimp.ImportGraph()
    for m in ("a", "b", "c", "d"):
        graph.add_module(m)
    for importer, imported in (("a", "b"), ("b", "c"), ("c", "a"), ("c", "d")):
        graph.add_import(importer=importer, imported=imported)
    assert strongly_connected(graph, set(graph.modules)) == [["a", "b", "c"]]


@pytest.mark.parametrize("package", ["captum_perturb", "comparisons"])
def test_no_import_circles(package: str) -> None:
    graph = grimp.build_graph(package, cache_dir=None)
    modules = set(graph.modules)
    circles = strongly_connected(graph, modules)
    details = []
    for circle in circles:
        members = set(circle)
        for m in circle:
            for w in sorted(graph.find_modules_directly_imported_by(m) & members):
                lines = graph.get_import_details(importer=m, imported=w)
                where = ", ".join(str(d["line_number"]) for d in lines)
                details.append(f"  {m} -> {w} (line {where})")
    assert not circles, "import circles:\n" + "\n".join(details)
