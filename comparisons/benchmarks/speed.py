"""Speed, memory and accuracy of the default estimator against Captum's LayerIntegratedGradients.

One run covers the workloads users run. Every workload puts the noise on the output of the
model's embeddings module, one group per token, ``attention_mask=`` given, σ_S from the
first 100 SST-2 dev sentences (:func:`captum_perturb.estimate_state_std`):

* ``layers1-3``: Φ = the first 3 encoder layers of the packaged all-MiniLM-L6-v2 (a
  truncated copy), its full ``[tokens × 384]`` state;
* ``layer k`` (k = 1..6): the packaged MiniLM's layer ``k`` full state (``state_layer=``);
* ``pooled``: its mean-pooled last hidden state;
* ``logits``: the SST-2 fine-tuned MiniLM's two logits (:mod:`comparisons.models.finetune`);
* ``target logit``: its predicted class's logit only (``target=`` the clean prediction).

Each is timed against Captum ``LayerIntegratedGradients(n_steps=50)`` on the same Φ and the
same inputs (baseline: pad token ids; its output: the normalised squared norm of the state
over unpadded elements, or the target logit itself with ``target=``), on the tutorial
sentence (median of ``--repeats`` runs after a warm-up) and on a padded batch of SST-2 dev
sentences 101.. (one run): seconds, the ratio ours / LIG, evaluations per sentence, the
converged fraction, and the peak resident memory of one call on the batch (in process, in
a call of its own after freed memory is handed back: :func:`peak_rss_increase`; ours on a
two-iteration run, see :func:`peak_memory`), also for the default with
``internal_batch_size=`` (whose σ must equal the unbounded call's).

Accuracy against a high-precision optimum (:data:`captum_perturb.HIGH_PRECISION`, two
seeds) as mean |Δ log σ| and Spearman ρ over tokens: always for ``layers1-3`` (tutorial,
the first ``--hp-subset`` batch sentences, and the reference algorithm
:data:`captum_perturb.REFERENCE` on the tutorial), on the tutorial for the workloads named
in ``--hp-workloads`` (and those with optima in the ``--hp-from`` file). The optima are
stored in the output under their workload; ``--hp-from`` reuses them (it also reads the
single-workload layout of the files written before). ``--quick`` runs a few iterations of
each estimator on a batch of 4, to check the script runs. Not a test::

    python -m comparisons.benchmarks.speed --out docs/benchmark.json --hp-from docs/benchmark.json
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import ctypes
import gc
import json
import math
import platform
import statistics
import sys
import time
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, NamedTuple

import torch
from captum.attr import LayerIntegratedGradients
from torch import Tensor, nn

from captum_perturb import (
    DEFAULT,
    HIGH_PRECISION,
    REFERENCE,
    FixedPointConfig,
    LayerPerturbationEntropyAttribution,
    PerturbationEntropyResult,
    estimate_state_std,
)
from comparisons.benchmarks import convergence
from comparisons.benchmarks.convergence import embeddings_of
from comparisons.models.finetune import load_classifier
from comparisons.models.resources import TUTORIAL_SENTENCE, sst2_dev

Forward = Callable[[Tensor, Tensor], Tensor]
LigScalar = Callable[[Tensor, Tensor, Tensor], Tensor]

WORKLOADS = ("layers1-3", *(f"layer {k}" for k in range(1, 7)), "pooled", "logits", "target logit")
LIG_STEPS = 50
STD_SENTENCES = 100  # σ_S: SST-2 dev sentences 1-100; the batch starts after them
HP_SEEDS = (1, 2)
MB = 2**20


def spearman(a: torch.Tensor, b: torch.Tensor) -> float:
    """Spearman's ρ of two 1-D tensors (average ranks for ties)."""
    from scipy.stats import spearmanr

    return float(spearmanr(a.double().numpy(), b.double().numpy())[0])


def timed(fn: Callable[[], Any], repeat: int = 1) -> tuple[Any, float]:
    """Result of ``fn`` and its median wall time over ``repeat`` runs."""
    times = []
    out = None
    for _ in range(repeat):
        start = time.perf_counter()
        out = fn()
        times.append(time.perf_counter() - start)
    return out, statistics.median(times)


def accuracy(est: torch.Tensor, ref: torch.Tensor, mask: torch.Tensor) -> dict[str, float]:
    """Mean |Δ log σ| and mean per-sentence Spearman over unpadded tokens.

    Group columns are token positions; a batch padded to a different length has more
    (NaN) columns, so only the common ones are compared.
    """
    width = min(est.shape[1], ref.shape[1])
    est, ref, mask = est[:, :width], ref[:, :width], mask[:, :width]
    errs, rhos = [], []
    for e, r, m in zip(est, ref, mask.bool(), strict=True):
        errs.append((e[m] - r[m]).abs().mean().item())
        rhos.append(spearman(e[m], r[m]))
    return {"mean_abs_dlogsigma": statistics.mean(errs), "spearman": statistics.mean(rhos)}


def _status_bytes(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) * 1024  # reported in kB
    raise OSError(f"no {field} in /proc/self/status")


def _release_freed_memory() -> None:
    """Collect garbage and hand freed heap pages back to the system (glibc), so that a
    call's peak is not hidden by memory the allocator kept from an earlier one."""
    gc.collect()
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL("libc.so.6").malloc_trim(0)


def peak_rss_increase(fn: Callable[[], Any]) -> tuple[Any, float]:
    """``fn()`` and how far the process's peak resident memory rose above its resident
    memory just before the call, in bytes (Linux: ``/proc/self/clear_refs`` resets the
    peak). NaN, with a warning, where ``/proc`` does not allow it."""
    _release_freed_memory()
    try:
        Path("/proc/self/clear_refs").write_text("5")
        before = _status_bytes("VmRSS")
    except OSError as err:
        warnings.warn(f"peak memory not measured ({err})", RuntimeWarning, stacklevel=2)
        return fn(), math.nan
    out = fn()
    return out, float(max(0, _status_bytes("VmHWM") - before))


def normalised_square(state: Tensor, mask: Tensor, std: Tensor) -> Tensor:
    """LIG's scalar for a vector state: the mean of ``(state / σ_S)²`` over the unpadded
    elements of each example."""
    s = state / std
    if s.dim() < 3:
        return s.square().flatten(1).mean(1)
    m = mask[..., None].to(s.dtype)
    return (m * s.square()).sum((1, 2)) / (m.sum((1, 2)) * s.shape[-1])


def as_is(state: Tensor, mask: Tensor, std: Tensor) -> Tensor:
    """LIG's output for a selected logit: the logits, ``target=`` picks the class."""
    return state


@dataclass
class Workload:
    """One Φ: ``forward(ids, mask)`` runs the model; the state is its output, or
    ``state_layer``'s output; noise on ``model``'s embeddings."""

    name: str
    model: nn.Module
    tokenizer: Any
    forward: Forward
    state_layer: nn.Module | None = None
    lig_scalar: LigScalar = normalised_square
    predicted_target: bool = False  # Φ = the logit of the class predicted on the clean input

    def state(self, ids: Tensor, mask: Tensor) -> Tensor:
        """Φ's state, with its graph (a state layer's output ends the forward pass)."""
        if self.state_layer is None:
            return self.forward(ids, mask)
        return _output_of(self.state_layer, lambda: self.forward(ids, mask))

    def targets(self, ids: Tensor, mask: Tensor) -> list[int] | None:
        """The target of each example: its predicted class, or None (the whole state)."""
        if not self.predicted_target:
            return None
        with torch.no_grad():
            return self.forward(ids, mask).argmax(-1).tolist()


class _ReachedError(Exception):
    """Raised by :func:`_output_of`'s hook: the rest of the forward pass is not needed."""


def _output_of(layer: nn.Module, run: Callable[[], Any]) -> Tensor:
    """``layer``'s (first) output tensor during ``run()``, which is cut short there (as our
    method cuts its own forward passes short), with its graph."""
    sink: list[Tensor] = []

    def hook(_module: nn.Module, _args: Any, out: Any) -> None:
        sink.append(out[0] if isinstance(out, (tuple, list)) else out)
        raise _ReachedError

    handle = layer.register_forward_hook(hook)
    try:
        run()
    except _ReachedError:
        pass
    finally:
        handle.remove()
    if not sink:
        raise ValueError(f"{type(layer).__name__} did not run in the forward pass")
    return sink[0]


def first_layers(model: nn.Module, tokenizer: Any, n: int) -> Workload:
    """Φ = the first ``n`` encoder layers of a truncated copy of ``model``."""
    phi: Any = copy.deepcopy(model)
    phi.encoder.layer = phi.encoder.layer[:n]

    def forward(ids: Tensor, mask: Tensor) -> Tensor:
        return phi(input_ids=ids, attention_mask=mask).last_hidden_state

    return Workload(f"layers1-{n}", phi, tokenizer, forward)


def workloads(names: Sequence[str], classifier: Path | None = None) -> list[Workload]:
    """The named workloads (see the module docstring), sharing one MiniLM and one classifier."""
    built: dict[str, Workload] = {}
    if set(names) - {"logits", "target logit"}:
        layers = [k for k in range(1, 7) if f"layer {k}" in names]
        for name, (m, tok, fwd, layer) in convergence.workloads(
            layers, with_classifier=False
        ).items():
            built[name] = Workload(name, m, tok, fwd, layer)
        minilm = built["pooled"]
        if "layers1-3" in names:
            built["layers1-3"] = first_layers(minilm.model, minilm.tokenizer, 3)
    if {"logits", "target logit"} & set(names):
        clf, tok = load_classifier(classifier)

        def logits(ids: Tensor, mask: Tensor) -> Tensor:
            return clf(input_ids=ids, attention_mask=mask).logits

        built["logits"] = Workload("logits", clf, tok, logits)
        built["target logit"] = Workload(
            "target logit", clf, tok, logits, lig_scalar=as_is, predicted_target=True
        )
    return [built[n] for n in names]


def encode(w: Workload, sentences: Sequence[str]) -> tuple[Tensor, Tensor]:
    """Token ids and attention mask of ``sentences``, padded to the longest."""
    enc = w.tokenizer(list(sentences), return_tensors="pt", padding=True)
    return enc["input_ids"], enc["attention_mask"]


def state_std(w: Workload) -> Tensor:
    """σ_S of the workload's state over SST-2 dev sentences 1-100 (the same for all)."""
    ids, mask = encode(w, [s for s, _ in sst2_dev(STD_SENTENCES)])
    target = w.targets(ids, mask)
    return estimate_state_std(
        w.forward, ids, (mask,), target=target, state_layer=w.state_layer, attention_mask=mask
    )


def ours(
    w: Workload,
    std: Tensor,
    ids: Tensor,
    mask: Tensor,
    target: list[int] | None,
    config: Any,
    seed: int = 0,
    internal_batch_size: int | None = None,
) -> PerturbationEntropyResult:
    """One call of our estimator on the batch (its warnings off: the fractions say it)."""
    lpe = LayerPerturbationEntropyAttribution(w.forward, embeddings_of(w.model))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return lpe.explain(
            ids,
            target=target,
            additional_forward_args=(mask,),
            attention_mask=mask,
            state_layer=w.state_layer,
            state_std=std,
            config=config,
            seed=seed,
            internal_batch_size=internal_batch_size,
        )


def run_lig(
    w: Workload, std: Tensor, ids: Tensor, mask: Tensor, target: list[int] | None
) -> Tensor:
    """|LayerIntegratedGradients(n_steps=50)| per token, from an all-pad baseline."""

    def scalar(i: Tensor, m: Tensor) -> Tensor:
        return w.lig_scalar(w.state(i, m), m, std)

    lig = LayerIntegratedGradients(scalar, embeddings_of(w.model))
    base = torch.full_like(ids, w.tokenizer.pad_token_id)
    attr = lig.attribute(
        ids, baselines=base, target=target, additional_forward_args=(mask,), n_steps=LIG_STEPS
    )
    return attr.sum(-1).abs()


def same_sigma(a: PerturbationEntropyResult, b: PerturbationEntropyResult) -> dict[str, Any]:
    """Whether two results' log σ agree bit for bit (NaN where both are NaN), by how much
    they differ, and whether either saw the model's round-off depend on the batch's shape
    (``estimate.batch_dependent``: the only way two chunkings of one call may differ)."""
    x, y = a.estimate.log_sigma, b.estimate.log_sigma
    nan = x.isnan()
    equal = torch.equal(nan, y.isnan()) and torch.equal(x[~nan], y[~nan])
    diff = (x - y).abs().nan_to_num(0.0)
    seen = bool(a.estimate.batch_dependent.any() or b.estimate.batch_dependent.any())
    return {
        "sigma_bit_equal": equal,
        "max_abs_dlogsigma": float(diff.max()),
        "batch_dependent": seen,
    }


class Measured(NamedTuple):
    """:func:`measure`'s summary row, our result and |IG| per token."""

    row: dict[str, Any]
    result: PerturbationEntropyResult
    ig: Tensor


def measure(
    w: Workload,
    std: Tensor,
    sentences: Sequence[str],
    config: Any,
    repeats: int = 1,
    internal_batch_size: int | None = None,
) -> Measured:
    """Time both methods on ``sentences`` (a warm-up first when ``repeats`` > 1); on a
    single run (the batch), also their peak memory (:func:`peak_memory`)."""
    ids, mask = encode(w, sentences)
    target = w.targets(ids, mask)

    def run_ours(cfg: Any = config, size: int | None = None) -> PerturbationEntropyResult:
        return ours(w, std, ids, mask, target, cfg, internal_batch_size=size)

    def run_ig() -> Tensor:
        return run_lig(w, std, ids, mask, target)

    if repeats > 1:  # warm-up
        run_ours()
        run_ig()
    res, t_ours = timed(run_ours, repeats)
    ig, t_lig = timed(run_ig, repeats)
    n = len(sentences)
    row: dict[str, Any] = {
        "sentences": n,
        "ours_seconds_per_sentence": t_ours / n,
        "lig_seconds_per_sentence": t_lig / n,
        "ratio": t_ours / t_lig,
        "converged": float(res.converged.float().mean()),
        "evaluations_per_sentence": float(res.estimate.evaluations.float().mean()),
    }
    if repeats == 1:
        row |= peak_memory(run_ours, run_ig, config, internal_batch_size)
    return Measured(row, res, ig)


def peak_memory(
    run_ours: Callable[..., PerturbationEntropyResult],
    run_ig: Callable[[], Tensor],
    config: Any,
    internal_batch_size: int | None,
) -> dict[str, Any]:
    """Peak memory of one call of each method, in calls of their own (releasing freed
    memory first slows a call down, so these are not the timed ones).

    Ours is measured on a two-iteration run of ``config``: its largest chunks of copies
    (the projections, then every example's draws) come in the first iterations, and
    later ones only shrink as examples stop, so the peak does not depend on how many
    iterations run. With ``internal_batch_size``, the bounded call's peak too, and
    whether its σ equal the unbounded call's bit for bit (same seed).
    """
    short = config
    if isinstance(config, FixedPointConfig):
        short = replace(config, max_iter=2, min_iter=2)
    full, mem_ours = peak_rss_increase(lambda: run_ours(short))
    row: dict[str, Any] = {
        "peak_mb_ours": mem_ours / MB,
        "peak_mb_lig": peak_rss_increase(run_ig)[1] / MB,
    }
    if internal_batch_size is not None:
        bounded, mem = peak_rss_increase(lambda: run_ours(short, internal_batch_size))
        row["internal_batch"] = {
            "size": internal_batch_size,
            "peak_mb": mem / MB,
            **same_sigma(full, bounded),
        }
    return row


class Configs(NamedTuple):
    """The default, the reference algorithm and the high-precision optimum."""

    default: Any
    reference: Any
    high_precision: Any


def tutorial_accuracy(
    w: Workload, std: Tensor, tut: Measured, cfgs: Configs, prior: dict[str, Any]
) -> dict[str, Any]:
    """DEFAULT and |IG| against the two-seed high-precision optimum on the tutorial."""
    ids, mask = encode(w, [TUTORIAL_SENTENCE])
    if "hp_log_sigma_seeds" in prior:  # measured when the optima were computed
        hp = [torch.tensor([row]) for row in prior["hp_log_sigma_seeds"]]
        agreement = prior["hp_seed_agreement"]
    else:
        target = w.targets(ids, mask)
        runs = [ours(w, std, ids, mask, target, cfgs.high_precision, s) for s in HP_SEEDS]
        hp = [r.estimate.log_sigma for r in runs]
        agreement = accuracy(hp[0], hp[1], mask)
    ref = (hp[0] + hp[1]) / 2
    return {
        "hp_log_sigma_seeds": [h[0].tolist() for h in hp],
        "hp_seed_agreement": agreement,
        "default_vs_hp": accuracy(tut.result.estimate.log_sigma, ref, mask),
        "lig_spearman_vs_hp": spearman(tut.ig[0], -ref[0]),
        "sigma_high_precision": ref[0].exp().tolist(),
        "sigma_default": tut.result.estimate.sigma[0].tolist(),
    }


def reference_accuracy(w: Workload, std: Tensor, tut: Measured, cfgs: Configs) -> dict[str, Any]:
    """The reference algorithm on the tutorial: seconds, error against the optimum."""
    ids, mask = encode(w, [TUTORIAL_SENTENCE])
    ref_log = torch.tensor(tut.row["hp_log_sigma_seeds"]).mean(0, keepdim=True)
    res, t = timed(lambda: ours(w, std, ids, mask, w.targets(ids, mask), cfgs.reference))
    speedup = t / tut.row["ours_seconds_per_sentence"]
    return {
        "seconds": t,
        "default_speedup": speedup,
        **accuracy(res.estimate.log_sigma, ref_log, mask),
    }


def subset_accuracy(
    w: Workload,
    std: Tensor,
    batch: Measured,
    sentences: Sequence[str],
    cfgs: Configs,
    k: int,
    prior: dict[str, Any],
) -> dict[str, Any]:
    """DEFAULT on the batch against one high-precision run on its first ``k`` sentences."""
    ids, mask = encode(w, sentences[:k])  # padded to the longest of the k
    stored = prior.get("hp_subset_log_sigma") or []
    if len(stored) >= k:
        hp = torch.tensor(stored[:k])
    else:
        target = w.targets(ids, mask)
        hp = ours(w, std, ids, mask, target, cfgs.high_precision, seed=1).estimate.log_sigma
    return {
        "hp_subset": k,
        "hp_subset_log_sigma": hp.tolist(),
        "default_vs_hp_on_subset": accuracy(batch.result.estimate.log_sigma[:k], hp, mask),
    }


def run_workload(
    w: Workload, args: argparse.Namespace, cfgs: Configs, prior: dict[str, Any]
) -> dict[str, Any]:
    """σ_S, then the tutorial and the batch, then the accuracy asked for."""
    std = state_std(w)
    tut = measure(w, std, [TUTORIAL_SENTENCE], cfgs.default, repeats=args.repeats)
    sentences = [s for s, _ in sst2_dev(args.batch, start=STD_SENTENCES)]
    batch = measure(w, std, sentences, cfgs.default, internal_batch_size=args.internal_batch_size)
    tut.row["tokens"] = w.tokenizer.convert_ids_to_tokens(encode(w, [TUTORIAL_SENTENCE])[0][0])
    stored = prior.get("tutorial", {})  # optima already computed are always used
    if w.name == "layers1-3" or w.name in args.hp_workloads or "hp_log_sigma_seeds" in stored:
        tut.row.update(tutorial_accuracy(w, std, tut, cfgs, stored))
    if w.name == "layers1-3":
        tut.row["reference"] = reference_accuracy(w, std, tut, cfgs)
        k = min(args.hp_subset, len(sentences))
        batch.row.update(subset_accuracy(w, std, batch, sentences, cfgs, k, prior.get("batch", {})))
    return {"tutorial": tut.row, "batch": batch.row}


def prior_optima(previous: dict[str, Any], name: str) -> dict[str, Any]:
    """A workload's entry in an earlier ``--out`` file (also the single-workload layout)."""
    if "workloads" in previous:
        entry: dict[str, Any] = previous["workloads"].get(name, {})
        return entry
    return previous if name == "layers1-3" else {}


def _accuracy_cell(r: dict[str, Any]) -> str:
    t, b = r["tutorial"], r["batch"]
    if "default_vs_hp" not in t:
        return "—"
    cell = (
        f"{t['default_vs_hp']['mean_abs_dlogsigma']:.4f} "
        f"(seeds {t['hp_seed_agreement']['mean_abs_dlogsigma']:.4f})"
    )
    if "default_vs_hp_on_subset" in b:
        cell += f"; batch {b['default_vs_hp_on_subset']['mean_abs_dlogsigma']:.4f}"
    return cell


def table(results: dict[str, dict[str, Any]]) -> str:
    """Markdown tables of :func:`run_workload`'s results (seconds per sentence, MB)."""
    n = next(iter(results.values()))["batch"]["sentences"] if results else 0
    size = next(iter(results.values()))["batch"].get("internal_batch", {}).get("size", "—")
    lines = [
        f"| workload | tutorial: ours s | LIG s | ratio | batch {n}: ours s/sent. | LIG s/sent. "
        f"| ratio | converged | evals/sent. | peak MB ours / LIG / ours with "
        f"internal_batch_size={size} | mean abs Δ log σ vs HP |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for name, r in results.items():
        t, b = r["tutorial"], r["batch"]
        ib = b.get("internal_batch", {})
        lines.append(
            f"| {name} | {t['ours_seconds_per_sentence']:.3f} | "
            f"{t['lig_seconds_per_sentence']:.3f} | {t['ratio']:.2f} "
            f"| {b['ours_seconds_per_sentence']:.3f} | {b['lig_seconds_per_sentence']:.3f} "
            f"| {b['ratio']:.2f} | {b['converged']:.0%} | {b['evaluations_per_sentence']:.0f} "
            f"| {b['peak_mb_ours']:.0f} / {b['peak_mb_lig']:.0f} "
            f"/ {ib.get('peak_mb', math.nan):.0f} "
            f"| {_accuracy_cell(r)} |"
        )
    return "\n".join(lines)


def notes(results: dict[str, dict[str, Any]]) -> str:
    """The lines under the table: the bounded calls and the reference algorithm."""
    lines = []
    for name, r in results.items():
        ib = r["batch"].get("internal_batch")
        if ib:
            same = "σ bit-equal" if ib["sigma_bit_equal"] else "σ differ"
            if ib.get("batch_dependent"):
                same += " (the model's round-off depends on the batch's shape here)"
            lines.append(
                f"{name}: internal_batch_size={ib['size']}: peak {ib['peak_mb']:.0f} MB, "
                f"{same} (max |Δ log σ| {ib['max_abs_dlogsigma']:.2e})"
            )
        ref = r["tutorial"].get("reference")
        if ref:
            lines.append(
                f"{name}: reference algorithm on the tutorial {ref['seconds']:.2f} s "
                f"(the default is {ref['default_speedup']:.0f}x faster), mean |Δ log σ| "
                f"{ref['mean_abs_dlogsigma']:.4f} vs HP"
            )
    return "\n".join(lines)


def parse(argv: list[str] | None) -> argparse.Namespace:
    """The command line, with the workload lists split and the quick defaults filled in."""
    p = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    p.add_argument("--workloads", default=",".join(WORKLOADS), help="comma list (default all)")
    p.add_argument("--batch", type=int, default=None, help="SST-2 dev sentences (32; quick 4)")
    p.add_argument("--repeats", type=int, default=None, help="tutorial runs (3; quick 1)")
    p.add_argument("--hp-subset", type=int, default=4, help="layers1-3 batch sentences given HP")
    p.add_argument("--hp-from", type=Path, default=None, help="reuse the optima of an --out")
    p.add_argument("--hp-workloads", default="", help="comma list given HP on the tutorial")
    p.add_argument("--internal-batch-size", type=int, default=64)
    p.add_argument("--classifier", type=Path, default=None, help="SST-2 classifier folder")
    p.add_argument("--threads", type=int, default=None, help="torch threads")
    p.add_argument("--quick", action="store_true", help="tiny configs: checks the script runs")
    p.add_argument("--out", type=Path, default=None, help="write the numbers as JSON here")
    args = p.parse_args(argv)
    args.workloads = [n.strip() for n in args.workloads.split(",") if n.strip()]
    args.hp_workloads = [n.strip() for n in args.hp_workloads.split(",") if n.strip()]
    unknown = set(args.workloads + args.hp_workloads) - set(WORKLOADS)
    if unknown:
        p.error(f"unknown workloads {sorted(unknown)}; choose from {', '.join(WORKLOADS)}")
    args.batch = args.batch or (4 if args.quick else 32)
    args.repeats = args.repeats or (1 if args.quick else 3)
    return args


def configs(quick: bool) -> Configs:
    """The estimators' configurations; ``quick``: a few iterations, for a smoke run."""
    if not quick:
        return Configs(DEFAULT, REFERENCE, HIGH_PRECISION)
    return Configs(
        replace(DEFAULT, max_iter=3),
        replace(REFERENCE, steps=20),
        replace(HIGH_PRECISION, steps=20, n_samples=4),
    )


def main(argv: list[str] | None = None) -> int:
    args = parse(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    cfgs = configs(args.quick)
    previous = json.loads(args.hp_from.read_text()) if args.hp_from else {}
    results: dict[str, dict[str, Any]] = {}
    for w in workloads(args.workloads, args.classifier):
        results[w.name] = run_workload(w, args, cfgs, prior_optima(previous, w.name))
        print(table({w.name: results[w.name]}).splitlines()[-1], flush=True)
    print(table(results), notes(results), sep="\n")
    if args.out is not None:
        meta = {
            "date": time.strftime("%Y-%m-%d"),
            "machine": f"{platform.machine()}, {torch.get_num_threads()} torch threads",
            "torch": torch.__version__,
            "quick": args.quick,
            "command": "python -m comparisons.benchmarks.speed "
            + " ".join(sys.argv[1:] if argv is None else argv),
            "default": repr(cfgs.default),
        }
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps({"meta": meta, "workloads": results}, indent=2) + "\n")
        print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
