r"""Issue 21's last levers on a classifier's logits: tails, a free control variate, reused draws,
and a stopping rule on the ranking — each as the most it could save.

At σ found by the default run (:data:`captum_perturb.DEFAULT`) on the same SST-2 **train**
sentences as :mod:`comparisons.benchmarks.stein_probe`, ``--draws`` pathwise curvature draws
:math:`q_g` (mean :math:`a_g`) are taken per sentence, and for each lever the factor by which
it could at best cut the evaluations needed for a given standard error is printed (median
over the sentence's words; 1 = no saving). Each is an *upper bound* of the lever's saving:

* ``tail 1% / tail 5%``: the heavy tails. If the draws with the largest :math:`|q_g - \bar q_g|`
  (the top 1 % or 5 %) were estimated with no error at all — what importance sampling or a
  stratum of their own could at best do — the variance left is the other draws' share:
  the saving is :math:`\sum_i (q_i-\bar q)^2 / \sum_{i \notin \text{tail}} (q_i - \bar q)^2`.
* ``stratified``: stratification on the draw's push along the clean decision direction,
  :math:`t = \nabla(\Phi_1 - \Phi_0)(x)\cdot\varepsilon / \mathrm{sd}`, exactly
  :math:`N(0, 1)` (the draws that flip the prediction are those with large :math:`|t|`); with
  ``--strata`` equiprobable strata in :math:`t` and Neyman allocation, the saving is
  :math:`\mathrm{Var}(q) / (\sum_h p_h \sigma_h)^2` (estimated from the draws' own strata).
* ``free twin``: the linearised twin (the same noise at scale 10⁻², mean known exactly from
  the clean Jacobian when the outputs are few) as a control variate that costs *nothing*
  (it could be computed from the clean Jacobian without the model): saving
  :math:`1/(1-\rho^2)`, ρ the correlation of :math:`q_g` and its twin.
* ``reuse``: re-weighting earlier iterations' draws to the current σ by likelihood ratios.
  Draws at :math:`\sigma` re-weighted to :math:`\sigma'` (per element
  :math:`r = \sigma'/\sigma`) have an effective sample size of
  :math:`\prod_g (r_g\sqrt{2 - r_g^2})^{m_g}` per draw (:math:`m_g` elements per word; 0
  for :math:`r \ge \sqrt2`), printed for the step between the default's last two
  iterations; the saving is at most ``1 + that × (earlier draws / current draws)``.

The ranking a stopping rule on what the user reads would need: the default run stopped after
``k`` iterations (the first ``k`` of one seeded run; 53, 107, 593 and 1,169 evaluations per
sentence), with the predicted fraction of word pairs in the wrong order,
:math:`D = \mathrm{mean}_{g<h}\,\Phi(-|s_g - s_h| / \sqrt{se_g^2 + se_h^2})` from the scores
:math:`s` and their standard errors (0.5 = a random order), the union bounds on the top
word and the top 3 words being misplaced (:func:`misplaced`), and the fraction of pairs
ordered unlike the longest run. Not a test::

    python -m comparisons.benchmarks.tail_probe --sentences 4 --draws 512
"""

from __future__ import annotations

import argparse
import math
from dataclasses import replace
from typing import Any

import torch
from torch import Tensor

from captum_perturb import DEFAULT, LayerPerturbationEntropyAttribution
from captum_perturb.functional.fixed_point import LINEAR_SCALE
from captum_perturb.functional.problem import Problem
from comparisons.benchmarks.convergence import corpus_std, embeddings_of
from comparisons.benchmarks.stein_probe import (
    F64,
    dot,
    grad_psi,
    load_specs,
    pick_sentences,
)
from comparisons.benchmarks.variance_probe import curvature_samples, explain_one

#: iterations after which the ranking is read: 53 and 107 evaluations per sentence (about
#: LIG(50)'s cost and twice it), 593 and 1,169
RANKING_ITERATIONS = (2, 5, 32, 64)


def decision_push(prob: Problem, u: Tensor, noise: tuple[Tensor, ...]) -> Tensor:
    r"""``t`` per draw: the noise's push along the clean gradient of :math:`\Phi_1-\Phi_0`,
    standardised (exactly N(0, 1) over draws)."""
    coef = torch.zeros(1, prob.state.shape[-1], dtype=prob.state.dtype)
    coef[0, 0], coef[0, -1] = -1.0, 1.0
    rows = torch.zeros(1, dtype=torch.long)
    grad = grad_psi(prob, tuple(x[:1] for x in prob.inputs), rows, coef)
    sigma = prob.spread(u[:1].exp(), rows)
    direction = tuple(g * s for g, s in zip(grad, sigma, strict=True))  # ∇·ε = (∇σ)·z
    sd = math.sqrt(float(dot(direction, direction)[0]))
    n = len(noise[0])
    return dot(tuple(d.expand(n, *d.shape[1:]) for d in direction), noise) / sd


def neyman_saving(q: Tensor, t: Tensor, strata: int) -> Tensor:
    """Var(q) / (Σ_h p_h σ_h)² per word, strata equiprobable in t ~ N(0, 1)."""
    edges = torch.special.ndtri(torch.linspace(0, 1, strata + 1, dtype=F64)[1:-1])
    which = torch.bucketize(t, edges)
    spread = torch.zeros(q.shape[1], dtype=F64)
    for h in range(strata):
        part = q[which == h]
        if len(part) > 1:
            spread += part.std(0) / strata
    return q.var(0) / spread.square().clamp_min(torch.finfo(F64).tiny)


def tail_saving(q: Tensor, share: float) -> Tensor:
    """Total squared deviation over that of all but the top ``share`` of draws, per word."""
    dev = (q - q.mean(0)).square()
    keep = len(q) - max(1, int(share * len(q)))
    return dev.sum(0) / dev.sort(0).values[:keep].sum(0).clamp_min(torch.finfo(F64).tiny)


def reuse_ess(u_old: Tensor, u_new: Tensor, sizes: Tensor) -> float:
    r"""Effective sample size per draw of draws at ``u_old`` re-weighted to ``u_new``:
    :math:`\prod_g (r_g\sqrt{2-r_g^2})^{m_g}`, :math:`r = \sigma'/\sigma` (0 if any
    :math:`r \ge \sqrt 2`)."""
    r = (u_new - u_old).double().exp()
    if bool((r >= math.sqrt(2)).any()):
        return 0.0
    log_ess = (sizes.double() * (r.log() + 0.5 * (2 - r.square()).log())).sum()
    return float(log_ess.exp())


def run_default(
    lpe: LayerPerturbationEntropyAttribution,
    tok: Any,
    sentence: str,
    std: Tensor,
    iters: int | None = None,
) -> tuple[Problem, Any]:
    """The :class:`Problem` and estimate of the default on one sentence (stopped after
    ``iters`` iterations when given: the first ``iters`` of the same seeded run)."""
    cfg = DEFAULT if iters is None else replace(DEFAULT, max_iter=iters, min_iter=iters)
    return explain_one(lpe, tok, sentence, None, std, cfg)


def misplaced(s: Tensor, se: Tensor, top: int) -> float:
    """Union bound on the estimated top ``top`` groups not being the true top: the sum over
    (inside, outside) pairs of Φ(-(s_in - s_out) / √(se_in² + se_out²))."""
    order = s.argsort(descending=True)
    inside, outside = order[:top], order[top:]
    gap = s[inside][:, None] - s[outside][None]
    spread = (se[inside][:, None].square() + se[outside][None].square()).sqrt()
    return float(torch.special.ndtr(-gap / spread).sum())


def ranking_at(
    lpe: LayerPerturbationEntropyAttribution, tok: Any, sentence: str, std: Tensor, iters: int
) -> dict[str, Any]:
    """The default stopped after ``iters`` iterations: its evaluations, scores, the
    predicted misordered-pair fraction D and the top-1 / top-3 union bounds."""
    _, est = run_default(lpe, tok, sentence, std, iters)
    keep = est.group_size[0] > 0
    s, se = est.score[0][keep].double(), est.score_std_error[0][keep].double()
    z = (s[:, None] - s[None]).abs() / (se[:, None].square() + se[None].square()).sqrt()
    i, j = torch.triu_indices(len(s), len(s), 1)
    return {
        "evaluations": int(est.evaluations[0]),
        "score": s,
        "D": float(torch.special.ndtr(-z[i, j]).mean()),
        "top1": misplaced(s, se, 1),
        "top3": misplaced(s, se, 3),
    }


def discordant(a: Tensor, b: Tensor) -> float:
    """Fraction of pairs that two score vectors order differently."""
    i, j = torch.triu_indices(len(a), len(a), 1)
    return float(((a[i] - a[j]) * (b[i] - b[j]) < 0).double().mean())


def probe(name: str, spec: Any, sentences: list[str], corpus: list[str], args: Any) -> None:
    """Print each lever's largest saving and the ranking at IG's cost, per sentence."""
    model, tok, forward, _ = spec
    std = corpus_std(spec, corpus)
    lpe = LayerPerturbationEntropyAttribution(forward, embeddings_of(model))
    for i, sentence in enumerate(sentences):
        prob, est = run_default(lpe, tok, sentence, std)
        n = est.n_iter
        evaluations = int(est.evaluations[0])  # before the probe's own draws add to the count
        keep = prob.present[0]
        u = est.log_sigma.nan_to_num(0.0)
        u_prev = run_default(lpe, tok, sentence, std, n - 1)[1].log_sigma.nan_to_num(0.0)
        gen = torch.Generator().manual_seed(1 + i)
        z = prob.draw(torch.zeros(args.draws, dtype=torch.long), gen)
        q = curvature_samples(prob, u, z)
        twin = curvature_samples(prob, u, z, math.log(LINEAR_SCALE))
        t = decision_push(prob, u, z)
        rho = torch.stack(
            [torch.corrcoef(torch.stack([q[:, g], twin[:, g]]))[0, 1] for g in range(q.shape[1])]
        )
        savings = {
            "tail 1%": tail_saving(q, 0.01),
            "tail 5%": tail_saving(q, 0.05),
            "stratified": neyman_saving(q, t, args.strata),
            "free twin": 1 / (1 - rho.square()),
        }
        relvar = q.var(0) / q.mean(0).square()
        sizes = est.group_size[0][keep]
        ess = reuse_ess(u_prev[0][keep], u[0][keep], sizes)
        cells = "  ".join(f"{k} {float(v[keep].median()):.3g}x" for k, v in savings.items())
        print(
            f"{name} | sentence {i} ({int(keep.sum())} words, {n} iterations, "
            f"{evaluations} evaluations) | relvar {float(relvar[keep].median()):.3g}"
            f" | {cells} | reuse ESS per draw {ess:.2g} | sd(t) {float(t.std()):.2f}",
            flush=True,
        )
        runs = {k: ranking_at(lpe, tok, sentence, std, k) for k in RANKING_ITERATIONS}
        longest = runs[RANKING_ITERATIONS[-1]]["score"]
        for k, r in runs.items():
            print(
                f"    ranking after {k} iterations ({r['evaluations']} evaluations): "
                f"D = {r['D']:.3f}, top-1 misplaced <= {r['top1']:.2f}, top-3 misplaced <= "
                f"{r['top3']:.2f}, pairs ordered unlike the {RANKING_ITERATIONS[-1]}-iteration"
                f" run {discordant(r['score'], longest):.2f}",
                flush=True,
            )


def main(argv: list[str] | None = None) -> int:
    """Parse the arguments and probe the logits."""
    doc = __doc__ or ""
    parser = argparse.ArgumentParser(description=doc.splitlines()[0])
    parser.add_argument("--sentences", type=int, default=4)
    parser.add_argument("--draws", type=int, default=512)
    parser.add_argument("--strata", type=int, default=8)
    parser.add_argument("--max-words", type=int, default=12)
    parser.add_argument("--corpus", type=int, default=200, help="train sentences for σ_S")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    sentences, corpus = pick_sentences(args.sentences, args.corpus, args.max_words, args.seed)
    specs = load_specs(["logits"], None)
    probe("logits", specs["logits"], sentences, corpus, args)
    for i, s in enumerate(sentences):
        print(f"sentence {i}: {s}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
