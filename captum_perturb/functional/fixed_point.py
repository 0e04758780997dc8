"""The default estimator: first-order start, pooled fixed-point refinement."""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
from torch import Tensor

from captum_perturb.config import FixedPointConfig
from captum_perturb.functional.problem import (
    _AT_BOUND,
    Problem,
    SigmaEstimate,
    channel_score,
    score_slope,
)

#: the scale h of the linearised twin draw (σ -> hσ); small enough to be linear,
#: large enough for float32 differences of the state
_LINEAR_SCALE = 1e-2


def fixed_point(
    prob: Problem,
    cfg: FixedPointConfig,
    generator: torch.Generator | None,
    progress: Callable[[], None],
) -> SigmaEstimate:
    a_lin, a_lin_var = prob.jacobian_norms(cfg.n_projections, generator)
    u = prob.solve(a_lin)  # the first-order start
    batch, n_groups = u.shape
    log_max = prob.sigma_max.log()[:, None]
    # Pooled sums over draws of q = (dR/dlog σ_g) / (2σ_g²), whose mean is a_g(σ), and of
    # its linearised twin l (the same draw at scale h -> 0, mean a_lin, known from the
    # projections): ā = mean(q) - β (mean(l) - a_lin) with the variance-optimal β per
    # group. Exact for a linear state (q = l), plain Monte Carlo when they decorrelate.
    # The moments are kept in float64: where q ≈ l their float32 differences cancel.
    names = ("n", "w2", "q", "l", "qq", "ll", "ql")
    f64 = torch.float64
    sums = {k: u.new_zeros(batch, 1 if k in ("n", "w2") else n_groups, dtype=f64) for k in names}
    tiny64 = torch.finfo(f64).tiny
    std_error = torch.full_like(u, float("nan"))
    # log σ* without the bound, from the latest curvature (the first-order one to start)
    u_free = prob.solve(a_lin, clamp=False)
    touched = torch.zeros_like(prob.present)  # groups whose draws ever moved the state
    reconstruction = u.new_zeros(batch)
    converged = torch.zeros(batch, dtype=torch.bool, device=u.device)
    n_iter = 0
    log_h = math.log(_LINEAR_SCALE)
    # "auto" tries twins only where the projections are exact: elsewhere their error,
    # which no number of draws removes, makes the control variate lose (measured).
    exact = (a_lin_var == 0).all(1)
    use_cv = (
        exact
        if cfg.control_variate == "auto"
        else torch.full_like(exact, cfg.control_variate == "always")
    )
    for it in range(1, cfg.max_iter + 1):
        active = (~converged).nonzero().squeeze(1)
        if len(active) == 0:
            break
        n_iter = it
        if it == cfg.burn_in + 1:
            # forget the draws taken on the way from the first-order start
            for acc in sums.values():
                acc[active] = 0.0
        # later draws weigh more (weight k for the k-th pooled iteration): the curvature
        # depends on σ, and the early draws were taken at a σ further from the current one
        weight = float(max(1, it - cfg.burn_in))
        rows = active.repeat(cfg.n_samples)
        noise = prob.draw(rows, generator)
        scale = 2.0 * (2.0 * u[rows]).exp()
        twin = use_cv[rows]  # rows that also get their linearised twin
        t_rows = rows[twin]
        both = torch.cat([rows, t_rows])
        u_both = torch.cat([u[rows], u[t_rows] + log_h])
        grads, res = prob.sample_gradients(
            u_both, both, tuple(torch.cat([z, z[twin]]) for z in noise)
        )
        q = grads[: len(rows)].to(f64) / scale.to(f64)
        lin = torch.zeros_like(q)
        lin[twin] = grads[len(rows) :].to(f64) / (scale[twin].to(f64) * _LINEAR_SCALE**2)
        res = res[: len(rows)]
        ones = torch.ones(len(rows), 1, dtype=f64, device=u.device)
        for key, val in (
            ("n", ones),
            ("w2", ones * weight),
            ("q", q),
            ("l", lin),
            ("qq", q * q),
            ("ll", lin * lin),
            ("ql", q * lin),
        ):
            sums[key].index_add_(0, rows, val * weight)
        moving = torch.zeros_like(sums["q"]).index_add_(0, rows, (q != 0).to(f64))
        touched |= moving > 0
        rec = torch.zeros_like(reconstruction).index_add_(0, rows, res) / cfg.n_samples

        s = {k: v[active] for k, v in sums.items()}
        n = s["n"]  # the sum of the weights; n_eff draws give the weighted mean's variance
        n_eff = n.square() / s["w2"]
        mq, ml = s["q"] / n, s["l"] / n
        var_q = (s["qq"] / n - mq * mq).clamp_min(0)
        var_l = (s["ll"] / n - ml * ml).clamp_min(0)
        cov = s["ql"] / n - mq * ml
        v_proj = a_lin_var[active].to(f64)
        if it == 1 and cfg.control_variate == "auto":
            # a twin doubles the cost of a draw: keep the twins of an example only if the
            # control-variate estimate from the most draws the run may pool (n_full)
            # beats plain Monte Carlo from twice as many; the projections' error does not
            # shrink with draws, so in practice twins stay where projections are exact
            n_full = float(cfg.n_samples * max(1, cfg.max_iter - cfg.burn_in))
            gain = (cov / n_full).square() / (var_l / n_full + v_proj).clamp_min(tiny64)
            with_cv = var_q / n_full - gain
            keep = prob.present[active]
            ratio = (with_cv / (var_q / (2 * n_full)).clamp_min(tiny64) * keep).sum(1)
            drop = active[ratio / keep.sum(1).clamp_min(1) >= 1]
            use_cv[drop] = False
            for key in ("l", "ll", "ql"):
                sums[key][drop] = 0.0
            s = {k: v[active] for k, v in sums.items()}
            ml = s["l"] / n
            var_l = (s["ll"] / n - ml * ml).clamp_min(0)
            cov = s["ql"] / n - mq * ml
        # ā = mean(q) - β (mean(l) - a_lin) with the variance-optimal β, which accounts
        # for the projections' own error: β = Cov(q, l) / (Var(l) + n Var(a_lin)). It
        # tends to 0 (plain Monte Carlo, unbiased) as the draws outnumber the projections.
        denom = var_l + n_eff * v_proj
        beta = torch.where(denom > tiny64, cov / denom.clamp_min(tiny64), torch.zeros_like(cov))
        a_cv = mq - beta * (ml - a_lin[active].to(f64))
        var_cv = (var_q / n_eff - beta * cov / n_eff).clamp_min(0)
        # a curvature is positive: where the fitted control variate overshoots to <= 0
        # (β misjudged on a kink), use the plain mean of the draws instead
        cv_ok = a_cv > 0
        a_bar64 = torch.where(cv_ok, a_cv, mq)
        var_a = torch.where(cv_ok, var_cv, var_q / n_eff) / (1 - 1 / n_eff.clamp_min(2))
        se = (0.5 * var_a.sqrt() / a_bar64.abs().clamp_min(tiny64)).to(u.dtype)
        a_bar = a_bar64.to(u.dtype)
        u_old = u[active]
        # a group the draws did move but whose curvature estimate is not positive yet is
        # not known at all: it stays where it is and the next draws are pooled with these
        # (jumping to σ_max on such noise lands where a group's signal is weakest)
        unknown = prob.present[active] & touched[active] & (a_bar64 <= 0)
        free = prob.solve(a_bar, active, clamp=False)
        free = torch.where(unknown, u_free[active], free)
        target = torch.minimum(free, log_max[active].expand_as(free))
        target = torch.where(unknown, u_old, target)
        u_new = u_old + cfg.damping * (target - u_old)
        # the reconstruction of this iteration's draws, carried to the returned σ by the
        # local quadratic model R(σ) ≈ Σ_g a_g σ_g² (exact for a linear state)
        carry = (a_bar * ((2 * u_new).exp() - (2 * u_old).exp())).nan_to_num(0.0).sum(1)
        reconstruction[active] = rec[active] + carry
        score_old = channel_score(log_max[active], u_free[active])
        u[active] = u_new
        u_free[active] = torch.where(u_new < log_max[active] - _AT_BOUND, u_new, free)
        std_error[active] = se
        moved = (u_new - u_old).abs()
        # the stopping rule on the reported score: log σ inside the bound, the channel
        # score (how hard the data pushes back at σ_max) for groups at the bound
        inside = u_new < log_max[active] - _AT_BOUND
        factor = torch.where(
            inside, torch.ones_like(se), score_slope(log_max[active], u_free[active])
        )
        score_step = (channel_score(log_max[active], u_free[active]) - score_old).abs()
        keep = prob.present[active] & (factor > 0)  # a group without effect has no error
        err_se = torch.where(keep, factor * se, torch.zeros_like(se))
        err_se = torch.where(unknown, torch.full_like(se, float("inf")), err_se)
        err_step = torch.where(inside, moved, score_step)
        err_step = torch.where(prob.present[active], err_step, torch.zeros_like(se))
        if it >= cfg.min_iter:
            converged[active] = (group_norm(err_se, prob.present[active], cfg.norm) <= cfg.tol) & (
                group_norm(err_step, prob.present[active], cfg.norm) <= cfg.tol
            )
        progress()
    if n_iter == 0:
        converged[:] = True
    no_effect = prob.present & (a_lin == 0) & ~touched
    return prob.finish(
        u, std_error, reconstruction, converged, n_iter, log_sigma_free=u_free, no_effect=no_effect
    )


def group_norm(err: Tensor, present: Tensor, norm: str) -> Tensor:
    """Root mean square (``"rms"``) or maximum (``"max"``) of ``err`` over present groups."""
    zero = torch.zeros_like(err)
    if norm == "max":
        return torch.where(present, err, zero).amax(1)
    count = present.sum(1).clamp_min(1)
    return (torch.where(present, err, zero).square().sum(1) / count).sqrt()
