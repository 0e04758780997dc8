"""The timed runs of the speed benchmark (:mod:`.speed`): one call of our estimator
(:func:`ours`) and of Captum's LayerIntegratedGradients (:func:`run_lig`) on the same
inputs, their wall time (:func:`measure`) and peak memory (:func:`peak_memory`), and the
estimator configurations they run under (:class:`Configs`)."""

from __future__ import annotations

import warnings
from collections.abc import Callable, Sequence
from dataclasses import replace
from typing import Any, NamedTuple

import torch
from captum.attr import LayerIntegratedGradients
from torch import Tensor

from captum_perturb import (
    DEFAULT,
    HIGH_PRECISION,
    REFERENCE,
    FixedPointConfig,
    LayerPerturbationEntropyAttribution,
    PerturbationEntropyResult,
)
from comparisons.benchmarks.convergence import embeddings_of
from comparisons.benchmarks.speed_meters import MB, peak_rss_increase, timed
from comparisons.benchmarks.speed_workloads import Workload, encode

LIG_STEPS = 50


class Configs(NamedTuple):
    """The default, the reference algorithm and the high-precision optimum."""

    default: Any
    reference: Any
    high_precision: Any


def configs(quick: bool) -> Configs:
    """The estimators' configurations; ``quick``: a few iterations, for a smoke run."""
    if not quick:
        return Configs(DEFAULT, REFERENCE, HIGH_PRECISION)
    return Configs(
        replace(DEFAULT, max_iter=3),
        replace(REFERENCE, steps=20),
        replace(HIGH_PRECISION, steps=20, n_samples=4),
    )


def ours(
    w: Workload,
    std: Tensor,
    ids: Tensor,
    mask: Tensor,
    target: list[int] | None,
    config: Any,
    seed: int = 0,
    internal_batch_size: int | None = None,
) -> PerturbationEntropyResult:
    """One call of our estimator on the batch (its warnings off: the fractions say it)."""
    lpe = LayerPerturbationEntropyAttribution(w.forward, embeddings_of(w.model))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return lpe.explain(
            ids,
            target=target,
            additional_forward_args=(mask,),
            attention_mask=mask,
            state_layer=w.state_layer,
            state_std=std,
            config=config,
            seed=seed,
            internal_batch_size=internal_batch_size,
        )


def run_lig(
    w: Workload, std: Tensor, ids: Tensor, mask: Tensor, target: list[int] | None
) -> Tensor:
    """|LayerIntegratedGradients(n_steps=50)| per token, from an all-pad baseline."""

    def scalar(i: Tensor, m: Tensor) -> Tensor:
        return w.lig_scalar(w.state(i, m), m, std)

    lig = LayerIntegratedGradients(scalar, embeddings_of(w.model))
    base = torch.full_like(ids, w.tokenizer.pad_token_id)
    attr = lig.attribute(
        ids, baselines=base, target=target, additional_forward_args=(mask,), n_steps=LIG_STEPS
    )
    return attr.sum(-1).abs()


def same_sigma(a: PerturbationEntropyResult, b: PerturbationEntropyResult) -> dict[str, Any]:
    """Whether two results' log σ agree bit for bit (NaN where both are NaN), by how much
    they differ, and whether either saw the model's round-off depend on the batch's shape
    (``estimate.batch_dependent``: the only way two chunkings of one call may differ)."""
    x, y = a.estimate.log_sigma, b.estimate.log_sigma
    nan = x.isnan()
    equal = torch.equal(nan, y.isnan()) and torch.equal(x[~nan], y[~nan])
    diff = (x - y).abs().nan_to_num(0.0)
    seen = bool(a.estimate.batch_dependent.any() or b.estimate.batch_dependent.any())
    return {
        "sigma_bit_equal": equal,
        "max_abs_dlogsigma": float(diff.max()),
        "batch_dependent": seen,
    }


class Measured(NamedTuple):
    """:func:`measure`'s summary row, our result and |IG| per token."""

    row: dict[str, Any]
    result: PerturbationEntropyResult
    ig: Tensor


def measure(
    w: Workload,
    std: Tensor,
    sentences: Sequence[str],
    config: Any,
    repeats: int = 1,
    internal_batch_size: int | None = None,
) -> Measured:
    """Time both methods on ``sentences`` (a warm-up first when ``repeats`` > 1); on a
    single run (the batch), also their peak memory (:func:`peak_memory`)."""
    ids, mask = encode(w, sentences)
    target = w.targets(ids, mask)

    def run_ours(cfg: Any = config, size: int | None = None) -> PerturbationEntropyResult:
        return ours(w, std, ids, mask, target, cfg, internal_batch_size=size)

    def run_ig() -> Tensor:
        return run_lig(w, std, ids, mask, target)

    if repeats > 1:  # warm-up
        run_ours()
        run_ig()
    res, t_ours = timed(run_ours, repeats)
    ig, t_lig = timed(run_ig, repeats)
    n = len(sentences)
    row: dict[str, Any] = {
        "sentences": n,
        "ours_seconds_per_sentence": t_ours / n,
        "lig_seconds_per_sentence": t_lig / n,
        "ratio": t_ours / t_lig,
        "converged": float(res.converged.float().mean()),
        "evaluations_per_sentence": float(res.estimate.evaluations.float().mean()),
    }
    if repeats == 1:
        row |= peak_memory(run_ours, run_ig, config, internal_batch_size)
    return Measured(row, res, ig)


def peak_memory(
    run_ours: Callable[..., PerturbationEntropyResult],
    run_ig: Callable[[], Tensor],
    config: Any,
    internal_batch_size: int | None,
) -> dict[str, Any]:
    """Peak memory of one call of each method, in calls of their own (releasing freed
    memory first slows a call down, so these are not the timed ones).

    Ours is measured on a two-iteration run of ``config``: its largest chunks of copies
    (the projections, then every example's draws) come in the first iterations, and
    later ones only shrink as examples stop, so the peak does not depend on how many
    iterations run. With ``internal_batch_size``, the bounded call's peak too, and
    whether its σ equal the unbounded call's bit for bit (same seed).
    """
    short = config
    if isinstance(config, FixedPointConfig):
        short = replace(config, max_iter=2, min_iter=2)
    full, mem_ours = peak_rss_increase(lambda: run_ours(short))
    row: dict[str, Any] = {
        "peak_mb_ours": mem_ours / MB,
        "peak_mb_lig": peak_rss_increase(run_ig)[1] / MB,
    }
    if internal_batch_size is not None:
        bounded, mem = peak_rss_increase(lambda: run_ours(short, internal_batch_size))
        row["internal_batch"] = {
            "size": internal_batch_size,
            "peak_mb": mem / MB,
            **same_sigma(full, bounded),
        }
    return row
