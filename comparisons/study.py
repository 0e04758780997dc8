"""Run a side-by-side study: explain examples with every method, score, store, report.

:func:`run_study` is the whole pipeline from Python for any
:class:`~comparisons.text_model.TextModel` (a user's own classifier or encoder); the
command line (``python -m comparisons study``) wraps it. Results go to a
:class:`~comparisons.store.RunStore` folder, one row per method × example × metric, and
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
* the Adebayo check (first ``sanity_examples`` examples): Spearman ρ between the
  explanation and the one after re-initialising the model from the top down, per stage.

A signed method is ranked by its scores (evidence for the explained class first) and
also by their magnitude, stored as the method ``"<name>|abs"``.

One study can be shared by N processes (``torchrun``): process ``r`` runs the examples at
positions ``r, r + N, …`` into ``parts/rank-{r}-of-{N}`` (:func:`run_study_part`), with
their positions in the whole study, so the limits, ``captum_examples`` and
``sanity_examples`` pick the same examples as one process would, and every example gets
the same seed; then one process checks the parts and merges them into the run folder
(:func:`merge_study_parts`). Each part resumes like a run folder.
"""

from __future__ import annotations

import dataclasses
import datetime
import math
import time
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from captum_perturb._distributed import is_shard
from comparisons import metrics as mt
from comparisons.methods import (
    METHODS,
    AttributeFn,
    ExampleInputs,
    MethodContext,
    NotApplicableError,
    get_method,
    token_scores,
)
from comparisons.store import RunStore, write_merged
from comparisons.text_model import Example, TextModel

BETTER = {
    "aopc_comprehensiveness": "higher",
    "aopc_sufficiency": "lower",
    "tau_loo": "higher",
    "deletion_area": "lower",
    "insertion_area": "higher",
    "state_shift": "higher",
    "infidelity": "lower",
    "sensitivity_max": "lower",
    "seconds": "lower",
}

DESCRIPTIONS = {
    "aopc_comprehensiveness": "p(x)_ŷ − p(x without r_k)_ŷ averaged over the bins (ERASER "
    "1/5/10/20/50 %, or ferret 10…100 % with positive scores only); tokens masked or deleted",
    "aopc_sufficiency": "p(x)_ŷ − p(r_k)_ŷ averaged over the bins",
    "tau_loo": "Kendall τ-b between the scores and the leave-one-out drop of p_ŷ (or of the state)",
    "deletion_area": "area under p_ŷ while removing tokens in ranked order ([MASK])",
    "insertion_area": "area under p_ŷ while adding tokens back in ranked order ([MASK])",
    "state_shift": "how far the hidden state moves when the top-k tokens are removed "
    "(mean squared σ_S-normalised change, or 1 − cosine for a pooled vector)",
    "infidelity": "Captum infidelity(normalize=True), Gaussian noise on the embedding output",
    "sensitivity_max": "Captum sensitivity_max, uniform noise on the embedding output",
    "seconds": "seconds per example to explain",
}


@dataclass(frozen=True)
class StudyConfig:
    """What a study runs.

    Attributes:
        methods: registry names (see :data:`comparisons.methods.METHODS`).
        seed: the run's seed (each example's seed derives from it and the example id).
        captum_examples: examples on which infidelity and sensitivity_max are computed.
        sanity_examples: examples re-explained under cascading randomisation.
        limits: at most this many examples for the named methods (e.g. the slow
            ``{"ours-reference": 20}``).
        noise_scale: the infidelity noise std and sensitivity radius, as a fraction of
            the std of each example's embedding output.
    """

    methods: tuple[str, ...]
    seed: int = 0
    captum_examples: int = 20
    sanity_examples: int = 10
    limits: dict[str, int] = dataclasses.field(default_factory=dict)
    noise_scale: float = 0.1


def _stages(tm: TextModel) -> list[tuple[str, list[torch.nn.Module]]]:
    """Cascading randomisation stages, top down: head, each block, embeddings."""
    model = tm.model
    stages: list[tuple[str, list[torch.nn.Module]]] = []
    if tm.is_classifier:
        head = [
            m
            for n, m in model.named_children()
            if n not in (getattr(model, "base_model_prefix", ""),)
        ]
        base = getattr(model, getattr(model, "base_model_prefix", ""), None)
        pooler = getattr(base, "pooler", None)
        stages.append(("head", head + ([pooler] if pooler is not None else [])))
    layers = list(tm.encoder_layers)
    for k in range(len(layers), 0, -1):
        stages.append((f"layer {k}", [layers[k - 1]]))
    model_base = getattr(model, getattr(model, "base_model_prefix", ""), model)
    stages.append(("embeddings", [getattr(model_base, "embeddings", tm.embeddings)]))
    return stages


def _rankings(name: str) -> list[tuple[str, bool]]:
    """``(label, signed)`` of the rankings stored for a method: its own, then ``|abs``."""
    signed = METHODS[name].signed
    return [(name, signed)] + ([(f"{name}|abs", False)] if signed else [])


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
        self.mask_id = tm.tokenizer.mask_token_id
        self.removers: dict[str, mt.Remover] = {}
        if self.mask_id is not None:
            self.removers["mask"] = mt.MaskRemover(int(self.mask_id))
        self.removers["delete"] = mt.DeleteRemover(tm.tokenizer)
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
        methods = {
            m: {
                "signed": METHODS[m].signed,
                "family": METHODS[m].family,
                "stochastic": METHODS[m].stochastic,
                "description": METHODS[m].description,
            }
            for m in self.config.methods
        }
        for m in self.config.methods:
            if METHODS[m].signed:
                methods[f"{m}|abs"] = {**methods[m], "signed": False}
                methods[f"{m}|abs"]["description"] = f"{m}, ranked by |score|"
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
        start = time.perf_counter()
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            scores = token_scores(fn(x))
        seconds = time.perf_counter() - start
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

    # --------------------------------------------------------------- metrics
    def classifier_metrics(
        self,
        ex: Example,
        scores: Tensor,
        signed: bool,
        target: int,
        loo: dict[str, Tensor],
        curves_too: bool = True,
    ) -> tuple[list[tuple[str, float]], dict[str, list[float]]]:
        rows: list[tuple[str, float]] = []
        curves: dict[str, list[float]] = {}
        prob_fn = self.tm.probabilities
        for rname, remover in self.removers.items():
            for bins in ("eraser", "ferret"):
                res = mt.aopc(
                    prob_fn, ex.input_ids, ex.special, scores, remover,
                    target=target, bins=bins, signed=signed,
                )  # fmt: skip
                rows.append((f"aopc_comprehensiveness/{bins}/{rname}", res.comprehensiveness))
                rows.append((f"aopc_sufficiency/{bins}/{rname}", res.sufficiency))
            ranked = scores if signed else scores.abs()
            rows.append((f"tau_loo/{rname}", mt.kendall_tau_b(ranked, loo[rname])))
        if "mask" in self.removers and curves_too:
            order = mt.rank_tokens(scores, ex.special, signed)
            r = self.removers["mask"]
            for kind, fn in (("deletion", mt.deletion_curve), ("insertion", mt.insertion_curve)):
                curve = fn(prob_fn, ex.input_ids, ex.special, order, r, target=target)
                curves[f"{kind}/mask"] = curve.tolist()
                rows.append((f"{kind}_area/mask", mt.curve_area(curve)))
        return rows, curves

    def state_metrics(
        self, ex: Example, scores: Tensor, signed: bool, loo: dict[str, Tensor]
    ) -> list[tuple[str, float]]:
        rows: list[tuple[str, float]] = []
        pooled = self.tm.state == "pooled"
        std = self.ctx.state_std("state", self.tm.forward_embeds)
        reference = self.tm.states([ex.input_ids])[0]
        order = mt.rank_tokens(scores, ex.special, signed)
        n = len(order)
        fractions = (0.1, 0.2, 0.5)
        ks = [max(1, math.ceil(f * n)) for f in fractions]
        for rname, remover in self.removers.items():
            if rname == "delete" and not pooled:
                continue
            shifts = mt.state_shift(
                self.tm.states, ex.input_ids, ex.special, order, remover,
                ks=ks, reference=reference, std=std, pooled=pooled,
            )  # fmt: skip
            for f, d in zip(fractions, shifts, strict=True):
                rows.append((f"state_shift/{rname}@{int(100 * f)}%", d))
            rows.append((f"state_shift/{rname}", sum(shifts) / len(shifts)))
            ranked = scores if signed else scores.abs()
            rows.append((f"tau_loo/{rname}", mt.kendall_tau_b(ranked, loo[rname])))
        return rows

    def loo(self, ex: Example, target: int) -> dict[str, Tensor]:
        """Leave-one-out reference per remover (the drop of p_ŷ, or the state shift)."""
        out: dict[str, Tensor] = {}
        for rname, remover in self.removers.items():
            if self.tm.is_classifier:
                out[rname] = mt.leave_one_out(
                    self.tm.probabilities, ex.input_ids, ex.special, remover, target=target
                )
            else:
                pooled = self.tm.state == "pooled"
                if rname == "delete" and not pooled:
                    continue
                std = self.ctx.state_std("state", self.tm.forward_embeds)
                reference = self.tm.states([ex.input_ids])[0]
                drops = torch.full((len(ex.input_ids),), float("nan"))
                for i in torch.nonzero(~ex.special).flatten().tolist():
                    drops[i] = mt.state_shift(
                        self.tm.states, ex.input_ids, ex.special, torch.tensor([i]), remover,
                        ks=[1], reference=reference, std=std, pooled=pooled,
                    )[0]  # fmt: skip
                out[rname] = drops
        return out

    def captum_metrics(self, name: str, x: ExampleInputs) -> list[tuple[str, float]]:
        fn = self.attribute_fn(name)
        assert fn is not None
        scale = self.config.noise_scale * float(x.embeds.std())
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            attributions = fn(x).detach()
            infd = mt.infidelity_score(
                x.forward, x.embeds, (x.mask,), attributions, target=x.target,
                noise_std=scale, special=x.example.special, seed=x.seed,
            )  # fmt: skip

            def explain_embeds(
                e: Tensor, additional_forward_args: Any = None, target: Any = None
            ) -> Tensor:
                # Captum stacks the perturbed copies: explain them one at a time
                rows = [fn(dataclasses.replace(x, embeds=e[i : i + 1])) for i in range(len(e))]
                return torch.cat(rows).detach()

            sens = mt.sensitivity_score(
                explain_embeds, x.embeds, (x.mask,), target=x.target,
                perturb_radius=scale, seed=x.seed,
            )  # fmt: skip
        return [("infidelity", infd), ("sensitivity_max", sens)]

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
        checked = [m for m in self.config.methods if self.attribute_fn(m) and m != "ours-reference"]
        stages = len(_stages(self.tm))
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
            todo = self._todo(ex, index, self.store)
            if not todo:
                continue
            x = self.ctx.inputs(ex)
            loo = self.loo(ex, x.target)
            for name in todo:
                got = self.explain(name, x)
                if got is None:
                    continue
                scores, seconds = got
                for label, signed in _rankings(name):
                    if self.store.has_results(label, ex.id, "seconds"):
                        continue  # written before the run stopped
                    if self.tm.is_classifier:
                        rows, curves = self.classifier_metrics(
                            ex, scores, signed, x.target, loo, curves_too=label == name
                        )
                        for kind, values in curves.items():
                            self.store.add_curve(label, ex.id, kind, values)
                    else:
                        rows = self.state_metrics(ex, scores, signed, loo)
                    if label == name and index < cfg.captum_examples:
                        rows += self.captum_metrics(name, x)
                    rows.append(("seconds", seconds))
                    self.store.add_results((label, ex.id, m, float(v)) for m, v in rows)
        checked = zip(examples, indices, strict=True)
        self.sanity([ex for ex, i in checked if i < cfg.sanity_examples])
        self.write_meta(data, command)
        return self.store

    def sanity(self, examples: Sequence[Example]) -> None:
        """The Adebayo cascading model-randomisation check."""
        from tqdm.auto import tqdm

        methods = [
            m for m in self.config.methods if self.attribute_fns.get(m) and m != "ours-reference"
        ]
        stages = _stages(self.tm)
        done = {(r["method"], r["example"], int(r["stage_index"])) for r in self.store.sanity()}
        todo = [
            ex
            for ex in examples
            if any((m, ex.id, i) not in done for m in methods for i in range(len(stages)))
        ]
        if not todo:
            return
        originals = {}
        for ex in todo:
            x = self.ctx.inputs(ex)
            for m in methods:
                got = self.explain(m, x)
                if got is not None:
                    originals[(m, ex.id)] = (got[0], x)
        saved_std = dict(self.ctx._std)
        try:
            randomization = mt.ModelRandomization(self.tm.model, stages, seed=self.config.seed)
            bar = tqdm(
                total=len(stages) * len(todo),
                desc=f"{self.progress}sanity check",
                unit="stage×example",
            )
            for stage, index in randomization:
                self.ctx._std.clear()  # σ_S of the randomised model
                for ex in todo:
                    xr: ExampleInputs | None = None
                    for m in methods:
                        if (m, ex.id, index) in done or (m, ex.id) not in originals:
                            continue
                        scores, x0 = originals[(m, ex.id)]
                        if xr is None:
                            # inputs of the randomised model (its embedding module, and for a
                            # state its own reference state), with the original target and seed
                            xr = dataclasses.replace(
                                self.ctx.inputs(ex), target=x0.target, seed=x0.seed
                            )
                        fn = self.attribute_fns[m]
                        assert fn is not None
                        with warnings.catch_warnings():
                            warnings.simplefilter("ignore")
                            new = token_scores(fn(xr))
                        keep = ~ex.special
                        rho = mt.spearman(scores[keep], new[keep])
                        self.store.add_sanity(m, ex.id, stage, index, rho)
                    bar.update(1)
            bar.close()
        finally:
            self.ctx._std.clear()
            self.ctx._std.update(saved_std)


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
        from comparisons.report import write_report

        write_report(out_dir)
    return store


# ------------------------------------------------------------------ one study, N processes

PARTS = "parts"
"""The folder of a run folder that holds the shares of a sharded study."""


def part_dir(out_dir: Path | str, rank: int, world: int) -> Path:
    """The run folder of process ``rank``'s share: ``out_dir/parts/rank-{rank}-of-{world}``."""
    return Path(out_dir) / PARTS / f"rank-{rank}-of-{world}"


def share(n: int, rank: int, world: int) -> list[int]:
    """The positions of process ``rank``'s examples among ``n``: ``rank, rank + world, …``
    (:func:`captum_perturb._distributed.is_shard`; disjoint, covering, never padded)."""
    return [i for i in range(n) if is_shard(i, rank, world)]


_DATA_FILES = (RunStore.RESULTS, RunStore.EXPLANATIONS, RunStore.CURVES, RunStore.SANITY)


def _check_out_dir(out_dir: Path) -> None:
    """Refuse a run folder that a single process wrote: the merge would replace its rows."""
    written = [n for n in _DATA_FILES if (out_dir / n).exists()]
    if not written:
        return
    if (out_dir / RunStore.META).is_file() and PARTS in RunStore(out_dir).read_meta():
        return  # a merged run: merging again replaces it with the same rows and more
    raise ValueError(
        f"{out_dir} holds a run written by one process ({', '.join(written)}); a sharded "
        f"run merges its {PARTS}/ into that folder and would replace its rows: finish it "
        "without torchrun, or choose another --out"
    )


def _part_problems(
    study: Study,
    folder: Path,
    examples: Sequence[Example],
    indices: Sequence[int],
    rank: int,
    world: int,
    *,
    complete: bool,
    command: str = "",
) -> list[str]:
    """Why ``folder`` is not (``complete``: not exactly) the share ``examples`` of this
    study; empty when it is."""
    store = RunStore(folder)
    problems: list[str] = []
    meta: dict[str, Any] | None = None
    if (folder / RunStore.META).is_file():
        meta = store.read_meta()
    elif complete:
        problems.append(f"no {RunStore.META}")
    if meta is not None:
        got = meta.get("shard") or {}
        if (got.get("rank"), got.get("world")) != (rank, world):
            problems.append(
                f"{RunStore.META} records rank {got.get('rank')} of {got.get('world')}, "
                f"not rank {rank} of {world}"
            )
        elif complete and got.get("examples") != [ex.id for ex in examples]:
            problems.append(f"{RunStore.META} lists other examples than the share's")
        if meta["model"] != study.tm.name:
            problems.append(f"model {meta['model']!r}, not {study.tm.name!r}")
        if meta["seed"] != study.config.seed:
            problems.append(f"seed {meta['seed']}, not {study.config.seed}")
        if complete and command and meta["command"] != command:
            problems.append(f"written by another command ({meta['command']})")
    try:
        results, explanations = store.results(), store.explanations()
        curves, sanity = store.curves(), store.sanity()
    except ValueError as err:  # a malformed line (not a cut-off last line: that is resumed)
        return [*problems, str(err)]
    by_id = {ex.id: ex for ex in examples}
    held = {r["example"] for rows in (results, explanations, curves, sanity) for r in rows}
    extra = sorted(held - set(by_id))
    if extra:
        more = " …" if len(extra) > 5 else ""
        problems.append(f"holds examples outside its share: {', '.join(extra[:5])}{more}")
    changed = sorted(
        {
            e["example"]
            for e in explanations
            if e["example"] in by_id and e["text"] != by_id[e["example"]].text
        }
    )
    if changed:
        problems.append(f"other sentences under the ids {', '.join(changed[:5])}")
    if complete and not problems:
        missing = study.unfinished(examples, indices, store)
        if missing:
            more = f" and {len(missing) - 5} more" if len(missing) > 5 else ""
            problems.append(f"unfinished: {', '.join(missing[:5])}{more}")
    return problems


def _raise(folder: Path, problems: list[str], advice: str) -> None:
    raise ValueError(f"{folder} is not this run's share: {'; '.join(problems)}. {advice}")


def run_study_part(
    tm: TextModel,
    examples: Sequence[Example],
    out_dir: Path | str,
    config: StudyConfig,
    *,
    rank: int,
    world: int,
    corpus: list[str] | None = None,
    data: str = "",
    command: str = "",
) -> RunStore:
    """Run process ``rank``'s share of a study of ``world`` processes (no report).

    The share is the examples at positions ``rank, rank + world, …`` of ``examples``
    (all of the study's examples, in order; every process passes the same list), run
    with their positions in the whole study (:meth:`Study.run`) into
    :func:`part_dir`, resuming it. :func:`merge_study_parts` then makes the study's
    run folder.

    Raises:
        ValueError: ``out_dir`` holds a run written by one process, or the part folder
            holds rows of another run (other examples or sentences, model or seed), or
            a malformed line; nothing is written then.
    """
    out = Path(out_dir)
    _check_out_dir(out)
    indices = share(len(examples), rank, world)
    mine = [examples[i] for i in indices]
    folder = part_dir(out, rank, world)
    study = Study(tm, corpus or [], folder, config)
    problems = _part_problems(study, folder, mine, indices, rank, world, complete=False)
    if problems:
        _raise(folder, problems, "Delete it to redo the share, or choose another --out.")
    study.meta_extra = {"shard": {"rank": rank, "world": world, "examples": [ex.id for ex in mine]}}
    study.progress = f"rank {rank} of {world}: "
    return study.run(mine, data=data, command=command, indices=indices)


def merge_study_parts(
    tm: TextModel,
    examples: Sequence[Example],
    out_dir: Path | str,
    config: StudyConfig,
    *,
    world: int,
    corpus: list[str] | None = None,
    command: str = "",
) -> RunStore:
    """Merge the ``world`` shares of a study (:func:`run_study_part`) into ``out_dir``.

    Each part must hold exactly its share, complete: its ``meta.json`` records its rank,
    the world size and the share's examples, the same model, seed and (when given)
    ``command``; its rows are of those examples and sentences only, and nothing is left
    to do (:meth:`Study.unfinished`). Parts of another world size in ``parts/`` are
    ignored. The merged files are written afresh (:func:`~comparisons.store.write_merged`:
    merging again gives the same folder), rows in the order of ``examples``; its
    ``meta.json`` joins the parts' methods, metrics and notes and records the parts under
    ``"parts"``.

    Raises:
        ValueError: a part is missing, incomplete or not its share (the message names
            it); nothing is written then.
    """
    out = Path(out_dir)
    study = Study(tm, corpus or [], out, config)
    folders = [part_dir(out, rank, world) for rank in range(world)]
    for rank, folder in enumerate(folders):
        indices = share(len(examples), rank, world)
        mine = [examples[i] for i in indices]
        problems = _part_problems(
            study, folder, mine, indices, rank, world, complete=True, command=command
        )
        if problems:
            _raise(folder, problems, "Run the same command again to redo what is missing.")
    metas = [RunStore(f).read_meta() for f in folders]
    methods = {k: v for m in metas for k, v in m["methods"].items()}
    metrics = {k: v for m in metas for k, v in m["metrics"].items()}
    meta = {k: v for k, v in metas[0].items() if k != "shard"}
    meta.update(
        date=datetime.date.today().isoformat(),
        methods=methods,
        metrics={k: metrics[k] for k in sorted(metrics)},
        notes=list(dict.fromkeys(n for m in metas for n in m.get("notes", []))),
    )
    meta[PARTS] = {"world": world, "folders": [str(f.relative_to(out)) for f in folders]}
    order = {ex.id: i for i, ex in enumerate(examples)}
    return write_merged(out, folders, meta, order)
