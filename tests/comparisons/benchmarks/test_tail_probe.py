"""``comparisons.benchmarks.tail_probe``'s bounds against their closed forms."""

from __future__ import annotations

import math

import torch
from torch import Tensor

from captum_perturb.functional import estimate_sigma
from captum_perturb.functional.problem import Problem
from comparisons.benchmarks import tail_probe
from comparisons.benchmarks.variance_probe import captured_problem


def test_reuse_ess_is_one_without_a_step_and_the_gaussian_ratio_otherwise() -> None:
    sizes = torch.tensor([3.0, 5.0])
    zero = torch.zeros(2, dtype=torch.float64)
    assert tail_probe.reuse_ess(zero, zero, sizes) == 1.0
    # E_old[w²] = 1 / (r √(2 - r²)) per element for N(0, σ²) -> N(0, r²σ²)
    r = 1.1
    step = torch.tensor([math.log(r), 0.0], dtype=torch.float64)
    expected = (r * math.sqrt(2 - r * r)) ** 3
    assert math.isclose(tail_probe.reuse_ess(zero, step, sizes), expected, rel_tol=1e-9)
    # a draw taken at σ cannot stand for one at σ' >= √2 σ (infinite weight variance)
    wide = torch.tensor([0.5 * math.log(2.0) + 1e-9, 0.0], dtype=torch.float64)
    assert tail_probe.reuse_ess(zero, wide, sizes) == 0.0


def test_tail_saving_removes_exactly_the_largest_deviations() -> None:
    q = torch.zeros(100, 1, dtype=torch.float64)
    q[:50] = 1.0
    q[99] = 41.0
    # mean 0.91: squared deviations 0.0081 (50 ones), 0.8281 (49 zeros), 40.09² (the outlier)
    total = 50 * 0.0081 + 49 * 0.8281 + 40.09**2
    assert math.isclose(
        float(tail_probe.tail_saving(q, 0.01)), total / (total - 40.09**2), rel_tol=1e-9
    )
    # 5 % = the outlier and four of the zeros
    rest = total - 40.09**2 - 4 * 0.8281
    assert math.isclose(float(tail_probe.tail_saving(q, 0.05)), total / rest, rel_tol=1e-9)


def test_neyman_saving_is_infinite_for_a_function_of_the_stratum_and_one_without_dependence() -> (
    None
):
    strata = 4
    t = torch.special.ndtri((torch.arange(400, dtype=torch.float64) + 0.5) / 400)
    edges = torch.special.ndtri(torch.linspace(0, 1, strata + 1, dtype=torch.float64)[1:-1])
    which = torch.bucketize(t, edges)
    # q constant within each stratum: stratification removes all of its variance
    step = which.to(torch.float64)[:, None]
    assert float(tail_probe.neyman_saving(step, t, strata)) > 1e12
    # q the same multiset of values in every stratum (counts equal): the saving is the
    # ratio of the pooled variance to the within-stratum one, (n-1)-normalised each
    counts = torch.bincount(which, minlength=strata)
    assert bool((counts == counts[0]).all())
    per = torch.arange(int(counts[0]), dtype=torch.float64)
    q = torch.empty(len(t), 1, dtype=torch.float64)
    for h in range(strata):
        q[which == h, 0] = per
    expected = float(q.var(0) / per.var())
    assert math.isclose(float(tail_probe.neyman_saving(q, t, strata)), expected, rel_tol=1e-9)


W2 = torch.randn(3, 8, 2, generator=torch.Generator().manual_seed(3))


def _two_logit_problem() -> tuple[Problem, Tensor]:
    """Two logits linear in a (1, 3, 8) input, one group per row of 8."""

    def phi(inputs: tuple[Tensor, ...], rows: Tensor) -> Tensor:
        return torch.einsum("rid,ido->ro", inputs[0], W2)

    x = torch.randn(1, 3, 8, generator=torch.Generator().manual_seed(0))
    groups = (torch.arange(3).view(1, 3, 1).expand(1, 3, 8),)
    with captured_problem() as box:
        estimate_sigma(
            phi,
            (x,),
            groups,
            sigma_max=10.0,
            state_std=torch.ones(2),
            generator=torch.Generator().manual_seed(1),
        )
    return box["prob"], box["est"].log_sigma


def test_decision_push_is_the_standardised_push_along_the_logit_difference() -> None:
    prob, u = _two_logit_problem()
    n = 64
    z = prob.draw(torch.zeros(n, dtype=torch.long), torch.Generator().manual_seed(2))
    t = tail_probe.decision_push(prob, u, z)
    # t = (∇(Φ₁ - Φ₀) ⊙ σ)·z / ‖∇(Φ₁ - Φ₀) ⊙ σ‖: for a linear Φ the gradient is W₁ - W₀
    sigma = prob.spread(u.exp(), torch.zeros(1, dtype=torch.long))[0][0]
    direction = ((W2[..., 1] - W2[..., 0]) * sigma).double().reshape(-1)
    expected = z[0].reshape(n, -1).double() @ direction / direction.norm()
    assert torch.allclose(t, expected, rtol=1e-5, atol=1e-6)


def test_ranking_measures_against_their_definitions() -> None:
    s = torch.tensor([3.0, 1.0, 2.0], dtype=torch.float64)
    assert tail_probe.discordant(s, s) == 0.0
    assert tail_probe.discordant(s, -s) == 1.0
    assert math.isclose(tail_probe.discordant(s, torch.tensor([3.0, 2.0, 1.0])), 1 / 3)
    se = torch.tensor([1.0, 0.0, 0.0], dtype=torch.float64)
    # top 1 = group 0; its gaps to groups 2 and 1 are 1 and 2 standard errors
    expected = float(
        torch.special.ndtr(torch.tensor(-1.0)) + torch.special.ndtr(torch.tensor(-2.0))
    )
    assert math.isclose(tail_probe.misplaced(s, se, 1), expected, rel_tol=1e-6)
    # top 2 = groups 0 and 2 against group 1: gaps of 2 (se 1) and 1 (se 0: never misplaced)
    two = float(torch.special.ndtr(torch.tensor(-2.0)))
    assert math.isclose(tail_probe.misplaced(s, se, 2), two, rel_tol=1e-6)
