"""Does the default estimator converge, and does it rank something, on the workloads users bring?

For SST-2 dev sentences in padded batches (``attention_mask=`` given, every real token its
own group, noise on the output of ``model.embeddings``), one
:class:`~captum_perturb.LayerPerturbationEntropyAttribution` call per batch with
:data:`~captum_perturb.DEFAULT`, on:

* ``logits``: the SST-2 fine-tuned MiniLM's two logits (``comparisons.models.finetune``),
* ``pooled``: the packaged MiniLM's mean-pooled sentence embedding,
* ``layer k``: the packaged MiniLM's layer ``k`` full ``[tokens × 384]`` state.

σ_S of every state is estimated on SST-2 ``train.tsv`` sentences (never dev). Per workload
it reports the fraction of sentences that converged, that have every token at σ_max
(saturated), whose channel score ranks nothing (an abstention: all scores equal) and whose
paper score ranks nothing (all zero), with evaluations and seconds per sentence. Not a
test: ``python -m comparisons.benchmarks.convergence --n 100 --out docs/convergence.json``.
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import time
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from captum_perturb import (
    DEFAULT,
    FixedPointConfig,
    LayerPerturbationEntropyAttribution,
    PerturbationEntropyResult,
    estimate_state_std,
)
from comparisons.models.finetune import load_classifier
from comparisons.models.resources import data_dir, load_encoder, read_sentences, sst2_dev

Forward = Callable[[Tensor, Tensor], Tensor]


def mean_pool(hidden: Tensor, mask: Tensor) -> Tensor:
    """Mean of the token states over real tokens, ``(B, D)``."""
    m = mask.unsqueeze(-1).to(hidden.dtype)
    return (hidden * m).sum(1) / m.sum(1).clamp_min(1)


def workloads(
    layers: list[int], with_classifier: bool, classifier: Path | None = None
) -> dict[str, tuple[nn.Module, Any, Forward, Any]]:
    """``name -> (model, tokenizer, forward, state_layer)`` for every workload; the
    classifier's folder is ``classifier``, else the fine-tuned SST-2 MiniLM (trained when
    missing)."""
    model, tok = load_encoder()
    out: dict[str, tuple[nn.Module, Any, Forward, Any]] = {}
    if with_classifier:
        clf, ctok = load_classifier(classifier)
        out["logits"] = (
            clf,
            ctok,
            lambda ids, mask: clf(input_ids=ids, attention_mask=mask).logits,
            None,
        )
    out["pooled"] = (
        model,
        tok,
        lambda ids, mask: mean_pool(
            model(input_ids=ids, attention_mask=mask).last_hidden_state, mask
        ),
        None,
    )
    for k in layers:
        out[f"layer {k}"] = (
            model,
            tok,
            lambda ids, mask: model(input_ids=ids, attention_mask=mask).last_hidden_state,
            model.encoder.layer[k - 1],
        )
    return out


def embeddings_of(model: nn.Module) -> nn.Module:
    """The embedding module (word + position + segment, after LayerNorm) of a BERT-like model."""
    base = getattr(model, "bert", model)
    emb = base.embeddings
    assert isinstance(emb, nn.Module)
    return emb


def corpus_std(spec: tuple[nn.Module, Any, Forward, Any], texts: list[str]) -> Tensor:
    """σ_S of a workload's state over ``texts`` (padded, ``attention_mask=`` given)."""
    _, tok, forward, state_layer = spec
    corpus = tok(texts, return_tensors="pt", padding=True)
    return estimate_state_std(
        forward,
        corpus["input_ids"],
        (corpus["attention_mask"],),
        layer=state_layer,
        attention_mask=corpus["attention_mask"],
    )


def _explain_batch(
    lpe: LayerPerturbationEntropyAttribution,
    tok: Any,
    texts: list[str],
    state_layer: Any,
    std: Tensor,
    config: FixedPointConfig,
    seed: int,
    exclude_special: bool,
) -> PerturbationEntropyResult:
    """One padded batch through ``lpe.explain`` (warnings silenced)."""
    enc = tok(
        texts,
        return_tensors="pt",
        padding=True,
        return_special_tokens_mask=True,
    )
    # the perturbed (and counted) tokens; the model always sees the real mask
    perturbed = enc["attention_mask"]
    if exclude_special:
        perturbed = perturbed * (1 - enc["special_tokens_mask"])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return lpe.explain(
            enc["input_ids"],
            additional_forward_args=(enc["attention_mask"],),
            attention_mask=perturbed,
            state_layer=state_layer,
            state_std=std,
            config=config,
            seed=seed,
        )


def _sentence_rows(res: PerturbationEntropyResult) -> list[dict[str, Any]]:
    """Per-sentence convergence and abstention flags of one explained batch."""
    est = res.estimate
    present = est.group_size > 0
    score = est.score
    paper = est.log_ratio
    rows: list[dict[str, Any]] = []
    for b in range(score.shape[0]):
        p = present[b]
        s = score[b][p]
        rows.append(
            {
                "converged": bool(est.converged[b]),
                "saturated": bool(est.saturated[b][p].all()),
                "abstains": bool((s == s[0]).all()),
                "paper_abstains": bool((paper[b][p] == 0).all()),
                "evaluations": int(est.evaluations[b]),
                "max_se": float(res.std_error[b][p].max()),
            }
        )
    return rows


def _summary(name: str, rows: list[dict[str, Any]], seconds: float) -> dict[str, Any]:
    """The workload's fractions and per-sentence costs over ``rows``."""
    n = len(rows)

    def frac(key: str) -> float:
        return sum(r[key] for r in rows) / n

    return {
        "workload": name,
        "sentences": n,
        "converged": frac("converged"),
        "saturated": frac("saturated"),
        "abstains": frac("abstains"),
        "paper_abstains": frac("paper_abstains"),
        "evaluations_per_sentence": sum(r["evaluations"] for r in rows) / n,
        "seconds_per_sentence": seconds / n,
        "mean_max_score_se": sum(r["max_se"] for r in rows) / n,
    }


def run(
    name: str,
    spec: tuple[nn.Module, Any, Forward, Any],
    dev: list[str],
    train: list[str],
    config: FixedPointConfig,
    batch: int,
    exclude_special: bool = False,
) -> dict[str, Any]:
    """Explain ``dev`` in batches and summarise convergence and abstention."""
    model, tok, forward, state_layer = spec
    std = corpus_std(spec, train)
    lpe = LayerPerturbationEntropyAttribution(forward, embeddings_of(model))
    rows: list[dict[str, Any]] = []
    start = time.perf_counter()
    for i in range(0, len(dev), batch):
        res = _explain_batch(
            lpe, tok, dev[i : i + batch], state_layer, std, config, i, exclude_special
        )
        print(
            f"{name}: {i + len(res.estimate.converged)}/{len(dev)} sentences, "
            f"{time.perf_counter() - start:.0f} s",
            file=sys.stderr,
            flush=True,
        )
        rows.extend(_sentence_rows(res))
    return _summary(name, rows, time.perf_counter() - start)


def table(results: list[dict[str, Any]]) -> str:
    """A Markdown table of :func:`run`'s summaries."""
    head = (
        "| workload | n | converged | all at σ_max | abstains (channel) | abstains (paper) "
        "| evaluations / sentence | s / sentence |\n|---|---|---|---|---|---|---|---|"
    )
    lines = [head]
    for r in results:
        lines.append(
            f"| {r['workload']} | {r['sentences']} | {r['converged']:.0%} | {r['saturated']:.0%} "
            f"| {r['abstains']:.0%} | {r['paper_abstains']:.0%} "
            f"| {r['evaluations_per_sentence']:.0f} | {r['seconds_per_sentence']:.2f} |"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=100, help="SST-2 dev sentences (the first n)")
    parser.add_argument("--corpus", type=int, default=200, help="train sentences for σ_S")
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--layers", default="1,2,3,4,5,6")
    parser.add_argument("--workloads", default=None, help="comma-separated names (default all)")
    parser.add_argument("--norm", choices=("rms", "max"), default=DEFAULT.norm)
    parser.add_argument("--max-iter", type=int, default=DEFAULT.max_iter)
    parser.add_argument("--no-classifier", action="store_true")
    parser.add_argument(
        "--exclude-special",
        action="store_true",
        help="leave [CLS]/[SEP] unperturbed (as the comparison study does)",
    )
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    layers = [int(k) for k in args.layers.split(",") if k]
    specs = workloads(layers, with_classifier=not args.no_classifier)
    chosen = list(specs) if args.workloads is None else args.workloads.split(",")
    dev = [s for s, _ in sst2_dev(args.n)]
    train_rows = read_sentences(data_dir() / "sst2" / "train.tsv")
    gen = torch.Generator().manual_seed(0)
    pick = torch.randperm(len(train_rows), generator=gen)[: args.corpus].tolist()
    train = [train_rows[i][0] for i in pick]
    config = FixedPointConfig(**{**DEFAULT.__dict__, "norm": args.norm, "max_iter": args.max_iter})
    results = []
    for name in chosen:
        results.append(run(name, specs[name], dev, train, config, args.batch, args.exclude_special))
        print(table(results[-1:]).splitlines()[-1], flush=True)
    print(table(results))
    if args.out is not None:
        meta = {
            "date": time.strftime("%Y-%m-%d"),
            "machine": f"{platform.machine()}, {torch.get_num_threads()} threads",
            "command": "python -m comparisons.benchmarks.convergence "
            + " ".join(sys.argv[1:] if argv is None else argv),
            "config": repr(config),
        }
        args.out.write_text(json.dumps({"meta": meta, "results": results}, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
