"""``comparisons.benchmarks.variance_probe`` on a linear state, where every lever has a closed form.

For :math:`\\Phi(x) = \\sum_i W_i x_i` the curvature sample :math:`q_g` is a quadratic form
in ε: it is even (q(ε) = q(−ε)), so an antithetic pair's mean is the draw itself and costs
twice the evaluations (exactly 2× the variance per evaluation), and it equals its
linearised twin, so the twin's difference has no variance at all.
"""

from __future__ import annotations

import torch
from torch import Tensor

from captum_perturb.functional import estimate_sigma
from captum_perturb.functional.problem import Problem
from comparisons.benchmarks import variance_probe


def _linear_problem() -> Problem:
    W = torch.tensor([1.0, 2.0, 4.0])

    def phi(inputs: tuple[Tensor, ...], rows: Tensor) -> Tensor:
        return torch.einsum("i,rid->rd", W, inputs[0])

    x = torch.randn(1, 3, 8, generator=torch.Generator().manual_seed(0))
    groups = (torch.arange(3).view(1, 3, 1).expand(1, 3, 8),)
    with variance_probe.captured_problem() as box:
        estimate_sigma(
            phi,
            (x,),
            groups,
            sigma_max=10.0,
            state_std=torch.ones(8),
            generator=torch.Generator().manual_seed(1),
        )
    prob: Problem = box["prob"]
    return prob


def test_levers_on_a_linear_state_have_their_closed_forms() -> None:
    prob = _linear_problem()
    u = torch.zeros(1, 3)
    var = variance_probe.per_evaluation_variance(prob, u, draws=64, seed=0)
    assert torch.allclose(var["antithetic"], 2 * var["iid"], rtol=1e-5)
    assert bool((var["twin"] <= 1e-6 * var["iid"]).all())
    assert bool((var["antithetic+twin"] <= 1e-6 * var["iid"]).all())
    # 32 projections of an 8-element state are its standard basis: exact
    assert bool((var["projections+antithetic+twin"] <= 1e-6 * var["iid"]).all())
    assert set(var) == {
        "iid",
        "antithetic",
        "twin",
        "antithetic+twin",
        "projections+antithetic+twin",
        "sobol",
    }


def test_the_problem_capture_restores_the_estimator() -> None:
    real = variance_probe.estimate_module.fixed_point
    with variance_probe.captured_problem():
        assert variance_probe.estimate_module.fixed_point is not real
    assert variance_probe.estimate_module.fixed_point is real
