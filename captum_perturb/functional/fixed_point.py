"""The default estimator: first-order start, pooled fixed-point refinement."""

from __future__ import annotations

import math
from collections.abc import Callable

import torch

from captum_perturb.config import FixedPointConfig
from captum_perturb.functional.problem import Problem, SigmaEstimate

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
    names = ("n", "q", "l", "qq", "ll", "ql")
    f64 = torch.float64
    sums = {k: u.new_zeros(batch, 1 if k == "n" else n_groups, dtype=f64) for k in names}
    tiny64 = torch.finfo(f64).tiny
    std_error = torch.full_like(u, float("nan"))
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
            ("q", q),
            ("l", lin),
            ("qq", q * q),
            ("ll", lin * lin),
            ("ql", q * lin),
        ):
            sums[key].index_add_(0, rows, val)
        rec = torch.zeros_like(reconstruction).index_add_(0, rows, res) / cfg.n_samples
        reconstruction[active] = rec[active]

        s = {k: v[active] for k, v in sums.items()}
        n = s["n"]
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
        denom = var_l + n * v_proj
        beta = torch.where(denom > tiny64, cov / denom.clamp_min(tiny64), torch.zeros_like(cov))
        a_bar64 = mq - beta * (ml - a_lin[active].to(f64))
        var_a = (var_q / n - beta * cov / n).clamp_min(0) / (1 - 1 / n.clamp_min(2))
        se = (0.5 * var_a.sqrt() / a_bar64.abs().clamp_min(tiny64)).to(u.dtype)
        a_bar = a_bar64.to(u.dtype)
        target = prob.solve(a_bar, active)
        u_new = u[active] + cfg.damping * (target - u[active])
        step = (u_new - u[active]).abs()
        u[active] = u_new
        std_error[active] = se
        # the stopping rule: groups strictly inside the bound must be known to ``tol``
        # (RMS over groups of the standard error and of the last step)
        inside = prob.present[active] & (u_new < log_max[active] - 1e-6)
        denom = inside.sum(1).clamp_min(1)
        zero = torch.zeros_like(se)
        rms_se = (torch.where(inside, se, zero).square().sum(1) / denom).sqrt()
        rms_step = (torch.where(inside, step, zero).square().sum(1) / denom).sqrt()
        if it >= cfg.min_iter:
            converged[active] = (rms_se <= cfg.tol) & (rms_step <= cfg.tol)
        progress()
    if n_iter == 0:
        converged[:] = True
    return prob.finish(u, std_error, reconstruction, converged, n_iter)
