"""Accuracy in the speed benchmark (:mod:`.speed`): our σ and |IG| against the
high-precision optimum (:data:`captum_perturb.HIGH_PRECISION`, two seeds), as mean
|Δ log σ| and Spearman ρ over tokens, on the tutorial sentence and on a batch subset,
and the reference algorithm's time and error."""

from __future__ import annotations

import statistics
from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor

from comparisons.benchmarks.speed_meters import timed
from comparisons.benchmarks.speed_runs import Configs, Measured, ours
from comparisons.benchmarks.speed_workloads import Workload, encode
from comparisons.models.resources import TUTORIAL_SENTENCE

HP_SEEDS = (1, 2)


def spearman(a: torch.Tensor, b: torch.Tensor) -> float:
    """Spearman's ρ of two 1-D tensors (average ranks for ties)."""
    from scipy.stats import spearmanr

    return float(spearmanr(a.double().numpy(), b.double().numpy())[0])


def accuracy(est: torch.Tensor, ref: torch.Tensor, mask: torch.Tensor) -> dict[str, float]:
    """Mean |Δ log σ| and mean per-sentence Spearman over unpadded tokens.

    Group columns are token positions; a batch padded to a different length has more
    (NaN) columns, so only the common ones are compared.
    """
    width = min(est.shape[1], ref.shape[1])
    est, ref, mask = est[:, :width], ref[:, :width], mask[:, :width]
    errs, rhos = [], []
    for e, r, m in zip(est, ref, mask.bool(), strict=True):
        errs.append((e[m] - r[m]).abs().mean().item())
        rhos.append(spearman(e[m], r[m]))
    return {"mean_abs_dlogsigma": statistics.mean(errs), "spearman": statistics.mean(rhos)}


def tutorial_accuracy(
    w: Workload, std: Tensor, tut: Measured, cfgs: Configs, prior: dict[str, Any]
) -> dict[str, Any]:
    """DEFAULT and |IG| against the two-seed high-precision optimum on the tutorial."""
    ids, mask = encode(w, [TUTORIAL_SENTENCE])
    if "hp_log_sigma_seeds" in prior:  # measured when the optima were computed
        hp = [torch.tensor([row]) for row in prior["hp_log_sigma_seeds"]]
        agreement = prior["hp_seed_agreement"]
    else:
        target = w.targets(ids, mask)
        runs = [ours(w, std, ids, mask, target, cfgs.high_precision, s) for s in HP_SEEDS]
        hp = [r.estimate.log_sigma for r in runs]
        agreement = accuracy(hp[0], hp[1], mask)
    ref = (hp[0] + hp[1]) / 2
    return {
        "hp_log_sigma_seeds": [h[0].tolist() for h in hp],
        "hp_seed_agreement": agreement,
        "default_vs_hp": accuracy(tut.result.estimate.log_sigma, ref, mask),
        "lig_spearman_vs_hp": spearman(tut.ig[0], -ref[0]),
        "sigma_high_precision": ref[0].exp().tolist(),
        "sigma_default": tut.result.estimate.sigma[0].tolist(),
    }


def reference_accuracy(w: Workload, std: Tensor, tut: Measured, cfgs: Configs) -> dict[str, Any]:
    """The reference algorithm on the tutorial: seconds, error against the optimum."""
    ids, mask = encode(w, [TUTORIAL_SENTENCE])
    ref_log = torch.tensor(tut.row["hp_log_sigma_seeds"]).mean(0, keepdim=True)
    res, t = timed(lambda: ours(w, std, ids, mask, w.targets(ids, mask), cfgs.reference))
    speedup = t / tut.row["ours_seconds_per_sentence"]
    return {
        "seconds": t,
        "default_speedup": speedup,
        **accuracy(res.estimate.log_sigma, ref_log, mask),
    }


def subset_accuracy(
    w: Workload,
    std: Tensor,
    batch: Measured,
    sentences: Sequence[str],
    cfgs: Configs,
    k: int,
    prior: dict[str, Any],
) -> dict[str, Any]:
    """DEFAULT on the batch against one high-precision run on its first ``k`` sentences."""
    ids, mask = encode(w, sentences[:k])  # padded to the longest of the k
    stored = prior.get("hp_subset_log_sigma") or []
    if len(stored) >= k:
        hp = torch.tensor(stored[:k])
    else:
        target = w.targets(ids, mask)
        hp = ours(w, std, ids, mask, target, cfgs.high_precision, seed=1).estimate.log_sigma
    return {
        "hp_subset": k,
        "hp_subset_log_sigma": hp.tolist(),
        "default_vs_hp_on_subset": accuracy(batch.result.estimate.log_sigma[:k], hp, mask),
    }
