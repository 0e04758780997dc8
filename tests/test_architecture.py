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


#: the package's floors, top to bottom: a module imports only from its own floor or below
#: (``docs/architecture.rst``); ``reference`` (the authors' class, re-implemented) sits
#: beside them on ``functional``
FLOORS = (
    "captum_perturb.corpus",
    "captum_perturb.llm",
    "captum_perturb.layers",
    "captum_perturb.attr",
    "captum_perturb.functional",
    "captum_perturb.config",
    "captum_perturb._utils",
)


def upward_imports(graph: grimp.ImportGraph, floors: tuple[str, ...]) -> list[str]:
    """``importer -> imported`` for every import that runs from a floor up to a higher one."""
    illegal = graph.find_illegal_dependencies_for_layers(layers=floors)
    return sorted(
        f"  {head} -> {tail}"
        for dependency in illegal
        for route in dependency.routes
        for head in route.heads
        for tail in route.tails
    )


def test_upward_imports_finds_an_import_that_runs_up() -> None:
    graph = grimp.ImportGraph()
    for m in ("p", "p.high", "p.high.a", "p.low", "p.low.b"):
        graph.add_module(m)
    graph.add_import(importer="p.high.a", imported="p.low.b")
    assert upward_imports(graph, ("p.high", "p.low")) == []
    graph.add_import(importer="p.low.b", imported="p.high.a")
    assert upward_imports(graph, ("p.high", "p.low")) == ["  p.low.b -> p.high.a"]


def test_capability_folders_import_only_downward() -> None:
    arrows = upward_imports(grimp.build_graph("captum_perturb", cache_dir=None), FLOORS)
    assert not arrows, "imports that run back up a floor:\n" + "\n".join(arrows)
