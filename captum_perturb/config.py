"""Optimiser configurations for the σ estimate.

Two strategies solve the same objective (see :func:`captum_perturb.functional.estimate_sigma`):

* :class:`FixedPointConfig` — the default: a first-order start from Jacobian norms and
  damped fixed-point (Newton-in-log-σ) refinement with a stopping rule that knows the
  Monte-Carlo noise floor.
* :class:`AdamConfig` — gradient descent on ρ with σ = σ_max · sigmoid(ρ), as the
  authors' reference code does. :data:`REFERENCE` reproduces its algorithm exactly
  (one noise sample per step, Adam lr 0.01, 5,000 steps, keep the lowest single-sample
  loss); :data:`HIGH_PRECISION` is a slow, accurate run for checking other estimates.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal


@dataclass(frozen=True)
class FixedPointConfig:
    """Settings of the default estimator.

    Args:
        n_projections: random output projections used to estimate each group's
            Jacobian norm for the first-order start (one batched backward pass).
        n_samples: noise draws per refinement iteration.
        max_iter: upper bound on refinement iterations.
        min_iter: refinement iterations always run (0 = first-order solution only).
        tol: stop when the standard error of every group's reported score (from the pooled
            Monte-Carlo draws) and its last change are at most ``tol`` — as a root mean
            square over the example's groups (``norm="rms"``) or for each group
            (``norm="max"``). Inside the bound the score's standard error is that of
            log σ; for a group at the bound σ_max it is that of the channel score
            (:attr:`~captum_perturb.functional.SigmaEstimate.score`), so an example whose
            groups all sit at the bound is only called converged once their ranking is
            known to ``tol`` too.
        norm: ``"rms"`` (default) or ``"max"`` over groups, see ``tol``. ``"max"`` bounds
            every group, at the cost of more draws for the noisiest group; ``"rms"``
            bounds the typical group and reports each group's own standard error.
        damping: fraction of the fixed-point step taken in log σ (1 = full step).
        burn_in: iterations whose draws are dropped from the pooled estimate (they were
            taken on the way from the first-order start). After them the draws of the
            ``k``-th pooled iteration get weight ``k``: the curvature of a nonlinear state
            depends on σ, and the early draws were taken at a σ further from the
            returned one (the pooled estimate's lag).
        control_variate: ``"always"`` pairs every draw with the same noise at a tiny
            scale, whose mean is the first-order value known from the projections, and
            uses it as a control variate with a fitted coefficient: exact for a linear
            state, at twice the evaluations per draw. On real transformer states the two
            decorrelate and it does not pay (measured on MiniLM). ``"auto"`` (default)
            tries it in the first iteration where the projections are exact (states of
            at most ``n_projections`` elements, such as a few logits) and keeps it for an
            example only where, at equal cost and with the most draws the run may take,
            it gives the smaller variance; ``"never"`` turns it off.
    """

    n_projections: int = 8
    n_samples: int = 16
    max_iter: int = 100
    min_iter: int = 2
    tol: float = 0.02
    norm: Literal["rms", "max"] = "rms"
    damping: float = 1.0
    burn_in: int = 1
    control_variate: Literal["auto", "always", "never"] = "auto"

    def __post_init__(self) -> None:
        if self.n_projections < 1 or self.n_samples < 1:
            raise ValueError("n_projections and n_samples must be at least 1")
        if self.max_iter < self.min_iter or self.min_iter < 0:
            raise ValueError("need 0 <= min_iter <= max_iter")
        if not 0.0 < self.damping <= 1.0:
            raise ValueError("damping must be in (0, 1]")
        if self.tol <= 0:
            raise ValueError("tol must be positive")
        if self.norm not in ("rms", "max"):
            raise ValueError(f"norm must be 'rms' or 'max', got {self.norm!r}")
        if self.burn_in < 0:
            raise ValueError("burn_in must be >= 0")
        if self.control_variate not in ("auto", "always", "never"):
            raise ValueError(
                f"control_variate must be 'auto', 'always' or 'never', got {self.control_variate!r}"
            )


@dataclass(frozen=True)
class AdamConfig:
    """Adam on ρ with σ = σ_max · sigmoid(ρ) (the reference code's parameterisation).

    Args:
        steps: optimisation steps.
        lr: Adam learning rate.
        n_samples: noise samples averaged per step (the reference code uses 1).
        keep: which parameters to return: ``"best_sample"`` the ones whose
            single-step loss was lowest (reference behaviour, biased by lucky noise),
            ``"last"`` the final ones, ``"average"`` the mean of ρ over the last
            ``average_fraction`` of the steps.
        init: ``"random"`` draws ρ ~ N(0, 1) as the reference code does;
            ``"first_order"`` starts from the Jacobian solution.
        average_fraction: tail fraction of the steps averaged when ``keep="average"``.
        check_samples: Adam has no stopping rule of its own, so after the last step
            ``check_samples`` fresh draws at the returned σ estimate the curvature there;
            an example is reported converged only if every group's log σ is within
            ``tol`` plus three standard errors of that check of the fixed point the
            curvature implies. The same draws give the channel score of groups at the
            bound.
        tol: see ``check_samples``.
    """

    steps: int = 5000
    lr: float = 0.01
    n_samples: int = 1
    keep: Literal["best_sample", "last", "average"] = "best_sample"
    init: Literal["random", "first_order"] = "random"
    average_fraction: float = 0.2
    check_samples: int = 32
    tol: float = 0.02

    def __post_init__(self) -> None:
        if self.steps < 1 or self.n_samples < 1 or self.check_samples < 2:
            raise ValueError("steps and n_samples must be at least 1, check_samples at least 2")
        if self.tol <= 0:
            raise ValueError("tol must be positive")
        if self.lr <= 0:
            raise ValueError("lr must be positive")
        if self.keep not in ("best_sample", "last", "average"):
            raise ValueError(f"keep must be 'best_sample', 'last' or 'average', got {self.keep!r}")
        if self.init not in ("random", "first_order"):
            raise ValueError(f"init must be 'random' or 'first_order', got {self.init!r}")
        if not 0.0 < self.average_fraction <= 1.0:
            raise ValueError("average_fraction must be in (0, 1]")


EstimatorConfig = FixedPointConfig | AdamConfig

#: The default estimator: stops as soon as its stopping rule is met, with room for 100
#: iterations (2,000 evaluations). Hidden states stop after a few iterations (MiniLM's
#: layers: 70-560 evaluations per sentence); a pooled sentence embedding needed up to
#: ~2,300 (5 of 8 SST-2 sentences stopped within the cap; all 8 with max_iter=400), and a
#: classifier's logits more than that (see docs/benchmarks.rst): the result and the
#: warning say so. The former cap of 10 stopped most deep-layer estimates early.
DEFAULT = FixedPointConfig()
#: The default of :func:`~captum_perturb.explain_layers`; the same as :data:`DEFAULT`
#: (kept as a name for code written against 0.1).
LAYERWISE = DEFAULT
#: The authors' reference algorithm, for parity checks and benchmarks.
REFERENCE = AdamConfig()
#: A slow, accurate optimum (32 samples × 2,500 Adam steps from the first-order start,
#: the last 20 % of the iterates averaged) for judging other estimates.
HIGH_PRECISION = AdamConfig(steps=2500, lr=0.01, n_samples=32, keep="average", init="first_order")
