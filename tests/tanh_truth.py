r"""A nonlinear state whose σ optimum is known without Monte-Carlo error (issue 9).

The state is a one-hidden-layer tanh network of a flattened ``(n, d)`` input,

.. math::

    \Phi(x) = V \tanh(W\,\mathrm{vec}(x) + b),\qquad W \in R^{H\times nd},\;
    V \in R^{O\times H},

with one group per row of ``x``: :math:`\tilde x_i = x_i + \varepsilon_i`,
:math:`\varepsilon_i \sim N(0, \sigma_i^2 I_d)`. The pre-activation change
:math:`\delta = W\varepsilon` is Gaussian with covariance
:math:`\Sigma(\sigma) = \sum_i \sigma_i^2 W_i W_i^\top` (:math:`W_i` = the ``d`` columns
of row ``i``), so with :math:`\Delta_k = \tanh(z_k + \delta_k) - \tanh z_k`,
:math:`z = W\,\mathrm{vec}(x) + b`, and :math:`A = V^\top \mathrm{diag}(w) V`
(:math:`w_j = 1/(O\sigma_{S,j}^2)`, :func:`~captum_perturb.functional.state_weights`),

.. math::

    R(\sigma) = \mathbb{E} \sum_j w_j (\Phi(\tilde x) - \Phi(x))_j^2
              = \sum_{k,l} A_{kl}\, \mathbb{E}[\Delta_k \Delta_l]

needs only one- and two-dimensional Gaussian expectations. Gauss-Hermite quadrature
(probabilists' nodes, float64) computes them; on a two-dimensional pair the correlated
normal is written through its Cholesky factor,
:math:`\delta_k = s_k\xi_1`, :math:`\delta_l = s_l(\rho\xi_1 + \sqrt{1-\rho^2}\xi_2)`.
The integrand :math:`\tanh(z + s\xi)` is analytic in a strip of half-width
:math:`\pi/(2s)` around the real ξ axis, so the error falls like
:math:`\exp(-c\sqrt{N})`; :func:`tanh_truth` checks that doubling the nodes changes
the optimum by less than :data:`QUADRATURE_TOL`.

The optimum σ* minimises :func:`estimate_sigma`'s objective (its docstring's units),

.. math::

    F(u) = R(e^u) - \sum_g c_g (u_g - \log\sigma_{max}),\qquad
    c_g = \mathrm{rate}\, m_g / N = \mathrm{rate} / n,\qquad u_g \le \log\sigma_{max},

found deterministically in float64 (L-BFGS-B with the exact gradient by autograd through
the quadrature, then Newton steps with the exact Hessian). It is the interior local
minimum the fixed point targets (gradient zero, Hessian positive definite); for a
bounded state the objective also falls without limit as σ grows past saturation, so the
bound ``sigma_max`` is chosen where that minimum is also the minimum over the box
(checked against every corner of the box in :func:`tanh_truth`).

The default problem (:func:`make_problem`) is in the nonlinear regime the linear
closed-form tests never reach: the pre-activations move by 0.4 to 0.9 standard deviations at
σ*, σ* is 2 to 70 % larger than the first-order (Jacobian) solution, and the curvature of
F in ``u`` is up to 40 % below the linear model's ``2 c_g``.
"""

from __future__ import annotations

import functools
import itertools
import math
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from contract import one_thread
from numpy.polynomial.hermite_e import hermegauss
from scipy.optimize import minimize
from torch import Tensor

from captum_perturb.functional import SigmaEstimate, estimate_sigma

#: Gauss-Hermite nodes per dimension of the truth (checked against twice as many).
NODES = 64
#: Largest change of log σ* allowed when the nodes are doubled (float64 round-off of the
#: optimum is ~1e-13; the quadrature error at 64 nodes is ~1e-12 here).
QUADRATURE_TOL = 1e-9
#: Largest gradient of F left at σ* (in u = log σ); with curvature ≥ 0.02 this puts
#: log σ* within 1e-10 / 0.02 = 5e-9 of the exact optimum.
GRAD_TOL = 1e-10


@dataclass(frozen=True)
class TanhProblem:
    r"""A one-hidden-layer tanh state of one ``(n, d)`` example with one group per row.

    Attributes:
        W: ``(H, n·d)`` first-layer weights (columns ordered as ``x.reshape(-1)``).
        b: ``(H,)`` first-layer bias.
        V: ``(O, H)`` output weights.
        x: ``(n, d)`` the example.
        state_std: ``(O,)`` σ_S of the state.
        rate: the entropy weight (reference code's ``rate``).
        sigma_max: the bound σ_max.
    """

    W: np.ndarray
    b: np.ndarray
    V: np.ndarray
    x: np.ndarray
    state_std: np.ndarray
    rate: float
    sigma_max: float

    @property
    def n_groups(self) -> int:
        return int(self.x.shape[0])

    @property
    def dim(self) -> int:
        return int(self.x.shape[1])

    @property
    def coef(self) -> np.ndarray:
        """``(n,)`` entropy coefficients ``c_g = rate · m_g / N`` (= rate / n)."""
        return np.full(self.n_groups, self.rate / self.n_groups)

    @property
    def weight(self) -> np.ndarray:
        """``(O,)`` weights ``w_j = 1 / (O σ_S,j²)`` of the squared change."""
        return 1.0 / (len(self.state_std) * self.state_std**2)

    @property
    def preactivation(self) -> np.ndarray:
        """``(H,)`` the clean pre-activations ``z = W vec(x) + b``."""
        return self.W @ self.x.reshape(-1) + self.b

    def inputs(self, dtype: torch.dtype = torch.float32) -> tuple[Tensor, ...]:
        """``((1, n, d),)`` the example as :func:`estimate_sigma`'s ``inputs``."""
        return (torch.tensor(self.x, dtype=dtype).unsqueeze(0),)

    def groups(self) -> tuple[Tensor, ...]:
        """``((1, n, d),)`` group ids: row ``i`` of ``x`` is group ``i``."""
        n, d = self.x.shape
        return (torch.arange(n).view(1, n, 1).expand(1, n, d),)

    def state_fn(self, dtype: torch.dtype = torch.float32):
        """:data:`~captum_perturb.functional.StateFn` of Φ: ``(R, n, d)`` copies → ``(R, O)``."""
        W, b, V = (torch.tensor(a, dtype=dtype) for a in (self.W, self.b, self.V))

        def phi(inputs: tuple[Tensor, ...], rows: Tensor) -> Tensor:
            flat = inputs[0].reshape(inputs[0].shape[0], -1)
            return torch.tanh(flat @ W.T + b) @ V.T

        return phi

    def state_std_tensor(self, dtype: torch.dtype = torch.float32) -> Tensor:
        return torch.tensor(self.state_std, dtype=dtype)

    def linear_curvature(self) -> np.ndarray:
        r"""``(n,)`` :math:`a_g(0) = \|D^{1/2} J_g\|_F^2 / O`, the Jacobian (small-σ) curvature."""
        jac = self.V @ (np.cosh(self.preactivation)[:, None] ** -2 * self.W)  # (O, n·d)
        blocks = (self.weight[:, None] * jac**2).reshape(len(self.weight), self.n_groups, -1)
        return blocks.sum((0, 2))

    def first_order(self) -> np.ndarray:
        """``(n,)`` log σ of the first-order solution ``σ² = c / (2 a(0))``, clamped."""
        u = 0.5 * np.log(self.coef / (2 * self.linear_curvature()))
        return np.minimum(u, math.log(self.sigma_max))

    # --- the expectation by quadrature ------------------------------------------------

    def risk(self, u: Tensor, nodes: int = NODES) -> Tensor:
        r"""``R(e^u)`` by Gauss-Hermite quadrature; differentiable in ``u`` (float64).

        Args:
            u: ``(n,)`` float64 log σ of each group.
            nodes: quadrature nodes per dimension.

        Returns:
            The scalar :math:`R(\sigma)`.
        """
        xi_np, wt_np = hermegauss(nodes)
        xi = torch.tensor(xi_np, dtype=torch.float64)
        wt = torch.tensor(wt_np / wt_np.sum(), dtype=torch.float64)
        W = torch.tensor(self.W, dtype=torch.float64)
        z = torch.tensor(self.preactivation, dtype=torch.float64)
        A = torch.tensor(self.V.T @ (self.weight[:, None] * self.V), dtype=torch.float64)
        n, d = self.x.shape
        blocks = W.reshape(W.shape[0], n, d)
        cov = torch.einsum("i,kie,lie->kl", torch.exp(2 * u), blocks, blocks)
        s = torch.sqrt(torch.diagonal(cov))
        clean = torch.tanh(z)
        # diagonal terms: one-dimensional expectations E[Δ_k²]
        delta = torch.tanh(z[:, None] + s[:, None] * xi) - clean[:, None]
        total = (torch.diagonal(A) * (delta.square() * wt).sum(1)).sum()
        # off-diagonal pairs (k, m): two-dimensional expectations E[Δ_k Δ_m]
        k, m = torch.triu_indices(len(z), len(z), 1)
        rho = cov[k, m] / (s[k] * s[m])
        x1, x2 = xi.view(1, -1, 1), xi.view(1, 1, -1)
        dk = s[k].view(-1, 1, 1) * x1
        dm = s[m].view(-1, 1, 1) * (
            rho.view(-1, 1, 1) * x1 + torch.sqrt(1 - rho.square()).view(-1, 1, 1) * x2
        )
        prod = (torch.tanh(z[k].view(-1, 1, 1) + dk) - clean[k].view(-1, 1, 1)) * (
            torch.tanh(z[m].view(-1, 1, 1) + dm) - clean[m].view(-1, 1, 1)
        )
        pair = (prod * wt.view(1, -1, 1) * wt.view(1, 1, -1)).sum((1, 2))
        return total + 2 * (A[k, m] * pair).sum()

    def objective(self, u: Tensor, nodes: int = NODES) -> Tensor:
        """``F(u) = R(e^u) − Σ_g c_g (u_g − log σ_max)`` (:func:`estimate_sigma`'s loss)."""
        coef = torch.tensor(self.coef, dtype=torch.float64)
        return self.risk(u, nodes) - (coef * (u - math.log(self.sigma_max))).sum()

    def curvature(self, u: np.ndarray, nodes: int = NODES) -> np.ndarray:
        r"""``(n,)`` :math:`a_g(\sigma) = (\partial R/\partial u_g) / (2\sigma_g^2)`, the
        quantity the fixed point estimates (``a_g(0)`` is :meth:`linear_curvature`)."""
        ut = torch.tensor(u, dtype=torch.float64, requires_grad=True)
        (grad,) = torch.autograd.grad(self.risk(ut, nodes), ut)
        return grad.numpy() / (2 * np.exp(2 * u))

    # --- per-draw gradients, for the Monte-Carlo spread of an estimator ---------------

    def gradient_samples(self, u: np.ndarray, draws: int, seed: int) -> np.ndarray:
        r"""``(draws, n)`` pathwise samples of :math:`\partial R/\partial u_g` (float64).

        One draw :math:`\varepsilon \sim N(0, I)` gives
        :math:`\partial r/\partial u_g = \sum_{e\in g} (\partial r/\partial \tilde x_e)\,
        \sigma_g \varepsilon_e` for :math:`r = \sum_j w_j (\Phi(\tilde x) - \Phi(x))_j^2`,
        the per-draw gradient both estimators average.
        """
        rng = np.random.default_rng(seed)
        n, d = self.x.shape
        sigma = np.repeat(np.exp(u), d)  # (n·d,)
        eps = rng.standard_normal((draws, n * d))
        z = self.preactivation
        pre = z + (eps * sigma) @ self.W.T  # (draws, H)
        change = (np.tanh(pre) - np.tanh(z)) @ self.V.T  # (draws, O)
        back = 2 * (change * self.weight) @ self.V * np.cosh(pre) ** -2  # dr/d pre
        grad_x = back @ self.W  # (draws, n·d)
        return (grad_x * sigma * eps).reshape(draws, n, d).sum(2)


def make_problem() -> TanhProblem:
    """The default problem: n = 4 groups of d = 3, H = 6 hidden units, O = 2 outputs.

    Weights from a fixed numpy seed (PCG64, platform-independent). The columns of the
    four groups are scaled by 1/4, 1/2, 1 and 2, so σ* spans an order of magnitude;
    ``x`` and ``b`` are small, so every hidden unit starts in tanh's curved region
    (``|z| ≤ 1.1``); σ_S = 3 puts the pre-activation noise at σ* at 0.4 to 0.9 standard
    deviations (the nonlinear regime, below the scale where the interior minimum
    disappears: with σ_S = 6 the objective runs off to σ_max).
    """
    n, d, hidden, outputs = 4, 3, 6, 2
    rng = np.random.default_rng(0)
    W = rng.normal(size=(hidden, n * d)) * np.repeat([0.25, 0.5, 1.0, 2.0], d)
    b = rng.normal(size=hidden) * 0.5
    V = rng.normal(size=(outputs, hidden))
    x = rng.normal(size=(n, d)) * 0.1
    return TanhProblem(W, b, V, x, np.full(outputs, 3.0), rate=0.1, sigma_max=1.5)


@dataclass(frozen=True)
class Truth:
    r"""The optimum of a :class:`TanhProblem` and what the tests derive from it.

    Attributes:
        log_sigma: ``(n,)`` log σ*.
        hessian: ``(n, n)`` Hessian of F in ``u`` at σ*.
        gradient: ``(n,)`` gradient of F left at σ* (≤ :data:`GRAD_TOL`).
        quadrature_change: largest change of log σ* with twice the nodes.
        curvature: ``(n,)`` :math:`a_g(\sigma^*)`.
        linear_curvature: ``(n,)`` :math:`a_g(0)`.
        preactivation_sd: ``(H,)`` standard deviation of the pre-activation noise at σ*.
        draw_cov: ``(n, n)`` covariance of one draw's pathwise gradient
            :math:`\partial r/\partial u` at σ* (:data:`COV_DRAWS` float64 Monte-Carlo
            draws: relative error ≲ 1 % on the diagonal for a kurtosis ≲ 20).
        third: ``(n,)`` :math:`\partial^3 F/\partial u_g^3` at σ* (central differences
            of the exact Hessian, step 1e-3: error ~1e-6 relative).
    """

    log_sigma: np.ndarray
    hessian: np.ndarray
    gradient: np.ndarray
    quadrature_change: float
    curvature: np.ndarray
    linear_curvature: np.ndarray
    preactivation_sd: np.ndarray
    draw_cov: np.ndarray
    third: np.ndarray

    def polyak_sd(self, draws: int) -> np.ndarray:
        r"""``(n,)`` sd of log σ from ``draws`` pathwise gradients averaged at σ*.

        An estimator that averages ``draws`` independent per-draw gradients near σ* and
        solves for a zero of the mean gradient of F has the first-order error
        :math:`-H^{-1}\bar g` (delta method), of covariance :math:`H^{-1} C H^{-1} /`
        ``draws`` with C = :attr:`draw_cov`. For Adam's averaged iterates this is the
        Polyak-Ruppert limit (independent of the step size and the preconditioner).
        """
        h_inv = np.linalg.inv(self.hessian)
        return np.sqrt(np.diag(h_inv @ self.draw_cov @ h_inv) / draws)

    def linear_model_sd(self, coef: np.ndarray, draws: int) -> np.ndarray:
        r"""``(n,)`` the same sd as the fixed point's own error model computes it.

        That model is the linear one (curvature ``2 c_g`` of F in ``u_g``, no coupling):
        :math:`\sqrt{C_{gg}/\mathrm{draws}} / (2 c_g)`. Its ratio to :meth:`polyak_sd`
        is how much a standard error from that model understates the true spread.
        """
        return np.sqrt(np.diag(self.draw_cov) / draws) / (2 * coef)


#: Monte-Carlo draws behind :attr:`Truth.draw_cov`.
COV_DRAWS = 200_000


def _value_and_grad(problem: TanhProblem, u: np.ndarray, nodes: int) -> tuple[float, np.ndarray]:
    ut = torch.tensor(u, dtype=torch.float64, requires_grad=True)
    f = problem.objective(ut, nodes)
    (g,) = torch.autograd.grad(f, ut)
    return float(f.detach()), g.numpy()


def _hessian(problem: TanhProblem, u: np.ndarray, nodes: int) -> np.ndarray:
    ut = torch.tensor(u, dtype=torch.float64)
    hess = torch.autograd.functional.hessian(lambda v: problem.objective(v, nodes), ut)
    return hess.numpy()


def _optimum(problem: TanhProblem, nodes: int) -> np.ndarray:
    log_max = math.log(problem.sigma_max)
    res = minimize(
        lambda u: _value_and_grad(problem, u, nodes),
        problem.first_order(),
        jac=True,
        method="L-BFGS-B",
        bounds=[(None, log_max)] * problem.n_groups,
        options={"gtol": 1e-12, "ftol": 0.0, "maxiter": 1000},
    )
    u = res.x
    if not bool((u < log_max - 1e-6).all()):
        raise AssertionError(f"a group of the tanh problem is at the bound: {u}")
    for _ in range(2):  # Newton polish with the exact Hessian
        u = u - np.linalg.solve(_hessian(problem, u, nodes), _value_and_grad(problem, u, nodes)[1])
    return u


@functools.cache
def tanh_truth() -> tuple[TanhProblem, Truth]:
    """The default problem and its optimum, checked (computed once per session, ~1 s).

    Raises:
        AssertionError: the optimum is not a strict interior minimum, not the minimum
            over the box, or not converged in the quadrature.
    """
    problem = make_problem()
    with one_thread():  # tiny tensors: intra-op threads only cost on a loaded machine
        u = _optimum(problem, NODES)
        hess = _hessian(problem, u, NODES)
        grad = _value_and_grad(problem, u, NODES)[1]
        # the quadrature error: the optimum with twice the nodes is one Newton step away
        fine = _value_and_grad(problem, u, 2 * NODES)[1]
        change = float(np.abs(np.linalg.solve(_hessian(problem, u, 2 * NODES), fine)).max())
        if change > QUADRATURE_TOL or float(np.abs(grad).max()) > GRAD_TOL:
            raise AssertionError(f"tanh truth not converged: Δ nodes {change}, gradient {grad}")
        if float(np.linalg.eigvalsh(hess).min()) <= 0:
            raise AssertionError(f"σ* of the tanh problem is not a minimum: Hessian {hess}")
        # the interior minimum is the minimum over the box: every corner (each group at
        # σ* or at σ_max) has a larger objective (F falls again only past saturation)
        log_max = math.log(problem.sigma_max)
        best = _value_and_grad(problem, u, NODES)[0]
        for mask in itertools.product([False, True], repeat=problem.n_groups):
            corner = np.where(mask, log_max, u)
            if any(mask) and _value_and_grad(problem, corner, NODES)[0] <= best:
                raise AssertionError(f"the box corner {corner} beats σ* = {np.exp(u)}")
        curvature = problem.curvature(u)
        step = 1e-3
        third = np.array(
            [
                (
                    _hessian(problem, u + step * np.eye(len(u))[g], NODES)[g, g]
                    - _hessian(problem, u - step * np.eye(len(u))[g], NODES)[g, g]
                )
                / (2 * step)
                for g in range(len(u))
            ]
        )
    n, d = problem.x.shape
    blocks = problem.W.reshape(-1, n, d)
    var = np.einsum("i,kie->k", np.exp(2 * u), blocks**2)
    truth = Truth(
        log_sigma=u,
        hessian=hess,
        gradient=grad,
        quadrature_change=change,
        curvature=curvature,
        linear_curvature=problem.linear_curvature(),
        preactivation_sd=np.sqrt(var),
        draw_cov=np.cov(problem.gradient_samples(u, COV_DRAWS, seed=0).T),
        third=third,
    )
    return problem, truth


def run_tanh(problem: TanhProblem, config: Any, seed: int) -> SigmaEstimate:
    """One estimate of the tanh problem in float32 (what users run)."""
    return estimate_sigma(
        problem.state_fn(torch.float32),
        problem.inputs(torch.float32),
        problem.groups(),
        sigma_max=problem.sigma_max,
        rate=problem.rate,
        state_std=problem.state_std_tensor(torch.float32),
        config=config,
        generator=torch.Generator().manual_seed(seed),
    )
