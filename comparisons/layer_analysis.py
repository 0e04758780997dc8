r"""Which words each layer keeps, before and after fine-tuning (Guan et al. 2019, §5).

For each model, :func:`~captum_perturb.layer_state_std` puts every layer on one scale
(σ_S over a corpus) and :func:`~captum_perturb.explain_layers` measures the nats each
layer keeps of each token, :math:`D\log(\sigma_{max}/\sigma^{(l)}_i)`. Averaging those
over a *group* of tokens gives an information-vs-depth curve per group:

* ``"sentiment"`` — words of the VADER lexicon (Hutto & Gilbert 2014, MIT licence) with
  :math:`|\text{valence}| \ge 1` against all other words. The lexicon is fetched at run
  time from the ``vaderSentiment==3.3.2`` source distribution into the cache
  (:func:`vader_lexicon`), never stored in the repository. It ignores negation and
  context: a proxy for "sentiment-bearing", not a rationale.
* ``"stopwords"`` — our own list of English function words (:func:`stop_words`) and
  punctuation against content words.

:func:`run_layers` writes, per model, ``information.json``/``.csv``, ``heatmap.png``/
``.svg`` (first sentence) and ``layers.html``, and for all models ``depth_curves.png``
and a self-contained ``index.html``. From the command line::

    python -m comparisons layers --n 50 --models minilm,sst2 --groups both
"""

from __future__ import annotations

import base64
import contextlib
import html
import io
import json
import math
import os
import re
import subprocess
import sys
import tarfile
import tempfile
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import torch

from captum_perturb import (
    LayerInformation,
    explain_corpus,
    layer_state_std,
    read_layer_information,
)
from captum_perturb._distributed import rank_and_world
from comparisons.finetune import cache_root

VADER_REQUIREMENT = "vaderSentiment==3.3.2"
VADER_MEMBER = "vaderSentiment/vader_lexicon.txt"
SENTIMENT_THRESHOLD = 1.0
GROUP_KINDS = ("sentiment", "stopwords", "both")
SENTIMENT, OTHER = "sentiment words (VADER |valence| ≥ 1)", "other words"
STOP, CONTENT = "stop words", "content words"

_STOP_TEXT = (
    # articles and determiners
    "a an the this that these those some any each every no all both few many much more "
    "most other such same own "
    # pronouns
    "i me my mine myself we us our ours ourselves you your yours yourself yourselves he "
    "him his himself she her hers herself it its itself they them their theirs themselves "
    "one who whom whose which what "
    # prepositions
    "about above across after against along among around as at before behind below "
    "between beyond by down during for from in into like of off on out over since "
    "through to towards under until up upon with within without "
    # conjunctions and connectives
    "and but or nor so yet if because while although though than whether unless when "
    "where why how then also too just only very not "
    # auxiliaries and modals (with the pieces of contractions: it 's, do n't, we 've)
    "am is are was were be been being have has had having do does did doing will would "
    "shall should can could may might must s t d ll m re ve n 's 're 've 'd 'll 'm n't "
    # adverbs of place and time that carry no content
    "here there now again "
    # punctuation tokens (any punctuation-only token counts too)
    ". , ; : ! ? ' \" ( ) -"
)
_STOP_WORDS = frozenset(_STOP_TEXT.split())


def stop_words() -> frozenset[str]:
    """Our own list of common English function words and punctuation tokens (lowercase)."""
    return _STOP_WORDS


def normalise_token(token: str) -> str:
    """A word piece as a lexicon word: without ``##``/``Ġ``/``▁`` markers, lowercase."""
    for marker in ("##", "Ġ", "▁"):
        if token.startswith(marker):
            token = token[len(marker) :]
    return token.strip().lower()


def _punctuation(word: str) -> bool:
    return not any(c.isalnum() for c in word)


# ---------------------------------------------------------------------------- VADER
def parse_vader_lexicon(text: str) -> dict[str, float]:
    """``token<TAB>mean valence<TAB>std<TAB>ratings`` lines as ``{token: mean valence}``."""
    out = {}
    for line in text.splitlines():
        fields = line.strip("\r\n").split("\t")
        if len(fields) < 2 or not fields[0]:
            continue
        try:
            out[fields[0]] = float(fields[1])
        except ValueError:
            continue
    return out


def lexicon_from_sdist(path: str | Path) -> dict[str, float]:
    """The VADER lexicon read from a ``vaderSentiment`` source ``.tar.gz``.

    Raises:
        RuntimeError: the archive holds no ``vaderSentiment/vader_lexicon.txt``.
    """
    with tarfile.open(path, "r:gz") as tar:
        for member in tar.getmembers():
            if member.isfile() and member.name.endswith(VADER_MEMBER):
                f = tar.extractfile(member)
                if f is not None:
                    return parse_vader_lexicon(f.read().decode("utf-8", errors="replace"))
    raise RuntimeError(f"{path} holds no {VADER_MEMBER}")


def _download_sdist(dest: Path) -> Path:
    cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--no-binary", ":all:"]
    cmd += [VADER_REQUIREMENT, "-d", str(dest)]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=600, check=False)
    found = sorted(dest.glob("*.tar.gz"))
    if done.returncode != 0 or not found:
        raise RuntimeError(f"`{' '.join(cmd)}` failed: {done.stderr.strip()[-500:]}")
    return found[0]


def vader_lexicon(cache_dir: str | Path | None = None) -> dict[str, float]:
    """VADER's 7,500 human-rated words → mean valence (−4 … +4), cached as JSON.

    Loaded from ``<cache_dir>/vader_lexicon.json`` (default cache: ``$CAPTUM_PERTURB_CACHE``
    or ``~/.cache/captum_perturb``); when missing, ``pip download``\\ s the
    ``vaderSentiment==3.3.2`` sdist into a temporary folder, reads its lexicon and
    writes the cache.

    Raises:
        RuntimeError: no cache and the download failed (the message says what to do).
    """
    path = Path(cache_dir if cache_dir is not None else cache_root()) / "vader_lexicon.json"
    if path.is_file():
        cached: dict[str, float] = json.loads(path.read_text(encoding="utf-8"))
        return cached
    try:
        with tempfile.TemporaryDirectory() as tmp:
            lexicon = lexicon_from_sdist(_download_sdist(Path(tmp)))
    except (OSError, RuntimeError, subprocess.SubprocessError, tarfile.TarError) as err:
        raise RuntimeError(
            f"could not get the VADER lexicon ({err}). With a network, run "
            f"`pip download --no-deps --no-binary :all: {VADER_REQUIREMENT}` or call this "
            f"again; or write {{token: valence}} as JSON to {path}; or pass lexicon=..."
        ) from err
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp_path = path.with_suffix(".json.tmp")
    tmp_path.write_text(json.dumps(lexicon), encoding="utf-8")
    tmp_path.replace(path)
    return lexicon


def token_groups(
    kind: str, lexicon: Mapping[str, float] | None = None
) -> dict[str, Callable[[str], bool]]:
    """Token predicates for :meth:`~captum_perturb.LayerInformation.mean_by_layer`.

    Args:
        kind: ``"sentiment"`` (VADER words with ``|valence| ≥ 1`` / other words),
            ``"stopwords"`` (stop words and punctuation / content words) or ``"both"``.
        lexicon: ``{word: valence}``; default :func:`vader_lexicon` (``"sentiment"`` only).
    """
    if kind not in GROUP_KINDS:
        raise ValueError(f"unknown token groups {kind!r}; choose one of {list(GROUP_KINDS)}")
    out: dict[str, Callable[[str], bool]] = {}
    if kind in ("sentiment", "both"):
        lex = vader_lexicon() if lexicon is None else lexicon

        def sentiment(tok: str) -> bool:
            w = normalise_token(tok)
            return not _punctuation(w) and abs(lex.get(w, 0.0)) >= SENTIMENT_THRESHOLD

        out[SENTIMENT] = sentiment
        out[OTHER] = lambda tok: not sentiment(tok)
    if kind in ("stopwords", "both"):

        def stop(tok: str) -> bool:
            w = normalise_token(tok)
            return w in _STOP_WORDS or _punctuation(w)

        out[STOP] = stop
        out[CONTENT] = lambda tok: not stop(tok)
    return out


def _contrasts(groups: Sequence[str]) -> list[tuple[str, str]]:
    return [(a, b) for a, b in ((SENTIMENT, OTHER), (CONTENT, STOP)) if a in groups]


# ---------------------------------------------------------------------------- uncertainty
def sentence_sums(
    info: LayerInformation,
    groups: Mapping[str, Callable[[str], bool]],
    *,
    include_special: bool = False,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Per sentence, the nats kept summed over each group's tokens, and how many tokens.

    Summing these over sentences and dividing gives
    :meth:`~captum_perturb.LayerInformation.mean_by_layer`; resampling sentences gives
    its uncertainty (:func:`bootstrap_curves`).

    Returns:
        ``(sums, counts)``, both ``(N, G, L)`` float64 (sentences × groups × layers);
        tokens without a σ (excluded special tokens) are not counted.
    """
    n_sent, n_lay, _ = info.nats_kept.shape
    values = info.nats_kept.double()
    sums = torch.zeros(n_sent, len(groups), n_lay, dtype=torch.float64)
    counts = torch.zeros_like(sums)
    for g, pick in enumerate(groups.values()):
        chosen = info.token_mask(pick, include_special=include_special)
        ok = chosen[:, None, :] & ~values.isnan()
        sums[:, g] = torch.where(ok, values, torch.zeros_like(values)).sum(-1)
        counts[:, g] = ok.sum(-1).double()
    return sums, counts


def _interval(samples: torch.Tensor, level: float) -> torch.Tensor:
    """Percentile interval over the first dimension: ``(..., 2)`` (NaN if all NaN)."""
    q = torch.tensor([(1 - level) / 2, (1 + level) / 2], dtype=samples.dtype)
    return torch.nanquantile(samples, q, dim=0).movedim(0, -1)


def bootstrap_curves(
    infos: Mapping[str, LayerInformation],
    groups: Mapping[str, Callable[[str], bool]],
    *,
    n_boot: int = 2000,
    level: float = 0.95,
    seed: int = 0,
) -> dict[str, Any]:
    r"""Percentile bootstrap intervals for the depth curves and the group ratios.

    Sentences are the unit of resampling (the tokens of one sentence are not
    independent): each of ``n_boot`` replicates draws ``N`` sentences with replacement
    and recomputes every group's mean over its tokens, :math:`\sum` nats / :math:`\sum`
    tokens. Models explained on the same sentences share each replicate's draw, so the
    change of a ratio from the first model to another is a paired comparison.

    Args:
        infos: ``{model: LayerInformation}``.
        groups: ``{name: predicate(token)}`` (:func:`token_groups`).
        n_boot: bootstrap replicates.
        level: coverage of the intervals.
        seed: seeds the resampling.

    Returns:
        ``{"level", "n_boot", "curves": {model: {group: [[lo, hi] per layer]}},
        "ratios": {model: {"a / b": [[estimate, lo, hi] per layer]}},
        "ratio_change": {"model − first": {"a / b": [[estimate, lo, hi] per layer]}}}``
        for the contrasts of :func:`token_groups` (sentiment / other, content / stop);
        ``ratio_change`` only for models with as many sentences as the first.
    """
    if n_boot < 1 or not 0.0 < level < 1.0:
        raise ValueError("need n_boot >= 1 and 0 < level < 1")
    names = list(groups)
    pairs = [(names.index(a), names.index(b), f"{a} / {b}") for a, b in _contrasts(names)]
    gen = torch.Generator().manual_seed(seed)
    draws: dict[int, torch.Tensor] = {}

    def weights(n: int) -> torch.Tensor:
        # how often each sentence is drawn in each replicate; one draw per sample size
        if n not in draws:
            idx = torch.randint(n, (n_boot, n), generator=gen)
            draws[n] = torch.zeros(n_boot, n, dtype=torch.float64).scatter_add_(
                1, idx, torch.ones(n_boot, n, dtype=torch.float64)
            )
        return draws[n]

    out: dict[str, Any] = {"level": level, "n_boot": n_boot, "curves": {}, "ratios": {}}
    ratio_samples: dict[str, tuple[torch.Tensor, torch.Tensor]] = {}
    for model, info in infos.items():
        sums, counts = sentence_sums(info, groups)
        w = weights(sums.shape[0])
        boot = torch.einsum("bn,ngl->bgl", w, sums) / torch.einsum("bn,ngl->bgl", w, counts)
        point = sums.sum(0) / counts.sum(0)
        ci = _interval(boot, level)  # (G, L, 2)
        out["curves"][model] = {g: ci[i].tolist() for i, g in enumerate(names)}
        if pairs:
            est = torch.stack([point[a] / point[b] for a, b, _ in pairs])
            smp = torch.stack([boot[:, a] / boot[:, b] for a, b, _ in pairs], 1)
            rci = _interval(smp, level)
            out["ratios"][model] = {
                label: torch.cat([est[j, :, None], rci[j]], -1).tolist()
                for j, (_, _, label) in enumerate(pairs)
            }
            ratio_samples[model] = (est, smp)
    models = list(ratio_samples)
    if len(models) > 1:
        first = models[0]
        e0, s0 = ratio_samples[first]
        out["ratio_change"] = {}
        for model in models[1:]:
            if infos[model].nats_kept.shape[0] != infos[first].nats_kept.shape[0]:
                continue
            e1, s1 = ratio_samples[model]
            dci = _interval(s1 - s0, level)
            out["ratio_change"][f"{model} − {first}"] = {
                label: torch.cat([(e1 - e0)[j, :, None], dci[j]], -1).tolist()
                for j, (_, _, label) in enumerate(pairs)
            }
    return out


# ---------------------------------------------------------------------------- merging
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


# ---------------------------------------------------------------------------- pictures
def _save(fig: Any, path: str | Path) -> Path:
    path = Path(path)
    fmt = path.suffix.lstrip(".").lower()
    if fmt not in ("png", "svg"):
        raise ValueError(f"write a .png or .svg file, got {path.name!r}")
    fig.savefig(path, format=fmt, dpi=120)
    return path


def _png_tag(fig: Any, alt: str) -> str:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=100)
    data = base64.b64encode(buf.getvalue()).decode("ascii")
    return f'<img alt="{html.escape(alt)}" src="data:image/png;base64,{data}">'


def _heatmap_figure(info: LayerInformation, sentence: int, title: str | None) -> Any:
    import matplotlib as mpl
    from matplotlib.figure import Figure

    real = [t for t in range(len(info.tokens[sentence])) if bool(info.mask[sentence, t])]
    grid = info.nats_kept[sentence][:, real].numpy()
    special = [bool(info.special[sentence, t]) for t in real]
    labels = [
        tok if not sp or tok[:1] in "[<" else f"[{tok}]"
        for tok, sp in zip([info.tokens[sentence][t] for t in real], special, strict=True)
    ]
    fig = Figure(figsize=(2.0 + 0.42 * len(real), 1.6 + 0.42 * len(info.layers)))
    ax = fig.subplots()
    cmap = mpl.colormaps["viridis"].with_extremes(bad="lightgrey")
    im = ax.imshow(grid, cmap=cmap, aspect="auto")
    ax.set_xticks(range(len(real)), labels, rotation=60, ha="right")
    for tick, sp in zip(ax.get_xticklabels(), special, strict=True):
        if sp:
            tick.set_color("grey")
    ax.set_yticks(range(len(info.layers)), info.layer_names())
    fig.colorbar(im, ax=ax, label="nats kept")
    name = info.meta.get("model")
    ax.set_title(title or (f"{name}: " if name else "") + "information kept per token", loc="left")
    fig.tight_layout()
    return fig


def heatmap(
    info: LayerInformation, sentence: int, path: str | Path, title: str | None = None
) -> Path:
    """Tokens × layers heatmap of the nats kept for one sentence (``.png`` or ``.svg``).

    Padding is left out; special tokens are labelled in grey and brackets.
    """
    return _save(_heatmap_figure(info, sentence, title), path)


def layers_html(
    info: LayerInformation, sentences: Sequence[int] | None, path: str | Path, title: str
) -> Path:
    """One Captum ``visualize_text`` row per layer per sentence, in a self-contained page.

    Colour: the nats a layer keeps of each token scaled by the row's maximum.
    """
    from captum.attr import visualization as viz

    chosen = range(len(info.tokens)) if sentences is None else sentences
    records = []
    for n in chosen:
        real = [t for t in range(len(info.tokens[n])) if bool(info.mask[n, t])]
        words = [html.escape(info.tokens[n][t]) for t in real]
        for j, name in enumerate(info.layer_names()):
            nats = torch.nan_to_num(info.nats_kept[n, j, real].double(), nan=0.0)
            top = float(nats.max()) if len(real) else 0.0
            scores = (nats / top if top > 0 else nats).clamp(0.0, 1.0)
            records.append(
                viz.VisualizationDataRecord(
                    scores, top, "max", f"sentence {n}", name, float(nats.sum()), words, 1.0
                )
            )
    with contextlib.redirect_stdout(io.StringIO()):  # it also display()s the table
        fragment = viz.visualize_text(records, legend=False).data
    fragment = fragment.replace(
        "<th>True Label</th><th>Predicted Label</th><th>Attribution Label</th>"
        "<th>Attribution Score</th>",
        "<th>Sentence</th><th>Row maximum (nats)</th><th>Layer</th><th>Total nats</th>",
    )
    page = (
        f"<!DOCTYPE html><html><head><meta charset='utf-8'><title>{html.escape(title)}"
        f"</title></head><body><h1>{html.escape(title)}</h1><p>Each row: the nats one layer "
        "keeps of each token (embeddings = the embedding output), coloured relative to the "
        f"row's maximum.</p>{fragment}</body></html>"
    )
    path = Path(path)
    path.write_text(page, encoding="utf-8")
    return path


Intervals = Mapping[str, Mapping[str, Sequence[Sequence[float]]]]


def _curves_figure(
    curves: Mapping[str, Mapping[str, Sequence[float]]],
    layer_names: Sequence[str],
    title: str,
    intervals: Intervals | None = None,
) -> Any:
    from matplotlib.figure import Figure

    fig = Figure(figsize=(1.0 + 4.2 * max(len(curves), 1), 4.2))
    axes = fig.subplots(1, max(len(curves), 1), sharey=True, squeeze=False)[0]
    for ax, (model, groups) in zip(axes, curves.items(), strict=False):
        for group, values in groups.items():
            (line,) = ax.plot(range(len(values)), list(values), marker="o", label=group)
            band = (intervals or {}).get(model, {}).get(group)
            if band is not None:
                lo, hi = zip(*band, strict=True)
                ax.fill_between(range(len(band)), lo, hi, color=line.get_color(), alpha=0.2)
        n = max((len(v) for v in groups.values()), default=0)
        ax.set_xticks(range(n), list(layer_names)[:n], rotation=45, ha="right")
        ax.set_title(model)
        ax.grid(alpha=0.3)
    axes[0].set_ylabel("mean nats kept per token")
    axes[-1].legend(fontsize="small")
    fig.suptitle(title)
    fig.tight_layout()
    return fig


def depth_curves(
    curves: Mapping[str, Mapping[str, Sequence[float]]],
    layer_names: Sequence[str],
    path: str | Path,
    title: str,
    intervals: Intervals | None = None,
) -> Path:
    """Information kept vs depth: one panel per model (shared y), one line per group.

    Args:
        curves: ``{model: {group: [mean nats kept, one per layer]}}``.
        layer_names: the x tick labels (``LayerInformation.layer_names()``).
        intervals: ``{model: {group: [[lo, hi], one per layer]}}`` drawn as shaded bands
            (``bootstrap_curves(...)["curves"]``).
    """
    return _save(_curves_figure(curves, layer_names, title, intervals), path)


# ---------------------------------------------------------------------------- the study
def _folder(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "_", name).strip("._") or "model"


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
    bootstrap: int = 2000,
) -> dict[str, dict[str, list[float]]]:
    """Explain every layer of every model on ``sentences``; write the tables and pictures.

    Args:
        models: ``{name: (model, tokenizer)}``, shown side by side in that order.
        sentences: the sentences explained (chunks of ``batch_size``, padded).
        corpus: σ_S of every layer from these sentences (:func:`layer_state_std`); ``None``
            or empty: the per-sentence fallback of :func:`explain_layers` (it warns, and
            the page says so — layers and models are then not on one scale).
        out_dir: gets ``<model>/rows/`` (the :func:`~captum_perturb.explain_corpus` run
            folder: ``rows.parquet``; a re-run resumes there), ``<model>/information.json|.csv``,
            ``<model>/heatmap.png|.svg`` (first sentence), ``<model>/layers.html``,
            ``depth_curves.png``, ``curves.json`` and ``index.html``.
        groups: ``"sentiment"``, ``"stopwords"`` or ``"both"`` (:func:`token_groups`).
        layers: which layers (default all, 0 = embedding output).
        seed: chunk ``k`` is explained with seed ``seed + k``.
        batch_size: sentences per call of :func:`explain_layers` (a batch of the corpus
            run; under ``torchrun`` the processes share the batches and process 0 writes
            the pages).
        cache_dir: σ_S cache (default ``<cache root>/layer_std``).
        show_progress: a progress bar over chunks.
        lexicon: ``{word: valence}`` instead of :func:`vader_lexicon`.
        bootstrap: replicates of :func:`bootstrap_curves` for 95 % intervals over
            sentences (bands in the figure, intervals in ``curves.json`` and the page);
            ``0`` or a single sentence: none.

    Returns:
        ``{model: {group: [mean nats kept per token, one per layer]}}`` over all sentences,
        special tokens left out (``{}`` on the processes other than 0 of a ``torchrun`` job).
    """
    if not models:
        raise ValueError("no models to explain")
    if not sentences:
        raise ValueError("no sentences to explain")
    predicates = token_groups(groups, lexicon)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    std_cache = Path(cache_dir) if cache_dir is not None else cache_root() / "layer_std"
    curves: dict[str, dict[str, list[float]]] = {}
    infos: dict[str, LayerInformation] = {}
    seconds: dict[str, float] = {}
    for name, (model, tokenizer) in models.items():
        started = time.perf_counter()
        std = None
        if corpus:
            enc = tokenizer(list(corpus), return_tensors="pt", padding=True, truncation=True)
            std = layer_state_std(model, enc, layers, cache_dir=std_cache)
        folder = out / _folder(name)
        got = _explain(
            model, tokenizer, sentences, std, folder / "rows", layers=layers, seed=seed,
            batch_size=batch_size, show_progress=show_progress,
        )  # fmt: skip
        if got is None:  # another process of a torchrun job: process 0 writes the pages
            continue
        info = concat_information([got])  # a fresh meta dict
        info.meta.update(model=name, sentences=list(sentences), corpus_size=len(corpus or []))
        seconds[name] = time.perf_counter() - started
        info.save(folder / "information.json")
        info.save(folder / "information.csv")
        heatmap(info, 0, folder / "heatmap.png")
        heatmap(info, 0, folder / "heatmap.svg")
        layers_html(info, None, folder / "layers.html", f"{name}: information kept per layer")
        curves[name] = info.mean_by_layer(predicates)
        infos[name] = info
    if not infos:
        return {}
    names = next(iter(infos.values())).layer_names()
    title = "Information kept vs depth"
    boot = (
        bootstrap_curves(infos, predicates, n_boot=bootstrap, seed=seed)
        if bootstrap > 0 and len(sentences) > 1
        else None
    )
    bands = None if boot is None else boot["curves"]
    depth_curves(curves, names, out / "depth_curves.png", title, bands)
    summary = {
        "curves": curves,
        "layer_names": names,
        "groups": groups,
        "seed": seed,
        "sentences": len(sentences),
        "corpus_size": len(corpus or []),
        "seconds": seconds,
        "bootstrap": boot,
    }
    (out / "curves.json").write_text(json.dumps(summary, indent=1), encoding="utf-8")
    _index(out / "index.html", infos, curves, predicates, summary)
    return curves


_CSS = (
    "body{font-family:sans-serif;margin:2em;max-width:90em}"
    "table{border-collapse:collapse}th,td{border:1px solid #bbb;padding:.25em .6em}"
    "td{text-align:right;font-variant-numeric:tabular-nums}img{max-width:100%}"
    ".row{display:flex;gap:1em;align-items:flex-start}.row>div{flex:1}"
    "p.note{color:#666;font-style:italic}"
)


def _fmt(x: float) -> str:
    return "n/a" if not math.isfinite(x) else f"{x:.1f}"


def _index(
    path: Path,
    infos: Mapping[str, LayerInformation],
    curves: Mapping[str, Mapping[str, Sequence[float]]],
    predicates: Mapping[str, Callable[[str], bool]],
    summary: Mapping[str, Any],
) -> None:
    esc = html.escape
    names = summary["layer_names"]
    groups = list(predicates)
    first = next(iter(infos.values()))
    n_shown = min(3, len(first.tokens))
    parts = [
        f"<!DOCTYPE html><html><head><meta charset='utf-8'><title>Information kept per "
        f"layer</title><style>{_CSS}</style></head><body>",
        "<h1>How much of each token every layer keeps</h1>",
        f"<p>{summary['sentences']} sentences; models: "
        + ", ".join(f"<b>{esc(m)}</b> ({summary['seconds'][m]:.0f} s)" for m in infos)
        + f"; seed {summary['seed']}. Noise on the embedding output; each layer's own σ "
        "(Guan et al. 2019). Means are over non-special tokens.</p>",
    ]
    if summary["corpus_size"]:
        parts.append(
            f"<p>σ_S of every layer from a corpus of {summary['corpus_size']} sentences, "
            "per model: layers are on one scale within a model.</p>"
        )
    else:
        parts.append(
            "<p class='note'>No corpus: each sentence's state was normalised by its own "
            "mean(Φ(x)²) (the reference code's fallback), so layers and models are not on "
            "one scale.</p>"
        )
    if SENTIMENT in groups:
        parts.append(
            "<p class='note'>Sentiment words: VADER lexicon (Hutto &amp; Gilbert 2014), "
            "|mean valence| ≥ 1, word pieces matched without ##/Ġ/▁ markers; a proxy that "
            "ignores negation and context.</p>"
        )
    boot = summary.get("bootstrap")
    bands = None if boot is None else boot["curves"]
    figure = _png_tag(_curves_figure(curves, names, "", bands), "")
    parts.append(f"<h2>Information vs depth</h2>{figure}")
    if boot is not None:
        parts.append(
            f"<p>Bands and brackets: {100 * boot['level']:.0f} % percentile bootstrap "
            f"intervals over sentences ({boot['n_boot']} replicates; models on the same "
            "sentences resampled together).</p>"
        )
    parts.append("<h2>Per sentence</h2>")
    for n in range(n_shown):
        cells = "".join(
            f"<div>{_png_tag(_heatmap_figure(info, n, m), f'{m}, sentence {n}')}</div>"
            for m, info in infos.items()
        )
        parts.append(f"<div class='row'>{cells}</div>")
    # mean nats per layer × group × model
    head1 = "".join(f"<th colspan='{len(groups)}'>{esc(m)}</th>" for m in infos)
    head2 = "".join(f"<th>{esc(g)}</th>" for _ in infos for g in groups)
    rows = "".join(
        f"<tr><th>{esc(layer)}</th>"
        + "".join(f"<td>{_fmt(curves[m][g][j])}</td>" for m in infos for g in groups)
        + "</tr>"
        for j, layer in enumerate(names)
    )
    parts.append(
        "<h2>Mean nats kept per token</h2><table><tr><th rowspan='2'>layer</th>"
        f"{head1}</tr><tr>{head2}</tr>{rows}</table>"
    )
    pairs = _contrasts(groups)
    if pairs:
        ratios = {} if boot is None else boot["ratios"]
        changes = {} if boot is None else boot.get("ratio_change", {})
        columns = [(m, f"{a} / {b}") for m in infos for a, b in pairs]
        columns += [(c, f"{a} / {b}") for c in changes for a, b in pairs]
        head = "".join(f"<th>{esc(m)}: {esc(label)}</th>" for m, label in columns)

        def cell(m: str, label: str, j: int) -> str:
            got = (ratios.get(m) or changes.get(m) or {}).get(label)
            if got is not None:
                est, lo, hi = got[j]
                return f"{est:.3f} [{lo:.3f}, {hi:.3f}]"
            a, b = label.split(" / ")
            return _ratio(curves[m][a][j], curves[m][b][j])

        body = "".join(
            f"<tr><th>{esc(layer)}</th>"
            + "".join(f"<td>{cell(m, label, j)}</td>" for m, label in columns)
            + "</tr>"
            for j, layer in enumerate(names)
        )
        parts.append(
            "<h2>Ratios (scale-free: compare models here)</h2>"
            f"<table><tr><th>layer</th>{head}</tr>{body}</table>"
        )
    counts = "".join(
        f"<tr><th>{esc(m)}</th>"
        + "".join(f"<td>{_count(info, predicates[g])}</td>" for g in groups)
        + "</tr>"
        for m, info in infos.items()
    )
    parts.append(
        "<h2>Tokens per group</h2><table><tr><th>model</th>"
        + "".join(f"<th>{esc(g)}</th>" for g in groups)
        + f"</tr>{counts}</table>"
    )
    links = "".join(
        f"<li>{esc(m)}: <a href='{_folder(m)}/layers.html'>layers.html</a>, "
        f"<a href='{_folder(m)}/information.csv'>information.csv</a></li>"
        for m in infos
    )
    parts.append(f"<h2>Files</h2><ul>{links}</ul></body></html>")
    path.write_text("".join(parts), encoding="utf-8")


def _ratio(a: float, b: float) -> str:
    return f"{a / b:.3f}" if b and math.isfinite(a / b) else "n/a"


def _count(info: LayerInformation, pick: Callable[[str], bool]) -> int:
    return int(info.token_mask(pick).sum())


# ---------------------------------------------------------------------------- CLI helpers
def load_model(name: str) -> tuple[Any, Any]:
    """``(model, tokenizer)`` in eval mode for a name of the ``layers`` command.

    ``"minilm"``: the packaged MiniLM (``AutoModel``); ``"sst2"``: it fine-tuned on SST-2
    (:func:`~comparisons.finetune.sst2_classifier`, ``AutoModelForSequenceClassification``);
    anything else: a local folder or hub id (``AutoModel``).
    """
    from transformers import AutoModel, AutoModelForSequenceClassification, AutoTokenizer

    from comparisons.resources import packaged_minilm_dir

    loader: Any = AutoModel
    if name == "minilm":
        where: str | Path = packaged_minilm_dir()
    elif name == "sst2":
        from comparisons.finetune import sst2_classifier

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
