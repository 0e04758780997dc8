"""One warning per call that says what a user cannot see in the attributions.

An explanation can be unconverged (the stopping rule was not met), saturated (every group
of an example sits at the bound σ_max, so the paper's scores are all zero and the ranking
comes from the pressure at the bound), or count positions that do not affect the state
(padding explained as words when no ``attention_mask=`` was given: they dilute ``rate``,
so the answer depends on the batch-mates), or depend on the caller's ``internal_batch_size``
(the model's round-off changed with the batch's shape). :func:`warn_if_needed` says so,
with counts and the knob to turn.
"""

from __future__ import annotations

import warnings

import torch

from captum_perturb._utils.common import user_stacklevel
from captum_perturb.config import EstimatorConfig, FixedPointConfig
from captum_perturb.functional.problem import SigmaEstimate


def problems(
    est: SigmaEstimate,
    config: EstimatorConfig,
    *,
    masked: bool,
    score: str = "channel",
    internal_batch_size: int | None = None,
) -> list[str]:
    """Sentences describing what went wrong in an estimate (empty when nothing did).

    Args:
        est: the estimate.
        config: the estimator settings used (for the knob to turn).
        masked: whether padding was marked (``attention_mask=``) or the groups are not
            token positions, so that groups without effect are not padding in disguise.
        score: ``"channel"`` or ``"paper"``, the reported score.
        internal_batch_size: the caller's chunking of the perturbed copies, if any.
    """
    found = (
        _unconverged(est, config),
        _saturated(est, score),
        None if masked else _unmarked_padding(est),
        _batch_dependent(est, internal_batch_size),
        _without_effect(est),
    )
    return [sentence for sentence in found if sentence is not None]


def _unconverged(est: SigmaEstimate, config: EstimatorConfig) -> str | None:
    unconverged = ~est.converged
    if not bool(unconverged.any()):
        return None
    k, batch = int(unconverged.sum()), est.converged.shape[0]
    if isinstance(config, FixedPointConfig):
        se = est.score_std_error.nan_to_num(0.0).amax(1)[unconverged].max()
        return (
            f"{k} of {batch} examples did not meet the stopping rule within "
            f"max_iter={config.max_iter} iterations (largest standard error of a score "
            f"{float(se):.3g} vs tol={config.tol}); pass config=FixedPointConfig("
            f"max_iter={4 * config.max_iter}) or a larger tol, and read "
            "result.estimate.std_error"
        )
    return (
        f"{k} of {batch} examples are not at the optimum after {config.steps} Adam "
        "steps (a check with fresh draws puts some group further than tol + 3 "
        "standard errors from its fixed point); run more steps or use the default "
        "fixed-point estimator"
    )


def _saturated(est: SigmaEstimate, score: str) -> str | None:
    present = est.group_size > 0
    all_bound = (est.saturated | ~present).all(1) & present.any(1)
    if not bool(all_bound.any()):
        return None
    ranked = "their scores rank the groups by the pressure at the bound"
    if score == "paper":
        ranked = "their paper scores (nats kept) are all 0"
    return (
        f"{int(all_bound.sum())} of {est.converged.shape[0]} examples have every group at "
        f"sigma_max: noise of that size barely moves the explained state; {ranked}. Raise "
        "sigma_max or lower rate to explain them inside the bound"
    )


def _unmarked_padding(est: SigmaEstimate) -> str | None:
    dead = est.no_effect & (est.group_size > 0)
    if not bool(dead.any()):
        return None
    return (
        f"{int(dead.sum())} positions in {int(dead.any(1).sum())} of {est.converged.shape[0]} "
        "examples have no effect on the explained state, but no attention_mask= was given: "
        "if they are padding they count as words, dilute rate and make the result depend "
        "on the batch; pass attention_mask="
    )


def _batch_dependent(est: SigmaEstimate, internal_batch_size: int | None) -> str | None:
    if internal_batch_size is None or not bool(est.batch_dependent.any()):
        return None
    return (
        f"{int(est.batch_dependent.sum())} of {est.converged.shape[0]} examples: the model's "
        "output changed at round-off with the batch's shape, so this result can differ from "
        f"another internal_batch_size's (here {internal_batch_size}) by up to about its "
        "standard error (the noise drawn is the same); keep one internal_batch_size for "
        "results you compare"
    )


def _without_effect(est: SigmaEstimate) -> str | None:
    present = est.group_size > 0
    effect = present & ~est.no_effect
    no_effect_rows = ~(effect.any(1)) & present.any(1)
    if not bool(no_effect_rows.any()):
        return None
    return (
        f"{int(no_effect_rows.sum())} of {est.converged.shape[0]} examples: the explained "
        "state does not depend on any perturbed group (all scores 0)"
    )


def warn_if_needed(
    est: SigmaEstimate,
    config: EstimatorConfig,
    *,
    masked: bool,
    score: str = "channel",
    who: str = "Perturbation Entropy",
    stacklevel: int | None = None,
    internal_batch_size: int | None = None,
) -> None:
    """Issue one ``UserWarning`` listing :func:`problems`, if there are any, pointing at
    the user's call (``stacklevel`` None) or ``stacklevel`` frames up."""
    found = problems(
        est, config, masked=masked, score=score, internal_batch_size=internal_batch_size
    )
    if found:
        level = user_stacklevel() if stacklevel is None else stacklevel
        warnings.warn(f"{who}: " + "; ".join(found) + ".", UserWarning, stacklevel=level)


#: the scores a result can report (see :func:`score_of`)
SCORES = ("channel", "paper")


def check_score(score: str) -> None:
    """``score`` must be one of :data:`SCORES`.

    Raises:
        ValueError: otherwise.
    """
    if score not in SCORES:
        raise ValueError(f"score must be 'channel' or 'paper', got {score!r}")


def score_of(est: SigmaEstimate, score: str) -> torch.Tensor:
    """``(B, G)`` the per-dimension score to report: ``"channel"`` (:attr:`SigmaEstimate.score`)
    or ``"paper"`` (:attr:`SigmaEstimate.log_ratio`, 0 at the bound); the caller checks
    ``score`` before the estimate is computed."""
    return est.log_ratio if score == "paper" else est.score


def score_std_error_of(est: SigmaEstimate, score: str) -> torch.Tensor:
    """``(B, G)`` standard error of :func:`score_of`'s score: that of the channel score, or
    of log σ for the paper's (0 at the bound, where the paper's score is exactly 0)."""
    if score == "paper":
        return est.std_error.masked_fill(est.saturated, 0.0)
    return est.score_std_error


__all__ = [
    "SCORES",
    "check_score",
    "problems",
    "score_of",
    "score_std_error_of",
    "warn_if_needed",
]
