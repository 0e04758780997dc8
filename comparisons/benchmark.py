"""Speed and accuracy of the σ estimators on the real MiniLM (issue: fast and converged).

Φ = the first 3 encoder layers of the packaged all-MiniLM-L6-v2 (a truncated copy of the
model), noise on the output of ``model.embeddings``, σ_S from 100 SST-2 dev sentences.
In one process it times and scores, on the tutorial sentence and on a padded batch of
SST-2 dev sentences:

* the default estimator (:data:`captum_perturb.DEFAULT`),
* the reference algorithm (:data:`captum_perturb.REFERENCE`: Adam, 1 sample, 5,000 steps),
* Captum ``LayerIntegratedGradients(n_steps=50)`` on the same Φ (its scalar output: the
  normalised squared norm of the state), for cost,

against a high-precision optimum (:data:`captum_perturb.HIGH_PRECISION`, two seeds).
Accuracy: mean |Δ log σ| and Spearman ρ over tokens (for IG: ρ between |IG| and −log σ).
Speed is reported as ratios measured in this run. Not a test: run it by hand,
``python -m comparisons.benchmark --out docs/benchmark.json``.
"""

from __future__ import annotations

import argparse
import copy
import json
import platform
import statistics
import time
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import Any

import torch
from captum.attr import LayerIntegratedGradients

from captum_perturb import (
    DEFAULT,
    HIGH_PRECISION,
    REFERENCE,
    LayerPerturbationEntropyAttribution,
    PerturbationEntropyResult,
    estimate_state_std,
)
from comparisons.resources import TUTORIAL_SENTENCE, load_encoder, sst2_dev


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


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, default=32, help="SST-2 dev sentences in the batch")
    parser.add_argument(
        "--hp-subset", type=int, default=4, help="batch sentences given a high-precision run"
    )
    parser.add_argument(
        "--quick", action="store_true", help="tiny step counts: checks the script runs"
    )
    parser.add_argument("--out", type=Path, default=None, help="write the numbers as JSON here")
    parser.add_argument(
        "--hp-from",
        type=Path,
        default=None,
        help="reuse the high-precision optima of an earlier --out JSON (most of the run time)",
    )
    args = parser.parse_args(argv)

    reference_cfg, hp_cfg = REFERENCE, HIGH_PRECISION
    if args.quick:
        reference_cfg = replace(REFERENCE, steps=20)
        hp_cfg = replace(HIGH_PRECISION, steps=20, n_samples=4)

    model, tokenizer = load_encoder()
    phi = copy.deepcopy(model)
    phi.encoder.layer = phi.encoder.layer[:3]  # Φ = the first 3 encoder layers

    def forward(ids: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        return phi(input_ids=ids, attention_mask=mask).last_hidden_state

    corpus = tokenizer([s for s, _ in sst2_dev(100)], return_tensors="pt", padding=True)
    std = estimate_state_std(
        forward,
        corpus["input_ids"],
        (corpus["attention_mask"],),
        attention_mask=corpus["attention_mask"],
    )
    lpe = LayerPerturbationEntropyAttribution(forward, phi.embeddings)

    def explain(
        ids: torch.Tensor, mask: torch.Tensor, config: Any, seed: int = 0
    ) -> PerturbationEntropyResult:
        return lpe.explain(
            ids,
            additional_forward_args=(mask,),
            attention_mask=mask,
            state_std=std,
            config=config,
            seed=seed,
        )

    def scalar(ids: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        s = forward(ids, mask) / std
        m = mask[..., None].to(s.dtype)
        return (m * s.square()).sum((1, 2)) / (m.sum((1, 2)) * s.shape[-1])

    lig = LayerIntegratedGradients(scalar, phi.embeddings)

    def run_lig(ids: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        base = torch.full_like(ids, tokenizer.pad_token_id)
        attr = lig.attribute(ids, baselines=base, additional_forward_args=(mask,), n_steps=50)
        return attr.sum(-1).abs()

    report: dict[str, Any] = {
        "date": time.strftime("%Y-%m-%d"),
        "machine": f"{platform.machine()}, {torch.get_num_threads()} torch threads",
        "torch": torch.__version__,
        "quick": args.quick,
    }

    # --- the tutorial sentence -------------------------------------------------------
    enc = tokenizer([TUTORIAL_SENTENCE], return_tensors="pt")
    ids, mask = enc["input_ids"], enc["attention_mask"]
    explain(ids, mask, DEFAULT)  # warm-up
    previous = json.loads(args.hp_from.read_text()) if args.hp_from else {}
    if "hp_log_sigma_seeds" in previous.get("tutorial", {}):
        hp_logs = [torch.tensor([row]) for row in previous["tutorial"]["hp_log_sigma_seeds"]]
    else:
        hp_logs = [explain(ids, mask, hp_cfg, seed=s).estimate.log_sigma for s in (1, 2)]
    ref_log = (hp_logs[0] + hp_logs[1]) / 2
    default, t_default = timed(lambda: explain(ids, mask, DEFAULT), repeat=5)
    reference, t_reference = timed(lambda: explain(ids, mask, reference_cfg))
    run_lig(ids, mask)  # warm-up
    ig, t_lig = timed(lambda: run_lig(ids, mask), repeat=5)
    tutorial = {
        "tokens": tokenizer.convert_ids_to_tokens(ids[0]),
        # measured when the optima were computed (a reused file keeps its own)
        "hp_seed_agreement": previous["tutorial"]["hp_seed_agreement"]
        if "hp_log_sigma_seeds" in previous.get("tutorial", {})
        else accuracy(hp_logs[0], hp_logs[1], mask),
        "hp_log_sigma_seeds": [h[0].tolist() for h in hp_logs],
        "default": {
            "seconds": t_default,
            "evaluations": default.estimate.n_evaluations,
            "iterations": default.estimate.n_iter,
            "converged": bool(default.converged[0]),
            **accuracy(default.estimate.log_sigma, ref_log, mask),
        },
        "reference": {
            "seconds": t_reference,
            **accuracy(reference.estimate.log_sigma, ref_log, mask),
        },
        "layer_integrated_gradients": {"seconds": t_lig, "spearman": spearman(ig[0], -ref_log[0])},
        "sigma_high_precision": ref_log[0].exp().tolist(),
        "sigma_default": default.estimate.sigma[0].tolist(),
    }
    tutorial["speedup_vs_reference"] = t_reference / t_default
    tutorial["cost_vs_lig"] = t_default / t_lig
    report["tutorial"] = tutorial

    # --- a padded batch of SST-2 dev sentences ---------------------------------------
    sentences = [s for s, _ in sst2_dev(args.batch, start=100)]
    benc = tokenizer(sentences, return_tensors="pt", padding=True)
    bids, bmask = benc["input_ids"], benc["attention_mask"]
    batch_default, t_bdefault = timed(lambda: explain(bids, bmask, DEFAULT))
    _, t_blig = timed(lambda: run_lig(bids, bmask))
    k = min(args.hp_subset, len(sentences))
    width = int(bmask[:k].sum(1).max())  # drop the columns that are padding for all k
    sub_mask = bmask[:k, :width]
    if previous.get("batch", {}).get("hp_subset_log_sigma"):
        sub_hp = torch.tensor(previous["batch"]["hp_subset_log_sigma"])
    else:
        sub_hp = explain(bids[:k, :width], sub_mask, hp_cfg, seed=1).estimate.log_sigma
    batch = {
        "sentences": len(sentences),
        "default_seconds_per_sentence": t_bdefault / len(sentences),
        "lig_seconds_per_sentence": t_blig / len(sentences),
        "cost_vs_lig": t_bdefault / t_blig,
        "converged": int(batch_default.converged.sum()),
        "hp_subset": k,
        "default_vs_hp_on_subset": accuracy(batch_default.estimate.log_sigma[:k], sub_hp, sub_mask),
        "hp_subset_log_sigma": sub_hp.tolist(),
    }
    report["batch"] = batch

    t = report["tutorial"]
    print(f"tutorial sentence ({len(t['tokens'])} tokens), Φ = MiniLM layers 1-3")
    print(
        "  high precision, two seeds:  mean |Δ log σ| "
        f"{t['hp_seed_agreement']['mean_abs_dlogsigma']:.4f}"
    )
    for name in ("reference", "default"):
        r = t[name]
        print(
            f"  {name:<10} {r['seconds']:8.3f} s  mean |Δ log σ| {r['mean_abs_dlogsigma']:.4f}  "
            f"Spearman {r['spearman']:.3f}"
        )
    print(
        f"  LIG(50)    {t['layer_integrated_gradients']['seconds']:8.3f} s  "
        f"Spearman(|IG|, -log σ) {t['layer_integrated_gradients']['spearman']:.3f}"
    )
    print(
        f"  default is {t['speedup_vs_reference']:.0f}x faster than the reference, "
        f"{t['cost_vs_lig']:.2f}x the cost of LIG"
    )
    print(f"batch of {batch['sentences']} SST-2 dev sentences (padded)")
    print(
        f"  default {batch['default_seconds_per_sentence']:.3f} s/sentence, LIG(50) "
        f"{batch['lig_seconds_per_sentence']:.3f} s/sentence: {batch['cost_vs_lig']:.2f}x; "
        f"converged {batch['converged']}/{batch['sentences']}"
    )
    acc = batch["default_vs_hp_on_subset"]
    print(
        f"  default vs high precision on {k} of them: "
        f"mean |Δ log σ| {acc['mean_abs_dlogsigma']:.4f}, "
        f"Spearman {acc['spearman']:.3f}"
    )
    if args.out is not None:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(report, indent=2), encoding="utf-8")
        print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
