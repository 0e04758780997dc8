r"""Information vs depth per token group, and its uncertainty over sentences.

A group's curve is, per layer, the mean nats kept over its tokens in all sentences:
:math:`\sum` nats / :math:`\sum` tokens (:func:`group_curves`). Sentences are the unit
of resampling (the tokens of one sentence are not independent), so the intervals come
from the per-sentence sums and counts (:func:`sentence_sums`) and the harness's
bootstrap settings (:mod:`comparisons.stats`: ``scipy.stats.bootstrap``, percentile,
:data:`~comparisons.stats.BOOTSTRAP_RESAMPLES` resamples, level
:data:`~comparisons.stats.LEVEL`). A curve is a ratio of two means (nats and tokens per
sentence), and so are the group ratios, which :func:`~comparisons.stats.bootstrap_means`
cannot give; :func:`bootstrap_mean_function` draws the same resamples and applies a
function to the resampled means.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np
import torch

from captum_perturb import LayerInformation
from comparisons.layers.groups import contrasts
from comparisons.stats import BOOTSTRAP_RESAMPLES, LEVEL, bootstrap_mean_function

BOOTSTRAP_KEY = "layers"
"""Names the resampling stream of the layer analysis (``key`` of the harness bootstrap)."""


def sentence_sums(
    info: LayerInformation, masks: Mapping[str, torch.Tensor]
) -> tuple[torch.Tensor, torch.Tensor]:
    """Per sentence, the nats kept summed over each group's tokens, and how many tokens.

    Summing these over sentences and dividing gives :func:`group_curves`; resampling
    sentences gives its uncertainty (:func:`bootstrap_curves`).

    Args:
        info: the explained sentences.
        masks: ``{group: (N, T) bool}`` (:func:`~comparisons.layers.groups.group_masks`).

    Returns:
        ``(sums, counts)``, both ``(N, G, L)`` float64 (sentences × groups × layers);
        tokens without a σ (excluded special tokens) are not counted.
    """
    n_sent, n_lay, _ = info.nats_kept.shape
    values = info.nats_kept.double()
    sums = torch.zeros(n_sent, len(masks), n_lay, dtype=torch.float64)
    counts = torch.zeros_like(sums)
    for g, chosen in enumerate(masks.values()):
        ok = chosen[:, None, :] & ~values.isnan()
        sums[:, g] = torch.where(ok, values, torch.zeros_like(values)).sum(-1)
        counts[:, g] = ok.sum(-1).double()
    return sums, counts


def group_curves(
    info: LayerInformation, masks: Mapping[str, torch.Tensor]
) -> dict[str, list[float]]:
    """``{group: [mean nats kept over its tokens, one per layer]}`` (NaN when empty).

    As :meth:`~captum_perturb.LayerInformation.mean_by_layer`, on tokens chosen by
    whole word (``masks``) rather than by a predicate of each token.
    """
    out: dict[str, list[float]] = {}
    for name, chosen in masks.items():
        values = []
        for j in range(len(info.layers)):
            v = info.nats_kept[:, j][chosen]
            v = v[~v.isnan()]  # excluded special tokens have no σ
            values.append(float(v.double().mean()) if len(v) else math.nan)
        out[name] = values
    return out


def _ratio_statistic(
    n_models: int, n_groups: int, n_layers: int, pairs: Sequence[tuple[int, int]]
) -> Callable[[np.ndarray], np.ndarray]:
    """Row means of ``_rows`` of ``n_models`` models → their curves, group ratios and
    the ratios' change from the first model, flattened in that order."""

    def combine(means: np.ndarray) -> np.ndarray:
        rest = means.shape[1:]
        m = means.reshape(n_models, 2, n_groups, n_layers, *rest)
        curve = m[:, 0] / m[:, 1]  # Σ nats / Σ tokens = mean nats over sentences' tokens
        if pairs:
            ratio = np.stack([curve[:, a] / curve[:, b] for a, b in pairs], axis=1)
        else:
            ratio = np.empty((n_models, 0, n_layers, *rest))
        change = ratio[1:] - ratio[:1]
        parts = (curve, ratio, change)
        return np.concatenate([p.reshape(-1, *rest) for p in parts], axis=0)

    return combine


def _rows(info: LayerInformation, masks: Mapping[str, torch.Tensor]) -> np.ndarray:
    """``(2 G L, N)``: each group × layer's per-sentence nats sums, then token counts."""
    sums, counts = sentence_sums(info, masks)
    both = torch.stack([sums, counts])  # (2, N, G, L)
    return both.permute(0, 2, 3, 1).reshape(-1, sums.shape[0]).numpy()


def _bootstrap_block(
    block: Sequence[str],
    rows: Mapping[str, np.ndarray],
    names: Sequence[str],
    pairs: Sequence[tuple[int, int]],
    seed: int,
) -> dict[str, tuple[dict[str, Any], dict[str, Any], dict[str, Any] | None]]:
    """One bootstrap for models on the same sentences: per model its curve intervals,
    its ratios and (all but the first) the paired change of its ratios from the first."""
    n_mod, n_grp, labels = len(block), len(names), [f"{names[a]} / {names[b]}" for a, b in pairs]
    n_lay, n_pair = rows[block[0]].shape[0] // (2 * max(n_grp, 1)), len(pairs)
    values = np.concatenate([rows[m] for m in block])
    combine = _ratio_statistic(n_mod, n_grp, n_lay, pairs)
    est, lo, hi = bootstrap_mean_function(values, combine, BOOTSTRAP_KEY, seed)
    triple = np.stack([est, lo, hi], axis=-1)  # (statistics, 3)
    cut = (n_mod * n_grp * n_lay, n_mod * (n_grp + n_pair) * n_lay)
    curve = triple[: cut[0]].reshape(n_mod, n_grp, n_lay, 3)
    ratio = triple[cut[0] : cut[1]].reshape(n_mod, n_pair, n_lay, 3)
    change = triple[cut[1] :].reshape(n_mod - 1, n_pair, n_lay, 3)
    got = {}
    for k, m in enumerate(block):
        got[m] = (
            {g: curve[k, i, :, 1:].tolist() for i, g in enumerate(names)},
            {label: ratio[k, j].tolist() for j, label in enumerate(labels)},
            {label: change[k - 1, j].tolist() for j, label in enumerate(labels)} if k else None,
        )
    return got


def bootstrap_curves(
    infos: Mapping[str, LayerInformation],
    masks: Mapping[str, Mapping[str, torch.Tensor]],
    *,
    seed: int = 0,
) -> dict[str, Any]:
    r"""Percentile bootstrap intervals for the depth curves and the group ratios.

    Sentences are the unit of resampling: each of the
    :data:`~comparisons.stats.BOOTSTRAP_RESAMPLES` resamples draws ``N`` sentences with
    replacement and recomputes every group's mean over its tokens, :math:`\sum` nats /
    :math:`\sum` tokens, and the ratios of those means
    (:func:`bootstrap_mean_function`, key :data:`BOOTSTRAP_KEY`). Models explained on
    as many sentences (and layers) as the first share every resample, so the change of
    a ratio from the first model to another is a paired comparison.

    Args:
        infos: ``{model: LayerInformation}``.
        masks: ``{model: {group: (N, T) bool}}``
            (:func:`~comparisons.layers.groups.group_masks`), the same groups per model.
        seed: seeds the resampling.

    Returns:
        ``{"level", "n_boot", "curves": {model: {group: [[lo, hi] per layer]}},
        "ratios": {model: {"a / b": [[estimate, lo, hi] per layer]}},
        "ratio_change": {"model − first": {"a / b": [[estimate, lo, hi] per layer]}}}``
        for the contrasts of :func:`~comparisons.layers.groups.contrasts` (sentiment /
        other, content / stop); ``ratio_change`` (with two models or more) only for the
        models paired with the first.
    """
    if not infos:
        raise ValueError("no models to bootstrap")
    first = next(iter(infos))
    names = list(masks[first])
    pairs = [(names.index(a), names.index(b)) for a, b in contrasts(names)]
    rows = {m: _rows(info, masks[m]) for m, info in infos.items()}
    paired = [m for m in infos if rows[m].shape == rows[first].shape]
    found = _bootstrap_block(paired, rows, names, pairs, seed)
    for m in infos:
        if m not in found:
            found.update(_bootstrap_block([m], rows, names, pairs, seed))
    out: dict[str, Any] = {"level": LEVEL, "n_boot": BOOTSTRAP_RESAMPLES}
    out["curves"] = {m: found[m][0] for m in infos}
    out["ratios"] = {m: found[m][1] for m in infos} if pairs else {}
    if pairs and len(infos) > 1:
        changes = {m: found[m][2] for m in infos if m != first}
        out["ratio_change"] = {f"{m} − {first}": c for m, c in changes.items() if c is not None}
    return out
