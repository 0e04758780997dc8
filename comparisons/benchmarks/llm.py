"""Speed of the LLM entry point against Captum's LLM methods on the SST-2 GPT-2.

On the first ``n`` prompts of the LLM study (:mod:`comparisons.llm.study`: the same
prompts, greedy answers, σ_S and per-prompt seeds), in one process, the seconds per prompt
of

* ``ours_seq``: :class:`~captum_perturb.LLMPerturbationEntropyAttribution`, ``seq_attr``
  alone (``per_token=False``) — the study's ``ours``;
* ``ours_token_batched``: the same with ``token_attr`` (``per_token=True``, one call);
* ``ours_token_separate``: ``token_attr`` as ``T`` calls, one per answer token, each
  explaining that token alone (``per_token=False``) with the prompt plus the answer's
  prefix as the prompt (decoded and re-tokenised, as a user would) — the cost the batched
  call saves;
* ``layer_ig``: ``LLMGradientAttribution(LayerIntegratedGradients, n_steps=50)``;
* ``feature_ablation``: ``LLMAttribution(FeatureAblation)``, as in the study.

Every method runs once on the first prompt before timing (not counted). Prints medians
and means with their ratios to ``layer_ig`` (the issue's target: ``ours_seq`` at most 1×)
and writes them as JSON. Not a test::

    python -m comparisons.benchmarks.llm --n 10 --recipe full   # writes docs/llm_benchmark.json
"""

from __future__ import annotations

import argparse
import datetime
import json
import platform
import shlex
import statistics
import sys
import time
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from comparisons.llm import study as ls
from comparisons.models.language_model import load_language_model

REFERENCE = "layer_ig"
TARGET_RATIO = 1.0


def _ours_separate(ctx: ls.LLMContext) -> Callable[[ls.LLMExample], Any]:
    """``T`` calls: answer token ``t`` explained alone, after the prompt and ``t`` tokens."""
    from captum.attr import TextTokenInput

    from captum_perturb import LLMPerturbationEntropyAttribution

    llm_attr = LLMPerturbationEntropyAttribution(ctx.model, ctx.tokenizer, state_std=ctx.state_std)
    tok = ctx.tokenizer

    def run(ex: ls.LLMExample) -> Any:
        body = ex.prompt_ids[ex.features].tolist()
        for t in range(len(ex.target)):
            text = tok.decode(body + ex.target[:t].tolist())
            inp = TextTokenInput(text, tok, skip_tokens=[tok.bos_token_id])
            llm_attr.attribute(inp, target=ex.target[t : t + 1], per_token=False, seed=ex.seed)

    return run


def runners(ctx: ls.LLMContext) -> dict[str, Callable[[ls.LLMExample], Any]]:
    """The timed calls, by name (the study's explainers where they are the same)."""
    return {
        "ours_seq": ls.LLM_METHODS["ours"].build(ctx),
        "ours_token_batched": ls.ours(ctx, per_token=True),
        "ours_token_separate": _ours_separate(ctx),
        REFERENCE: ls.LLM_METHODS[REFERENCE].build(ctx),
        "feature_ablation": ls.LLM_METHODS["feature_ablation"].build(ctx),
    }


def time_methods(
    calls: dict[str, Callable[[ls.LLMExample], Any]], examples: list[ls.LLMExample]
) -> dict[str, list[float]]:
    """Seconds of every call on every example, after one untimed run on the first."""
    seconds: dict[str, list[float]] = {name: [] for name in calls}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for fn in calls.values():
            fn(examples[0])
        for ex in examples:
            for name, fn in calls.items():
                start = time.perf_counter()
                fn(ex)
                seconds[name].append(time.perf_counter() - start)
    return seconds


def summary(seconds: dict[str, list[float]]) -> dict[str, dict[str, Any]]:
    """Median, mean and their ratios to :data:`REFERENCE`, per method."""
    ref_median = statistics.median(seconds[REFERENCE])
    ref_mean = statistics.fmean(seconds[REFERENCE])
    out = {}
    for name, values in seconds.items():
        median, mean = statistics.median(values), statistics.fmean(values)
        out[name] = {
            "median_s": median,
            "mean_s": mean,
            "median_vs_layer_ig": median / ref_median,
            "mean_vs_layer_ig": mean / ref_mean,
            "seconds": values,
        }
    return out


def table(rows: dict[str, dict[str, Any]]) -> str:
    """The summary as a fixed-width text table."""
    head = ("method", "median s", "mean s", "× LIG (median)", "× LIG (mean)")
    lines = ["{:22s} {:>9s} {:>9s} {:>15s} {:>13s}".format(*head)]
    for name, r in rows.items():
        lines.append(
            f"{name:22s} {r['median_s']:9.3f} {r['mean_s']:9.3f} "
            f"{r['median_vs_layer_ig']:15.2f} {r['mean_vs_layer_ig']:13.2f}"
        )
    return "\n".join(lines)


def benchmark(
    model: Any, tokenizer: Any, sentences: list[str], corpus: list[str], n: int, seed: int = 0
) -> dict[str, Any]:
    """Time every method on the first ``n`` study prompts; the JSON record without the
    run's facts (date, command)."""
    from captum_perturb import next_token_state_std

    examples, _ = ls.build_examples(model, tokenizer, sentences, n, seed)
    std = next_token_state_std(model, tokenizer, corpus)
    ctx = ls.LLMContext(model, tokenizer, std)
    rows = summary(time_methods(runners(ctx), examples))
    ratio = rows["ours_seq"]["median_vs_layer_ig"]
    return {
        "n_prompts": len(examples),
        "examples": [ex.id for ex in examples],
        "mean_prompt_tokens": statistics.fmean(len(ex.features) for ex in examples),
        "mean_answer_tokens": statistics.fmean(len(ex.target) for ex in examples),
        "sigma_s_corpus": len(corpus),
        "captum": ls.CAPTUM_SETTINGS,
        "methods": rows,
        "target": f"ours_seq median at most {TARGET_RATIO}x layer_ig's",
        "target_met": ratio <= TARGET_RATIO,
    }


def main(argv: list[str] | None = None) -> int:
    import captum
    import transformers

    from comparisons.models.resources import data_dir, read_sentences

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=10, help="prompts (the study's first n)")
    parser.add_argument("--recipe", default="full", choices=["full", "small"])
    parser.add_argument("--corpus", type=int, default=ls.CORPUS_SIZE, help="σ_S prompts")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0: default)")
    parser.add_argument("--out", type=Path, default=Path("docs/llm_benchmark.json"))
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    model, tokenizer, where = load_language_model(args.recipe)
    sst2 = data_dir() / "sst2"
    dev = [s for s, _ in read_sentences(sst2 / "dev.tsv")]
    corpus = ls.corpus_prompts([s for s, _ in read_sentences(sst2 / "train.tsv")], args.corpus)
    record = {
        "date": datetime.datetime.now().isoformat(timespec="seconds"),
        "command": "python -m comparisons.benchmarks.llm "
        + shlex.join(sys.argv[1:] if argv is None else argv),
        "torch_threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "captum": captum.__version__,
        "platform": platform.platform(),
        "processor": platform.processor() or platform.machine(),
        "model": where.name,
        **benchmark(model, tokenizer, dev, corpus, args.n, args.seed),
    }
    print(table(record["methods"]))
    print(f"target ({record['target']}): {'met' if record['target_met'] else 'NOT met'}")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(record, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
