"""Run a side-by-side study: explain examples with every method, score, store, report.

:func:`run_study` is the whole pipeline from Python for any
:class:`~comparisons.models.text_model.TextModel` (a user's own classifier or encoder); the
command line (``python -m comparisons study``) wraps it. Results go to a
:class:`~comparisons.study.store.RunStore` folder, one row per method × example × metric, and
an interrupted run picks up where it stopped: finished explanations, metrics and
sanity checks are not redone.

Metrics per method and example (names as in ``results.csv``):

* classifier: ``aopc_comprehensiveness/{eraser,ferret}/{mask,delete}``,
  ``aopc_sufficiency/...``, ``tau_loo/{mask,delete}``, ``deletion_area/mask``,
  ``insertion_area/mask`` (curves in ``curves.jsonl``), ``infidelity``,
  ``sensitivity_max`` (first ``captum_examples`` examples), ``seconds``;
* hidden state: ``state_shift/mask@{10,20,50}%`` and their mean ``state_shift/mask``
  (plus ``/delete`` for a pooled vector), ``tau_loo/mask`` against the shift of removing
  each token alone, ``seconds``;
* for every ranking: ``abstained`` (1 when it ranks nothing: every token tied);
* the Adebayo check (first ``sanity_examples`` examples, the same for every method):
  Spearman ρ of the scores and of their magnitudes between the
  explanation and the one after re-initialising the model from the top down, per stage.

A signed method is ranked by its scores (evidence for the explained class first) and
also by their magnitude, stored as the method ``"<name>|abs"``. Tied scores are never
broken in reading order: every ranking metric is the mean over
:attr:`StudyConfig.tie_orders` seeded random orders of the ties (one order without
ties), so an abstention is scored as a random ranking and its τ is 0. No example is
dropped for a method: every method is scored on every example.

One study can be shared by N processes (``torchrun``): :mod:`comparisons.study.shards`.
The metrics of one explanation are computed by :mod:`comparisons.study.scoring`, the
sanity check run by :mod:`comparisons.study.cascade`.
"""

from __future__ import annotations

import dataclasses
import datetime
import time
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from comparisons import metrics as mt
from comparisons.models.text_model import Example, TextModel
from comparisons.study.cascade import checked_methods, run_cascade
from comparisons.study.cascade import stages as cascade_stages
from comparisons.study.methods import (
    METHODS,
    AttributeFn,
    ExampleInputs,
    MethodContext,
    NotApplicableError,
    get_method,
    token_scores,
)
from comparisons.study.scoring import ExampleScorer
from comparisons.study.store import RunStore
from comparisons.study.vocabulary import BETTER, DESCRIPTIONS, HEADLINE, REFERENCE


@dataclass(frozen=True)
class StudyConfig:
    """What a study runs.

    Attributes:
        methods: registry names (see :data:`comparisons.study.methods.METHODS`).
        seed: the run's seed (each example's seed derives from it and the example id).
        captum_examples: examples on which infidelity and sensitivity_max are computed.
        sanity_examples: examples re-explained under cascading randomisation.
        limits: at most this many examples for the named methods (e.g. the slow
            ``{"ours-reference": 20}``).
        noise_scale: the infidelity noise std and sensitivity radius, as a fraction of
            the std of each example's embedding output.
        tie_orders: random orders of tied scores each ranking metric is averaged over
            (see :func:`comparisons.metrics.tie_orders`).
        reference: the method every other is compared with in the report.
    """

    methods: tuple[str, ...]
    seed: int = 0
    captum_examples: int = 20
    sanity_examples: int = 10
    limits: dict[str, int] = dataclasses.field(default_factory=dict)
    noise_scale: float = 0.1
    tie_orders: int = mt.N_TIE_ORDERS
    reference: str = REFERENCE


def _rankings(name: str) -> list[tuple[str, bool]]:
    """``(label, signed)`` of the rankings stored for a method: its own, then ``|abs``
    for a signed method whose magnitudes are not another method's
    (:attr:`~comparisons.study.methods.MethodSpec.magnitudes_of`)."""
    spec = METHODS[name]
    by_magnitude = spec.signed and spec.magnitudes_of is None
    return [(name, spec.signed)] + ([(f"{name}|abs", False)] if by_magnitude else [])


class Study:
    """One study over a model, a set of examples and a run folder (see :func:`run_study`)."""

    def __init__(
        self, tm: TextModel, corpus: list[str], out_dir: Path | str, config: StudyConfig
    ) -> None:
        for name in config.methods:
            get_method(name)  # unknown names fail before any work
        self.tm = tm
        self.config = config
        self.ctx = MethodContext(tm, corpus, config.seed)
        self.store = RunStore(out_dir)
        self.scorer = ExampleScorer(tm, self.ctx, config.tie_orders, config.noise_scale)
        self.attribute_fns: dict[str, AttributeFn | None] = {}
        self.notes: list[str] = []
        #: extra keys of ``meta.json`` (a share of a sharded study records itself there)
        self.meta_extra: dict[str, Any] = {}
        #: put before the labels of the progress bars (e.g. ``"rank 1 of 2: "``)
        self.progress = ""

    # --------------------------------------------------------------- helpers
    def attribute_fn(self, name: str) -> AttributeFn | None:
        if name not in self.attribute_fns:
            try:
                self.attribute_fns[name] = METHODS[name].factory(self.ctx)
            except NotApplicableError as err:
                self.notes.append(f"{name}: not applicable ({err})")
                self.attribute_fns[name] = None
        return self.attribute_fns[name]

    def write_meta(self, data: str, command: str) -> None:
        methods: dict[str, dict[str, Any]] = {}
        for m in self.config.methods:
            spec = METHODS[m]
            methods[m] = {
                "signed": spec.signed,
                "family": spec.family,
                "stochastic": spec.stochastic,
                "description": spec.description,
            }
            if spec.magnitudes_of is not None:
                methods[m]["magnitudes_of"] = spec.magnitudes_of
        for m in self.config.methods:
            for label, _ in _rankings(m)[1:]:  # the |abs ranking, when stored
                methods[label] = {**methods[m], "signed": False}
                methods[label]["description"] = f"{m}, ranked by |score|"
        self.store.write_meta(
            {
                "model": self.tm.name,
                "data": data,
                "task": "classifier" if self.tm.is_classifier else "state",
                "seed": self.config.seed,
                "date": datetime.date.today().isoformat(),
                "command": command,
                "methods": methods,
                "metrics": self.metric_info(),
                "notes": self.notes,
                "reference": self.config.reference,
                "headline": list(HEADLINE["classifier" if self.tm.is_classifier else "state"]),
                **self.meta_extra,
            }
        )

    def metric_info(self) -> dict[str, dict[str, str]]:
        """``better`` and a description for every metric name stored so far."""
        names = sorted({r["metric"] for r in self.store.results()})
        info = {}
        for name in names:
            base = name.split("/")[0]
            if base in BETTER:
                info[name] = {"better": BETTER[base], "description": DESCRIPTIONS[base]}
        return info

    def explain(self, name: str, x: ExampleInputs) -> tuple[Tensor, float] | None:
        """Token scores and seconds, from the store when already done."""
        done = self.store.explanation(name, x.example.id)
        if done is not None:
            return torch.tensor(done["scores"]), float(done["seconds"])
        fn = self.attribute_fn(name)
        if fn is None:
            return None
        self.ctx.charged = 0.0
        start = time.perf_counter()
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            scores = token_scores(fn(x))
        # a result reused from another entry (ours-signed reads ours') is charged too
        seconds = time.perf_counter() - start + self.ctx.charged
        ex = x.example
        pred = prob = None
        if self.tm.is_classifier:
            pred = x.target  # x.forward gives logits for TextModel(state="logits")
            prob = float(self.tm.probabilities([ex.input_ids])[0, x.target])
        self.store.add_explanation(
            {
                "method": name,
                "example": ex.id,
                "text": ex.text,
                "tokens": ex.tokens,
                "scores": scores.tolist(),
                "special": ex.special.tolist(),
                "label": ex.label,
                "pred": pred,
                "prob": prob,
                "seconds": seconds,
            }
        )
        return scores, seconds

    # --------------------------------------------------------------- the run
    def _todo(self, ex: Example, index: int, store: RunStore) -> list[str]:
        """The methods whose results for ``ex`` (global index ``index``) are not in
        ``store`` yet (applicable, within their limit, some ranking without ``seconds``)."""
        cfg = self.config
        return [
            m
            for m in cfg.methods
            if self.attribute_fn(m) is not None
            and (m not in cfg.limits or index < cfg.limits[m])
            and not all(store.has_results(label, ex.id, "seconds") for label, _ in _rankings(m))
        ]

    def unfinished(
        self,
        examples: Sequence[Example],
        indices: Sequence[int] | None = None,
        store: RunStore | None = None,
    ) -> list[str]:
        """What :meth:`run` would still do for ``examples`` in ``store`` (default: this
        study's): ``"<method> on <example>"`` and ``"sanity of <method> on <example>"``
        (empty when the run is complete). ``indices`` as in :meth:`run`."""
        store = self.store if store is None else store
        indices = range(len(examples)) if indices is None else indices
        checked = checked_methods(self)
        stages = len(cascade_stages(self.tm))
        done = {(r["method"], r["example"], int(r["stage_index"])) for r in store.sanity()}
        out = []
        for index, ex in zip(indices, examples, strict=True):
            out += [f"{m} on {ex.id}" for m in self._todo(ex, index, store)]
            if index < self.config.sanity_examples:
                out += [
                    f"sanity of {m} on {ex.id}"
                    for m in checked
                    if any((m, ex.id, i) not in done for i in range(stages))
                ]
        return out

    def run(
        self,
        examples: Sequence[Example],
        data: str = "",
        command: str = "",
        indices: Sequence[int] | None = None,
    ) -> RunStore:
        """Explain, score and check ``examples`` into the run folder (resuming it).

        Args:
            examples: the examples.
            data: where they come from (``meta.json``).
            command: what produced the run (``meta.json``).
            indices: the position of each example in the whole study (default
                ``0, 1, …``): the limits, ``captum_examples`` and ``sanity_examples``
                apply to these positions, so a share of a study (one process of several)
                computes exactly the rows the whole study computes for those examples.
        """
        from tqdm.auto import tqdm

        cfg = self.config
        indices = list(range(len(examples)) if indices is None else indices)
        if len(indices) != len(examples):
            raise ValueError(f"{len(indices)} indices for {len(examples)} examples")
        for name in cfg.methods:
            self.attribute_fn(name)
        self.write_meta(data, command)
        bar = tqdm(examples, desc=f"{self.progress}explaining and scoring", unit="example")
        for index, ex in zip(indices, bar, strict=True):
            self._explain_and_score(ex, index)
        checked = zip(examples, indices, strict=True)
        self.sanity([ex for ex, i in checked if i < cfg.sanity_examples])
        self.write_meta(data, command)
        return self.store

    def _explain_and_score(self, ex: Example, index: int) -> None:
        """Every method still to do on ``ex`` (position ``index``): explain, score, store."""
        todo = self._todo(ex, index, self.store)
        if not todo:
            return
        x = self.ctx.inputs(ex)
        loo = self.scorer.loo(ex, x.target)
        for name in todo:
            got = self.explain(name, x)
            if got is None:
                continue
            scores, seconds = got
            for label, signed in _rankings(name):
                if self.store.has_results(label, ex.id, "seconds"):
                    continue  # written before the run stopped
                rows = self._score(label, name, x, scores, signed, loo)
                if label == name and index < self.config.captum_examples:
                    fn = self.attribute_fn(name)
                    assert fn is not None
                    rows += self.scorer.captum_metrics(fn, x)
                rows.append(("seconds", seconds))
                self.store.add_results((label, ex.id, m, float(v)) for m, v in rows)

    def _score(
        self,
        label: str,
        name: str,
        x: ExampleInputs,
        scores: Tensor,
        signed: bool,
        loo: dict[str, Tensor],
    ) -> list[tuple[str, float]]:
        """The metrics of one ranking (``label``) of method ``name``'s scores; curves are
        stored for a method's own ranking."""
        ex = x.example
        if not self.tm.is_classifier:
            return self.scorer.state_metrics(ex, scores, signed, loo, x.seed)
        rows, curves = self.scorer.classifier_metrics(
            ex, scores, signed, x.target, loo, x.seed, curves_too=label == name
        )
        for kind, values in curves.items():
            self.store.add_curve(label, ex.id, kind, values)
        return rows

    def sanity(self, examples: Sequence[Example]) -> None:
        """The Adebayo cascading model-randomisation check (:func:`.cascade.run_cascade`)."""
        run_cascade(self, examples)


def run_study(
    tm: TextModel,
    examples: Sequence[Example],
    out_dir: Path | str,
    config: StudyConfig,
    *,
    corpus: list[str] | None = None,
    data: str = "",
    command: str = "",
    report: bool = True,
    indices: Sequence[int] | None = None,
) -> RunStore:
    """Explain, score and (optionally) report; resumable in ``out_dir``.

    Args:
        tm: the model (classifier or hidden state) to explain.
        examples: tokenised sentences (:meth:`TextModel.encode`).
        out_dir: the run folder.
        config: methods, seeds and sample sizes.
        corpus: sentences for σ_S of our method (none: the reference fallback).
        data: where the examples come from (shown in the report).
        command: the command that produced the run (shown in the report).
        report: also write ``report.html``.
        indices: the position of each example in the whole study, when ``examples``
            are a share of it (see :meth:`Study.run`); default ``0, 1, …``.
    """
    study = Study(tm, corpus or [], out_dir, config)
    store = study.run(examples, data=data, command=command, indices=indices)
    if report:
        from comparisons.study.report import write_report

        write_report(out_dir)
    return store


# ------------------------------------------------------------------ one study, N processes
