"""The LLM comparison: which prompt tokens a causal LM's own answer depends on, by method.

On a GPT-2 trained on SST-2 (:func:`comparisons.models.language_model.sst2_language_model`), the
prompt of example ``i`` is the first half of the words of SST-2 dev sentence ``i`` (dev
sentences of fewer than :data:`MIN_WORDS` words are skipped) and the target is the
model's own greedy continuation (:data:`MAX_NEW_TOKENS` tokens, cut at EOS, which is
dropped; prompts whose continuation is empty are skipped). Every method gives
``seq_attr``, one score per prompt token, BOS skipped (Captum's ``skip_tokens``):

* ``ours``: :class:`~captum_perturb.LLMPerturbationEntropyAttribution`, ``seq_attr``
  alone, σ_S from :func:`~captum_perturb.next_token_state_std` over the first-half
  prompts of :data:`CORPUS_SIZE` SST-2 *train* sentences (cached in the run folder);
* ``feature_ablation``, ``shapley_sampling``, ``kernel_shap``: Captum's
  ``LLMAttribution`` with Captum's defaults but one (:data:`CAPTUM_SETTINGS`);
* ``layer_ig``: ``LLMGradientAttribution(LayerIntegratedGradients)`` on the input
  embeddings, ``n_steps=50``, the reference of the paired differences;
* ``random``: a seeded random ranking, the floor.

Metrics per example (higher is better for both; :func:`faithfulness`): ``drop_top_k``,
the drop of the target's total log-probability (teacher forcing) when the top-k prompt
tokens are deleted, and ``drop_keep_bottom_k``, the drop when the prompt is cut down to
its k least important tokens, each averaged over ``k = 1 … min(3, n − 1)``. Tied scores
are never ordered by position: a metric is the mean over :data:`N_TIE_ORDERS` seeded
random orders of the ties. Also ``abstained`` (1 when ``seq_attr`` is constant),
``seconds`` and, for ours, ``converged``. A signed method is ranked by its score and,
as the method ``"<name>|abs"``, by its magnitude (as in :mod:`comparisons.study.run`).

The run folder is a :class:`~comparisons.study.store.RunStore` (resumed when run again) with
``report.html``, whose ★ and paired-difference table use the paired bootstrap of
:mod:`comparisons.study.store`::

    python -m comparisons llm-study --n 50 --out outputs/llm_study

This module owns the run (:func:`run_llm_study`: open the run folder, build the
explainers, score every example, write the report); its parts, whose names it also
exports, are

* :mod:`comparisons.llm.prompts`: the examples (prompts, greedy answers, σ_S's corpus);
* :mod:`comparisons.llm.methods`: the methods and how each runs;
* :mod:`comparisons.llm.metrics`: the target's log-probability and the deletion metrics;
* :mod:`comparisons.llm.scoring`: one method on one example, into the run folder;
* :mod:`comparisons.llm.meta`: the run's ``meta.json``.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from torch import nn

# the study's parts, importable from here as before the split
from comparisons.llm.meta import (
    CAPTUM_NOTE,
    methods_meta,
    note_unconverged,
    study_meta,
    study_notes,
)
from comparisons.llm.methods import (
    CAPTUM_SETTINGS,
    DEFAULT_LLM_METHODS,
    IG_STEPS,
    LLM_METHODS,
    REFERENCE,
    Explain,
    LLMContext,
    LLMMethod,
    ours,
    rankings,
)
from comparisons.llm.metrics import (
    MAX_K,
    METRICS,
    LogProbFn,
    faithfulness,
    rationale_ks,
    target_log_prob_fn,
)
from comparisons.llm.prompts import (
    CORPUS_SIZE,
    MAX_NEW_TOKENS,
    MIN_WORDS,
    LLMExample,
    build_examples,
    corpus_prompts,
    example_seed,
    first_half,
    greedy_answer,
)
from comparisons.llm.scoring import score_example
from comparisons.metrics import N_TIE_ORDERS
from comparisons.study.store import RunStore

__all__ = [
    "CAPTUM_NOTE",
    "CAPTUM_SETTINGS",
    "CORPUS_SIZE",
    "DEFAULT_LLM_METHODS",
    "IG_STEPS",
    "LLM_METHODS",
    "MAX_K",
    "MAX_NEW_TOKENS",
    "METRICS",
    "MIN_WORDS",
    "N_TIE_ORDERS",
    "REFERENCE",
    "Explain",
    "LLMContext",
    "LLMExample",
    "LLMMethod",
    "LogProbFn",
    "build_examples",
    "corpus_prompts",
    "example_seed",
    "faithfulness",
    "first_half",
    "greedy_answer",
    "methods_meta",
    "ours",
    "rankings",
    "rationale_ks",
    "run_llm_study",
    "score_example",
    "study_notes",
    "target_log_prob_fn",
]


def _open_store(out_dir: Path | str, methods: Sequence[str], model_name: str) -> RunStore:
    """The run folder, after checking the method names and that it holds no other model."""
    unknown = [m for m in methods if m not in LLM_METHODS]
    if unknown:
        raise ValueError(f"unknown methods {unknown}; choose from {list(LLM_METHODS)}")
    store = RunStore(out_dir)
    if (store.run_dir / RunStore.META).is_file() and store.read_meta()["model"] != model_name:
        raise ValueError(f"{out_dir} holds a run of {store.read_meta()['model']}, not {model_name}")
    return store


def _explainers(
    model: nn.Module,
    tokenizer: Any,
    corpus: Sequence[str],
    methods: Sequence[str],
    store: RunStore,
) -> dict[str, Explain]:
    """Each method's explainer (σ_S, cached in the run folder, only when ``ours`` runs)."""
    from captum_perturb import next_token_state_std

    std = None
    if "ours" in methods:
        std = next_token_state_std(model, tokenizer, corpus, cache_dir=store.run_dir)
    ctx = LLMContext(model, tokenizer, std)
    return {m: LLM_METHODS[m].build(ctx) for m in methods}


def run_llm_study(
    model: nn.Module,
    tokenizer: Any,
    sentences: Sequence[str],
    corpus: Sequence[str],
    out_dir: Path | str,
    *,
    n: int,
    methods: Sequence[str] = DEFAULT_LLM_METHODS,
    seed: int = 0,
    model_name: str = "",
    command: str = "",
    max_examples: int = 10,
) -> RunStore:
    """Explain, score, store and report ``n`` prompts (resuming ``out_dir``).

    Args:
        model: a causal LM in eval mode; tokenizer: its tokenizer (with a BOS).
        sentences: the dev sentences the prompts come from.
        corpus: the prompts of σ_S (:func:`corpus_prompts` of train sentences).
        out_dir: the run folder.
        n: number of prompts.
        methods: names of :data:`LLM_METHODS`.
        seed: the run's seed (per-example seeds derive from it).
        model_name: ``meta.json``'s model; a run folder of another model is an error.
        command: what produced the run.
        max_examples: examples shown as heatmaps in the report.
    """
    from tqdm.auto import tqdm

    from comparisons.study.report import write_report

    store = _open_store(out_dir, methods, model_name)
    examples, skipped = build_examples(model, tokenizer, sentences, n, seed)
    explainers = _explainers(model, tokenizer, corpus, methods, store)
    meta = study_meta(model_name, len(corpus), seed, command, methods, skipped, n, examples)
    store.write_meta(meta)
    for ex in tqdm(examples, desc="LLM study", unit="prompt"):
        log_prob = target_log_prob_fn(model, ex.target)
        for name, explain in explainers.items():
            score_example(store, name, explain, ex, log_prob)
    note_unconverged(store, meta, methods, len(examples))
    write_report(store.run_dir, max_examples=max_examples, title=f"LLM attribution: {model_name}")
    return store
