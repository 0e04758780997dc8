r"""The functional core: learn the largest per-group noise that keeps a state.

Everything else in the package (the Captum classes, the reference-code drop-in, the
benchmark) calls :func:`estimate_sigma`.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import Tensor

from captum_perturb.config import DEFAULT, AdamConfig, EstimatorConfig, FixedPointConfig
from captum_perturb.functional._groups import chunks, collect, flat_index, group_sizes, spread

#: ``state_fn(perturbed_inputs, rows) -> states``: evaluates the explained state for a
#: stack of (perturbed) copies; ``rows[r]`` is the example that copy ``r`` belongs to,
#: so side inputs and targets can be indexed with it. Returns ``(R, *state_shape)``.
StateFn = Callable[[tuple[Tensor, ...], Tensor], Tensor]

_HALF_LOG_2PIE = 0.5 * math.log(2 * math.pi * math.e)
#: the scale h of the linearised twin draw (σ -> hσ); small enough to be linear,
#: large enough for float32 differences of the state
_LINEAR_SCALE = 1e-2


@dataclass(frozen=True)
class SigmaEstimate:
    r"""What :func:`estimate_sigma` learned, per example ``b`` and group ``g``.

    Attributes:
        log_sigma: ``(B, G)`` log of the noise scale σ_g; NaN where example ``b`` has no
            group ``g``.
        entropy: ``(B, G)`` entropy of the group's noise in nats,
            :math:`H_g = m_g(\tfrac12\log 2\pi e + \log\sigma_g)` (paper Eq. 7).
        group_size: ``(B, G)`` number of perturbed elements :math:`m_g` (0 = absent).
        sigma_max: ``(B,)`` upper bound of σ used for each example.
        std_error: ``(B, G)`` Monte-Carlo standard error of :math:`\log\sigma_g`
            (NaN where the estimator does not provide one).
        loss: ``(B,)`` objective at the returned σ (Monte-Carlo estimate).
        reconstruction: ``(B,)`` its first term, the normalised squared change of the state.
        converged: ``(B,)`` whether the stopping rule was met (Adam: always ``True``
            once all steps ran).
        n_iter: refinement iterations (fixed point) or optimisation steps (Adam) run.
        n_evaluations: perturbed copies pushed through the model in total.
    """

    log_sigma: Tensor
    entropy: Tensor
    group_size: Tensor
    sigma_max: Tensor
    std_error: Tensor
    loss: Tensor
    reconstruction: Tensor
    converged: Tensor
    n_iter: int
    n_evaluations: int

    @property
    def sigma(self) -> Tensor:
        """``(B, G)`` noise scale σ_g (NaN where absent)."""
        return self.log_sigma.exp()

    @property
    def log_ratio(self) -> Tensor:
        r"""``(B, G)`` :math:`\log(\sigma_{max}/\sigma_g) \ge 0`, nats per dimension."""
        return self.sigma_max.log()[:, None] - self.log_sigma

    @property
    def information(self) -> Tensor:
        r"""``(B, G)`` nats of each group the state keeps.

        :math:`m_g \log(\sigma_{max}/\sigma_g)`, the entropy below the maximum.
        """
        return self.group_size * self.log_ratio


def state_weights(state: Tensor, state_std: Tensor | None, output_mask: Tensor | None) -> Tensor:
    r"""Per-element weights :math:`w_j = 1 / (M \sigma_{S,j}^2)` of the squared error.

    ``M`` counts the state's unmasked elements of each example, so that the first term
    of the objective is the reference code's *mean* over elements.

    Args:
        state: ``(B, *S)`` the explained state :math:`\Phi(x)`.
        state_std: σ_S, broadcastable to ``S`` (``inf`` leaves an element out); ``None``
            uses the reference code's
            fallback :math:`\sigma_S^2 = \mathrm{mean}(\Phi(x)^2)` per example (with a
            warning: a corpus σ_S is the sound choice).
        output_mask: broadcastable to ``(B, *S)``; zero marks padding that is not counted.

    Returns:
        ``(B, *S)`` weights.

    Raises:
        ValueError: σ_S of the wrong shape, non-finite or with zeros; a state that is
            identically zero under the fallback.
    """
    mask = torch.ones_like(state) if output_mask is None else output_mask.to(state.dtype)
    mask = torch.broadcast_to(mask, state.shape)
    count = mask.reshape(state.shape[0], -1).sum(1).clamp_min(1.0)
    view = (-1,) + (1,) * (state.dim() - 1)
    if state_std is None:
        warnings.warn(
            "No state_std (σ_S) given: dividing the squared error by mean(Φ(x)²) of each "
            "example, as the reference code does. This is unstable for outputs near zero; "
            "estimate σ_S on a corpus with captum_perturb.estimate_state_std.",
            UserWarning,
            stacklevel=3,
        )
        mean_sq = (mask * state.square()).reshape(state.shape[0], -1).sum(1) / count
        if bool((mean_sq <= torch.finfo(state.dtype).tiny).any()):
            raise ValueError(
                "The explained state is zero for some example, so the fallback normaliser "
                "mean(Φ(x)²) is zero. Pass state_std estimated on a corpus."
            )
        return mask / (mean_sq * count).reshape(view)
    std = torch.as_tensor(state_std, dtype=state.dtype, device=state.device)
    try:
        var = torch.broadcast_to(std, state.shape[1:]).square()
    except RuntimeError:
        raise ValueError(
            f"state_std has shape {tuple(std.shape)}, which does not broadcast to the "
            f"explained state's per-example shape {tuple(state.shape[1:])}. Estimate it "
            "for the same state (and target) you explain."
        ) from None
    if bool(torch.isnan(std).any()) or bool((std <= 0).any()) or bool((var <= 0).any()):
        raise ValueError(
            "state_std must be strictly positive (or +inf to leave an element out); it has "
            "zeros or NaN (a constant element of the state?). estimate_state_std marks "
            "constant elements with inf for you; or clamp it, e.g. state_std.clamp_min(1e-6)."
        )
    # elements with σ_S = inf are left out of the loss and of the count M
    mask = mask * torch.isfinite(var).to(mask.dtype).unsqueeze(0)
    count = mask.reshape(state.shape[0], -1).sum(1).clamp_min(1.0)
    var = torch.where(torch.isfinite(var), var, torch.ones_like(var))
    return mask / (var.unsqueeze(0) * count.reshape(view))


def check_finite(t: Tensor, what: str) -> None:
    if not bool(torch.isfinite(t).all()):
        raise ValueError(
            f"{what} contains NaN or Inf. Check the model and its inputs (and the noise "
            "scale sigma_max: a perturbation this large may overflow the model)."
        )


def _randn(shape: tuple[int, ...], like: Tensor, generator: torch.Generator | None) -> Tensor:
    return torch.randn(shape, generator=generator, device=like.device, dtype=like.dtype)


class _Problem:
    """The objective for one batch: inputs, groups, weights and the clean state."""

    def __init__(
        self,
        state_fn: StateFn,
        inputs: tuple[Tensor, ...],
        groups: tuple[Tensor, ...],
        n_groups: int,
        state: Tensor,
        weight: Tensor,
        rate: float,
        sigma_max: Tensor,
        batch_size: int | None,
    ) -> None:
        self.state_fn = state_fn
        self.inputs = inputs
        self.shapes = tuple(x.shape[1:] for x in inputs)
        self.flat = flat_index(groups, n_groups)
        self.n_groups = n_groups
        self.state = state
        self.weight = weight
        self.sigma_max = sigma_max
        self.batch_size = batch_size
        self.sizes = group_sizes(self.flat, n_groups, state.dtype)
        total = self.sizes.sum(1, keepdim=True).clamp_min(1.0)
        # entropy coefficient c_g = rate * m_g / N: the stationarity condition is
        # dR/dlog σ_g = c_g (for equal groups of K elements c_g = rate / n)
        self.coef = rate * self.sizes / total
        self.present = self.sizes > 0
        self.evaluations = 0

    @property
    def batch(self) -> int:
        return self.inputs[0].shape[0]

    def residual(self, rows: Tensor, perturbed: tuple[Tensor, ...]) -> Tensor:
        """Per-row weighted squared change of the state, ``(R,)``."""
        out = self.state_fn(perturbed, rows)
        check_finite(out, "The model output on perturbed inputs")
        diff = out - self.state[rows]
        self.evaluations += len(rows)
        return (self.weight[rows] * diff.square()).reshape(len(rows), -1).sum(1)

    def jacobian_norms(
        self, n_proj: int, generator: torch.Generator | None
    ) -> tuple[Tensor, Tensor]:
        r"""Estimate :math:`a_g = \|W^{1/2} J_g\|_F^2` from ``n_proj`` output projections.

        The projections are random orthonormal directions scaled by :math:`\sqrt{M}`
        (each unbiased, together with less variance than Gaussian ones); when
        ``n_proj`` reaches the state's size ``M`` the standard basis gives the exact norms.

        Returns:
            The estimate ``(B, G)`` and the variance of that estimate (0 when exact).
        """
        size = self.state[0].numel()
        batch = self.batch
        if n_proj >= size:
            n_proj = size
            basis = torch.eye(size, dtype=self.state.dtype, device=self.state.device)
            basis = basis * math.sqrt(size)
            proj = basis.repeat_interleave(batch, dim=0)
        else:
            gauss = _randn((batch, size, n_proj), self.state, generator)
            q = torch.linalg.qr(gauss).Q * math.sqrt(size)  # (B, M, P)
            proj = q.permute(2, 0, 1).reshape(n_proj * batch, size)
        rows = torch.arange(batch, device=self.state.device).repeat(n_proj)
        proj = proj.reshape(len(rows), *self.state.shape[1:]) * self.weight[rows].sqrt()
        exact = n_proj == size
        acc = self.state.new_zeros(self.batch, self.n_groups)
        acc_sq = self.state.new_zeros(self.batch, self.n_groups)
        for part in chunks(len(rows), self.batch_size):
            r = rows[part]
            leaf = tuple(x[r].detach().requires_grad_(True) for x in self.inputs)
            with torch.enable_grad():
                out = self.state_fn(leaf, r)
                check_finite(out, "The model output")
                grads = torch.autograd.grad((out * proj[part]).sum(), leaf, allow_unused=True)
            # these copies are unperturbed: they must reproduce the clean state
            if not torch.allclose(out.detach(), self.state[r], rtol=1e-4, atol=1e-5):
                raise RuntimeError(
                    "The explained state changes between two identical forward passes: the "
                    "model is stochastic (dropout in train mode?). Call model.eval() first."
                )
            self.evaluations += len(r)
            sq = tuple(
                torch.zeros_like(x) if g is None else g.square()
                for g, x in zip(grads, leaf, strict=True)
            )
            per_row = collect(sq, self.flat, r, self.n_groups)
            acc.index_add_(0, r, per_row)
            acc_sq.index_add_(0, r, per_row.square())
        mean = acc / n_proj
        if exact or n_proj < 2:
            return mean, torch.zeros_like(mean)
        var = (acc_sq / n_proj - mean.square()).clamp_min(0) / (n_proj - 1)
        return mean, var

    def solve(self, a: Tensor, examples: Tensor | None = None) -> Tensor:
        r"""log σ minimising the local quadratic model :math:`\sum_g a_g\sigma_g^2` plus the
        entropy term, :math:`\sigma_g^2 = c_g / (2 a_g)`, clamped at σ_max.

        Args:
            a: ``(E, G)`` curvature of each group; ``a_g <= 0`` gives σ_max.
            examples: which examples the rows of ``a`` are (default: all, in order).
        """
        coef, smax = (
            (self.coef, self.sigma_max)
            if examples is None
            else (self.coef[examples], self.sigma_max[examples])
        )
        tiny = torch.finfo(a.dtype).tiny
        u = 0.5 * (torch.log(coef.clamp_min(tiny)) - math.log(2.0) - torch.log(a.clamp_min(tiny)))
        return torch.minimum(u, smax.log()[:, None].expand_as(a))

    def spread(self, values: Tensor, rows: Tensor) -> tuple[Tensor, ...]:
        return spread(values, self.flat, rows, self.shapes)

    def draw(self, rows: Tensor, generator: torch.Generator | None) -> tuple[Tensor, ...]:
        """Standard normal noise for each input, one draw per row."""
        return tuple(
            _randn((len(rows), *s), x, generator)
            for x, s in zip(self.inputs, self.shapes, strict=True)
        )

    def sample_gradients(
        self, log_sigma: Tensor, rows: Tensor, noise: tuple[Tensor, ...]
    ) -> tuple[Tensor, Tensor]:
        r"""Pathwise samples of :math:`\partial R/\partial\log\sigma_g`.

        Args:
            log_sigma: ``(R, G)`` log σ of each row.
            rows: ``(R,)`` example of each row.
            noise: standard normal noise, ``(R, *D_k)`` per input.

        Returns:
            Per-row group gradients ``(R, G)`` and residuals ``(R,)``.
        """
        sigma = log_sigma.exp()
        grad_rows = []
        res_rows = []
        for part in chunks(len(rows), self.batch_size):
            r = rows[part]
            scaled = tuple(
                s * z[part] for s, z in zip(self.spread(sigma[part], r), noise, strict=True)
            )
            leaf = tuple(
                (x[r] + e).detach().requires_grad_(True)
                for x, e in zip(self.inputs, scaled, strict=True)
            )
            with torch.enable_grad():
                res = self.residual(r, leaf)
                grads = torch.autograd.grad(res.sum(), leaf, allow_unused=True)
            per_el = tuple(
                torch.zeros_like(e) if g is None else g * e
                for g, e in zip(grads, scaled, strict=True)
            )
            grad_rows.append(collect(per_el, self.flat, r, self.n_groups))
            res_rows.append(res.detach())
        return torch.cat(grad_rows), torch.cat(res_rows)

    def finish(
        self,
        log_sigma: Tensor,
        std_error: Tensor,
        reconstruction: Tensor,
        converged: Tensor,
        n_iter: int,
    ) -> SigmaEstimate:
        nan = torch.full_like(log_sigma, float("nan"))
        log_sigma = torch.where(self.present, log_sigma, nan)
        rel = log_sigma - self.sigma_max.log()[:, None]
        penalty = (self.coef * torch.where(self.present, rel, torch.zeros_like(rel))).sum(1)
        return SigmaEstimate(
            log_sigma=log_sigma,
            entropy=self.sizes * (_HALF_LOG_2PIE + log_sigma),
            group_size=self.sizes,
            sigma_max=self.sigma_max,
            std_error=torch.where(self.present, std_error, nan),
            loss=reconstruction - penalty,
            reconstruction=reconstruction,
            converged=converged,
            n_iter=n_iter,
            n_evaluations=self.evaluations,
        )


def _fixed_point(
    prob: _Problem,
    cfg: FixedPointConfig,
    generator: torch.Generator | None,
    progress: Callable[[], None],
) -> SigmaEstimate:
    a_lin, a_lin_var = prob.jacobian_norms(cfg.n_projections, generator)
    u = prob.solve(a_lin)  # the first-order start
    batch, n_groups = u.shape
    log_max = prob.sigma_max.log()[:, None]
    tiny = torch.finfo(u.dtype).tiny
    # Pooled sums over draws of q = (dR/dlog σ_g) / (2σ_g²), whose mean is a_g(σ), and of
    # its linearised twin l (the same draw at scale h -> 0, mean a_lin, known from the
    # projections): ā = mean(q) - β (mean(l) - a_lin) with the variance-optimal β per
    # group. Exact for a linear state (q = l), plain Monte Carlo when they decorrelate.
    names = ("n", "q", "l", "qq", "ll", "ql")
    sums = {k: u.new_zeros(batch, 1 if k == "n" else n_groups) for k in names}
    std_error = torch.full_like(u, float("nan"))
    reconstruction = u.new_zeros(batch)
    converged = torch.zeros(batch, dtype=torch.bool, device=u.device)
    n_iter = 0
    log_h = math.log(_LINEAR_SCALE)
    use_cv = torch.full((batch,), cfg.control_variate != "never", dtype=torch.bool, device=u.device)
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
        q = grads[: len(rows)] / scale
        lin = torch.zeros_like(q)
        lin[twin] = grads[len(rows) :] / (scale[twin] * _LINEAR_SCALE**2)
        res = res[: len(rows)]
        ones = torch.ones(len(rows), 1, dtype=u.dtype, device=u.device)
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
        v_proj = a_lin_var[active]
        if it == 1 and cfg.control_variate == "auto":
            # a twin doubles the cost of a draw: keep the twins of an example only if the
            # control-variate estimate from the most draws the run may pool (n_full)
            # beats plain Monte Carlo from twice as many; the projections' error does not
            # shrink with draws, so in practice twins stay where projections are exact
            n_full = float(cfg.n_samples * max(1, cfg.max_iter - cfg.burn_in))
            gain = (cov / n_full).square() / (var_l / n_full + v_proj).clamp_min(tiny)
            with_cv = var_q / n_full - gain
            keep = prob.present[active]
            ratio = (with_cv / (var_q / (2 * n_full)).clamp_min(tiny) * keep).sum(1)
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
        beta = torch.where(denom > tiny, cov / denom.clamp_min(tiny), torch.zeros_like(cov))
        a_bar = mq - beta * (ml - a_lin[active])
        var_a = (var_q / n - beta * cov / n).clamp_min(0) / (1 - 1 / n.clamp_min(2))
        se = 0.5 * var_a.sqrt() / a_bar.abs().clamp_min(tiny)
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


def _adam(
    prob: _Problem, cfg: AdamConfig, generator: torch.Generator | None, progress: Callable[[], None]
) -> SigmaEstimate:
    batch, n_groups = prob.batch, prob.n_groups
    log_max = prob.sigma_max.log()[:, None]
    if cfg.init == "random":
        rho0 = _randn((batch, n_groups), prob.state, generator)
    else:
        u0 = prob.solve(prob.jacobian_norms(32, generator)[0])
        frac = (u0 - log_max).exp().clamp(1e-6, 1 - 1e-6)
        rho0 = torch.log(frac) - torch.log1p(-frac)
    rho = rho0.clone().requires_grad_(True)
    opt = torch.optim.Adam([rho], lr=cfg.lr)
    everyone = torch.arange(batch, device=rho.device)
    best_loss = torch.full((batch,), float("inf"), dtype=rho.dtype, device=rho.device)
    best_rho = rho0.clone()
    best_rec = torch.zeros_like(best_loss)
    tail_start = cfg.steps - max(1, round(cfg.average_fraction * cfg.steps))
    tail_sum = torch.zeros_like(rho0)
    tail_n = 0
    last_rec = torch.zeros_like(best_loss)
    for step in range(cfg.steps):
        rows = everyone.repeat(cfg.n_samples)
        noise = tuple(
            _randn((len(rows), *s), x, generator)
            for x, s in zip(prob.inputs, prob.shapes, strict=True)
        )
        rec = torch.zeros_like(best_loss)
        grad = torch.zeros_like(rho0)
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
        rho.grad = grad
        loss = rec - penalty.detach()
        if cfg.keep == "best_sample":
            better = loss < best_loss
            best_loss = torch.where(better, loss, best_loss)
            best_rec = torch.where(better, rec, best_rec)
            best_rho[better] = rho.detach()[better]
        opt.step()
        last_rec = rec
        if step >= tail_start:
            tail_sum += log_max + torch.nn.functional.logsigmoid(rho.detach())
            tail_n += 1
        progress()
    rho_final = rho.detach()
    if cfg.keep == "best_sample":
        u = log_max + torch.nn.functional.logsigmoid(best_rho)
        rec_out = best_rec
    elif cfg.keep == "average":
        u = tail_sum / tail_n
        rec_out = last_rec
    else:
        u = log_max + torch.nn.functional.logsigmoid(rho_final)
        rec_out = last_rec
    converged = torch.ones(batch, dtype=torch.bool, device=rho.device)
    return prob.finish(u, torch.full_like(u, float("nan")), rec_out, converged, cfg.steps)


def estimate_sigma(
    state_fn: StateFn,
    inputs: tuple[Tensor, ...],
    groups: tuple[Tensor, ...],
    *,
    sigma_max: Tensor | float,
    rate: float = 0.1,
    state_std: Tensor | None = None,
    output_mask: Tensor | Callable[[Tensor], Tensor | None] | None = None,
    config: EstimatorConfig = DEFAULT,
    generator: torch.Generator | None = None,
    batch_size: int | None = None,
    show_progress: bool = False,
    progress_desc: str = "Perturbation Entropy attribution",
) -> SigmaEstimate:
    r"""Learn, per group of input elements, the largest Gaussian noise that keeps a state.

    With :math:`\tilde x = x + \sigma\odot\varepsilon`, :math:`\varepsilon\sim N(0, I)` and
    each element's σ shared by its group, minimise over
    :math:`0 < \sigma_g \le \sigma_{max}`

    .. math::

        L(\sigma) = \mathbb{E}_\varepsilon \sum_j w_j (\Phi(\tilde x)_j - \Phi(x)_j)^2
        \;-\; \frac{\lambda_{rate}}{N} \sum_g m_g \log\frac{\sigma_g}{\sigma_{max}},

    where :math:`w_j = 1/(M\sigma_{S,j}^2)` (:func:`state_weights`), :math:`m_g` is the
    number of elements in group ``g`` and :math:`N = \sum_g m_g`. For groups of equal
    size this is the reference code's loss; the paper's λ is
    :math:`\lambda_{rate}\, M/N` per element of entropy.

    Args:
        state_fn: ``state_fn(perturbed_inputs, rows)`` returns the explained state of a
            stack of copies, ``(R, *S)``; ``rows`` ``(R,)`` says which example each copy
            belongs to. It must be deterministic (no dropout).
        inputs: the values noise is added to, each ``(B, *D_k)``, floating point.
        groups: per-element group ids, each ``(B, *D_k)`` long; ``0..G-1`` for
            perturbed elements (ids need not be used by every example) and ``-1`` for
            elements that are never perturbed (padding).
        sigma_max: the bound σ_max, a float or ``(B,)``.
        rate: weight of the entropy term (reference code's ``rate``), > 0.
        state_std: σ_S, broadcastable to ``S``; see :func:`state_weights`.
        output_mask: broadcastable to ``(B, *S)``; zeros mark state elements not counted.
            A callable receives the clean state and returns such a mask (or None).
        config: :class:`~captum_perturb.FixedPointConfig` (default) or
            :class:`~captum_perturb.AdamConfig`.
        generator: source of all noise (on the inputs' device); ``None`` = torch's global RNG.
        batch_size: perturbed copies per call of ``state_fn``; changes speed and memory,
            not results.
        show_progress: show a progress bar over iterations.
        progress_desc: the progress bar's label.

    Returns:
        A :class:`SigmaEstimate`.

    Example:
        A linear state :math:`\Phi(x) = \sum_i W_i x_i` has the closed form
        :math:`\sigma_i = \sqrt{rate / (2 n \bar c)} / |W_i|` (here :math:`\bar c = 1`):

        >>> import torch
        >>> from captum_perturb.functional import estimate_sigma
        >>> W = torch.tensor([1.0, 2.0, 4.0])
        >>> x = torch.randn(1, 3, 8)
        >>> def phi(inp, rows):
        ...     return torch.einsum("i,rid->rd", W, inp[0])
        >>> groups = (torch.arange(3).view(1, 3, 1).expand(1, 3, 8),)
        >>> est = estimate_sigma(
        ...     phi,
        ...     (x,),
        ...     groups,
        ...     sigma_max=10.0,
        ...     rate=0.1,
        ...     state_std=torch.ones(8),
        ...     generator=torch.Generator().manual_seed(0),
        ... )
        >>> closed = (0.1 / (2 * 3)) ** 0.5 / W
        >>> bool(torch.allclose(est.sigma[0], closed, rtol=0.02))
        True
    """
    if isinstance(rate, bool) or not isinstance(rate, (int, float)) or not rate > 0:
        raise ValueError(f"rate must be a positive number, got {rate!r}")
    if not inputs:
        raise ValueError("inputs is empty: pass at least one tensor to perturb")
    for x in inputs:
        if not x.is_floating_point():
            raise TypeError(f"inputs must be floating point, got {x.dtype}")
        if x.numel() == 0:
            raise ValueError(
                f"an input of shape {tuple(x.shape)} is empty (zero-length sequence?); "
                "every example needs at least one element to perturb"
            )
    ref = inputs[0]
    batch = ref.shape[0]
    smax = torch.as_tensor(sigma_max, dtype=ref.dtype, device=ref.device).reshape(-1)
    smax = smax.expand(batch).clone() if smax.numel() == 1 else smax
    if smax.shape != (batch,) or not bool(torch.isfinite(smax).all()) or bool((smax <= 0).any()):
        raise ValueError(
            "sigma_max must be a positive finite number (or one per example); "
            f"got {sigma_max!r}. The authors recommend 10 × the std of the word embeddings."
        )
    for x in inputs:
        check_finite(x, "The inputs")
    n_groups = int(max(int(g.max()) for g in groups)) + 1 if groups else 0
    if n_groups <= 0:
        raise ValueError("no element is perturbed: every group id is -1 (all padding?)")
    everyone = torch.arange(batch, device=ref.device)
    with torch.no_grad():
        state = state_fn(tuple(x.detach() for x in inputs), everyone).detach()
    check_finite(state, "The model output")
    if callable(output_mask):
        output_mask = output_mask(state)
    weight = state_weights(state, state_std, output_mask)
    prob = _Problem(
        state_fn,
        tuple(x.detach() for x in inputs),
        groups,
        n_groups,
        state,
        weight,
        float(rate),
        smax,
        batch_size,
    )
    prob.evaluations = batch
    if isinstance(config, FixedPointConfig):
        total = config.max_iter
    elif isinstance(config, AdamConfig):
        total = config.steps
    else:
        raise TypeError(
            f"config must be a FixedPointConfig or an AdamConfig, got {type(config).__name__}"
        )
    bar = None
    if show_progress:
        from captum._utils.progress import progress as _progress

        bar = _progress(desc=progress_desc, total=total)

    def tick() -> None:
        if bar is not None:
            bar.update()

    try:
        if isinstance(config, FixedPointConfig):
            return _fixed_point(prob, config, generator, tick)
        return _adam(prob, config, generator, tick)
    finally:
        if bar is not None:
            bar.close()
