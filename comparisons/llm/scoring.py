"""The LLM study's scoring of one method on one example, into the run folder.

Owns the step the study repeats for every example and method: explain the example (or
read the stored explanation of a resumed run), store it, and store the metrics of
:mod:`comparisons.llm.metrics` for each of the method's rankings
(:func:`~comparisons.llm.methods.rankings`), plus ``abstained``, ``converged`` (ours)
and ``seconds``.
"""

from __future__ import annotations

import time
from typing import Any

import torch
from torch import Tensor

from comparisons.llm.methods import Explain, rankings
from comparisons.llm.metrics import LogProbFn, faithfulness
from comparisons.llm.prompts import LLMExample
from comparisons.study.store import RunStore


def _explanation(
    store: RunStore, name: str, explain: Explain, ex: LLMExample
) -> tuple[Tensor, float, dict[str, Any]]:
    """Scores, seconds and extra facts of ``name`` on ``ex``, from the store when done."""
    done = store.explanation(name, ex.id)
    if done is not None:
        return torch.tensor(done["scores"]), float(done["seconds"]), done
    start = time.perf_counter()
    scores, extra = explain(ex)
    seconds = time.perf_counter() - start
    scores = scores.detach().float().cpu()
    if scores.shape != ex.features.shape:
        raise RuntimeError(f"{name} gave {tuple(scores.shape)} scores for {ex.id}")
    store.add_explanation(
        {
            "method": name,
            "example": ex.id,
            "text": f"{ex.prompt} ⟶ {ex.continuation}",
            "prompt": ex.prompt,
            "continuation": ex.continuation,
            "tokens": ex.tokens,
            "scores": scores.tolist(),
            "seconds": seconds,
            **extra,
        }
    )
    return scores, seconds, extra


def score_example(
    store: RunStore, name: str, explain: Explain, ex: LLMExample, log_prob: LogProbFn
) -> None:
    """Explain ``ex`` with ``name`` and store every ranking's metrics (unless stored)."""
    labels = [(lb, s) for lb, s in rankings(name) if not store.has_results(lb, ex.id, "seconds")]
    if not labels:
        return
    scores, seconds, extra = _explanation(store, name, explain, ex)
    for label, signed in labels:
        ranked = scores if signed else scores.abs()
        rows = faithfulness(ranked, ex.prompt_ids, ex.features, log_prob, seed=ex.seed)
        rows["abstained"] = float(bool(ranked.max() == ranked.min()))
        if "converged" in extra:
            rows["converged"] = float(extra["converged"])
        rows["seconds"] = seconds  # last: its row marks the ranking as done
        store.add_results((label, ex.id, metric, value) for metric, value in rows.items())
