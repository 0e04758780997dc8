"""Adam on ρ with σ = σ_max · sigmoid(ρ): the reference algorithm and its relatives."""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor

from captum_perturb.config import AdamConfig
from captum_perturb.functional._groups import chunks
from captum_perturb.functional.problem import AT_BOUND, Problem, SigmaEstimate, randn


def adam(
    prob: Problem, cfg: AdamConfig, generator: torch.Generator | None, progress: Callable[[], None]
) -> SigmaEstimate:
    log_max = prob.sigma_max.log()[:, None]
    rho0 = _start(prob, cfg, generator, log_max)
    rho = rho0.clone().requires_grad_(True)
    opt = torch.optim.Adam([rho], lr=cfg.lr)
    best_loss = torch.full((prob.batch,), float("inf"), dtype=rho.dtype, device=rho.device)
    best_rho = rho0.clone()
    tail_start = cfg.steps - max(1, round(cfg.average_fraction * cfg.steps))
    tail_sum = torch.zeros_like(rho0)
    tail_n = 0
    for step in range(cfg.steps):
        rec, penalty, grad = _loss_and_grad(prob, cfg, generator, rho, log_max)
        rho.grad = grad
        loss = rec - penalty
        if cfg.keep == "best_sample":
            better = loss < best_loss
            best_loss = torch.where(better, loss, best_loss)
            best_rho[better] = rho.detach()[better]
        opt.step()
        if step >= tail_start:
            tail_sum += log_max + torch.nn.functional.logsigmoid(rho.detach())
            tail_n += 1
        progress()
    if cfg.keep == "best_sample":
        u = log_max + torch.nn.functional.logsigmoid(best_rho)
    elif cfg.keep == "average":
        u = tail_sum / tail_n
    else:
        u = log_max + torch.nn.functional.logsigmoid(rho.detach())
    return check(prob, cfg, u.detach(), generator)


def _start(
    prob: Problem, cfg: AdamConfig, generator: torch.Generator | None, log_max: Tensor
) -> Tensor:
    """ρ to start from: random (the reference code), or the first-order solution."""
    if cfg.init == "random":
        return randn((prob.batch, prob.n_groups), prob.state, generator)
    u0 = prob.solve(prob.jacobian_norms(32, generator)[0])
    frac = (u0 - log_max).exp().clamp(1e-6, 1 - 1e-6)
    return torch.log(frac) - torch.log1p(-frac)


def _loss_and_grad(
    prob: Problem,
    cfg: AdamConfig,
    generator: torch.Generator | None,
    rho: Tensor,
    log_max: Tensor,
) -> tuple[Tensor, Tensor, Tensor]:
    """One step's ``n_samples`` draws per example: the mean reconstruction ``(B,)``, the
    entropy term ``(B,)`` and the loss's gradient in ρ ``(B, G)``."""
    everyone = torch.arange(prob.batch, device=rho.device)
    rows = everyone.repeat(cfg.n_samples)
    noise = tuple(
        randn((len(rows), *s), x, generator) for x, s in zip(prob.inputs, prob.shapes, strict=True)
    )
    rec = torch.zeros(prob.batch, dtype=rho.dtype, device=rho.device)
    grad = torch.zeros_like(rho)
    with torch.enable_grad():
        for part in chunks(len(rows), prob.batch_size):
            r = rows[part]
            sigma = (log_max + torch.nn.functional.logsigmoid(rho)).exp()
            pert = tuple(
                x[r] + s * z[part]
                for x, s, z in zip(prob.inputs, prob.spread(sigma[r], r), noise, strict=True)
            )
            res = prob.residual(r, pert) / cfg.n_samples
            # autograd.grad, not backward: nothing accumulates in the model's .grad
            (g,) = torch.autograd.grad(res.sum(), rho)
            grad += g
            rec = rec.index_add(0, r, res.detach())
        log_sig = log_max + torch.nn.functional.logsigmoid(rho)
        penalty = (prob.coef * (log_sig - log_max)).sum(1)
        (g,) = torch.autograd.grad(-penalty.sum(), rho)
        grad += g
    return rec, penalty.detach(), grad


def check(
    prob: Problem, cfg: AdamConfig, u: torch.Tensor, generator: torch.Generator | None
) -> SigmaEstimate:
    """Adam has no stopping rule: measure the curvature at the returned σ with fresh draws
    and call an example converged only if every group sits within ``tol`` plus three
    standard errors of the fixed point that curvature implies. The same draws give the
    reconstruction at the returned σ and log σ* of groups at the bound."""
    a, se, moved, rec = prob.curvature(u, cfg.check_samples, generator)
    free = prob.solve(a, clamp=False)
    log_max = prob.sigma_max.log()[:, None]
    target = torch.minimum(free, log_max.expand_as(free))
    off = (u - target).abs() <= cfg.tol + 3.0 * se
    converged = (off | ~prob.present).all(1)
    # σ_max·sigmoid(ρ) never reaches the bound: where the curvature says the bound binds,
    # log σ* comes from the curvature
    bound = free >= log_max - AT_BOUND
    return prob.finish(
        u,
        torch.full_like(u, float("nan")),
        rec,
        converged,
        cfg.steps,
        log_sigma_free=torch.where(bound, free, u),
        no_effect=prob.present & (a == 0) & ~moved,
    )
