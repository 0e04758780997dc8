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
    "captum_perturb.hf",
    "captum_perturb.corpus",
    "captum_perturb.llm",
    "captum_perturb.layers",
    "captum_perturb.attr",
    "captum_perturb.options",
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


#: what the comparison harness may import from the package: its public API
PUBLIC = {
    "captum_perturb",
    "captum_perturb.attr",
    "captum_perturb.config",
    "captum_perturb.corpus",
    "captum_perturb.distributed",
    "captum_perturb.functional",
    "captum_perturb.hf",
    "captum_perturb.layers",
    "captum_perturb.llm",
    "captum_perturb.options",
    "captum_perturb.reference",
}
#: the harness's imports of the package's internals that remain, each with its reason;
#: the list may only shrink (a new one fails, and so does one that is gone but listed)
INTERNAL_IMPORTS = {
    # the estimator's research probes measure its internals (draws, twins, the Problem)
    ("comparisons.benchmarks.stein_probe", "captum_perturb.functional.problem"),
    ("comparisons.benchmarks.tail_probe", "captum_perturb.functional.fixed_point"),
    ("comparisons.benchmarks.tail_probe", "captum_perturb.functional.problem"),
    ("comparisons.benchmarks.variance_probe", "captum_perturb.functional.estimate"),
    ("comparisons.benchmarks.variance_probe", "captum_perturb.functional.fixed_point"),
    ("comparisons.benchmarks.variance_probe", "captum_perturb.functional.problem"),
    # the shipped σ_S file is built and checked by the harness (package data's recipe)
    ("comparisons.models.packaged_std", "captum_perturb.functional.moments"),
    ("comparisons.models.packaged_std", "captum_perturb.layers.state_std"),
    ("comparisons.models.packaged_std", "captum_perturb.layers.packaged_std"),
    ("comparisons.main_job", "captum_perturb.layers.packaged_std"),
    # the scaling benchmark times the run folder's merge itself
    ("comparisons.benchmarks.scaling", "captum_perturb.corpus.parts"),
}


def test_the_harness_imports_only_the_public_api_or_a_listed_internal() -> None:
    graph = grimp.build_graph("comparisons", "captum_perturb", cache_dir=None)
    found = {
        (m, w)
        for m in graph.find_descendants("comparisons") | {"comparisons"}
        for w in graph.find_modules_directly_imported_by(m)
        if w.startswith("captum_perturb") and w not in PUBLIC
    }
    assert found - INTERNAL_IMPORTS == set(), "new imports of internals: use the public API"
    assert INTERNAL_IMPORTS - found == set(), "gone: remove them from INTERNAL_IMPORTS"


#: the supported API: a name leaves it only on purpose (a changelog entry and this list)
PUBLIC_NAMES = {
    "captum_perturb": [
        "DEFAULT", "HIGH_PRECISION", "LAYERWISE", "REFERENCE", "AdamConfig",
        "EstimatorOptions", "EstimatorSettings", "Explanation", "FixedPointConfig", "Interpreter",
        "LLMLayerAttribution",
        "LLMPerturbationEntropyAttribution", "LLMPerturbationEntropyResult",
        "LayerInformation", "LayerPerturbationEntropyAttribution",
        "PerturbationEntropyAttribution", "PerturbationEntropyResult",
        "calculate_regularization", "estimate_state_std", "explain", "explain_corpus",
        "explain_layers",
        "layer_state_std", "next_token_state_std", "read_layer_information",
        "token_feature_mask",
    ],
    "captum_perturb.functional": [
        "SigmaEstimate", "StateFn", "embedding_sigma_max", "estimate_sigma", "state_weights",
    ],
    "captum_perturb.distributed": [
        "all_succeeded", "is_shard", "on_first", "process_0_first", "process_group_from_env",
        "rank_and_world",
    ],
}  # fmt: skip


@pytest.mark.parametrize("module", sorted(PUBLIC_NAMES))
def test_the_public_names_are_pinned_and_import(module: str) -> None:
    import importlib

    mod = importlib.import_module(module)
    assert sorted(mod.__all__) == sorted(PUBLIC_NAMES[module])
    for name in mod.__all__:
        assert getattr(mod, name) is not None, name
