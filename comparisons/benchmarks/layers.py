"""Benchmark: all layers of MiniLM in one call against the last layer alone.

Explaining the embedding output and all 6 blocks of the packaged MiniLM (7 layers) with
:func:`captum_perturb.explain_layers` is timed against explaining the last layer alone
(the same function with ``layers=[6]``) and against 7 separate single-layer calls, in one
process, on the tutorial sentence and on a padded batch of SST-2 dev sentences. σ_S of
every layer comes from 100 other dev sentences. Also reports the model evaluations each
layer needed and the transformer blocks run (a copy explaining layer ``k`` runs ``k``
blocks): the cost with perfect batching, against which the seconds can be read. Prints
the ratios and writes them as JSON::

    python -m comparisons.benchmarks.layers --repeats 5 --batch 32 --out docs/layer_benchmark.json
"""

from __future__ import annotations

import argparse
import datetime
import json
import platform
import time
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from captum_perturb import LAYERWISE, LayerInformation, explain_layers, layer_state_std
from comparisons.models.resources import TUTORIAL_SENTENCE, load_encoder, sst2_dev


def _timed(fn: Callable[[], LayerInformation], repeats: int) -> tuple[float, LayerInformation]:
    best, out = float("inf"), None
    for _ in range(repeats):
        start = time.perf_counter()
        out = fn()
        best = min(best, time.perf_counter() - start)
    assert out is not None
    return best, out


def _per_layer(info: LayerInformation) -> dict[str, float]:
    """Mean model evaluations per sentence, per explained layer."""
    assert info.evaluations is not None
    means = info.evaluations.double().mean(0).tolist()
    return {str(k): m for k, m in zip(info.layers, means, strict=True)}


def _block_evaluations(info: LayerInformation) -> int:
    """Transformer blocks run in total: a copy explaining layer ``k`` runs ``k`` blocks.

    The cost of the call with perfect batching and no overhead: the floor that no
    batching or staircase can beat once the draws are fixed.
    """
    assert info.evaluations is not None
    depth = torch.tensor(info.layers, dtype=torch.long)
    return int((info.evaluations * depth).sum())


def compare(
    model: Any,
    tok: Any,
    sentences: list[str],
    std: dict[int, torch.Tensor],
    repeats: int,
    batch_size: int,
) -> dict[str, Any]:
    """Seconds for all layers at once, the last layer alone and 7 separate calls."""
    enc = tok(sentences, return_tensors="pt", padding=True)
    n_layers = len(std) - 1

    def run(layers: list[int] | None, seed: int) -> LayerInformation:
        return explain_layers(
            model, enc, layers, state_std=std, seed=seed, internal_batch_size=batch_size
        )

    t_all, info = _timed(lambda: run(None, 0), repeats)
    t_last, last = _timed(lambda: run([n_layers], 1), repeats)
    t_sep = 0.0
    for k in range(n_layers + 1):
        start = time.perf_counter()
        run([k], 2)
        t_sep += time.perf_counter() - start
    cost = _block_evaluations(info)
    mask = info.mask.unsqueeze(1)
    d = (info.sigma[:, -1:].log() - last.sigma.log()).abs()[mask]
    se = torch.sqrt(info.std_error[:, -1:].square() + last.std_error.square())[mask]
    return {
        "sentences": len(sentences),
        "padded_tokens": int(enc["input_ids"].shape[1]),
        "seconds_all_layers": t_all,
        "seconds_last_layer": t_last,
        "seconds_separate_calls": t_sep,
        "ratio_all_to_last": t_all / t_last,
        "ratio_separate_to_last": t_sep / t_last,
        "converged_all": float(info.converged.float().mean()),
        "evaluations_per_sentence_by_layer": _per_layer(info),
        "evaluations_per_sentence_last_alone": _per_layer(last)[str(n_layers)],
        "block_evaluations_all_layers": cost,
        "block_evaluations_last_layer": _block_evaluations(last),
        "ratio_block_evaluations": cost / _block_evaluations(last),
        "last_layer_mean_abs_dlogsigma_joint_vs_alone": float(d.mean()),
        "last_layer_mean_combined_std_error": float(se.mean()),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, default=32, help="SST-2 dev sentences in the batch")
    parser.add_argument("--repeats", type=int, default=2, help="best of N timings")
    parser.add_argument(
        "--copies", type=int, default=512, help="perturbed copies per forward pass (memory)"
    )
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args(argv)
    warnings.filterwarnings("ignore", message=".*constant over the corpus.*")
    model, tok = load_encoder()
    corpus = tok([s for s, _ in sst2_dev(100, start=772)], return_tensors="pt", padding=True)
    std = layer_state_std(model, corpus)
    results: dict[str, Any] = {
        "date": datetime.date.today().isoformat(),
        "machine": f"{platform.machine()}, {torch.get_num_threads()} torch threads",
        "torch": torch.__version__,
        "copies_per_pass": args.copies,
        "estimator": repr(LAYERWISE),
    }
    cases = {
        "tutorial": ([TUTORIAL_SENTENCE], args.repeats),
        "batch": ([s for s, _ in sst2_dev(args.batch)], 1),
    }
    for name, (sentences, repeats) in cases.items():
        r = results[name] = compare(model, tok, sentences, std, repeats, args.copies)
        print(
            f"{name} ({r['sentences']} sentence(s), {r['padded_tokens']} tokens): all 7 layers "
            f"{r['seconds_all_layers']:.2f} s, last layer alone {r['seconds_last_layer']:.2f} s "
            f"-> {r['ratio_all_to_last']:.2f}x (7 separate calls: "
            f"{r['ratio_separate_to_last']:.2f}x); last layer joint vs alone: mean |Δlog σ| "
            f"{r['last_layer_mean_abs_dlogsigma_joint_vs_alone']:.4f} (combined SE "
            f"{r['last_layer_mean_combined_std_error']:.4f})",
            flush=True,
        )
        per = ", ".join(f"{k}: {v:.0f}" for k, v in r["evaluations_per_sentence_by_layer"].items())
        print(
            f"  evaluations per sentence by layer ({per}; last layer alone: "
            f"{r['evaluations_per_sentence_last_alone']:.0f}); blocks run: all layers "
            f"{r['block_evaluations_all_layers']}, last layer alone "
            f"{r['block_evaluations_last_layer']} -> {r['ratio_block_evaluations']:.2f}x",
            flush=True,
        )
    if args.out:
        args.out.write_text(json.dumps(results, indent=2) + "\n", encoding="utf-8")
        print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
