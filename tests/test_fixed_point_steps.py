"""The fixed point's steps against their definitions, each on its own.

The mutation run over ``captum_perturb/functional/fixed_point.py``
(``comparisons/benchmarks/mutation.sh``) left mutants alive that change a result but that
the end-to-end tests cannot see: the re-evaluations that measure how the curvature moves
with σ (they only move the standard error, within a clamp), the burn-in and the
iteration weights of the pooled draws, the decision to drop the linearised twins, the
iteration count. Each step is checked here against an independent computation:

* :func:`_draw` against the draws written out by hand for a quadratic state
  :math:`\\Phi_d = s_d + s_d^2`, :math:`s_d = \\sum_i W_i x_{i,d}`, whose per-draw
  :math:`q_g` is known in closed form at any σ (so the twin's scale and the
  re-evaluation's step are pinned, not only their means);
* the pooling, burn-in, weights and standard error with the draws replaced by constants
  of each iteration, so the pooled mean and spread are known exactly;
* :func:`_drop_twins` against its rule computed here from the moments, on examples whose
  correlation puts them on both sides of the threshold;
* the evaluations of a run, counted from the configuration.
"""

from __future__ import annotations

import math
from typing import Any

import pytest
import torch
from torch import Tensor

import captum_perturb.functional.fixed_point as fp
from captum_perturb import FixedPointConfig
from captum_perturb.functional import estimate_sigma
from captum_perturb.functional.problem import Problem
from comparisons.benchmarks.variance_probe import captured_problem

W = torch.tensor([1.0, 2.0, 4.0])
F64 = torch.float64


def quadratic(inputs: tuple[Tensor, ...], rows: Tensor) -> Tensor:
    s = torch.einsum("i,rid->rd", W, inputs[0])
    return s + s.square()


def linear(inputs: tuple[Tensor, ...], rows: Tensor) -> Tensor:
    return torch.einsum("i,rid->rd", W, inputs[0])


def problem(phi: Any = quadratic, batch: int = 1, **kwargs: Any) -> tuple[Problem, Any]:
    """The Problem of a (batch, 3, 8) input, one group per row of 8, and the estimate."""
    x = 0.3 * torch.randn(batch, 3, 8, generator=torch.Generator().manual_seed(0))
    groups = (torch.arange(3).view(1, 3, 1).expand(batch, 3, 8),)
    kwargs.setdefault("state_std", torch.ones(8))
    with captured_problem() as box:
        estimate_sigma(
            phi,
            (x,),
            groups,
            sigma_max=10.0,
            generator=torch.Generator().manual_seed(1),
            **kwargs,
        )
    return box["prob"], box["est"]


def q_by_hand(prob: Problem, log_sigma: Tensor, z: Tensor) -> Tensor:
    r""":math:`q_g = \partial R/\partial\log\sigma_g / (2\sigma_g^2)` of the quadratic state
    for each row of ``z`` ``(R, 3, 8)`` at ``log_sigma`` ``(R, 3)``, float64, from
    :math:`\partial R/\partial\log\sigma_g
    = \sum_d 2 w_d f_d (1 + 2\tilde s_d) W_g\sigma_g z_{g,d}`."""
    x = prob.inputs[0][0].to(F64)
    sigma = log_sigma.to(F64).exp()
    w, z = prob.weight[0].to(F64), z.to(F64)
    s = torch.einsum("i,id->d", W.to(F64), x)
    noisy = s + torch.einsum("i,ri,rid->rd", W.to(F64), sigma, z)
    f = noisy + noisy.square() - (s + s.square())
    grad = 2 * torch.einsum("d,rd,rd,i,ri,rid->ri", w, f, 1 + 2 * noisy, W.to(F64), sigma, z)
    return grad / (2 * sigma.square())


def test_draw_is_the_closed_form_with_its_twin_and_its_re_evaluation() -> None:
    prob, _ = problem()
    u = torch.tensor([[-1.0, -0.5, 0.25]])
    cfg = FixedPointConfig(n_samples=16)
    active, use_cv = torch.tensor([0]), torch.tensor([True])
    d = fp._draw(prob, u, active, use_cv, cfg, torch.Generator().manual_seed(5))
    # the same generator, replayed: the noise, then the signs v ∈ {-1, +1}
    gen = torch.Generator().manual_seed(5)
    rows = active.repeat(16)
    (z,) = prob.draw(rows, gen)
    n_fd = 16 // fp._GAMMA_EVERY
    v = 2.0 * torch.randint(0, 2, (n_fd, 3), generator=gen).to(F64) - 1.0
    q = q_by_hand(prob, u.expand(16, -1), z)
    twin = q_by_hand(prob, u.expand(16, -1) + math.log(fp.LINEAR_SCALE), z)
    moved = q_by_hand(prob, u.expand(n_fd, -1) + fp._GAMMA_STEP * v, z[:n_fd])
    assert torch.allclose(d.q, q, rtol=1e-4, atol=1e-6)
    assert torch.allclose(d.lin, twin, rtol=1e-4, atol=1e-6)
    assert not torch.allclose(twin, q, rtol=1e-2)  # the twin's scale matters here
    assert torch.equal(d.fd_rows, rows[:n_fd])
    assert torch.allclose(d.dv, (moved - q[:n_fd]) / fp._GAMMA_STEP * v, rtol=1e-3, atol=1e-5)
    # the burn-in iterations take no re-evaluations, and twins only where asked
    burn = fp._draw(prob, u, active, torch.tensor([False]), cfg, None, burn_in=True)
    assert len(burn.fd_rows) == 0 and bool((burn.lin == 0).all())


class ConstantDraws:
    """Stands in for :func:`_draw`: in iteration ``k`` every draw's ``q`` is ``c[k]`` and
    every re-evaluation's slope ``dv`` is ``slope[k]`` (one per active example)."""

    def __init__(self, c: list[Tensor], slope: list[Tensor], wobble: float = 0.0) -> None:
        self.c, self.slope, self.calls, self.wobble = c, slope, 0, wobble
        self.use_cv: list[Tensor] = []  # the twins asked for in each call

    def __call__(self, prob: Problem, u: Tensor, active: Tensor, use_cv: Tensor, cfg: Any,
                 gen: Any, burn_in: bool = False) -> fp._Draws:  # fmt: skip
        k = self.calls
        self.calls += 1
        self.use_cv.append(use_cv.clone())
        rows = active.repeat(cfg.n_samples)
        q = self.c[k].to(F64).expand(len(rows), -1).clone()
        q += self.wobble * (2 * (torch.arange(len(rows)) % 2) - 1).to(F64)[:, None]
        fd_rows = rows[: len(active)]
        dv = self.slope[k].to(F64).expand(len(fd_rows), -1).clone()
        zero = torch.zeros(len(rows), dtype=u.dtype)
        return fp._Draws(rows=rows, q=q, lin=torch.zeros_like(q), res=zero, fd_rows=fd_rows, dv=dv)


def test_pooling_forgets_the_burn_in_and_weighs_iteration_k_by_k(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    prob, _ = problem(linear)
    c = [
        torch.tensor([9.0, 9.0, 9.0]),
        torch.tensor([2.0, 3.0, 5.0]),
        torch.tensor([4.0, 1.0, 3.0]),
    ]
    slope = [torch.zeros(3), torch.tensor([-1.0, -0.4, -2.0]), torch.tensor([-3.0, -1.0, -2.0])]
    fake = ConstantDraws(c, slope)
    monkeypatch.setattr(fp, "_draw", fake)
    cfg = FixedPointConfig(min_iter=3, max_iter=3, burn_in=1, control_variate="never", tol=1e-9)
    prob.evaluations.zero_()
    est = fp.fixed_point(prob, cfg, torch.Generator().manual_seed(0), lambda: None)
    assert fake.calls == 3 and est.n_iter == 3
    # iteration 1 is burn-in (dropped); iterations 2 and 3 pooled with weights 1 and 2
    w = torch.tensor([1.0, 2.0], dtype=F64)
    q = torch.stack([c[1], c[2]]).to(F64)
    a = (w[:, None] * q).sum(0) / w.sum()
    assert torch.allclose(est.log_sigma[0].to(F64), prob.solve(a[None].float())[0].to(F64))
    # its standard error: the weighted spread over n_eff = (Σw)²/Σw² draws of each weight
    n = 16 * w  # 16 draws per iteration
    n_eff = n.sum() ** 2 / (16 * w.square()).sum()
    var = (n[:, None] * (q - a).square()).sum(0) / n.sum()
    var_a = var / n_eff / (1 - 1 / n_eff)
    se_linear = 0.5 * var_a.sqrt() / a
    # ... divided by 1 + ½ ∂log a/∂u from the pooled re-evaluations, kept in [0.25, 1]
    d = (w[:, None] * torch.stack([slope[1], slope[2]]).to(F64)).sum(0) / w.sum()
    gain = (1 + 0.5 * d / a).clamp(0.25, 1.0)
    assert torch.allclose(est.std_error[0].to(F64), se_linear / gain, rtol=1e-5)
    assert not bool(est.converged[0])
    # the draws' own reconstruction is 0 here, so the reported one is the local quadratic
    # model's carry from the σ of iteration 2 (from c₂ alone) to the returned σ
    u_old = prob.solve(c[1][None].float())[0].to(F64)
    u_new = est.log_sigma[0].to(F64)
    carry = (a * ((2 * u_new).exp() - (2 * u_old).exp())).sum()
    assert torch.allclose(est.reconstruction[0].to(F64), carry, rtol=1e-4)


def test_a_run_of_no_iterations_is_the_first_order_start() -> None:
    prob, _ = problem(linear)
    cfg = FixedPointConfig(min_iter=0, max_iter=0)
    a_lin, _ = prob.jacobian_norms(cfg.n_projections, torch.Generator().manual_seed(0))
    est = fp.fixed_point(prob, cfg, torch.Generator().manual_seed(0), lambda: None)
    assert est.n_iter == 0 and bool(est.converged.all())
    assert torch.allclose(est.log_sigma, prob.solve(a_lin))


@pytest.mark.parametrize("control_variate", ["always", "never"])
def test_evaluations_are_counted_from_the_configuration(control_variate: str) -> None:
    cfg = FixedPointConfig(
        n_samples=16, n_projections=4, min_iter=3, max_iter=3, tol=1e-9,
        control_variate=control_variate,  # type: ignore[arg-type]
    )  # fmt: skip
    _, est = problem(quadratic, batch=2, config=cfg)
    assert est.n_iter == 3
    twins = 16 if control_variate == "always" else 0
    n_fd = 16 // fp._GAMMA_EVERY
    # the clean pass, the projections, then per iteration the draws, their twins and
    # (after the burn-in) the re-evaluations
    per_example = 1 + 4 + 3 * (16 + twins) + 2 * n_fd
    assert est.evaluations.tolist() == [per_example, per_example]


def drop_rule(s: dict[str, Tensor], a_lin_var: Tensor, n_full: float, present: Tensor) -> Tensor:
    """The examples whose twins lose, from the moments: the control variate's variance
    with ``n_full`` draws against plain Monte Carlo's with twice as many, as a ratio
    averaged over the example's groups, >= 1."""
    n = s["n"]
    mq, ml = s["q"] / n, s["l"] / n
    var_q = s["qq"] / n - mq**2
    var_l = s["ll"] / n - ml**2
    cov = s["ql"] / n - mq * ml
    kept_cv = var_q / n_full - (cov / n_full) ** 2 / (var_l / n_full + a_lin_var)
    plain = var_q / (2 * n_full)
    ratio = torch.where(present, kept_cv / plain, torch.zeros_like(plain))
    return ratio.sum(1) / present.sum(1) >= 1


def test_drop_twins_drops_exactly_the_examples_whose_twins_lose() -> None:
    gen = torch.Generator().manual_seed(0)
    examples, groups, draws = 200, 3, 64
    rho = torch.linspace(0.3, 0.97, examples, dtype=F64)[:, None, None]
    base = torch.randn(examples, draws, groups, generator=gen, dtype=F64)
    other = torch.randn(examples, draws, groups, generator=gen, dtype=F64)
    q = 2.0 + base
    lin = 2.0 + 0.5 * (rho * base + (1 - rho**2).sqrt() * other)
    sums = {
        "n": torch.full((examples, 1), float(draws), dtype=F64),
        "q": q.sum(1),
        "l": lin.sum(1),
        "qq": (q * q).sum(1),
        "ll": (lin * lin).sum(1),
        "ql": (q * lin).sum(1),
    }
    before = {k: v.clone() for k, v in sums.items()}
    a_lin_var = torch.full((examples, groups), 1e-4, dtype=F64)
    cfg = FixedPointConfig(n_samples=16, max_iter=20, burn_in=1)
    present = torch.ones(examples, groups, dtype=torch.bool)
    present[::4, 1:] = False  # every fourth example has one group only
    active = torch.arange(examples)
    dropped = fp._drop_twins(sums, active, present, a_lin_var, cfg)
    expected = drop_rule(before, a_lin_var, float(16 * (20 - 1)), present)
    assert 20 < int(expected.sum()) < examples - 20  # both sides of the threshold
    assert torch.equal(dropped, active[expected])
    for key in ("l", "ll", "ql"):  # the dropped examples' twin sums are cleared, no others
        assert bool((sums[key][dropped] == 0).all())
        assert torch.equal(sums[key][~expected], before[key][~expected])
    for key in ("n", "q", "qq"):
        assert torch.equal(sums[key], before[key])


def curvature_by_hand(
    s: dict[str, Tensor], a_lin: Tensor, a_lin_var: Tensor
) -> tuple[Tensor, Tensor]:
    """The pooled curvature and the standard error of ½ log of it, from the sums: the
    control variate with β = Cov(q, l) / (Var(l) + n_eff Var(a_lin)) kept in [0, 2], the
    plain mean where that is not positive, variances over n_eff = (Σw)²/Σw² with the
    small-sample factor 1/(1 - 1/n_eff)."""
    n = s["n"]
    n_eff = n**2 / s["w2"]
    mq, ml = s["q"] / n, s["l"] / n
    var_q = s["qq"] / n - mq**2
    var_l = s["ll"] / n - ml**2
    cov = s["ql"] / n - mq * ml
    beta = (cov / (var_l + n_eff * a_lin_var)).clamp(0.0, 2.0)
    a_cv = mq - beta * (ml - a_lin)
    a = torch.where(a_cv > 0, a_cv, mq)
    var = torch.where(a_cv > 0, (var_q - beta * cov) / n_eff, var_q / n_eff)
    var = var / (1 - 1 / n_eff.clamp_min(2))
    return a, 0.5 * var.sqrt() / a.abs()


def test_curvature_against_its_definition_on_every_branch() -> None:
    # four examples, one group each, with moments that put β inside [0, 2], above it,
    # below it, and the control-variate estimate below zero
    mq = torch.tensor([[2.0], [2.0], [2.0], [0.5]], dtype=F64)
    ml = torch.tensor([[1.5], [1.0], [3.0], [3.0]], dtype=F64)
    var_q = torch.tensor([[1.0], [4.0], [1.0], [1.0]], dtype=F64)
    var_l = torch.tensor([[1.0], [0.5], [1.0], [1.0]], dtype=F64)
    cov = torch.tensor([[0.6], [1.4], [-0.5], [0.9]], dtype=F64)
    n = torch.full((4, 1), 48.0, dtype=F64)
    sums = {
        "n": n,
        "w2": torch.full((4, 1), 80.0, dtype=F64),
        "q": mq * n,
        "l": ml * n,
        "qq": (var_q + mq**2) * n,
        "ll": (var_l + ml**2) * n,
        "ql": (cov + mq * ml) * n,
    }
    a_lin = torch.tensor([[1.2], [1.0], [1.0], [1.0]])
    a_lin_var = torch.tensor([[0.01], [0.0], [0.01], [0.0]])
    a, se = fp._curvature(sums, torch.arange(4), a_lin, a_lin_var)
    a_ref, se_ref = curvature_by_hand(sums, a_lin.to(F64), a_lin_var.to(F64))
    assert torch.allclose(a, a_ref, rtol=1e-12) and torch.allclose(se, se_ref, rtol=1e-10)
    beta_raw = cov / (var_l + n**2 / 80.0 * a_lin_var.to(F64))
    assert 0 < beta_raw[0, 0] < 2 and beta_raw[1, 0] > 2 and beta_raw[2, 0] < 0
    assert mq[3, 0] - min(float(beta_raw[3, 0]), 2.0) * (ml[3, 0] - a_lin[3, 0]) <= 0


@pytest.mark.parametrize("slope", [-1.0, -3.0, 0.5])
def test_the_standard_error_gain_is_kept_in_its_clamp(
    monkeypatch: pytest.MonkeyPatch, slope: float
) -> None:
    """The re-evaluations' slope moves the standard error by 1/(1 + ½ Γ), Γ = slope/a (a the
    pooled curvature, 4/3 to 8/3 here), kept in [1, 4] times the linear model's: slope -1
    inside the clamp, -3 below it for the smaller curvatures, 0.5 above it."""
    prob, _ = problem(linear)
    c = [torch.full((3,), 2.0), torch.full((3,), 2.0), torch.tensor([1.0, 2.5, 3.0])]
    fake = ConstantDraws(c, [torch.zeros(3), torch.full((3,), slope), torch.full((3,), slope)])
    monkeypatch.setattr(fp, "_draw", fake)
    cfg = FixedPointConfig(min_iter=3, max_iter=3, burn_in=1, control_variate="never", tol=1e-9)
    est = fp.fixed_point(prob, cfg, torch.Generator().manual_seed(0), lambda: None)
    plain = FixedPointConfig(min_iter=3, max_iter=3, burn_in=1, control_variate="never", tol=1e-9)
    monkeypatch.setattr(fp, "_draw", ConstantDraws(c, [torch.zeros(3)] * 3))
    flat = fp.fixed_point(prob, plain, torch.Generator().manual_seed(0), lambda: None)
    # a = (1·2 + 2·c₃)/3 per group; Γ = slope / a
    a = (2.0 + 2.0 * torch.tensor([1.0, 2.5, 3.0], dtype=F64)) / 3.0
    gain = (1 + 0.5 * slope / a).clamp(0.25, 1.0)
    ratio = flat.std_error[0].to(F64) / est.std_error[0].to(F64)
    assert torch.allclose(ratio, gain, rtol=1e-5)


def test_group_norm_is_the_rms_or_the_maximum_over_present_groups() -> None:
    err = torch.tensor([[3.0, 4.0, 100.0], [2.0, 7.0, 9.0]])
    present = torch.tensor([[True, True, False], [True, False, False]])
    assert torch.allclose(fp.group_norm(err, present, "rms"), torch.tensor([12.5**0.5, 2.0]))
    assert torch.equal(fp.group_norm(err, present, "max"), torch.tensor([4.0, 2.0]))


@pytest.mark.parametrize("control_variate", ["auto", "always", "never"])
def test_auto_drops_the_twins_that_lose_after_the_first_iteration_only(
    monkeypatch: pytest.MonkeyPatch, control_variate: str
) -> None:
    """Eight outputs and eight projections: the first-order value is exact, so ``"auto"``
    tries the twins in iteration 1; twins uncorrelated with the draws lose, and from
    iteration 2 on none is drawn. ``"always"`` and ``"never"`` do not change."""
    prob, _ = problem(linear)
    c = [torch.tensor([2.0, 3.0, 5.0])] * 3
    fake = ConstantDraws(c, [torch.zeros(3)] * 3, wobble=0.5)
    monkeypatch.setattr(fp, "_draw", fake)
    cfg = FixedPointConfig(
        min_iter=3,
        max_iter=3,
        tol=1e-9,
        control_variate=control_variate,  # type: ignore[arg-type]
    )
    fp.fixed_point(prob, cfg, torch.Generator().manual_seed(0), lambda: None)
    asked = [bool(u[0]) for u in fake.use_cv]
    expected = {"auto": [True, False, False], "always": [True] * 3, "never": [False] * 3}
    assert asked == expected[control_variate]


def test_the_gain_skips_groups_at_the_bound(monkeypatch: pytest.MonkeyPatch) -> None:
    """A group whose curvature puts it at σ_max keeps the linear model's standard error
    (that of log σ*): the re-evaluations' gain is for groups inside the bound."""
    prob, _ = problem(linear)
    c = [torch.full((3,), 2.0), torch.tensor([2.0, 2.0, 1e-8]), torch.tensor([1.0, 2.5, 2e-8])]
    runs = []
    for slope in (-1.0, 0.0):
        monkeypatch.setattr(fp, "_draw", ConstantDraws(c, [torch.full((3,), slope)] * 3))
        cfg = FixedPointConfig(min_iter=3, max_iter=3, control_variate="never", tol=1e-9)
        runs.append(fp.fixed_point(prob, cfg, torch.Generator().manual_seed(0), lambda: None))
    assert bool(runs[0].saturated[0, 2]) and not bool(runs[0].saturated[0, :2].any())
    ratio = runs[1].std_error[0] / runs[0].std_error[0]
    assert float(ratio[0]) < 0.99 and float(ratio[1]) < 0.99  # inside: the gain
    assert float(ratio[2]) == pytest.approx(1.0, rel=1e-6)  # at the bound: none


def test_no_effect_is_a_zero_first_order_value_and_no_draw_ever_moving_the_state(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Group 2 has no first-order effect (its weight is 0): it is reported without effect
    only if no draw ever moved the state through it — here one draw of the burn-in did.
    Group 1 has a first-order effect but its draws never move anything: it has effect."""

    def phi(inputs: tuple[Tensor, ...], rows: Tensor) -> Tensor:
        return torch.einsum("i,rid->rd", torch.tensor([1.0, 2.0, 0.0]), inputs[0])

    prob, _ = problem(phi)
    ones = torch.tensor([1.0, 0.0, 0.0])

    class OneMovingDraw(ConstantDraws):
        def __call__(self, *args: Any, **kwargs: Any) -> fp._Draws:
            first = self.calls == 0
            d = super().__call__(*args, **kwargs)
            if first:
                d.q[0, 2] = 0.5  # one draw of iteration 1 moves the state through group 2
            return d

    monkeypatch.setattr(fp, "_draw", OneMovingDraw([ones] * 3, [torch.zeros(3)] * 3))
    cfg = FixedPointConfig(min_iter=3, max_iter=3, control_variate="never", tol=1e-9)
    est = fp.fixed_point(prob, cfg, torch.Generator().manual_seed(0), lambda: None)
    assert est.no_effect[0].tolist() == [False, False, False]
    monkeypatch.setattr(fp, "_draw", ConstantDraws([ones] * 3, [torch.zeros(3)] * 3))
    est = fp.fixed_point(prob, cfg, torch.Generator().manual_seed(0), lambda: None)
    assert est.no_effect[0].tolist() == [False, False, True]


def test_jacobian_norms_and_their_variance_from_random_projections() -> None:
    """Four orthonormal projections of an 8-element linear state (not exact): each gives
    :math:`W_g^2\\sum_d p_d^2 w_d` for group g; the estimate is their mean and its variance
    the sample variance over projections divided by their number."""
    prob, _ = problem(linear, state_std=torch.linspace(0.5, 2.0, 8))  # unequal weights
    a, var = prob.jacobian_norms(4, torch.Generator().manual_seed(7))
    gauss = torch.randn((1, 8, 4), generator=torch.Generator().manual_seed(7))
    p = torch.linalg.qr(gauss).Q[0].T.to(F64) * math.sqrt(8)  # (4 projections, 8)
    per = (W.to(F64) ** 2)[None, :] * (p**2 * prob.weight[0].to(F64)).sum(1)[:, None]
    assert torch.allclose(a[0].to(F64), per.mean(0), rtol=1e-5)
    assert torch.allclose(var[0].to(F64), per.var(0) / 4, rtol=1e-4)
    assert bool((var > 1e-3 * a.square()).all())  # the projections disagree: a real check
    exact, zero = prob.jacobian_norms(8, None)  # the standard basis: exact, no variance
    true = (W.to(F64) ** 2) * prob.weight[0].to(F64).sum()  # ‖√w ∂Φ/∂x_g‖² = W_g² Σ_d w_d
    assert torch.allclose(exact[0].to(F64), true, rtol=1e-5)
    assert bool((zero == 0).all())
