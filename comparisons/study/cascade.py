"""Adebayo et al.'s cascading model randomisation, run for a study (:func:`run_cascade`).

The weights are re-initialised from the top down, stage by stage
(:class:`comparisons.metrics.ModelRandomization`); at each stage every method re-explains
the same examples with its original target and seed, and ``sanity.jsonl`` gets, per
method, example and stage, the Spearman ρ of the scores and of their magnitudes with the
original explanation and the number of tokens ranked (the summary and the pass/fail
criterion are in :mod:`comparisons.study.sanity`). Resumable: rows already stored are not
redone. The original weights are restored afterwards.
"""

from __future__ import annotations

import dataclasses
import warnings
from collections.abc import Sequence
from typing import Protocol

import torch
from torch import Tensor

from comparisons import metrics as mt
from comparisons.models.text_model import Example, TextModel
from comparisons.study.methods import AttributeFn, ExampleInputs, MethodContext, token_scores
from comparisons.study.store import RunStore


class _Settings(Protocol):
    @property
    def methods(self) -> tuple[str, ...]: ...

    @property
    def seed(self) -> int: ...


class Study(Protocol):
    """What the cascade needs of a study; :class:`comparisons.study.run.Study` is one (the
    cascade cannot import it: the study imports the cascade)."""

    tm: TextModel
    ctx: MethodContext
    store: RunStore
    attribute_fns: dict[str, AttributeFn | None]
    progress: str

    @property
    def config(self) -> _Settings: ...

    def attribute_fn(self, name: str) -> AttributeFn | None: ...

    def explain(self, name: str, x: ExampleInputs) -> tuple[Tensor, float] | None: ...


Originals = dict[tuple[str, str], tuple[Tensor, ExampleInputs]]


def stages(tm: TextModel) -> list[tuple[str, list[torch.nn.Module]]]:
    """Cascading randomisation stages, top down: head, each block, embeddings."""
    model = tm.model
    prefix = getattr(model, "base_model_prefix", "")
    out: list[tuple[str, list[torch.nn.Module]]] = []
    if tm.is_classifier:
        head = [m for n, m in model.named_children() if n != prefix]
        pooler = getattr(getattr(model, prefix, None), "pooler", None)
        out.append(("head", head + ([pooler] if pooler is not None else [])))
    layers = list(tm.encoder_layers)
    for k in range(len(layers), 0, -1):
        out.append((f"layer {k}", [layers[k - 1]]))
    base = getattr(model, prefix, model)
    out.append(("embeddings", [getattr(base, "embeddings", tm.embeddings)]))
    return out


def checked_methods(study: Study) -> list[str]:
    """The methods the check runs: every applicable one but the slow ``ours-reference``."""
    return [m for m in study.config.methods if study.attribute_fn(m) and m != "ours-reference"]


def run_cascade(study: Study, examples: Sequence[Example]) -> None:
    """Run the check for ``examples`` into ``study.store`` (the same examples for every
    method; rows already stored are skipped)."""
    from tqdm.auto import tqdm

    methods = checked_methods(study)
    n_stages = len(stages(study.tm))
    done = {(r["method"], r["example"], int(r["stage_index"])) for r in study.store.sanity()}
    todo = [
        ex
        for ex in examples
        if any((m, ex.id, i) not in done for m in methods for i in range(n_stages))
    ]
    if not todo:
        return
    originals = _originals(study, todo, methods)
    with study.ctx.weights_restored():
        randomization = mt.ModelRandomization(
            study.tm.model, stages(study.tm), seed=study.config.seed
        )
        bar = tqdm(
            total=n_stages * len(todo), desc=f"{study.progress}sanity check", unit="stage×example"
        )
        for stage, index in randomization:
            study.ctx.forget()  # σ_S and results of the randomised model
            for ex in todo:
                _stage(study, ex, stage, index, methods, originals, done)
                bar.update(1)
        bar.close()


def _originals(study: Study, examples: Sequence[Example], methods: list[str]) -> Originals:
    """Each method's explanation of each example on the trained model, with its inputs."""
    out: Originals = {}
    for ex in examples:
        x = study.ctx.inputs(ex)
        for m in methods:
            got = study.explain(m, x)
            if got is not None:
                out[(m, ex.id)] = (got[0], x)
    return out


def _stage(
    study: Study,
    ex: Example,
    stage: str,
    index: int,
    methods: list[str],
    originals: Originals,
    done: set[tuple[str, str, int]],
) -> None:
    """Re-explain ``ex`` on the model randomised up to ``stage`` and store the ρs."""
    xr: ExampleInputs | None = None
    for m in methods:
        if (m, ex.id, index) in done or (m, ex.id) not in originals:
            continue
        scores, x0 = originals[(m, ex.id)]
        if xr is None:
            # inputs of the randomised model (its embedding module, and for a state its
            # own reference state), with the original target and seed
            xr = dataclasses.replace(study.ctx.inputs(ex), target=x0.target, seed=x0.seed)
        fn = study.attribute_fns[m]
        assert fn is not None
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            new = token_scores(fn(xr))
        keep = ~ex.special
        old, new = scores[keep], new[keep]
        rho, rho_abs = mt.spearman(old, new), mt.spearman(old.abs(), new.abs())
        study.store.add_sanity(m, ex.id, stage, index, rho, rho_abs, int(keep.sum()))
