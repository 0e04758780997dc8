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
#: a group whose log σ is within this of log σ_max sits at the bound
AT_BOUND = 1e-6


def channel_score(log_sigma_max: Tensor, log_sigma_free: Tensor) -> Tensor:
    r"""Nats per dimension a Gaussian channel of noise σ* passes about a word of spread
    σ_max: :math:`\tfrac12\log(1 + \sigma_{max}^2/\sigma^{*2})` (0 for σ* = ∞)."""
    return 0.5 * torch.nn.functional.softplus(2.0 * (log_sigma_max - log_sigma_free))


def score_slope(log_sigma_max: Tensor, log_sigma_free: Tensor) -> Tensor:
    r""":math:`-\partial\,\text{score}/\partial\log\sigma^*` of :func:`channel_score`, in (0, 1)."""
    return torch.sigmoid(2.0 * (log_sigma_max - log_sigma_free))


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
        log_sigma_free: ``(B, G)`` :math:`\log\sigma^*_g`, the stationary point of the
            objective without the bound, from the curvature :math:`a_g` measured at the
            returned σ: :math:`\sigma^{*2}_g = c_g / (2 a_g)`. Inside the bound it is
            ``log_sigma``; at the bound it is ``>= log σ_max`` and says how far the group
            is from being needed (``+inf`` where the group has no effect on the state).
        no_effect: ``(B, G)`` groups that moved the state in no draw and no Jacobian
            projection (padding counted as words, a constant model).
        batch_dependent: ``(B,)`` the model's output for the example was seen to change
            with the shape of the batch it was computed in: its unperturbed copies, run
            through ``state_fn`` in the estimator's batches, did not reproduce the clean
            pass bit for bit. The noise and every step of the estimator are the same for
            any ``batch_size``; only the model's round-off is not (BLAS kernels choose
            their summation order by the matrix's shape), and the estimator's decisions
            (the stopping iteration, the control variate's fit) can carry that round-off
            to differences of up to about the standard error. A one-sided check:
            ``False`` means no change was seen, not that none can happen at other shapes
            or in the backward pass.
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
    log_sigma_free: Tensor
    no_effect: Tensor
    batch_dependent: Tensor

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

    @property
    def saturated(self) -> Tensor:
        """``(B, G)`` groups whose σ sits at the bound σ_max (False where absent)."""
        at = self.log_sigma >= self.sigma_max.log()[:, None] - AT_BOUND
        return at & (self.group_size > 0)

    @property
    def saturated_fraction(self) -> Tensor:
        """``(B,)`` fraction of each example's groups at the bound σ_max."""
        return self.saturated.sum(1) / (self.group_size > 0).sum(1).clamp_min(1)

    @property
    def pressure(self) -> Tensor:
        r"""``(B, G)`` :math:`p_g / c_g = \sigma_g^2/\sigma_g^{*2} = 2 a_g\sigma_g^2 / c_g`.

        How hard the data term pushes back against more noise, relative to the entropy
        term's pull: 1 inside the bound (the stationarity condition), below 1 at the
        bound, where :math:`1 - p_g/c_g` is the KKT multiplier of the bound in units of
        :math:`c_g`; 0 for a group without effect.
        """
        return (2.0 * (self.log_sigma - self.log_sigma_free)).exp()

    @property
    def score(self) -> Tensor:
        r"""``(B, G)`` the channel score, nats per dimension (the default attribution).

        .. math::

            s_g = \tfrac12 \log\bigl(1 + \sigma_{max}^2 / \sigma_g^{*2}\bigr) \ge 0,

        the information a Gaussian channel with noise :math:`\sigma^*_g` passes about a
        word of spread σ_max. Inside the bound :math:`\sigma^* = \sigma` and
        :math:`s_g = \log(\sigma_{max}/\sigma_g) + \tfrac12\log(1 + \sigma_g^2/\sigma_{max}^2)`,
        the paper's score up to at most :math:`\tfrac12\log 2`; at the bound it keeps
        ranking groups by their pressure (:attr:`pressure`) instead of tying them at 0,
        and it is 0 only for a group with no effect on the state.
        """
        return channel_score(self.sigma_max.log()[:, None], self.log_sigma_free)

    @property
    def score_std_error(self) -> Tensor:
        """``(B, G)`` standard error of :attr:`score` (from that of log σ*)."""
        slope = score_slope(self.sigma_max.log()[:, None], self.log_sigma_free)
        return torch.where(self.no_effect, torch.zeros_like(slope), slope * self.std_error)

    @property
    def channel_information(self) -> Tensor:
        """``(B, G)`` nats of each group the channel passes, :math:`m_g s_g` (:attr:`score`)."""
        return self.group_size * self.score


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
        #: examples whose unperturbed copies did not reproduce the clean pass bit for bit
        self.batch_dependent = torch.zeros_like(self.present[:, 0])

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
            The estimate ``(B, G)`` and the variance of that estimate (0 when exact, ``inf``
            when unknown: a single random projection).
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
            # QR in float32 at least (no half-precision QR kernels)
            q = torch.linalg.qr(gauss.float()).Q.to(gauss.dtype) * math.sqrt(size)  # (B, M, P)
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
            self.check_reproduces(out.detach(), r)
            self.count(r)
            sq = tuple(
                torch.zeros_like(x) if g is None else g.square()
                for g, x in zip(grads, leaf, strict=True)
            )
            per_row = collect(sq, self.flat, r, self.n_groups)
            acc.index_add_(0, r, per_row)
            acc_sq.index_add_(0, r, per_row.square())
        mean = acc / n_proj
        if exact:
            return mean, torch.zeros_like(mean)
        if n_proj < 2:  # one projection cannot tell its own error: say unknown, not exact
            return mean, torch.full_like(mean, float("inf"))
        var = (acc_sq / n_proj - mean.square()).clamp_min(0) / (n_proj - 1)
        return mean, var

    def check_reproduces(self, out: Tensor, rows: Tensor) -> None:
        """Compare unperturbed copies' states with the clean pass: raise where they differ
        beyond round-off (a stochastic model), record where they differ at all (round-off
        that depends on the batch's shape, :attr:`SigmaEstimate.batch_dependent`).

        The test is on each copy's whole state, ``|out - s| <= 1e-2 |s|`` (Frobenius
        norms): round-off of a deterministic model is far below it (``n u |s|``, ~1e-5 |s|
        for a float32 network of ~100 rounded operations, ~1e-3 |s| for the same in
        bfloat16 where a row's batch shape changes the kernel), while dropout of rate
        ``p`` moves the state by about ``sqrt(p / (1 - p)) |s|``, 0.03 |s| already for
        p = 0.001. An elementwise tolerance would mistake the round-off of a near-zero
        element of a large state for randomness (it did, at 3e-5 on MiniLM's layers with
        two threads on a Sapphire Rapids Xeon).
        """
        state = self.state[rows]
        gap = (out - state).reshape(len(rows), -1).norm(dim=1)
        if bool((gap > 1e-2 * state.reshape(len(rows), -1).norm(dim=1)).any()):
            raise RuntimeError(
                "The explained state changes between two identical forward passes: the "
                "model is stochastic (dropout in train mode?). Call model.eval() first."
            )
        differs = (out != state).reshape(len(rows), -1).any(1)
        self.batch_dependent[rows[differs]] = True

    def solve(self, a: Tensor, examples: Tensor | None = None, clamp: bool = True) -> Tensor:
        r"""log σ minimising the local quadratic model :math:`\sum_g a_g\sigma_g^2` plus the
        entropy term, :math:`\sigma_g^2 = c_g / (2 a_g)`, clamped at σ_max.

        Args:
            a: ``(E, G)`` curvature of each group; ``a_g <= 0`` gives σ_max (``+inf``
                without the clamp).
            examples: which examples the rows of ``a`` are (default: all, in order).
            clamp: clamp at σ_max (False: the unconstrained stationary point log σ*).
        """
        coef, smax = (
            (self.coef, self.sigma_max)
            if examples is None
            else (self.coef[examples], self.sigma_max[examples])
        )
        tiny = torch.finfo(a.dtype).tiny
        u = 0.5 * (torch.log(coef.clamp_min(tiny)) - math.log(2.0) - torch.log(a.clamp_min(tiny)))
        if not clamp:
            return torch.where(a > 0, u, torch.full_like(u, float("inf")))
        return torch.minimum(u, smax.log()[:, None].expand_as(a))

    def spread(self, values: Tensor, rows: Tensor) -> tuple[Tensor, ...]:
        """Each group's value ``(R, G)`` on every element of its group, per input."""
        return spread(values, self.flat, rows, self.shapes)

    def collect(self, per_element: tuple[Tensor, ...], rows: Tensor) -> Tensor:
        """Per-element values summed over each group, ``(R, G)``: the adjoint of
        :meth:`spread`."""
        return collect(per_element, self.flat, rows, self.n_groups)

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

    def curvature(
        self, log_sigma: Tensor, n_samples: int, generator: torch.Generator | None
    ) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        r"""Plain Monte-Carlo curvature :math:`a_g(\sigma)` at a given σ, from fresh draws.

        Each draw's pathwise :math:`q_g = (\partial R/\partial\log\sigma_g)/(2\sigma_g^2)`
        has mean :math:`a_g`; used to check an estimate that has no stopping rule.

        Args:
            log_sigma: ``(B, G)`` where to measure.
            n_samples: draws per example (at least 2).
            generator: source of the noise.

        Returns:
            ``ā`` ``(B, G)``, the standard error of :math:`\tfrac12\log ā` ``(B, G)``,
            whether any draw moved the state through the group ``(B, G)``, and the mean
            reconstruction term at σ ``(B,)``.
        """
        f64 = torch.float64
        rows = torch.arange(self.batch, device=log_sigma.device).repeat(n_samples)
        grads, res = self.sample_gradients(log_sigma[rows], rows, self.draw(rows, generator))
        q = grads.to(f64) / (2.0 * (2.0 * log_sigma[rows]).exp()).to(f64)
        zeros = torch.zeros(self.batch, self.n_groups, dtype=f64, device=q.device)
        mean = zeros.index_add(0, rows, q) / n_samples
        var = (zeros.index_add(0, rows, q * q) / n_samples - mean.square()).clamp_min(0)
        var = var / (n_samples - 1)  # of the mean, with Bessel's correction
        tiny = torch.finfo(f64).tiny
        se = 0.5 * var.sqrt() / mean.abs().clamp_min(tiny)
        moved = zeros.index_add(0, rows, (q != 0).to(f64)) > 0
        rec = res.new_zeros(self.batch).index_add(0, rows, res) / n_samples
        dtype = log_sigma.dtype
        return mean.to(dtype), se.to(dtype).nan_to_num(posinf=float("inf")), moved, rec

    def finish(
        self,
        log_sigma: Tensor,
        std_error: Tensor,
        reconstruction: Tensor,
        converged: Tensor,
        n_iter: int,
        *,
        log_sigma_free: Tensor,
        no_effect: Tensor,
    ) -> SigmaEstimate:
        nan = torch.full_like(log_sigma, float("nan"))
        log_sigma = torch.where(self.present, log_sigma, nan)
        free = torch.where(no_effect, torch.full_like(log_sigma, float("inf")), log_sigma_free)
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
            log_sigma_free=torch.where(self.present, free, nan),
            no_effect=no_effect & self.present,
            batch_dependent=self.batch_dependent,
        )
