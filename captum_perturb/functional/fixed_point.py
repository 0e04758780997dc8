"""The default estimator: first-order start, pooled fixed-point refinement."""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import Tensor

from captum_perturb.config import FixedPointConfig
from captum_perturb.functional.problem import (
    AT_BOUND,
    Problem,
    SigmaEstimate,
    channel_score,
    score_slope,
)

#: the scale h of the linearised twin draw (σ -> hσ); small enough to be linear,
#: large enough for float32 differences of the state (public: the variance probes use it)
LINEAR_SCALE = 1e-2
#: the step δ in log σ of the re-evaluations that measure how the curvature moves with σ;
#: with random signs the O(δ) term of the one-sided difference vanishes in expectation
_GAMMA_STEP = 0.1
#: one draw in this many per iteration is re-evaluated at log σ + δ v (same noise)
_GAMMA_EVERY = 8
_F64 = torch.float64
#: pooled sums: weights, squared weights, q, its twin l, their products, and the
#: re-evaluations' (∂q/∂u)·v v (mean: the diagonal of ∂a/∂u) with their weights
_SUMS = ("n", "w2", "q", "l", "qq", "ll", "ql", "dv", "nd")
_PER_EXAMPLE = ("n", "w2", "nd")


@dataclass
class _Draws:
    """One iteration's draws: q (mean a_g), the twins l, residuals, curvature slopes."""

    rows: Tensor
    q: Tensor
    lin: Tensor
    res: Tensor
    fd_rows: Tensor
    dv: Tensor


def _draw(
    prob: Problem,
    u: Tensor,
    active: Tensor,
    use_cv: Tensor,
    cfg: FixedPointConfig,
    gen: torch.Generator | None,
    burn_in: bool = False,
) -> _Draws:
    """``n_samples`` draws per active example at ``u``, with their linearised twins (where
    the control variate is on) and, for one draw in ``_GAMMA_EVERY``, a re-evaluation of the
    same noise at ``u + δ v`` (``v`` random signs per group)."""
    rows = active.repeat(cfg.n_samples)
    noise = prob.draw(rows, gen)
    twin = use_cv[rows]
    t_rows = rows[twin]
    # (none in the burn-in iterations, whose draws are dropped anyway)
    n_fd = 0 if burn_in else max(1, cfg.n_samples // _GAMMA_EVERY)
    fd_rows = rows[: len(active) * n_fd]
    n_r, n_t, n_f = len(rows), len(t_rows), len(fd_rows)
    v = torch.randint(0, 2, (n_f, u.shape[1]), generator=gen, device=u.device).to(u.dtype)
    v = 2 * v - 1
    u_all = torch.cat([u[rows], u[t_rows] + math.log(LINEAR_SCALE), u[fd_rows] + _GAMMA_STEP * v])
    grads, res = prob.sample_gradients(
        u_all,
        torch.cat([rows, t_rows, fd_rows]),
        tuple(torch.cat([z, z[twin], z[:n_f]]) for z in noise),
    )
    # q = (∂R/∂log σ_g) / (2σ_g²) of each copy, whose mean is the curvature a_g(σ)
    q_all = grads.to(_F64) / (2.0 * (2.0 * u_all).exp()).to(_F64)
    q = q_all[:n_r]
    lin = torch.zeros_like(q)
    lin[twin] = q_all[n_r : n_r + n_t]  # q of the twin at hσ: its mean is a_lin
    dv = (q_all[n_r + n_t :] - q[:n_f]) / _GAMMA_STEP * v.to(_F64)
    return _Draws(rows=rows, q=q, lin=lin, res=res[:n_r], fd_rows=fd_rows, dv=dv)


def _pool(sums: dict[str, Tensor], d: _Draws, weight: float) -> None:
    """Add one iteration's draws, weighted, to the pooled sums."""
    ones = torch.ones(len(d.rows), 1, dtype=_F64, device=d.q.device)
    for key, val in (
        ("n", ones),
        ("w2", ones * weight),
        ("q", d.q),
        ("l", d.lin),
        ("qq", d.q * d.q),
        ("ll", d.lin * d.lin),
        ("ql", d.q * d.lin),
    ):
        sums[key].index_add_(0, d.rows, val * weight)
    sums["dv"].index_add_(0, d.fd_rows, d.dv * weight)
    sums["nd"].index_add_(0, d.fd_rows, ones[: len(d.fd_rows)] * weight)


def fixed_point(
    prob: Problem,
    cfg: FixedPointConfig,
    generator: torch.Generator | None,
    progress: Callable[[], None],
) -> SigmaEstimate:
    run = _start(prob, cfg, generator)
    n_iter = 0
    for it in range(1, cfg.max_iter + 1):
        active = (~run.converged).nonzero().squeeze(1)
        if len(active) == 0:
            break
        n_iter = it
        a_bar64, se_lin = _draw_and_pool(run, prob, cfg, generator, it, active)
        _update(run, prob, cfg, it, active, a_bar64, se_lin)
        progress()
    if n_iter == 0:
        run.converged[:] = True
    no_effect = prob.present & (run.a_lin == 0) & ~run.touched
    return prob.finish(
        run.u,
        run.std_error,
        run.reconstruction,
        run.converged,
        n_iter,
        log_sigma_free=run.u_free,
        no_effect=no_effect,
    )


@dataclass
class _Run:
    """The fixed point's state between iterations, one row per example."""

    a_lin: Tensor  # (B, G) first-order curvature, from the projections
    a_lin_var: Tensor  # (B, G) its variance (0 where the projections are exact)
    u: Tensor  # (B, G) log σ, the current iterate
    # log σ* without the bound, from the latest curvature (the first-order one to start)
    u_free: Tensor
    log_max: Tensor  # (B, 1) log σ_max
    # Pooled sums over draws of q = (dR/dlog σ_g) / (2σ_g²), whose mean is a_g(σ), and of
    # its linearised twin l (the same draw at scale h -> 0, mean a_lin, known from the
    # projections): ā = mean(q) - β (mean(l) - a_lin) with the variance-optimal β per
    # group. Exact for a linear state (q = l), plain Monte Carlo when they decorrelate.
    # The moments are kept in float64: where q ≈ l their float32 differences cancel.
    sums: dict[str, Tensor]
    std_error: Tensor  # (B, G)
    touched: Tensor  # (B, G) groups whose draws ever moved the state
    reconstruction: Tensor  # (B,)
    rec: Tensor  # (B,) this iteration's mean reconstruction over the draws
    converged: Tensor  # (B,) bool
    use_cv: Tensor  # (B,) bool: draws come with their linearised twins


def _start(prob: Problem, cfg: FixedPointConfig, generator: torch.Generator | None) -> _Run:
    """The first-order start: Jacobian norms from projections, σ solved from them."""
    a_lin, a_lin_var = prob.jacobian_norms(cfg.n_projections, generator)
    u = prob.solve(a_lin)
    batch, n_groups = u.shape
    sums = {k: u.new_zeros(batch, 1 if k in _PER_EXAMPLE else n_groups, dtype=_F64) for k in _SUMS}
    # "auto" tries twins only where the projections are exact: elsewhere their error,
    # which no number of draws removes, makes the control variate lose (measured).
    exact = (a_lin_var == 0).all(1)
    use_cv = (
        exact
        if cfg.control_variate == "auto"
        else torch.full_like(exact, cfg.control_variate == "always")
    )
    return _Run(
        a_lin=a_lin,
        a_lin_var=a_lin_var,
        u=u,
        u_free=prob.solve(a_lin, clamp=False),
        log_max=prob.sigma_max.log()[:, None],
        sums=sums,
        std_error=torch.full_like(u, float("nan")),
        touched=torch.zeros_like(prob.present),
        reconstruction=u.new_zeros(batch),
        rec=u.new_zeros(batch),
        converged=torch.zeros(batch, dtype=torch.bool, device=u.device),
        use_cv=use_cv,
    )


def _draw_and_pool(
    run: _Run,
    prob: Problem,
    cfg: FixedPointConfig,
    generator: torch.Generator | None,
    it: int,
    active: Tensor,
) -> tuple[Tensor, Tensor]:
    """Iteration ``it``'s draws for the ``active`` examples, pooled into the sums; returns
    the pooled curvature ā (float64) and the standard error of its first-order part."""
    sums = run.sums
    if it == cfg.burn_in + 1:
        # forget the draws taken on the way from the first-order start
        for acc in sums.values():
            acc[active] = 0.0
    draws = _draw(prob, run.u, active, run.use_cv, cfg, generator, it <= cfg.burn_in)
    # later draws weigh more (weight k for the k-th pooled iteration): the curvature
    # depends on σ, and the early draws were taken at a σ further from the current one
    _pool(sums, draws, float(max(1, it - cfg.burn_in)))
    moving = torch.zeros_like(sums["q"]).index_add_(0, draws.rows, (draws.q != 0).to(_F64))
    run.touched |= moving > 0
    rec = torch.zeros_like(run.reconstruction).index_add_(0, draws.rows, draws.res)
    run.rec = rec / cfg.n_samples
    if it == 1 and cfg.control_variate == "auto":
        drop = _drop_twins(sums, active, prob.present, run.a_lin_var, cfg)
        run.use_cv[drop] = False
    return _curvature(sums, active, run.a_lin, run.a_lin_var)


def _update(
    run: _Run,
    prob: Problem,
    cfg: FixedPointConfig,
    it: int,
    active: Tensor,
    a_bar64: Tensor,
    se_lin: Tensor,
) -> None:
    """The damped step of the ``active`` examples to the target log σ, their standard
    errors, reconstruction, and whether they stop."""
    u, log_max = run.u, run.log_max[active]
    a_bar = a_bar64.to(u.dtype)
    u_old = u[active]
    unknown, free, target = _step(prob, a_bar64, active, run.touched, run.u_free, u_old, log_max)
    u_new = u_old + cfg.damping * (target - u_old)
    interior = ~unknown & (target < log_max - AT_BOUND)
    se = _fixed_point_std_error(run.sums, active, a_bar64, se_lin, interior).to(u.dtype)
    # the reconstruction of this iteration's draws, carried to the returned σ by the
    # local quadratic model R(σ) ≈ Σ_g a_g σ_g² (exact for a linear state)
    carry = (a_bar * ((2 * u_new).exp() - (2 * u_old).exp())).nan_to_num(0.0).sum(1)
    run.reconstruction[active] = run.rec[active] + carry
    score_old = channel_score(log_max, run.u_free[active])
    u[active] = u_new
    run.u_free[active] = torch.where(u_new < log_max - AT_BOUND, u_new, free)
    run.std_error[active] = se
    if it >= cfg.min_iter:
        run.converged[active] = _stopped(
            prob.present[active],
            u_new,
            u_old,
            run.u_free[active],
            score_old,
            se,
            unknown,
            log_max,
            cfg,
        )


def _step(
    prob: Problem,
    a_bar64: Tensor,
    active: Tensor,
    touched: Tensor,
    u_free: Tensor,
    u_old: Tensor,
    log_max: Tensor,
) -> tuple[Tensor, Tensor, Tensor]:
    """The fixed-point step from the pooled curvature: which groups are still unknown, the
    unbounded log σ* and the target log σ (clamped at ``log_max``, the active examples'
    ``(E, 1)`` log σ_max), each ``(E, G)``.

    A group the draws did move but whose curvature estimate is not positive yet is not
    known at all: it stays where it is and the next draws are pooled with these (jumping
    to σ_max on such noise lands where a group's signal is weakest).
    """
    unknown = prob.present[active] & touched[active] & (a_bar64 <= 0)
    free = prob.solve(a_bar64.to(u_old.dtype), active, clamp=False)
    free = torch.where(unknown, u_free[active], free)
    target = torch.minimum(free, log_max.expand_as(free))
    target = torch.where(unknown, u_old, target)
    return unknown, free, target


def _drop_twins(
    sums: dict[str, Tensor],
    active: Tensor,
    present: Tensor,
    a_lin_var: Tensor,
    cfg: FixedPointConfig,
) -> Tensor:
    """Examples whose twins do not pay (checked once, after the first iteration).

    A twin doubles the cost of a draw: keep the twins of an example only if the
    control-variate estimate from the most draws the run may pool (n_full) beats plain
    Monte Carlo from twice as many; the projections' error does not shrink with draws, so
    in practice twins stay where projections are exact. The dropped examples' twin sums
    are cleared.
    """
    tiny64 = torch.finfo(_F64).tiny
    s = {k: v[active] for k, v in sums.items()}
    n = s["n"]
    mq, ml = s["q"] / n, s["l"] / n
    var_q = (s["qq"] / n - mq * mq).clamp_min(0)
    var_l = (s["ll"] / n - ml * ml).clamp_min(0)
    cov = s["ql"] / n - mq * ml
    v_proj = a_lin_var[active].to(_F64)
    n_full = float(cfg.n_samples * max(1, cfg.max_iter - cfg.burn_in))
    gain = (cov / n_full).square() / (var_l / n_full + v_proj).clamp_min(tiny64)
    with_cv = var_q / n_full - gain
    keep = present[active]
    ratio = (with_cv / (var_q / (2 * n_full)).clamp_min(tiny64) * keep).sum(1)
    drop = active[ratio / keep.sum(1).clamp_min(1) >= 1]
    for key in ("l", "ll", "ql"):
        sums[key][drop] = 0.0
    return drop


def _curvature(
    sums: dict[str, Tensor], active: Tensor, a_lin: Tensor, a_lin_var: Tensor
) -> tuple[Tensor, Tensor]:
    """The pooled curvature ā ``(E, G)`` (float64) and the linear model's standard error of
    ½ log ā.

    ā = mean(q) - β (mean(l) - a_lin) with the variance-optimal β, which accounts for the
    projections' own error: β = Cov(q, l) / (Var(l) + n Var(a_lin)). It tends to 0 (plain
    Monte Carlo, unbiased) as the draws outnumber the projections. The variances use the
    weighted effective number of draws n_eff = (Σw)² / Σw².
    """
    tiny64 = torch.finfo(_F64).tiny
    s = {k: v[active] for k, v in sums.items()}
    n = s["n"]
    n_eff = n.square() / s["w2"]
    mq, ml = s["q"] / n, s["l"] / n
    var_q = (s["qq"] / n - mq * mq).clamp_min(0)
    var_l = (s["ll"] / n - ml * ml).clamp_min(0)
    cov = s["ql"] / n - mq * ml
    denom = var_l + n_eff * a_lin_var[active].to(_F64)
    beta = torch.where(denom > tiny64, cov / denom.clamp_min(tiny64), torch.zeros_like(cov))
    # β = 1 for a linear state; from a handful of nearly identical twins the ratio is mostly
    # round-off, so keep it where a control variate can help at all
    beta = beta.clamp(0.0, 2.0)
    a_cv = mq - beta * (ml - a_lin[active].to(_F64))
    var_cv = (var_q - beta * cov).clamp_min(0) / n_eff
    # a curvature is positive: where the fitted control variate overshoots to <= 0
    # (β misjudged on a kink), use the plain mean of the draws instead
    cv_ok = a_cv > 0
    a_bar = torch.where(cv_ok, a_cv, mq)
    var_a = torch.where(cv_ok, var_cv, var_q / n_eff) / (1 - 1 / n_eff.clamp_min(2))
    return a_bar, 0.5 * var_a.sqrt() / a_bar.abs().clamp_min(tiny64)


def _fixed_point_std_error(
    sums: dict[str, Tensor], active: Tensor, a_bar: Tensor, se_lin: Tensor, interior: Tensor
) -> Tensor:
    r"""Standard error of the fixed point's log σ, with the σ-dependence of the curvature.

    The fixed point solves :math:`u_g = \tfrac12\log(c_g/2) - \tfrac12\log a_g(u)`, so an
    error :math:`\eta_g` of :math:`\log\bar a_g` moves it by
    :math:`\delta u_g \approx -\tfrac12\eta_g / (1 + \tfrac12\Gamma_{gg})` with
    :math:`\Gamma_{gg} = \partial\log a_g/\partial u_g`, measured from the re-evaluations at
    :math:`u + \delta v`. The linear model has :math:`\Gamma = 0`; a curvature that falls
    as σ grows (saturation) makes the error larger. The factor
    :math:`1/(1 + \tfrac12\hat\Gamma_{gg})` is kept in [1, 4]: never below the linear
    model's error (a noisy :math:`\hat\Gamma > 0` must not stop the run early) and at most
    four times it (:math:`\hat\Gamma` comes from one draw in eight). Groups at the bound (or
    unknown) keep the linear model's error (that of log σ*).
    """
    s = {k: v[active] for k, v in sums.items()}
    slope = s["dv"] / s["nd"].clamp_min(torch.finfo(_F64).tiny)  # ≈ ∂a_g/∂u_g
    gain = 1 + 0.5 * slope / a_bar.abs().clamp_min(torch.finfo(_F64).tiny)
    measured = (s["nd"] > 0).expand_as(gain)
    # never below the linear model's error (a noisy Γ̂ > 0 must not stop the run early), at
    # most 4 times it (Γ̂ is itself a noisy estimate from one draw in eight)
    gain = torch.where(measured, gain.clamp(0.25, 1.0), torch.ones_like(gain))
    return torch.where(interior, se_lin / gain, se_lin)


def _stopped(
    present: Tensor,
    u_new: Tensor,
    u_old: Tensor,
    u_free: Tensor,
    score_old: Tensor,
    se: Tensor,
    unknown: Tensor,
    log_max: Tensor,
    cfg: FixedPointConfig,
) -> Tensor:
    """The stopping rule on the reported score: log σ inside the bound, the channel score
    (how hard the data pushes back at σ_max) for groups at the bound; each group's standard
    error and last change, as RMS or maximum (``cfg.norm``) at most ``cfg.tol``."""
    inside = u_new < log_max - AT_BOUND
    factor = torch.where(inside, torch.ones_like(se), score_slope(log_max, u_free))
    keep = present & (factor > 0)  # a group without effect has no error
    err_se = torch.where(keep, factor * se, torch.zeros_like(se))
    err_se = torch.where(unknown, torch.full_like(se, math.inf), err_se)
    score_step = (channel_score(log_max, u_free) - score_old).abs()
    err_step = torch.where(inside, (u_new - u_old).abs(), score_step)
    err_step = torch.where(present, err_step, torch.zeros_like(se))
    return (group_norm(err_se, present, cfg.norm) <= cfg.tol) & (
        group_norm(err_step, present, cfg.norm) <= cfg.tol
    )


def group_norm(err: Tensor, present: Tensor, norm: str) -> Tensor:
    """Root mean square (``"rms"``) or maximum (``"max"``) of ``err`` over present groups."""
    zero = torch.zeros_like(err)
    if norm == "max":
        return torch.where(present, err, zero).amax(1)
    count = present.sum(1).clamp_min(1)
    return (torch.where(present, err, zero).square().sum(1) / count).sqrt()
