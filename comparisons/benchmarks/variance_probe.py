r"""Variance-reduction levers for the curvature draws, measured at the default's optimum.

For each workload of :mod:`comparisons.benchmarks.convergence` and a few SST-2 dev sentences, the
default estimator (:data:`captum_perturb.DEFAULT`) is run once to find σ; at that σ the
per-draw curvature samples :math:`q_g` (whose mean is :math:`a_g`, the quantity each
iteration estimates) are drawn in five ways, and the relative variance of the estimate
of :math:`a_g` **per model evaluation** is printed for independent draws (median over the
sentence's tokens), and for every other lever its ratio to that, token by token (median
over tokens; below 1 is better, and the cost of a lever is counted in its evaluations):

* ``iid``: independent Gaussian draws (the default);
* ``antithetic``: pairs ε, −ε averaged (2 evaluations per pair);
* ``twin``: each draw minus its linearised twin (the same ε at scale 10⁻², mean
  :math:`a_{lin}`), i.e. the control variate with β = 1 *assuming the first-order value
  is known exactly* (2 evaluations per draw);
* ``antithetic+twin``: a pair's mean minus one twin (3 evaluations per pair; the twin's
  q is even in ε);
* ``projections+antithetic+twin``: the last, with the first-order value estimated from
  Jacobian projections (:meth:`~captum_perturb.functional.problem.Problem.jacobian_norms`,
  32 of them, one evaluation each) instead of known, at the best split of evaluations
  between projections and pairs: :math:`(\sqrt{V_{proj}} + \sqrt{V_{rest}})^2`;
* ``sobol``: randomised quasi-Monte Carlo (scrambled Sobol points through the inverse
  normal CDF, ``torch.quasirandom.SobolEngine``), the variance taken over 8 independent
  scrambles of 8 points each.

Not a test:
``python -m comparisons.benchmarks.variance_probe --workloads "layer 1,layer 6,pooled,logits"``.
"""

from __future__ import annotations

import argparse
import contextlib
import math
import warnings
from collections.abc import Iterator
from typing import Any

import torch
from torch import Tensor

import captum_perturb.functional.estimate as estimate_module
from captum_perturb import LayerPerturbationEntropyAttribution
from captum_perturb.functional.fixed_point import LINEAR_SCALE
from captum_perturb.functional.problem import Problem, SigmaEstimate
from comparisons.benchmarks.convergence import corpus_std, embeddings_of, workloads
from comparisons.models.resources import sst2_dev

#: Jacobian projections measured for the first-order value
_PROJECTIONS = 32
#: SobolEngine's largest dimension
_SOBOL_MAX_DIM = 21201


@contextlib.contextmanager
def captured_problem() -> Iterator[dict[str, Any]]:
    """Keep the :class:`Problem` and estimate of the next fixed-point run (restored after)."""
    real = estimate_module.fixed_point
    box: dict[str, Any] = {}

    def grab(prob: Problem, *args: Any) -> SigmaEstimate:
        box["prob"] = prob
        box["est"] = est = real(prob, *args)
        return est

    estimate_module.fixed_point = grab  # type: ignore[assignment]
    try:
        yield box
    finally:
        estimate_module.fixed_point = real


def curvature_samples(
    prob: Problem, u: Tensor, noise: tuple[Tensor, ...], shift: float = 0.0
) -> Tensor:
    """``q_g`` of example 0 for each row of ``noise`` at ``log σ = u + shift``, float64."""
    n = len(noise[0])
    rows = torch.zeros(n, dtype=torch.long)
    grads, _ = prob.sample_gradients((u + shift).expand(n, -1), rows, noise)
    return grads.double() / (2 * (2 * (u[0] + shift)).exp().double())


def sobol_noise(prob: Problem, n: int, seed: int) -> tuple[Tensor, ...]:
    """``n`` scrambled-Sobol standard normal vectors per input (one example)."""
    dims = [math.prod(s) for s in prob.shapes]
    engine = torch.quasirandom.SobolEngine(sum(dims), scramble=True, seed=seed)
    points = engine.draw(n, dtype=torch.float64).clamp(1e-12, 1 - 1e-12)
    z = torch.special.ndtri(points).to(prob.inputs[0].dtype)
    return tuple(part.reshape(n, *s) for part, s in zip(z.split(dims, 1), prob.shapes, strict=True))


def per_evaluation_variance(prob: Problem, u: Tensor, draws: int, seed: int) -> dict[str, Tensor]:
    """Relative variance of the estimate of ``a_g`` per evaluation, for each lever, ``(G,)``
    each: the variance divided by :math:`a_g^2`, :math:`a_g` the mean of the draws and
    their antithetic partners."""
    gen = torch.Generator().manual_seed(seed)
    z = prob.draw(torch.zeros(draws, dtype=torch.long), gen)
    q = curvature_samples(prob, u, z)
    q_minus = curvature_samples(prob, u, tuple(-t for t in z))
    twin = curvature_samples(prob, u, z, math.log(LINEAR_SCALE))
    pair = (q + q_minus) / 2
    out = {
        "iid": q.var(0),
        "antithetic": pair.var(0) * 2,
        "twin": (q - twin).var(0) * 2,
        "antithetic+twin": (pair - twin).var(0) * 3,
    }
    _, proj_var = prob.jacobian_norms(_PROJECTIONS, gen)  # variance of their mean
    per_projection = proj_var[0].double() * _PROJECTIONS
    rest = out["antithetic+twin"]
    out["projections+antithetic+twin"] = (per_projection.sqrt() + rest.sqrt()).square()
    if sum(math.prod(s) for s in prob.shapes) <= _SOBOL_MAX_DIM:
        means = [
            curvature_samples(prob, u, sobol_noise(prob, 8, seed + r)).mean(0) for r in range(8)
        ]
        out["sobol"] = torch.stack(means).var(0) * 8
    a_sq = torch.cat([q, q_minus]).mean(0).square()
    return {k: v / a_sq for k, v in out.items()}


def explain_one(
    lpe: LayerPerturbationEntropyAttribution,
    tok: Any,
    sentence: str,
    layer: Any,
    std: Tensor,
    config: Any = None,
) -> tuple[Problem, SigmaEstimate]:
    """Run the estimator (``config``, default :data:`~captum_perturb.DEFAULT`) on one
    sentence with seed 0 (every token a word, warnings silenced) and keep its
    :class:`Problem` and estimate."""
    one = tok([sentence], return_tensors="pt")
    with captured_problem() as box, warnings.catch_warnings():
        warnings.simplefilter("ignore")
        lpe.explain(
            one["input_ids"],
            additional_forward_args=(one["attention_mask"],),
            attention_mask=one["attention_mask"],
            state_layer=layer,
            state_std=std,
            config=config,
            seed=0,
        )
    return box["prob"], box["est"]


def probe(name: str, spec: Any, sentences: list[str], corpus: list[str], draws: int) -> None:
    """Print the median relative variance per evaluation of every lever, per sentence."""
    model, tok, forward, layer = spec
    std = corpus_std(spec, corpus)
    lpe = LayerPerturbationEntropyAttribution(forward, embeddings_of(model))
    for i, sentence in enumerate(sentences):
        prob, est = explain_one(lpe, tok, sentence, layer, std)
        u = est.log_sigma.nan_to_num(0.0)
        var = per_evaluation_variance(prob, u, draws, seed=1 + i)
        keep = prob.present[0]
        iid = var["iid"][keep]
        cells = "  ".join(
            f"{k} {float((v[keep] / iid).median()):.3g}x" for k, v in var.items() if k != "iid"
        )
        cells = f"iid {float(iid.median()):.3g}  " + cells
        print(f"{name} | sentence {i} ({int(keep.sum())} tokens) | {cells}", flush=True)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workloads", default="layer 1,layer 6,pooled,logits")
    parser.add_argument("--sentences", type=int, default=2, help="the first n SST-2 dev sentences")
    parser.add_argument("--draws", type=int, default=64)
    args = parser.parse_args(argv)
    names = args.workloads.split(",")
    layers = [int(n.split()[1]) for n in names if n.startswith("layer")]
    specs = workloads(layers, with_classifier="logits" in names)
    dev = [s for s, _ in sst2_dev(100)]
    for name in names:
        probe(name, specs[name], dev[: args.sentences], dev, args.draws)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
