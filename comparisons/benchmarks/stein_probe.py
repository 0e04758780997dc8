r"""Stein-form curvature draws versus the pathwise ones, at the default estimator's σ.

The default estimator (:mod:`captum_perturb.functional.fixed_point`) needs, per word (group)
:math:`g`, the curvature :math:`a_g(\sigma) = \partial R/\partial(\sigma_g^2)` of

.. math::

    R(\sigma) = \mathbb{E}_\varepsilon\, f(x + \varepsilon), \qquad
    f(\tilde x) = \sum_j w_j\,(\Phi_j(\tilde x) - \Phi_j(x))^2, \qquad
    \varepsilon_i = \sigma_{g(i)} z_i,\ z \sim N(0, I).

Each draw of the project gives the pathwise sample
:math:`q_g = \sum_{i \in g} \partial_i f(\tilde x)\,\varepsilon_i / (2\sigma_g^2)` (mean
:math:`a_g`). By the heat equation (Stein's identity twice),
:math:`a_g = \tfrac12\,\mathbb{E}\,\Delta_g f(\tilde x)`, i.e.

.. math::

    a_g = \mathbb{E}\Bigl[\sum_j w_j \bigl(\|\nabla_g \Phi_j(\tilde x)\|^2
          + r_j(\tilde x)\,\Delta_g \Phi_j(\tilde x)\bigr)\Bigr], \qquad
    r_j = \Phi_j(\tilde x) - \Phi_j(x),

with :math:`\Delta_g` the Laplacian over the elements of word :math:`g`. The residual
term is the Laplacian of the scalar :math:`\psi(y) = \sum_j w_j r_j \Phi_j(y)` with the
:math:`r_j` held fixed, so one Hessian-vector product serves every output. At σ found by
the default run on a few SST-2 **train** sentences, each draw :math:`\tilde x` gives:

* ``pathwise``: :math:`q_g` (1 evaluation = one forward and one backward pass);
* ``gauss_newton``: :math:`\frac1K\sum_k \|\nabla_g (p_k^\top \Phi)\|^2`, with
  :math:`p_k` the scaled standard basis times :math:`\sqrt{w}` when the state has at most
  ``K = --projections`` outputs (then exactly :math:`\sum_j w_j\|\nabla_g\Phi_j\|^2`),
  else random orthonormal projections as in
  :meth:`~captum_perturb.functional.problem.Problem.jacobian_norms`; biased for
  :math:`a_g` (cost ``K`` evaluations: ``K`` backward passes after one forward, counted as
  ``K`` whole evaluations);
* ``stein_hutchinson``: ``gauss_newton`` plus the Hutchinson residual
  :math:`u_g^\top (H_\psi u)_g` with one Rademacher probe :math:`u` over all perturbed
  elements (a double backward); unbiased. Cost ``K + 2`` (one HVP counted as 2
  evaluations);
* ``hutchinson_full``: Hutchinson on the whole :math:`\tfrac12\nabla^2 f`,
  :math:`\frac1K\sum_k (u_g\cdot\nabla_g p_k^\top\Phi)(u\cdot\nabla p_k^\top\Phi) +
  u_g^\top (H_\psi u)_g`, which equals :math:`\tfrac12 u_g^\top(\nabla^2 f\,u)_g` (one HVP
  of ``f``, so cost 2); unbiased, no separate Gauss-Newton term;
* ``stein_fd``: as ``stein_hutchinson`` but :math:`H_\psi u` by a central difference of
  :math:`\nabla\psi` at :math:`\tilde x \pm h u` (``h`` = ``--fd-step`` times the
  geometric mean of σ), so no double backward is needed; cost ``K + 2``.

A second, independent probe at each draw splits the Hutchinson residual's variance into
the draw's part and the probe's part, and gives ``stein_exact``: the relative variance the
Stein form would have with an *exact* Laplacian (cost ``K``; a bound no real estimator
reaches, since an exact Laplacian costs one HVP per element).

The relative variance per evaluation, :math:`\mathrm{Var}(\text{sample})\times
\text{cost} / a_g^2` (:math:`a_g` the inverse-variance-weighted mean of the unbiased
levers; for ``gauss_newton`` its own mean), is printed per sentence as the median over its
words, with each lever's ratio to ``pathwise`` word by word (median; below 1 = cheaper for the same
error), the Gauss-Newton bias (mean over the pathwise mean), paired z-scores of the
unbiased levers against ``pathwise``, and the evaluations each lever would need for a
standard error of ``--tol`` in :math:`\tfrac12\log a_g`
(:math:`n = \text{relvar} / (4\,\text{tol}^2)`, for the median word and for the RMS over
words as the default stopping rule uses), next to the default run's own evaluations and
LayerIntegratedGradients' 50 steps. Measured wall-clock costs (relative to a pathwise
draw) are printed too. Not a test:
``python -m comparisons.benchmarks.stein_probe --workloads logits --sentences 4 --draws 64``.
"""

from __future__ import annotations

import argparse
import math
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from torch import Tensor
from torch.nn.attention import SDPBackend, sdpa_kernel

from captum_perturb import LayerPerturbationEntropyAttribution
from captum_perturb.functional.problem import Problem, check_finite
from comparisons.benchmarks.convergence import corpus_std, embeddings_of
from comparisons.benchmarks.convergence import workloads as encoder_workloads
from comparisons.benchmarks.variance_probe import explain_one
from comparisons.models.finetune import cache_root
from comparisons.models.resources import data_dir, read_sentences

F64 = torch.float64
LEVERS = ("pathwise", "gauss_newton", "stein_hutchinson", "hutchinson_full", "stein_fd")
#: LayerIntegratedGradients' default number of steps, for comparison
LIG_STEPS = 50
Spec = tuple[Any, Any, Callable[[Tensor, Tensor], Tensor], Any]
Grads = tuple[Tensor, ...]


def costs(n_proj: int) -> dict[str, float]:
    """Counted evaluations per draw of each lever (one HVP = 2 evaluations)."""
    return {
        "pathwise": 1.0,
        "gauss_newton": float(n_proj),
        "stein_hutchinson": n_proj + 2.0,
        "hutchinson_full": 2.0,
        "stein_fd": n_proj + 2.0,
    }


def output_projections(prob: Problem, n: int, k: int, gen: torch.Generator) -> Tensor:
    r"""``(n, K, M)`` output projections :math:`p_k \odot \sqrt{w}` with
    :math:`\mathbb{E}[p p^\top] = I` per draw: the scaled basis when ``M <= k`` (exact),
    else ``k`` random orthonormal directions times :math:`\sqrt M`."""
    size = prob.state[0].numel()
    sqrt_w = prob.weight[0].reshape(-1).sqrt()
    if size <= k:
        basis = torch.eye(size, dtype=prob.state.dtype) * math.sqrt(size)
        return (basis * sqrt_w).expand(n, size, size)
    gauss = torch.randn(n, size, k, generator=gen, dtype=F64)
    q = torch.linalg.qr(gauss).Q.to(prob.state.dtype) * math.sqrt(size)
    return q.transpose(1, 2) * sqrt_w


def group_sum(prob: Problem, per_element: Grads, rows: Tensor) -> Tensor:
    """Sum per-element values over each word, ``(R, G)`` in float64."""
    return prob.collect(tuple(t.to(F64) for t in per_element), rows)


def dot(a: Grads, b: Grads) -> Tensor:
    """Per-row inner product of two tuples of ``(R, ...)`` tensors, ``(R,)`` float64."""
    total = torch.zeros(len(a[0]), dtype=F64)
    for x, y in zip(a, b, strict=True):
        total = total + (x.to(F64) * y.to(F64)).reshape(len(x), -1).sum(1)
    return total


def mul(a: Grads, b: Grads) -> Grads:
    """Element-wise products of two tuples of tensors."""
    return tuple(x * y for x, y in zip(a, b, strict=True))


def axpy(a: Grads, b: Grads, h: float) -> Grads:
    """``a + h b`` for tuples of tensors."""
    return tuple(x + h * y for x, y in zip(a, b, strict=True))


def grad_psi(prob: Problem, point: Grads, rows: Tensor, coef: Tensor) -> Grads:
    r""":math:`\nabla\psi` at ``point`` for :math:`\psi = \sum_j c_j \Phi_j` (``coef`` fixed)."""
    leaf = tuple(p.detach().requires_grad_(True) for p in point)
    with torch.enable_grad(), sdpa_kernel(SDPBackend.MATH):
        out = prob.state_fn(leaf, rows)
        check_finite(out, "The model output")
        return torch.autograd.grad((coef * out).sum(), leaf)


def gauss_newton_terms(
    prob: Problem, out: Tensor, leaf: Grads, rows: Tensor, proj: Tensor, probe: Grads
) -> tuple[Tensor, Tensor]:
    r"""Per word, :math:`\frac1K\sum_k\|\nabla_g p_k^\top\Phi\|^2` and the Gauss-Newton part
    of Hutchinson on :math:`\tfrac12\nabla^2 f`,
    :math:`\frac1K\sum_k (u_g\cdot\nabla_g p_k^\top\Phi)(u\cdot\nabla p_k^\top\Phi)`."""
    n_proj = proj.shape[1]
    flat = out.reshape(len(rows), -1)
    gn = torch.zeros(len(rows), prob.n_groups, dtype=F64)
    cross = torch.zeros_like(gn)
    for k in range(n_proj):
        g = torch.autograd.grad((flat * proj[:, k]).sum(), leaf, retain_graph=True)
        gn += group_sum(prob, tuple(t.square() for t in g), rows)
        per_word = group_sum(prob, mul(g, probe), rows)
        cross += per_word * dot(g, probe)[:, None]
    return gn / n_proj, cross / n_proj


def fd_laplacian(
    prob: Problem, leaf: Grads, rows: Tensor, coef: Tensor, probe: Grads, h: float
) -> Tensor:
    r"""Per word :math:`u_g\cdot[\nabla\psi(\tilde x + h u) - \nabla\psi(\tilde x - h u)]_g
    / 2h`, the central-difference twin of the Hutchinson residual (2 evaluations)."""
    plus = grad_psi(prob, axpy(leaf, probe, h), rows, coef)
    minus = grad_psi(prob, axpy(leaf, probe, -h), rows, coef)
    diff = tuple((a.to(F64) - b.to(F64)) / (2 * h) for a, b in zip(plus, minus, strict=True))
    return group_sum(prob, mul(diff, probe), rows)


def hutchinson_residuals(
    prob: Problem, g_psi: Grads, leaf: Grads, rows: Tensor, probes: tuple[Grads, Grads]
) -> list[Tensor]:
    r"""Per word :math:`u_g^\top(H_\psi u)_g` for each of two independent probes ``u`` (the
    second only splits the residual's variance into draw and probe parts)."""
    out = []
    for i, probe in enumerate(probes):
        hvp = torch.autograd.grad(dot(g_psi, probe).sum(), leaf, retain_graph=i == 0)
        out.append(group_sum(prob, mul(hvp, probe), rows))
    return out


def chunk_samples(
    prob: Problem, u: Tensor, noise: Grads, probes: tuple[Grads, Grads], proj: Tensor, h: float
) -> tuple[dict[str, Tensor], dict[str, float]]:
    """Every lever's per-draw samples ``(R, G)`` for one chunk of draws of example 0
    (``probes[0]`` the Hutchinson probe, ``probes[1]`` a second one for diagnostics), and
    the seconds each step took."""
    n = len(noise[0])
    rows = torch.zeros(n, dtype=torch.long)
    scaled = mul(prob.spread(u.exp().expand(n, -1), rows), noise)
    base = tuple(x[rows] for x in prob.inputs)
    leaf = tuple(t.detach().requires_grad_(True) for t in axpy(base, scaled, 1.0))
    t = [time.perf_counter()]
    with torch.enable_grad(), sdpa_kernel(SDPBackend.MATH):
        out = prob.state_fn(leaf, rows)
        check_finite(out, "The model output on perturbed inputs")
        coef = (prob.weight[rows] * (out - prob.state[rows])).detach()
        t.append(time.perf_counter())
        res = (prob.weight[rows] * (out - prob.state[rows]).square()).sum()
        g_res = torch.autograd.grad(res, leaf, retain_graph=True)
        t.append(time.perf_counter())
        gn, cross = gauss_newton_terms(prob, out, leaf, rows, proj, probes[0])
        t.append(time.perf_counter())
        g_psi = torch.autograd.grad((coef * out).sum(), leaf, create_graph=True)
        lap, lap2 = hutchinson_residuals(prob, g_psi, leaf, rows, probes)
        t.append(time.perf_counter())
    lap_fd = fd_laplacian(prob, leaf, rows, coef, probes[0], h)
    t.append(time.perf_counter())
    pathwise = group_sum(prob, mul(g_res, scaled), rows) / (2 * (2 * u).exp()).to(F64)
    steps = ("forward", "backward", "gn", "hvp", "fd")
    clock = {k: b - a for k, a, b in zip(steps, t[:-1], t[1:], strict=True)}
    clock["hvp"] /= 2  # two probes, one HVP each; the second is not part of any lever
    samples = {
        "pathwise": pathwise,
        "gauss_newton": gn,
        "residual": lap,
        "residual2": lap2,
        "stein_hutchinson": gn + lap,
        "hutchinson_full": cross + lap,
        "stein_fd": gn + lap_fd,
    }
    return samples, clock


def rademacher(prob: Problem, noise: Grads, gen: torch.Generator) -> Grads:
    """Random signs shaped like ``noise``, zero on the elements no word perturbs."""
    out = []
    for z, idx in zip(noise, prob.flat, strict=True):
        signs = (2 * torch.randint(0, 2, z.shape, generator=gen) - 1).to(z.dtype)
        mask = (idx[0] < prob.n_groups).reshape(z.shape[1:]).to(z.dtype)
        out.append(signs * mask)
    return tuple(out)


def draw_samples(
    prob: Problem, u: Tensor, args: argparse.Namespace, seed: int
) -> tuple[dict[str, Tensor], dict[str, float]]:
    """``args.draws`` draws of every lever (same noise for all), in chunks of ``args.chunk``;
    ``(draws, G)`` float64 each, and the summed seconds of each step."""
    gen = torch.Generator().manual_seed(seed)
    h = args.fd_step * float(u[0][prob.present[0]].mean().exp())
    parts: dict[str, list[Tensor]] = {}
    clock: dict[str, float] = {}
    done = 0
    while done < args.draws:
        n = min(args.chunk, args.draws - done)
        noise = prob.draw(torch.zeros(n, dtype=torch.long), gen)
        probes = (rademacher(prob, noise, gen), rademacher(prob, noise, gen))
        proj = output_projections(prob, n, args.projections, gen)
        samples, secs = chunk_samples(prob, u, noise, probes, proj, h)
        for k, v in samples.items():
            parts.setdefault(k, []).append(v)
        for k, s in secs.items():
            clock[k] = clock.get(k, 0.0) + s
        done += n
    return {k: torch.cat(v) for k, v in parts.items()}, clock


def reference_mean(s: dict[str, Tensor]) -> Tensor:
    """Best estimate of ``a_g`` per word: the unbiased levers' means weighted by the inverse
    variance of each mean (the denominators of the relative variances and of the bias)."""
    keys = ("pathwise", "stein_hutchinson", "hutchinson_full")
    inv = torch.stack([1 / s[k].var(0).clamp_min(1e-300) for k in keys])
    means = torch.stack([s[k].mean(0) for k in keys])
    return (inv * means).sum(0) / inv.sum(0)


def residual_split(s: dict[str, Tensor], cost: float) -> tuple[Tensor, Tensor]:
    """The Hutchinson residual's probe share of its variance (from two independent probes
    at the same draw) and the relative variance per evaluation the Stein form would have
    with an exact Laplacian (the probe's variance removed; cost ``cost``), per word."""
    lap1, lap2 = s["residual"], s["residual2"]
    probe_var = 0.5 * (lap1 - lap2).var(0)
    share = probe_var / lap1.var(0)
    exact = (s["gauss_newton"] + 0.5 * (lap1 + lap2)).var(0) - 0.5 * probe_var
    return share, exact.clamp_min(0) * cost


def summarise(
    samples: dict[str, Tensor], keep: Tensor, cost: dict[str, float], tol: float
) -> dict[str, float]:
    """Per-sentence numbers over the present words ``keep``: relative variance per
    evaluation (median), ratio to pathwise (median of word-wise ratios), Gauss-Newton bias,
    paired z-scores against pathwise, and evaluations to a standard error ``tol`` in ½ log a."""
    n = samples["pathwise"].shape[0]
    s = {k: v[:, keep] for k, v in samples.items()}
    ref = reference_mean(s)
    mean_sq = {k: ref.square() for k in LEVERS} | {"gauss_newton": s["gauss_newton"].mean(0) ** 2}
    relvar = {k: s[k].var(0) * cost[k] / mean_sq[k] for k in LEVERS}
    share, exact = residual_split(s, cost["gauss_newton"])
    relvar_exact = exact / ref.square()
    row: dict[str, float] = {"words": float(keep.sum()), "draws": float(n)}
    row["words a<=0"] = float((ref <= 0).sum())
    for k in LEVERS:
        row[f"relvar {k}"] = float(relvar[k].median())
        row[f"ratio {k}"] = float((relvar[k] / relvar["pathwise"]).median())
        row[f"n_median {k}"] = float(relvar[k].median()) / (4 * tol**2)
        row[f"n_rms {k}"] = float(relvar[k].mean()) / (4 * tol**2)
    row["relvar stein_exact"] = float(relvar_exact.median())
    row["ratio stein_exact"] = float((relvar_exact / relvar["pathwise"]).median())
    row["probe share"] = float(share.median())
    bias = s["gauss_newton"].mean(0) / ref
    row["gn bias median"] = float(bias.median())
    row["gn bias min"], row["gn bias max"] = float(bias.min()), float(bias.max())
    row["residual share"] = float((s["residual"].mean(0) / ref).median())
    for k in ("stein_hutchinson", "hutchinson_full", "stein_fd"):
        d = s[k] - s["pathwise"]
        z = d.mean(0) / (d.std(0) / math.sqrt(n))
        row[f"z median {k}"] = float(z.abs().median())
        row[f"z max {k}"] = float(z.abs().max())
        row[f"z2 mean {k}"] = float(z.square().mean())
    lap_fd = s["stein_fd"] - s["gauss_newton"]
    row["fd vs hvp"] = float((lap_fd - s["residual"]).norm() / s["residual"].norm())
    return row


def measured_costs(clock: dict[str, float], draws: int) -> dict[str, float]:
    """Wall-clock cost of each lever's draw relative to a pathwise draw (forward + backward)."""
    unit = clock["forward"] + clock["backward"]
    gn = clock["forward"] + clock["gn"]
    out = {"pathwise": 1.0, "gauss_newton": gn / unit}
    out["stein_hutchinson"] = (gn + clock["hvp"]) / unit
    out["hutchinson_full"] = (clock["forward"] + clock["hvp"]) / unit
    out["stein_fd"] = (gn + clock["fd"]) / unit
    out["ms per pathwise draw"] = 1e3 * unit / draws
    return out


def probe(
    name: str, spec: Spec, sentences: list[str], corpus: list[str], args: argparse.Namespace
) -> list[dict[str, float]]:
    """Every sentence's :func:`summarise` row on one workload (printed as it goes)."""
    model, tok, forward, layer = spec
    std = corpus_std(spec, corpus)
    lpe = LayerPerturbationEntropyAttribution(forward, embeddings_of(model))
    rows = []
    for i, sentence in enumerate(sentences):
        start = time.perf_counter()
        prob, est = explain_one(lpe, tok, sentence, layer, std)
        explained = time.perf_counter() - start
        u = est.log_sigma.nan_to_num(0.0)
        n_proj = min(args.projections, prob.state[0].numel())
        samples, clock = draw_samples(prob, u, args, seed=1 + i)
        row = summarise(samples, prob.present[0], costs(n_proj), args.tol)
        row["default evaluations"] = float(est.evaluations[0])
        row["default converged"] = float(est.converged[0])
        row["saturated"] = float(est.saturated[0][prob.present[0]].float().mean())
        row.update({f"measured {k}": v for k, v in measured_costs(clock, args.draws).items()})
        row["seconds explain"] = explained
        row["seconds probe"] = time.perf_counter() - start - explained
        print(f"{name} | sentence {i}: {sentence!r}", flush=True)
        print("  " + ", ".join(f"{k}={v:.4g}" for k, v in row.items()), flush=True)
        rows.append(row)
    return rows


def variance_table(name: str, rows: list[dict[str, float]]) -> str:
    """Markdown: relative variance per evaluation (median over words) and ratio to pathwise,
    the Gauss-Newton bias, and the unbiased levers' z-scores against pathwise."""
    head = (
        "| workload | sentence | words | pathwise relvar | GN relvar (×pw) "
        "| GN bias med [min, max] | residual share | Stein-H relvar (×pw) "
        "| z Stein-H med/max | full-H relvar (×pw) "
        "| z full-H med/max | Stein-FD relvar (×pw) | z FD med/max | FD vs HVP "
        "| Stein exact-Δ relvar (×pw) | probe share of residual var |\n"
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|"
    )
    lines = [head]
    for i, r in enumerate(rows):

        def rv(k: str, r: dict[str, float] = r) -> str:
            return f"{r[f'relvar {k}']:.3g} ({r[f'ratio {k}']:.2g}×)"

        def z(k: str, r: dict[str, float] = r) -> str:
            return f"{r[f'z median {k}']:.2f} / {r[f'z max {k}']:.2f}"

        lines.append(
            f"| {name} | {i} | {r['words']:.0f} | {r['relvar pathwise']:.3g} "
            f"| {rv('gauss_newton')} "
            f"| {r['gn bias median']:.2f} [{r['gn bias min']:.2f}, {r['gn bias max']:.2f}] "
            f"| {r['residual share']:.2f} | {rv('stein_hutchinson')} | {z('stein_hutchinson')} "
            f"| {rv('hutchinson_full')} | {z('hutchinson_full')} | {rv('stein_fd')} "
            f"| {z('stein_fd')} | {r['fd vs hvp']:.2g} | {rv('stein_exact')} "
            f"| {r['probe share']:.2f} |"
        )
    return "\n".join(lines)


def evaluations_table(name: str, rows: list[dict[str, float]], tol: float) -> str:
    """Markdown: estimated evaluations per sentence to a standard error ``tol`` in ½ log a
    (median word / RMS over words), the default run's evaluations and LIG's steps."""
    head = (
        "| workload | sentence | default run: evaluations (converged) | LIG steps "
        + "".join(f"| {k}: n@{tol} med / rms " for k in LEVERS)
        + "| measured cost ×pw: GN / Stein-H / full-H / FD |\n"
        + "|---" * (5 + len(LEVERS))
        + "|"
    )
    lines = [head]
    for i, r in enumerate(rows):
        cells = "".join(f"| {r[f'n_median {k}']:.0f} / {r[f'n_rms {k}']:.0f} " for k in LEVERS)
        measured = " / ".join(f"{r[f'measured {k}']:.2f}" for k in LEVERS if k != "pathwise")
        lines.append(
            f"| {name} | {i} | {r['default evaluations']:.0f} ({r['default converged']:.0f}) "
            f"| {LIG_STEPS} {cells}| {measured} |"
        )
    return "\n".join(lines)


def pick_sentences(n: int, corpus: int, max_words: int, seed: int) -> tuple[list[str], list[str]]:
    """SST-2 train sentences in a seeded order: the first ``corpus`` for σ_S, then the
    first ``n`` of the rest with 5 to ``max_words`` words to probe."""
    rows = read_sentences(data_dir() / "sst2" / "train.tsv")
    order = torch.randperm(len(rows), generator=torch.Generator().manual_seed(seed)).tolist()
    texts = [rows[i][0] for i in order]
    chosen = [t for t in texts[corpus:] if 5 <= len(t.split()) <= max_words][:n]
    return chosen, texts[:corpus]


def cached_classifier() -> Path | None:
    """The newest fine-tuned MiniLM in the cache folder, if any (None: train one)."""
    found = [p for p in cache_root().glob("minilm-sst2-*") if (p / "model.safetensors").exists()]
    return max(found, key=lambda p: p.stat().st_mtime) if found else None


def load_specs(names: list[str], classifier: Path | None) -> dict[str, Spec]:
    """``name -> (model, tokenizer, forward, state_layer)`` for ``logits`` and ``pooled``."""
    where = None
    if "logits" in names:
        where = classifier or cached_classifier()
        print(f"classifier: {where or 'none cached: training the full recipe'}", flush=True)
    specs = encoder_workloads([], with_classifier="logits" in names, classifier=where)
    return {name: specs[name] for name in names}


def main(argv: list[str] | None = None) -> int:
    """Parse the arguments, probe every workload and print the tables."""
    doc = __doc__ or ""
    parser = argparse.ArgumentParser(description=doc.splitlines()[0])
    parser.add_argument("--workloads", default="logits", help="comma-separated: logits,pooled")
    parser.add_argument("--sentences", type=int, default=4)
    parser.add_argument("--draws", type=int, default=64)
    parser.add_argument("--chunk", type=int, default=16, help="draws per batch")
    parser.add_argument("--projections", type=int, default=8, help="K for gauss_newton")
    parser.add_argument("--fd-step", type=float, default=1e-2, help="h / geometric-mean σ")
    parser.add_argument("--tol", type=float, default=0.02, help="target SE of ½ log a")
    parser.add_argument("--max-words", type=int, default=12)
    parser.add_argument("--corpus", type=int, default=200, help="train sentences for σ_S")
    parser.add_argument("--classifier", type=Path, default=None)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    names = args.workloads.split(",")
    sentences, corpus = pick_sentences(args.sentences, args.corpus, args.max_words, args.seed)
    specs = load_specs(names, args.classifier)
    tables = []
    for name in names:
        start = time.perf_counter()
        rows = probe(name, specs[name], sentences, corpus, args)
        print(f"{name}: {time.perf_counter() - start:.0f} s", flush=True)
        tables += [variance_table(name, rows), evaluations_table(name, rows, args.tol)]
    for i, s in enumerate(sentences):
        print(f"sentence {i}: {s}")
    print("\n\n".join(tables))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
