"""The bound σ_max, the channel score and the diagnostics, on closed forms (issue 9).

For a linear state Φ(x) = Σ_i W_i x_i of n words of d dimensions (``test_closed_form``'s
module docstring) the objective separates and, with c̄ = mean_j 1/σ_S,j²,

    a_i = W_i² c̄,    σ*_i = sqrt(rate / (2 n c̄)) / |W_i|   (no bound),

σ_i = min(σ*_i, σ_max). The channel score is s_i = ½ log(1 + σ_max²/σ*_i²) for every word,
inside the bound or not, and the pressure at the bound is σ_max²/σ*_i². With
``EXACT`` (standard-basis projections, control-variate twins) the estimate of a_i is exact
up to round-off. The twins sit at 1e-2 of the draws' scale, so in float32 their state
differences lose two digits (a relative error ~ eps32 / 1e-2 ≈ 1e-5 per element, ~1e-4 in
log a after the sums); these closed-form checks run in float64, where that is ~1e-13, and
compare at 1e-4 in log σ* — no Monte-Carlo tolerance is involved.
"""

from __future__ import annotations

import math
import warnings
from dataclasses import replace
from typing import Any

import pytest
import torch
from contract import EXACT
from torch import Tensor

from captum_perturb import (
    REFERENCE,
    FixedPointConfig,
    PerturbationEntropyAttribution,
)
from captum_perturb.functional import estimate_sigma

RATE = 0.1
ROUND_OFF = 1e-4


def linear_words(W: Tensor, dim: int, sigma_max: float, config=EXACT, seed: int = 0):
    """Estimate σ for Φ(x) = Σ_i W_i x_i on one (1, n, dim) float64 input, σ_S = 1."""
    gen = torch.Generator().manual_seed(seed)
    n = len(W)
    W = W.double()
    x = torch.randn(1, n, dim, generator=gen, dtype=torch.float64)
    groups = (torch.arange(n).view(1, n, 1).expand(1, n, dim),)
    return estimate_sigma(
        lambda inp, rows: torch.einsum("i,rid->rd", W, inp[0]),
        (x,),
        groups,
        sigma_max=sigma_max,
        rate=RATE,
        state_std=torch.ones(dim, dtype=torch.float64),
        config=config,
        generator=gen,
    )


def free_sigma(W: Tensor) -> Tensor:
    """σ* without the bound (σ_S = 1, so c̄ = 1)."""
    return math.sqrt(RATE / (2 * len(W))) / W.double().abs()


def test_channel_score_ranks_words_at_the_bound() -> None:
    W = torch.tensor([0.05, 0.1, 0.2, 4.0, 8.0])
    free = free_sigma(W)  # [2.24, 1.12, 0.56, 0.028, 0.014]
    sigma_max = 0.3  # the first three words sit at the bound
    est = linear_words(W, 4, sigma_max)
    at = free > sigma_max
    assert est.saturated[0].tolist() == at.tolist()
    # σ* is known at the bound too, from the curvature measured there
    torch.testing.assert_close(est.log_sigma_free[0].double(), free.log(), atol=ROUND_OFF, rtol=0.0)
    expected = 0.5 * torch.log1p(sigma_max**2 / free.square())
    torch.testing.assert_close(est.score[0].double(), expected, atol=ROUND_OFF, rtol=0.0)
    # the ranking follows |W| for every word; the paper's score ties the saturated ones at 0
    assert est.score[0].argsort().tolist() == W.argsort().tolist()
    assert bool((est.log_ratio[0][at] == 0).all())
    torch.testing.assert_close(
        est.pressure[0][at].double(), (sigma_max / free[at]).square(), rtol=2e-4, atol=0.0
    )
    # inside the bound: the paper's score plus ½ log(1 + σ²/σ_max²) ≤ ½ log 2
    inside = ~at
    extra = 0.5 * torch.log1p((est.sigma[0][inside] / sigma_max).square())
    torch.testing.assert_close(est.score[0][inside], est.log_ratio[0][inside] + extra)
    assert bool((extra <= 0.5 * math.log(2) + 1e-6).all())


def test_every_word_at_the_bound_still_ranks_and_says_so() -> None:
    W = torch.tensor([0.01, 0.03, 0.02, 0.05])
    est = linear_words(W, 4, sigma_max=0.5)
    assert bool(est.saturated.all())
    assert bool(est.converged.all())
    assert float(est.saturated_fraction[0]) == 1.0
    # the channel score at the bound is the closed form's, not only positive
    expected = 0.5 * torch.log1p(0.5**2 / free_sigma(W).square())
    torch.testing.assert_close(est.score[0].double(), expected, atol=ROUND_OFF, rtol=0.0)
    assert est.score[0].argsort().tolist() == W.argsort().tolist()


def test_constant_model_gets_zero_scores_and_a_warning() -> None:
    pe = PerturbationEntropyAttribution(lambda x: x.sum((1, 2)).unsqueeze(1) * 0.0 + 1.0)
    x = torch.randn(2, 3, 4)
    with pytest.warns(UserWarning, match="does not depend on any perturbed group"):
        res = pe.explain(x, feature_mask="token", state_std=torch.ones(1), sigma_max=1.0)
    assert bool((res.attributions == 0).all())
    assert bool(res.estimate.no_effect.all())
    assert res.diagnostics["no_effect"].tolist() == [3, 3]


def test_paper_score_is_the_log_ratio() -> None:
    W = torch.tensor([0.05, 2.0, 8.0])
    f = lambda x: torch.einsum("i,bid->bd", W, x)  # noqa: E731
    pe = PerturbationEntropyAttribution(f)
    x = torch.randn(1, 3, 4)
    kw = dict(feature_mask="token", state_std=torch.ones(4), sigma_max=0.3, config=EXACT)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        paper = pe.explain(x, score="paper", **kw)
        channel = pe.explain(x, **kw)
    torch.testing.assert_close(paper.attributions[0, :, 0], paper.estimate.log_ratio[0])
    assert float(paper.attributions[0, 0, 0]) == 0.0  # at the bound
    assert float(channel.attributions[0, 0, 0]) > 0.0
    assert paper.score == "paper" and channel.score == "channel"
    with pytest.raises(ValueError, match="score must be"):
        pe.explain(x, score="nats", **kw)


def test_reconstruction_is_reported_at_the_returned_sigma() -> None:
    # R(σ) = Σ_i a_i σ_i² exactly for a linear state (a_i = W_i², σ_S = 1)
    W = torch.tensor([0.5, 1.0, 2.0, 4.0])
    est = linear_words(W, 8, sigma_max=10.0, config=replace(EXACT, n_samples=64))
    closed = (W.double().square() * est.sigma[0].double().square()).sum()
    # the draws' mean of R has a relative Monte-Carlo error ~ sqrt(2/(n d)) per draw set
    # even for a linear state (R is a sum of squares): 64 draws of 8 dims give 2.5 %;
    # 4 standard errors
    assert abs(float(est.reconstruction[0]) / float(closed) - 1) <= 4 * math.sqrt(2 / (64 * 8))


def test_unconverged_examples_warn_with_the_knob() -> None:
    W = torch.tensor([0.5, 1.0, 2.0, 4.0])
    pe = PerturbationEntropyAttribution(lambda x: torch.tanh(torch.einsum("i,bid->bd", W, x)))
    x = torch.randn(2, 4, 8)
    cfg = FixedPointConfig(max_iter=1, min_iter=1, tol=1e-6)
    with pytest.warns(UserWarning, match=r"2 of 2 examples did not meet the stopping rule"):
        res = pe.explain(x, feature_mask="token", state_std=torch.ones(8), config=cfg)
    assert not bool(res.converged.any())
    assert bool((res.diagnostics["max_std_error"] > 1e-6).all())


def test_padding_without_attention_mask_is_reported() -> None:
    def f(x: Tensor, mask: Tensor) -> Tensor:
        return (x * mask[..., None]).sum(1)

    pe = PerturbationEntropyAttribution(f)
    x = torch.randn(2, 4, 3)
    mask = torch.tensor([[1, 1, 1, 1], [1, 1, 0, 0]])
    kw = dict(additional_forward_args=(mask,), feature_mask="token", state_std=torch.ones(3))
    with pytest.warns(UserWarning, match="2 positions in 1 of 2 examples have no effect"):
        res = pe.explain(x, **kw)
    assert res.estimate.no_effect[1].tolist() == [False, False, True, True]
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no warning once the mask is given
        pe.explain(x, attention_mask=mask, **kw)


def test_adam_reports_convergence_honestly() -> None:
    W = torch.tensor([0.5, 1.0, 2.0, 4.0])
    few = linear_words(W, 8, sigma_max=10.0, config=replace(REFERENCE, steps=5))
    assert not bool(few.converged.any())  # 5 steps from a random start are nowhere near
    # from the first-order start (exact for a linear state) with a few steps it is there
    near = linear_words(
        W, 8, sigma_max=10.0, config=replace(REFERENCE, steps=20, init="first_order", lr=1e-3)
    )
    assert bool(near.converged.all())


def test_one_projection_cannot_claim_exactness() -> None:
    W = torch.tensor([0.5, 1.0, 2.0])
    est = linear_words(W, 8, sigma_max=10.0, config=FixedPointConfig(n_projections=1))
    # with the projection variance unknown the twins stay off and the error is the draws'
    assert bool((est.std_error > 1e-3).all())


def test_max_norm_bounds_every_group() -> None:
    W = torch.tensor([0.3, 1.0, 3.0, 9.0])
    cfg = FixedPointConfig(norm="max", tol=0.05, n_projections=2, max_iter=400)
    est = linear_words(W, 64, sigma_max=10.0, config=cfg)
    assert bool(est.converged.all())
    assert float(est.std_error.max()) <= 0.05
    # against the closed form: the max norm promises each group's standard error <= tol
    # (whose calibration test_calibration checks), so 4 tol bounds each group's error
    # with probability 1 - 6e-5
    err = (est.log_sigma[0].double() - free_sigma(W).log()).abs()
    assert float(err.max()) <= 4 * cfg.tol, err


def test_token_feature_mask_matches_token_and_composes_with_noise_tunnel() -> None:
    from captum.attr import NoiseTunnel

    from captum_perturb import token_feature_mask

    pe = PerturbationEntropyAttribution(lambda x: torch.einsum("bid->bd", x))
    x = torch.randn(2, 3, 4, dtype=torch.float64)
    kw = dict(state_std=torch.ones(4, dtype=torch.float64), sigma_max=10.0, seed=0, config=EXACT)
    as_token = pe.attribute(x, feature_mask="token", **kw)
    as_tensor = pe.attribute(x, feature_mask=token_feature_mask(x), **kw)
    assert torch.equal(as_token, as_tensor)  # same groups, same draws
    assert token_feature_mask(torch.zeros(2, 5)).tolist() == [[0, 1, 2, 3, 4]]  # < 3 dims
    out = NoiseTunnel(pe).attribute(
        x, nt_samples=2, stdevs=0.0, feature_mask=token_feature_mask(x), **kw
    )
    # stdevs=0 explains exact copies, and for a linear state EXACT is exact up to float64
    # round-off (module docstring): the mean over the copies is the plain result
    torch.testing.assert_close(out, as_token, rtol=0.0, atol=1e-9)


# --- the estimate's fields against their definitions (surviving mutants, issue 22) --------


def exact_estimate(phi: Any, x: Tensor, ids: Tensor, outputs: int) -> Any:
    """EXACT on one float64 input with group ids ``ids``, σ_max = 10, σ_S = 1 for each of
    the state's ``outputs`` elements."""
    return estimate_sigma(
        phi,
        (x,),
        (ids,),
        sigma_max=10.0,
        rate=RATE,
        state_std=torch.ones(outputs, dtype=torch.float64),
        config=EXACT,
        generator=torch.Generator().manual_seed(0),
    )


def test_score_slope_is_the_derivative_of_the_channel_score() -> None:
    """score_slope = -∂ score / ∂ log σ*, checked against autograd of channel_score (which
    score_std_error multiplies by the standard error of log σ*)."""
    from captum_perturb.functional.problem import channel_score, score_slope

    log_max = torch.tensor(0.3, dtype=torch.float64)
    u = torch.linspace(-4.0, 4.0, 17, dtype=torch.float64, requires_grad=True)
    (grad,) = torch.autograd.grad(channel_score(log_max, u).sum(), u)
    torch.testing.assert_close(score_slope(log_max, u.detach()), -grad, rtol=1e-12, atol=0.0)
    est = linear_words(torch.tensor([0.05, 0.5, 4.0]), 4, sigma_max=0.3, config=FixedPointConfig())
    slope = score_slope(est.sigma_max.log()[:, None], est.log_sigma_free)
    torch.testing.assert_close(est.score_std_error, slope * est.std_error)


def test_entropy_and_loss_follow_their_definitions() -> None:
    """H_g = m_g (½ log 2πe + log σ_g) (paper Eq. 7) and loss = reconstruction −
    Σ_g c_g (log σ_g − log σ_max) with c_g = rate · m_g / N, on groups of unequal size."""
    W = torch.tensor([0.5, 1.0, 2.0]).double()
    x = torch.randn(1, 6, 3, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    ids = torch.tensor([0, 0, 0, 1, 2, 2]).view(1, 6, 1).expand(1, 6, 3)
    est = exact_estimate(
        lambda inp, rows: torch.einsum("i,rid->rd", W[ids[0, :, 0]], inp[0]), x, ids, 3
    )
    sizes = torch.tensor([[9.0, 3.0, 6.0]], dtype=torch.float64)
    assert torch.equal(est.group_size, sizes)
    half_log_2pie = 0.5 * math.log(2 * math.pi * math.e)
    torch.testing.assert_close(est.entropy, sizes * (half_log_2pie + est.log_sigma))
    coef = RATE * sizes / 18.0
    penalty = (coef * (est.log_sigma - math.log(10.0))).sum(1)
    torch.testing.assert_close(est.loss, est.reconstruction - penalty)


def test_one_perturbed_element_gets_the_whole_rate() -> None:
    """An example with a single perturbed element: c = rate · 1 / 1, so for Φ(x) = w x with
    σ_S = 1 the closed form is σ* = sqrt(rate / 2) / |w|."""
    w = 3.0
    x, ids = torch.tensor([[0.7]], dtype=torch.float64), torch.zeros(1, 1, dtype=torch.long)
    est = exact_estimate(lambda inp, rows: w * inp[0], x, ids, 1)
    expected = math.log(math.sqrt(RATE / 2) / w)
    assert abs(float(est.log_sigma[0, 0]) - expected) <= ROUND_OFF


def test_absent_groups_are_nan_not_numbers() -> None:
    """In a batch where example 1 has fewer groups than example 0, its missing columns are
    absent: NaN σ and standard error, size 0, not saturated, no entropy."""
    x = torch.randn(2, 3, 2, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    ids = torch.tensor([[0, 1, 2], [0, 0, -1]]).view(2, 3, 1).expand(2, 3, 2)
    est = exact_estimate(lambda inp, rows: inp[0].sum(1), x, ids, 2)
    absent = torch.tensor([[False, False, False], [False, True, True]])
    assert torch.equal(est.group_size == 0, absent)
    assert bool(est.log_sigma[absent].isnan().all() and est.std_error[absent].isnan().all())
    assert bool(est.log_sigma[~absent].isfinite().all())
    assert not bool(est.saturated[absent].any())


def test_adam_reports_the_reconstruction_at_its_sigma() -> None:
    """Adam's check draws give R(σ) = Σ_i a_i σ_i² (a_i = W_i², σ_S = 1) at the returned σ,
    within the Monte-Carlo error of R's mean over check_samples draws of d dimensions
    (relative sd sqrt(2 / (n d)) per draw set, as in the fixed-point test above; 4 sd)."""
    W = torch.tensor([0.5, 1.0, 2.0, 4.0])
    cfg = replace(REFERENCE, steps=20, init="first_order", lr=1e-3, check_samples=64)
    est = linear_words(W, 8, sigma_max=10.0, config=cfg)
    closed = (W.double().square() * est.sigma[0].double().square()).sum()
    assert abs(float(est.reconstruction[0]) / float(closed) - 1) <= 4 * math.sqrt(2 / (64 * 8))


def test_projections_as_many_as_the_state_are_exact() -> None:
    """With n_projections equal to the state's size the first-order norms use the standard
    basis: exact (W_i² for Φ = Σ W_i x_i, σ_S = 1) with zero variance, not a random QR."""
    from captum_perturb.functional.problem import Problem

    W = torch.tensor([0.5, 1.0, 2.0]).double()
    x = torch.randn(1, 3, 4, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    groups = (torch.arange(3).view(1, 3, 1).expand(1, 3, 4),)
    state = torch.einsum("i,rid->rd", W, x)
    prob = Problem(
        lambda inp, rows: torch.einsum("i,rid->rd", W, inp[0]),
        (x,),
        groups,
        3,
        state,
        torch.full_like(state, 1.0 / 4),
        RATE,
        torch.tensor([10.0], dtype=torch.float64),
        None,
    )
    gen = torch.Generator().manual_seed(0)
    before = gen.get_state()
    norms, var = prob.jacobian_norms(4, gen)
    torch.testing.assert_close(norms[0], W.square(), rtol=1e-12, atol=0.0)
    assert torch.equal(var, torch.zeros_like(var))
    assert torch.equal(gen.get_state(), before), "the standard basis draws no noise"
