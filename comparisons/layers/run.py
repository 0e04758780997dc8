"""The layer analysis run: load the models, explain every layer, write the results.

:func:`run_layers` explains every layer of every model on a set of sentences
(:func:`~captum_perturb.explain_corpus`, resumable, sharded under ``torchrun``) and
writes, per model, ``information.json``/``.csv``, ``heatmap.png``/``.svg`` (first
sentence) and ``layers.html``, and for all models ``depth_curves.png``,
``curves.json`` and a self-contained ``index.html``. The command line helpers
(:func:`load_model`, :func:`read_sentence_file`, :func:`default_threads`) serve
``python -m comparisons layers``.
"""

from __future__ import annotations

import json
import math
import os
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from captum_perturb import (
    LayerInformation,
    explain_corpus,
    layer_state_std,
    read_layer_information,
)
from captum_perturb.distributed import rank_and_world
from comparisons.layers.curves import bootstrap_curves, group_curves
from comparisons.layers.groups import group_masks, token_groups, tokenizer_words
from comparisons.layers.page import layers_html, model_folder, write_index
from comparisons.layers.plots import depth_curves, heatmap
from comparisons.models.finetune import cache_root
from comparisons.stats import BOOTSTRAP_RESAMPLES


def concat_information(parts: Sequence[LayerInformation]) -> LayerInformation:
    """Sentences of several :class:`~captum_perturb.LayerInformation` (same model) in one.

    Shorter parts are padded (NaN, ``mask`` False, token ``""``) to the longest.
    """
    if not parts:
        raise ValueError("nothing to concatenate")
    first = parts[0]
    for p in parts[1:]:
        if p.layers != first.layers or p.dim != first.dim:
            raise ValueError("parts explain different layers or models")
    width = max(p.mask.shape[1] for p in parts)
    counted = [p.evaluations for p in parts if p.evaluations is not None]

    def pad(t: torch.Tensor, value: float | bool) -> torch.Tensor:
        extra = width - t.shape[-1]
        return torch.nn.functional.pad(t, (0, extra), value=value) if extra else t

    arrays = {
        k: torch.cat([pad(getattr(p, k), math.nan) for p in parts])
        for k in ("sigma", "entropy", "nats_kept", "std_error")
    }
    return LayerInformation(
        layers=list(first.layers),
        tokens=[row + [""] * (width - len(row)) for p in parts for row in p.tokens],
        converged=torch.cat([p.converged for p in parts]),
        mask=torch.cat([pad(p.mask, False) for p in parts]),
        special=torch.cat([pad(p.special, False) for p in parts]),
        sigma_max=first.sigma_max,
        sigma_max_source=first.sigma_max_source,
        rate=first.rate,
        normaliser=dict(first.normaliser),
        dim=first.dim,
        meta=dict(first.meta),
        evaluations=torch.cat(counted) if len(counted) == len(parts) else None,
        **arrays,
    )


@dataclass(frozen=True)
class _Settings:
    """How :func:`run_layers` explains each model."""

    layers: Sequence[int] | None
    seed: int
    batch_size: int
    show_progress: bool
    std_cache: Path


def _explain(
    model: Any,
    tokenizer: Any,
    sentences: Sequence[str],
    state_std: Mapping[int, torch.Tensor] | None,
    out_dir: Path,
    *,
    layers: Sequence[int] | None,
    seed: int,
    batch_size: int,
    show_progress: bool,
) -> LayerInformation | None:
    """Chunks of ``batch_size`` sentences through :func:`~captum_perturb.explain_corpus`
    (chunk ``k`` with seed ``seed + k``; sharded under ``torchrun``, resumable in
    ``out_dir``); the merged result on process 0, ``None`` on the others."""
    batches = [
        tokenizer(list(sentences[i : i + batch_size]), return_tensors="pt", padding=True,
                  truncation=True)
        for i in range(0, len(sentences), batch_size)
    ]  # fmt: skip
    path = explain_corpus(
        model, batches, out_dir, tokenizer=tokenizer, seed=seed, show_progress=show_progress,
        layers=layers, state_std=state_std,
    )  # fmt: skip
    if rank_and_world()[0] != 0:
        return None
    return read_layer_information(path)


def _explain_model(
    name: str,
    model: Any,
    tokenizer: Any,
    sentences: Sequence[str],
    corpus: Sequence[str] | None,
    folder: Path,
    how: _Settings,
) -> LayerInformation | None:
    """σ_S of every layer from ``corpus`` (if any), then every layer explained on the
    sentences; ``None`` on the processes other than 0 of a ``torchrun`` job."""
    std = None
    if corpus:
        enc = tokenizer(list(corpus), return_tensors="pt", padding=True, truncation=True)
        std = layer_state_std(model, enc, how.layers, cache_dir=how.std_cache)
    got = _explain(
        model, tokenizer, sentences, std, folder / "rows", layers=how.layers, seed=how.seed,
        batch_size=how.batch_size, show_progress=how.show_progress,
    )  # fmt: skip
    if got is None:
        return None
    info = concat_information([got])  # a fresh meta dict
    info.meta.update(model=name, sentences=list(sentences), corpus_size=len(corpus or []))
    return info


def _write_model(info: LayerInformation, name: str, folder: Path) -> None:
    """A model's tables, heatmaps (first sentence) and ``layers.html``."""
    info.save(folder / "information.json")
    info.save(folder / "information.csv")
    heatmap(info, 0, folder / "heatmap.png")
    heatmap(info, 0, folder / "heatmap.svg")
    layers_html(info, None, folder / "layers.html", f"{name}: information kept per layer")


def _write_run(
    out: Path,
    infos: Mapping[str, LayerInformation],
    masks: Mapping[str, Mapping[str, torch.Tensor]],
    summary: dict[str, Any],
) -> dict[str, dict[str, list[float]]]:
    """The curves of every model and group: ``depth_curves.png``, ``curves.json`` (with
    ``summary``) and ``index.html``."""
    curves = {m: group_curves(info, masks[m]) for m, info in infos.items()}
    names = next(iter(infos.values())).layer_names()
    boot = summary.pop("bootstrap")
    bands = None if boot is None else boot["curves"]
    depth_curves(curves, names, out / "depth_curves.png", "Information kept vs depth", bands)
    summary = {"curves": curves, "layer_names": names, **summary, "bootstrap": boot}
    (out / "curves.json").write_text(json.dumps(summary, indent=1), encoding="utf-8")
    write_index(out / "index.html", infos, curves, masks, summary)
    return curves


def _explain_all(
    models: Mapping[str, tuple[Any, Any]],
    sentences: Sequence[str],
    corpus: Sequence[str] | None,
    out: Path,
    how: _Settings,
    predicates: Mapping[str, Callable[[str], bool]],
) -> tuple[dict[str, LayerInformation], dict[str, dict[str, torch.Tensor]], dict[str, float]]:
    """Every model explained and written (:func:`_write_model`): ``(infos, masks,
    seconds)`` on process 0 of a ``torchrun`` job (empty on the others)."""
    infos: dict[str, LayerInformation] = {}
    masks: dict[str, dict[str, torch.Tensor]] = {}
    seconds: dict[str, float] = {}
    for name, (model, tokenizer) in models.items():
        started = time.perf_counter()
        folder = out / model_folder(name)
        info = _explain_model(name, model, tokenizer, sentences, corpus, folder, how)
        if info is None:  # another process of a torchrun job: process 0 writes the pages
            continue
        seconds[name] = time.perf_counter() - started
        _write_model(info, name, folder)
        infos[name] = info
        masks[name] = group_masks(info, predicates, tokenizer_words(tokenizer, sentences))
    return infos, masks, seconds


def run_layers(
    models: Mapping[str, tuple[Any, Any]],
    sentences: Sequence[str],
    corpus: Sequence[str] | None,
    out_dir: str | Path,
    *,
    groups: str = "sentiment",
    layers: Sequence[int] | None = None,
    seed: int = 0,
    batch_size: int = 8,
    cache_dir: str | Path | None = None,
    show_progress: bool = True,
    lexicon: Mapping[str, float] | None = None,
    bootstrap: int = BOOTSTRAP_RESAMPLES,
) -> dict[str, dict[str, list[float]]]:
    """Explain every layer of every model on ``sentences``; write the tables and pictures.

    Args:
        models: ``{name: (model, tokenizer)}``, shown side by side in that order.
        sentences: the sentences explained (chunks of ``batch_size``, padded; under
            ``torchrun`` the processes share the chunks and process 0 writes the pages).
        corpus: σ_S of every layer from these sentences (:func:`layer_state_std`); ``None``
            or empty: the per-sentence fallback of :func:`explain_layers` (it warns, and
            the page says so — layers and models are then not on one scale).
        out_dir: gets ``<model>/rows/`` (the :func:`~captum_perturb.explain_corpus` run
            folder; a re-run resumes there) and the files listed in :mod:`this module
            <comparisons.layers.run>`.
        groups: ``"sentiment"``, ``"stopwords"`` or ``"both"`` by whole word
            (:func:`~comparisons.layers.groups.token_groups`).
        layers, seed, batch_size: which layers (default all, 0 = embedding output);
            chunk ``k`` is explained with seed ``seed + k`` (``seed`` also seeds the
            bootstrap); sentences per chunk.
        cache_dir, show_progress: σ_S cache (default ``<cache root>/layer_std``); a
            progress bar over chunks.
        lexicon: ``{word: valence}`` instead of the VADER lexicon.
        bootstrap: :data:`~comparisons.stats.BOOTSTRAP_RESAMPLES` (the harness's only
            size) for 95 % intervals over sentences
            (:func:`~comparisons.layers.curves.bootstrap_curves`); ``0``: none.

    Returns:
        ``{model: {group: [mean nats kept per token, one per layer]}}`` over all sentences,
        special tokens left out (``{}`` on the processes other than 0 of a ``torchrun`` job).
    """
    _check(models, sentences, bootstrap)
    predicates = token_groups(groups, lexicon)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    std_cache = Path(cache_dir) if cache_dir is not None else cache_root() / "layer_std"
    how = _Settings(layers, seed, batch_size, show_progress, std_cache)
    infos, masks, seconds = _explain_all(models, sentences, corpus, out, how, predicates)
    if not infos:
        return {}
    boot = None
    if bootstrap > 0 and len(sentences) > 1:
        boot = bootstrap_curves(infos, masks, seed=seed)
    summary = {"groups": groups, "seed": seed, "sentences": len(sentences)}
    summary.update(corpus_size=len(corpus or []), seconds=seconds, bootstrap=boot)
    return _write_run(out, infos, masks, summary)


def _check(models: Mapping[str, Any], sentences: Sequence[str], bootstrap: int) -> None:
    if not models:
        raise ValueError("no models to explain")
    if not sentences:
        raise ValueError("no sentences to explain")
    if bootstrap not in (0, BOOTSTRAP_RESAMPLES):
        raise ValueError(
            f"bootstrap={bootstrap}: the harness's bootstrap draws {BOOTSTRAP_RESAMPLES} "
            "resamples (comparisons.stats.BOOTSTRAP_RESAMPLES); pass that, or 0 for none"
        )


# ---------------------------------------------------------------------------- CLI helpers
def load_model(name: str) -> tuple[Any, Any]:
    """``(model, tokenizer)`` in eval mode for a name of the ``layers`` command.

    ``"minilm"``: the packaged MiniLM (``AutoModel``); ``"sst2"``: it fine-tuned on SST-2
    (:func:`~comparisons.models.finetune.sst2_classifier`, ``AutoModelForSequenceClassification``);
    anything else: a local folder or hub id (``AutoModel``).
    """
    from transformers import AutoModel, AutoModelForSequenceClassification, AutoTokenizer

    from comparisons.models.resources import packaged_minilm_dir

    loader: Any = AutoModel
    if name == "minilm":
        where: str | Path = packaged_minilm_dir()
    elif name == "sst2":
        from comparisons.models.finetune import sst2_classifier

        where, loader = sst2_classifier("full"), AutoModelForSequenceClassification
    else:
        where = name
    tokenizer = AutoTokenizer.from_pretrained(str(where))
    model = loader.from_pretrained(str(where))
    model.eval()
    return model, tokenizer


def read_sentence_file(path: str | Path) -> list[str]:
    """Sentences of a ``sentence<TAB>label`` file (with its header) or one per line."""
    lines = Path(path).read_text(encoding="utf-8").splitlines()
    if lines and lines[0].split("\t")[:2] == ["sentence", "label"]:
        lines = lines[1:]
    return [line.split("\t")[0].strip() for line in lines if line.split("\t")[0].strip()]


def default_threads() -> int:
    """``$OMP_NUM_THREADS`` when set, else torch's default."""
    value = os.environ.get("OMP_NUM_THREADS", "")
    return int(value) if value.isdigit() else torch.get_num_threads()
