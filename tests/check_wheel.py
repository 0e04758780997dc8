"""Run README blocks against an installed wheel, outside the repository.

    python -I tests/check_wheel.py README.md "One line for a Hugging Face model#1" \\
        "Quick start: the Captum classes"

runs, in one namespace and in a fresh temporary folder, the Python blocks under each
``##`` heading named (``#N``: its first N blocks only), after checking that
``captum_perturb`` is imported from the environment's site-packages and that no folder of
the repository is on ``sys.path`` but ``tests/`` (``-I`` keeps the working folder and
``PYTHONPATH`` out). ``.ci/run`` runs it in a virtual environment holding only the
wheel and its dependencies. Exits non-zero on the first failure.
"""

from __future__ import annotations

import os
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))  # tests/ only (for the block reader), never the repository

from snippets import markdown_sections  # noqa: E402


def _check_isolated() -> str:
    import captum_perturb

    where = Path(captum_perturb.__file__).resolve()
    repo = HERE.parent
    if (repo / "captum_perturb") in where.parents or Path(
        sys.prefix
    ).resolve() not in where.parents:
        raise SystemExit(f"captum_perturb came from {where}, not the wheel in {sys.prefix}")
    if any(p and Path(p).resolve() == repo for p in sys.path):
        raise SystemExit(f"the repository {repo} is on sys.path")
    return str(where)


def main(readme: str, *wanted: str) -> int:
    print("captum_perturb from", _check_isolated())
    sections = markdown_sections(Path(readme).read_text(encoding="utf-8"))
    plan = []
    for item in wanted:
        name, _, count = item.partition("#")
        blocks = [b for heading, b in sections if heading == name and b.is_python]
        if not blocks:
            raise SystemExit(f"no Python block under '## {name}' in {readme}")
        plan += blocks[: int(count)] if count else blocks
    namespace: dict[str, object] = {"__name__": "__readme__"}
    with tempfile.TemporaryDirectory() as folder:
        os.chdir(folder)
        for block in plan:
            start = time.perf_counter()
            exec(compile(block.code, f"{readme}:{block.line}", "exec"), namespace)
            print(f"ran {readme}:{block.line} in {time.perf_counter() - start:.1f} s")
        written = sorted(p.name for p in Path(folder).iterdir())
    print("files written:", written)
    return 0


if __name__ == "__main__":
    sys.exit(main(*sys.argv[1:]))
