"""Sphinx configuration for the captum-perturb documentation.

Build with ``sphinx-build -W --keep-going -b html docs docs/_build/html`` (as CI does):
warnings are errors, so a broken reference fails the build.
"""

from __future__ import annotations

import importlib
import sys
from pathlib import Path

# Document the checkout itself, whether or not it is installed.
REPO_ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO_ROOT))

_package = importlib.import_module("captum_perturb")

# -- Project information ------------------------------------------------------

project = "captum-perturb"
author = "captum-perturb contributors"
copyright = "2026, captum-perturb contributors"
release: str = _package.__version__
version = ".".join(release.split(".")[:2])

# -- General configuration ----------------------------------------------------

extensions = [
    "sphinx.ext.autodoc",
    "sphinx.ext.napoleon",
    # Math is typeset by MathJax in the reader's browser. sphinx-mathjax-offline (pip,
    # the ``docs`` extra) ships MathJax 3 and copies it into ``_static/mathjax`` after a
    # successful build, pointing ``mathjax_path`` there, so the pages need no CDN and
    # render offline (checked by tests/check_docs_offline.py in .ci/run).
    "sphinx.ext.mathjax",
    "sphinx-mathjax-offline",
    "sphinx.ext.viewcode",
    "sphinx.ext.doctest",
]

exclude_patterns = ["_build"]
nitpicky = False

# autodoc: the real package is imported (no mocked modules), type hints go into the
# parameter descriptions.
autodoc_typehints = "description"
autodoc_member_order = "bysource"

# napoleon: Google-style docstrings only.
napoleon_google_docstring = True
napoleon_numpy_docstring = False
napoleon_use_rtype = False

# doctest builder (`sphinx-build -b doctest`): names the examples may assume.
doctest_global_setup = """
import torch
"""

# -- HTML output --------------------------------------------------------------

html_theme = "alabaster"
html_title = f"captum-perturb {release}"
