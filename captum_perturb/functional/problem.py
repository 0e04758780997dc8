"""The objective of one batch, shared by the estimators: groups, weights, draws."""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import Tensor

from captum_perturb.functional._groups import chunks, collect, flat_index, group_sizes, spread

#: ``state_fn(perturbed_inputs, rows) -> states``: evaluates the explained state for a
#: stack of (perturbed) copies; ``rows[r]`` is the example that copy ``r`` belongs to,
#: so side inputs and targets can be indexed with it. Returns ``(R, *state_shape)``.
StateFn = Callable[[tuple[Tensor, ...], Tensor], Tensor]

_HALF_LOG_2PIE = 0.5 * math.log(2 * math.pi * math.e)


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
        n_evaluations: copies pushed through the model in total (the clean pass, the
            Jacobian projections and every noise draw).
        evaluations: ``(B,)`` the same count per example, so that the cost of examples
            that stop at different iterations can be compared.
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
    evaluations: Tensor

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


def check_finite(t: Tensor, what: str) -> None:
    if not bool(torch.isfinite(t).all()):
        raise ValueError(
            f"{what} contains NaN or Inf. Check the model and its inputs (and the noise "
            "scale sigma_max: a perturbation this large may overflow the model)."
        )


def randn(shape: tuple[int, ...], like: Tensor, generator: torch.Generator | None) -> Tensor:
    return torch.randn(shape, generator=generator, device=like.device, dtype=like.dtype)


class Problem:
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
        #: copies pushed through ``state_fn`` per example
        self.evaluations = torch.zeros(inputs[0].shape[0], dtype=torch.long, device=state.device)

    def count(self, rows: Tensor) -> None:
        """Record one evaluation of each row's example."""
        self.evaluations.index_add_(0, rows, torch.ones_like(rows))

    @property
    def batch(self) -> int:
        return self.inputs[0].shape[0]

    def residual(self, rows: Tensor, perturbed: tuple[Tensor, ...]) -> Tensor:
        """Per-row weighted squared change of the state, ``(R,)``."""
        out = self.state_fn(perturbed, rows)
        check_finite(out, "The model output on perturbed inputs")
        diff = out - self.state[rows]
        self.count(rows)
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
            gauss = randn((batch, size, n_proj), self.state, generator)
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
            self.count(r)
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
            randn((len(rows), *s), x, generator)
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
            n_evaluations=int(self.evaluations.sum()),
            evaluations=self.evaluations,
        )
