"""The result of :func:`~captum_perturb.explain_layers`: arrays and tidy rows, saved and loaded."""

from __future__ import annotations

import csv
import json
import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

#: columns of :meth:`LayerInformation.to_rows` / the CSV file
COLUMNS = (
    "sentence",
    "position",
    "token",
    "special",
    "layer",
    "sigma",
    "entropy",
    "nats_kept",
    "std_error",
    "converged",
)


@dataclass(frozen=True)
class LayerInformation:
    r"""Information each layer keeps about each token (sentences × layers × positions).

    Attributes:
        layers: the explained layers, ``0`` = embedding output, ``k`` = block ``k``.
        tokens: every position's token string, per sentence (padding included).
        sigma: ``(N, L, T)`` learned σ (NaN at padding and unperturbed tokens).
        entropy: ``(N, L, T)`` entropy of the token's noise :math:`H_i` in nats.
        nats_kept: ``(N, L, T)`` :math:`H_{max} - H_i = D\log(\sigma_{max}/\sigma_i)`.
        std_error: ``(N, L, T)`` standard error of :math:`\log\sigma_i`.
        converged: ``(N, L)`` whether the estimator met its tolerance.
        mask: ``(N, T)`` True at real (non-padding) positions.
        special: ``(N, T)`` True at special tokens ([CLS], [SEP], …).
        sigma_max: the bound σ_max; ``sigma_max_source`` says how it was chosen.
        rate: the entropy weight.
        normaliser: per layer (as a string key), ``"state_std"`` (a corpus σ_S) or
            ``"mean square fallback"``.
        dim: the width :math:`D` of a token's vector.
        meta: free-form labels (model name, sentences) kept by save/load.
        evaluations: ``(N, L)`` copies of each sentence pushed through the model to
            explain each layer (the clean pass, the Jacobian projections and the noise
            draws); a copy explaining block ``k`` runs ``k`` blocks. ``None`` when unknown
            (files written before it was recorded).
    """

    layers: list[int]
    tokens: list[list[str]]
    sigma: Tensor
    entropy: Tensor
    nats_kept: Tensor
    std_error: Tensor
    converged: Tensor
    mask: Tensor
    special: Tensor
    sigma_max: float
    sigma_max_source: str
    rate: float
    normaliser: dict[str, str]
    dim: int
    meta: dict[str, Any] = field(default_factory=dict)
    evaluations: Tensor | None = None

    # ------------------------------------------------------------------ tidy data
    def to_rows(self, include_special: bool = True) -> list[dict[str, Any]]:
        """One row per sentence × real token × layer (columns :data:`COLUMNS`)."""
        rows = []
        for n, toks in enumerate(self.tokens):
            for t, tok in enumerate(toks):
                if not bool(self.mask[n, t]):
                    continue
                special = bool(self.special[n, t])
                if special and not include_special:
                    continue
                for j, layer in enumerate(self.layers):
                    rows.append(
                        {
                            "sentence": n,
                            "position": t,
                            "token": tok,
                            "special": special,
                            "layer": layer,
                            "sigma": float(self.sigma[n, j, t]),
                            "entropy": float(self.entropy[n, j, t]),
                            "nats_kept": float(self.nats_kept[n, j, t]),
                            "std_error": float(self.std_error[n, j, t]),
                            "converged": bool(self.converged[n, j]),
                        }
                    )
        return rows

    def token_mask(self, pick: Callable[[str], bool], *, include_special: bool = False) -> Tensor:
        """``(N, T)`` True at the real tokens ``pick(token)`` selects (special ones only
        with ``include_special``)."""
        chosen = torch.zeros_like(self.mask)
        for n, toks in enumerate(self.tokens):
            for t, tok in enumerate(toks):
                if bool(self.mask[n, t]) and (include_special or not bool(self.special[n, t])):
                    chosen[n, t] = bool(pick(tok))
        return chosen

    def mean_by_layer(
        self,
        groups: Mapping[str, Callable[[str], bool]] | None = None,
        *,
        include_special: bool = False,
        per_dimension: bool = False,
    ) -> dict[str, list[float]]:
        """Average information kept per layer, over every sentence's tokens, per group.

        Args:
            groups: ``{name: predicate(token) -> bool}``; default one group ``"all"``.
                A token may be in several groups or none.
            include_special: count special tokens too.
            per_dimension: nats per dimension (``/ D``) instead of per token.

        Returns:
            ``{group: [mean over its tokens, one per layer]}`` (NaN for an empty group).
        """
        groups = groups or {"all": lambda tok: True}
        out: dict[str, list[float]] = {}
        scale = 1.0 / self.dim if per_dimension else 1.0
        for name, pick in groups.items():
            chosen = self.token_mask(pick, include_special=include_special)
            values = []
            for j in range(len(self.layers)):
                v = self.nats_kept[:, j][chosen]
                v = v[~v.isnan()]  # excluded special tokens have no σ
                values.append(float(v.double().mean()) * scale if len(v) else math.nan)
            out[name] = values
        return out

    # ------------------------------------------------------------------ save / load
    def save(self, path: str | Path) -> Path:
        """Write ``.json`` (everything, loadable) or ``.csv`` (the tidy rows + a
        ``.meta.json`` beside it, loadable too)."""
        path = Path(path)
        header = {
            "layers": self.layers,
            "tokens": self.tokens,
            "sigma_max": self.sigma_max,
            "sigma_max_source": self.sigma_max_source,
            "rate": self.rate,
            "normaliser": self.normaliser,
            "dim": self.dim,
            "meta": self.meta,
            "mask": self.mask.int().tolist(),
            "special": self.special.int().tolist(),
            "converged": self.converged.int().tolist(),
            "evaluations": None if self.evaluations is None else self.evaluations.tolist(),
        }
        if path.suffix == ".csv":
            with open(path, "w", newline="", encoding="utf-8") as f:
                writer = csv.DictWriter(f, fieldnames=COLUMNS)
                writer.writeheader()
                writer.writerows(self.to_rows())
            path.with_suffix(".meta.json").write_text(json.dumps(header), encoding="utf-8")
        elif path.suffix == ".json":
            arrays = {
                k: getattr(self, k).tolist() for k in ("sigma", "entropy", "nats_kept", "std_error")
            }
            path.write_text(json.dumps({**header, **arrays}), encoding="utf-8")
        else:
            raise ValueError(f"save to a .json or .csv file, got {path.name!r}")
        return path

    @classmethod
    def load(cls, path: str | Path) -> LayerInformation:
        """Read what :meth:`save` wrote (``.json``, or ``.csv`` with its ``.meta.json``)."""
        path = Path(path)
        if path.suffix == ".json":
            data = json.loads(path.read_text(encoding="utf-8"))
            arrays = {
                k: torch.tensor(data[k], dtype=torch.float32)
                for k in ("sigma", "entropy", "nats_kept", "std_error")
            }
        elif path.suffix == ".csv":
            data = json.loads(path.with_suffix(".meta.json").read_text(encoding="utf-8"))
            n, t = len(data["tokens"]), max((len(x) for x in data["tokens"]), default=0)
            index = {k: j for j, k in enumerate(data["layers"])}
            arrays = {
                k: torch.full((n, len(index), t), math.nan)
                for k in ("sigma", "entropy", "nats_kept", "std_error")
            }
            with open(path, newline="", encoding="utf-8") as f:
                for row in csv.DictReader(f):
                    where = (int(row["sentence"]), index[int(row["layer"])], int(row["position"]))
                    for k in arrays:
                        arrays[k][where] = float(row[k])
        else:
            raise ValueError(f"load a .json or .csv file, got {path.name!r}")
        return cls(
            layers=[int(k) for k in data["layers"]],
            tokens=data["tokens"],
            converged=torch.tensor(data["converged"], dtype=torch.bool),
            mask=torch.tensor(data["mask"], dtype=torch.bool),
            special=torch.tensor(data["special"], dtype=torch.bool),
            sigma_max=float(data["sigma_max"]),
            sigma_max_source=data["sigma_max_source"],
            rate=float(data["rate"]),
            normaliser=dict(data["normaliser"]),
            dim=int(data["dim"]),
            meta=dict(data.get("meta", {})),
            evaluations=(
                None
                if data.get("evaluations") is None
                else torch.tensor(data["evaluations"], dtype=torch.long)
            ),
            **arrays,
        )

    def layer_names(self) -> list[str]:
        """``"embeddings"`` for layer 0, ``"layer k"`` otherwise."""
        return ["embeddings" if k == 0 else f"layer {k}" for k in self.layers]

    def select(self, sentences: Sequence[int]) -> LayerInformation:
        """The same result restricted to some sentences."""
        idx = torch.tensor(list(sentences), dtype=torch.long)
        return LayerInformation(
            layers=self.layers,
            tokens=[self.tokens[i] for i in sentences],
            sigma=self.sigma[idx],
            entropy=self.entropy[idx],
            nats_kept=self.nats_kept[idx],
            std_error=self.std_error[idx],
            converged=self.converged[idx],
            mask=self.mask[idx],
            special=self.special[idx],
            sigma_max=self.sigma_max,
            sigma_max_source=self.sigma_max_source,
            rate=self.rate,
            normaliser=self.normaliser,
            dim=self.dim,
            meta=self.meta,
            evaluations=None if self.evaluations is None else self.evaluations[idx],
        )
