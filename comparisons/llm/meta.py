"""The LLM study's ``meta.json``: what a run folder says about itself.

Owns the run's description that the report reads: the methods with their ``|abs``
rankings (:func:`methods_meta`), the notes on skipped prompts, ties and Captum
(:func:`study_notes`, :data:`CAPTUM_NOTE`), the whole record (:func:`study_meta`) and the
count of unconverged estimates added after the run (:func:`note_unconverged`).
"""

from __future__ import annotations

import datetime
from collections.abc import Sequence
from typing import Any

import torch

from comparisons.llm.methods import CAPTUM_SETTINGS, LLM_METHODS, REFERENCE
from comparisons.llm.metrics import METRICS
from comparisons.llm.prompts import MAX_NEW_TOKENS, MIN_WORDS, LLMExample
from comparisons.metrics import N_TIE_ORDERS
from comparisons.study.store import RunStore
from comparisons.study.vocabulary import HEADLINE

CAPTUM_NOTE = (
    "Captum's LLMAttribution methods run with forward_in_tokens=False (one teacher-forced "
    "pass, announced as Captum's future default): its current default, token-by-token "
    "decoding with the KV cache, gives wrong log-probs from the second answer token on under "
    "transformers 5 (the whole sequence is fed again with the cache); baseline token id 0 "
    "(Captum's default) for all three and for layer_ig"
)


def methods_meta(methods: Sequence[str]) -> dict[str, dict[str, Any]]:
    """``meta.json``'s methods: each method, and ``<name>|abs`` for a signed one."""
    out: dict[str, dict[str, Any]] = {}
    for name in methods:
        m = LLM_METHODS[name]
        info = {"signed": m.signed, "family": m.family, "stochastic": m.stochastic}
        out[name] = {**info, "description": m.description}
        if m.signed:
            out[f"{name}|abs"] = {**info, "signed": False, "description": f"{name}, by |score|"}
    return out


def study_notes(skipped: dict[str, int], n_wanted: int, n_got: int) -> list[str]:
    """What ``meta.json`` says about the examples that were left out."""
    notes = [
        f"prompts: the first half of the words of SST-2 dev sentences 0, 1, …; skipped "
        f"{skipped['short']} sentences of fewer than {MIN_WORDS} words, "
        f"{skipped['one_token']} one-token prompts and {skipped['empty']} prompts whose "
        f"greedy continuation ({MAX_NEW_TOKENS} new tokens at most, cut at EOS) was empty",
        f"ties in a ranking: each metric is the mean over {N_TIE_ORDERS} seeded random "
        "orders of the tied tokens (never reading order)",
        CAPTUM_NOTE,
    ]
    if n_got < n_wanted:
        notes.append(f"only {n_got} usable prompts of {n_wanted} asked for")
    return notes


def study_meta(
    model_name: str,
    n_corpus: int,
    seed: int,
    command: str,
    methods: Sequence[str],
    skipped: dict[str, int],
    n: int,
    examples: Sequence[LLMExample],
) -> dict[str, Any]:
    """The run's ``meta.json``."""
    return {
        "model": model_name,
        "data": "SST-2 dev.tsv (prompts); σ_S: first-half prompts of "
        f"{n_corpus} train.tsv sentences",
        "task": "llm",
        "seed": seed,
        "date": datetime.date.today().isoformat(),
        "command": command,
        "methods": methods_meta(methods),
        "metrics": METRICS,
        "headline": list(HEADLINE["llm"]),
        "notes": study_notes(skipped, n, len(examples)),
        "reference": REFERENCE if REFERENCE in methods else None,
        "captum": CAPTUM_SETTINGS,
        "torch_threads": torch.get_num_threads(),
        "max_new_tokens": MAX_NEW_TOKENS,
        "examples": [ex.id for ex in examples],
    }


def note_unconverged(
    store: RunStore, meta: dict[str, Any], methods: Sequence[str], n_examples: int
) -> None:
    """Add to ``meta.json`` how many of ``ours``'s estimates did not converge."""
    unconverged = [
        e["example"] for e in store.explanations() if e["method"] == "ours" and not e["converged"]
    ]
    if "ours" in methods:
        meta["notes"].append(f"ours: {len(unconverged)} of {n_examples} estimates unconverged")
        store.write_meta(meta)
