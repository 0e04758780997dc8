"""The main job on the embedded default: explain a sentence with the packaged MiniLM.

For each explained layer (default: layer 3, the paper's BERT tutorial, and the last
layer) the noise goes on the output of ``model.embeddings`` and the explained state is
that layer's full ``[tokens × 384]`` output, normalised by σ_S from SST-2 dev
sentences (or, without the data, the reference fallback). Writes

* ``explanation.html`` — one Captum ``visualize_text`` row per layer,
* ``explanation.png`` — a tokens × layers heatmap of the nats each layer keeps,
* ``explanation.json`` — σ, entropies and nats per token and layer.

Then it compares every method of :data:`comparisons.methods.DEFAULT_METHODS` side by
side on the same encoder's pooled sentence embedding (no labels, no training): the
first ``--compare-n`` SST-2 dev sentences (default 8; 0 skips the comparison), σ_S from
the last ``--corpus-size`` dev sentences, Captum's infidelity / sensitivity and the
sanity check on the first two sentences (:func:`comparisons.study.run_study`). Without
the data it compares on ``--sentence`` alone with the fallback normaliser. Writes

* ``comparison/report.html`` — the side-by-side report (:mod:`comparisons.report`),
* ``comparison/results.csv`` and the other files of a run folder (:mod:`comparisons.store`),

and prints the mean ``state_shift/delete`` of each method (:data:`COMPARE_METRIC`). The
run folder is resumed when it was written with the same settings
(``comparison/main_job.json``) and started afresh otherwise.

Run ``python -m comparisons.main_job --help`` for the options.
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import html
import io
import json
import math
import shlex
import shutil
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from captum_perturb import LayerPerturbationEntropyAttribution, estimate_state_std
from comparisons.methods import DEFAULT_METHODS
from comparisons.resources import (
    DATA_ENV_VAR,
    TUTORIAL_SENTENCE,
    data_dir,
    load_encoder,
    read_sentences,
    sst2_dev,
)
from comparisons.store import RunStore, summarize
from comparisons.study import BETTER, StudyConfig, run_study
from comparisons.text_model import TextModel

COMPARE_METRIC = "state_shift/delete"
"""The metric the comparison's one-line summary prints (higher is better): 1 − cos of the
pooled embedding after deleting the top 10/20/50 % of the tokens. Deleting rather than
masking, because [MASK] is foreign to the sentence-transformers MiniLM: masking one or
two random tokens of a dev sentence already gives 1 − cos ≈ 0.45, so the masked shift
barely separates the methods from the random floor (8 sentences: 0.58 to 0.70 against
0.61), where deletion does (0.19 to 0.51 against 0.26). The report shows both."""

COMPARE_CAPTUM_EXAMPLES = 2
"""Sentences of the comparison that get Captum's infidelity and sensitivity_max."""

COMPARE_SANITY_EXAMPLES = 2
"""Sentences of the comparison that go through the cascading randomisation check."""


def explain_layers(
    model: Any,
    tokenizer: Any,
    sentence: str,
    layers: list[int],
    corpus: list[str] | None,
    rate: float = 0.1,
    seed: int = 0,
) -> dict[str, Any]:
    """σ per token for each 1-based encoder ``layer`` (noise on ``model.embeddings``)."""
    enc = tokenizer([sentence], return_tensors="pt")
    ids, mask = enc["input_ids"], enc["attention_mask"]

    def forward(i: torch.Tensor, m: torch.Tensor) -> torch.Tensor:
        return model(input_ids=i, attention_mask=m).last_hidden_state

    lpe = LayerPerturbationEntropyAttribution(forward, model.embeddings)
    out: dict[str, Any] = {
        "sentence": sentence,
        "tokens": tokenizer.convert_ids_to_tokens(ids[0]),
        "layers": {},
    }
    for k in layers:
        block = model.encoder.layer[k - 1]
        std = None
        if corpus:
            cenc = tokenizer(corpus, return_tensors="pt", padding=True)
            std = estimate_state_std(
                forward,
                cenc["input_ids"],
                (cenc["attention_mask"],),
                layer=block,
                attention_mask=cenc["attention_mask"],
            )
        start = time.perf_counter()
        res = lpe.explain(
            ids,
            additional_forward_args=(mask,),
            state_layer=block,
            state_std=std,
            rate=rate,
            seed=seed,
        )
        seconds = time.perf_counter() - start
        out["layers"][str(k)] = {
            "sigma": res.estimate.sigma[0].tolist(),
            "entropy": res.estimate.entropy[0].tolist(),
            "nats_kept": res.estimate.information[0].tolist(),
            "sigma_max": float(res.estimate.sigma_max[0]),
            "converged": bool(res.converged[0]),
            "normaliser": res.normaliser,
            "seconds": seconds,
        }
    return out


def write_html(result: dict[str, Any], path: Path) -> None:
    """One Captum ``visualize_text`` row per layer, in a self-contained page."""
    from captum.attr import visualization as viz

    records = []
    for k, layer in result["layers"].items():
        nats = torch.tensor(layer["nats_kept"])
        scores = nats / nats.max().clamp_min(1e-12)  # visualize_text clips to [-1, 1]
        records.append(
            viz.VisualizationDataRecord(
                scores,
                0.0,
                f"layer {k}",
                "-",
                "nats kept",
                float(nats.sum()),
                result["tokens"],
                float(layer["converged"]),
            )
        )
    with contextlib.redirect_stdout(io.StringIO()):  # it also display()s the page
        fragment = viz.visualize_text(records).data
    title = html.escape(result["sentence"])
    page = (
        "<!DOCTYPE html><html><head><meta charset='utf-8'>"
        f"<title>Perturbation entropy: {title}</title></head><body>"
        f"<h1>How much of each word the layers keep</h1><p>{title}</p>"
        "<p>Noise on the output of <code>model.embeddings</code>; each row explains one "
        "encoder layer's full hidden state. Colour: nats kept per token, scaled to the "
        "row's maximum (Attribution Score: total nats).</p>"
        f"{fragment}</body></html>"
    )
    path.write_text(page, encoding="utf-8")


def write_png(result: dict[str, Any], path: Path) -> None:
    """Tokens × layers heatmap of nats kept."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    layers = list(result["layers"])
    grid = torch.tensor([result["layers"][k]["nats_kept"] for k in layers])
    fig, ax = plt.subplots(figsize=(1.0 + 0.6 * grid.shape[1], 1.2 + 0.5 * len(layers)))
    im = ax.imshow(grid.numpy(), cmap="viridis", aspect="auto")
    ax.set_xticks(range(grid.shape[1]), result["tokens"], rotation=45, ha="right")
    ax.set_yticks(range(len(layers)), [f"layer {k}" for k in layers])
    fig.colorbar(im, ax=ax, label="nats kept")
    ax.set_title("Information of each token kept by each layer")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def comparison_data(
    n: int, corpus_size: int, sentence: str
) -> tuple[list[tuple[str, int | None]], list[str], str, list[str]]:
    """The comparison's sentences, its σ_S corpus, a description of the data, and notes.

    The first ``n`` SST-2 dev sentences (with their gold labels, shown in the report)
    and the last ``corpus_size`` as the corpus; without the data, ``sentence`` alone and
    no corpus (the reference fallback normaliser), which the notes say.
    """
    path = data_dir() / "sst2" / "dev.tsv"
    if not path.is_file():
        return (
            [(sentence, None)],
            [],
            "one sentence (--sentence; SST-2 dev not found); σ_S: reference fallback",
            [
                f"{path} not found (set {DATA_ENV_VAR}): the comparison explains --sentence "
                "alone, without a σ_S corpus (reference fallback normaliser)"
            ],
        )
    rows = read_sentences(path)
    corpus = [s for s, _ in rows[-corpus_size:]] if corpus_size > 0 else []
    sigma = f"σ_S from its last {len(corpus)}" if corpus else "σ_S: reference fallback"
    notes = [] if corpus else ["--corpus-size 0: the comparison uses the fallback normaliser"]
    data = f"SST-2 dev, first {min(n, len(rows))} sentences; {sigma}"
    return list(rows[:n]), corpus, data, notes


def compare_methods(
    tm: TextModel,
    sentences: Sequence[tuple[str, int | None]],
    corpus: list[str],
    out_dir: Path,
    *,
    methods: Sequence[str] = DEFAULT_METHODS,
    seed: int = 0,
    data: str = "",
    command: str = "",
) -> RunStore:
    """Run the side-by-side study of ``methods`` on ``sentences`` into ``out_dir``.

    Captum's metrics and the sanity check run on the first
    :data:`COMPARE_CAPTUM_EXAMPLES` / :data:`COMPARE_SANITY_EXAMPLES` sentences. The run
    folder is resumed when ``out_dir/main_job.json`` records the same settings (model
    name, sentences, corpus, methods, seed) and emptied first when it records others.

    Raises:
        FileExistsError: ``out_dir`` is a non-empty folder that this job did not write.
    """
    config = StudyConfig(
        methods=tuple(methods),
        seed=seed,
        captum_examples=COMPARE_CAPTUM_EXAMPLES,
        sanity_examples=COMPARE_SANITY_EXAMPLES,
    )
    examples = [tm.encode(s, f"dev-{i:04d}", y) for i, (s, y) in enumerate(sentences)]
    corpus_hash = hashlib.sha256("\n".join(corpus).encode("utf-8")).hexdigest()
    settings = {
        "model": tm.name,
        "state": tm.state,
        "examples": [[ex.id, ex.text] for ex in examples],
        "corpus_sha256": corpus_hash,
        "corpus_size": len(corpus),
        "methods": list(config.methods),
        "seed": config.seed,
        "captum_examples": config.captum_examples,
        "sanity_examples": config.sanity_examples,
    }
    stamp = out_dir / "main_job.json"
    if stamp.is_file():
        if json.loads(stamp.read_text(encoding="utf-8")) != settings:
            shutil.rmtree(out_dir)  # written by this job with other settings: start afresh
    elif out_dir.is_dir() and any(out_dir.iterdir()):
        raise FileExistsError(f"{out_dir} is not empty and was not written by the main job")
    out_dir.mkdir(parents=True, exist_ok=True)
    stamp.write_text(json.dumps(settings, indent=2, ensure_ascii=False), encoding="utf-8")
    return run_study(tm, examples, out_dir, config, corpus=corpus, data=data, command=command)


def summary_line(store: RunStore, metric: str = COMPARE_METRIC) -> str:
    """The mean of ``metric`` per method (its own ranking, not ``|abs``), best first."""
    rows = [r for r in store.results() if r["metric"] == metric and "|" not in r["method"]]
    summary = summarize(rows, {metric: BETTER[metric.split("/")[0]]})
    if not summary:
        return f"no {metric} results"
    higher = BETTER[metric.split("/")[0]] == "higher"
    summary.sort(key=lambda s: (math.isnan(s["mean"]), -s["mean"] if higher else s["mean"]))
    parts = ", ".join(f"{s['method']} {s['mean']:.3g}" for s in summary)
    n = max(s["n"] for s in summary)
    word = "higher" if higher else "lower"
    return f"mean {metric} over {n} sentence(s), {word} is better: {parts}"


def _non_negative(text: str) -> int:
    value = int(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be >= 0, got {value}")
    return value


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sentence", default=TUTORIAL_SENTENCE)
    parser.add_argument(
        "--model", default=None, help="local path or hub id (default: packaged MiniLM)"
    )
    parser.add_argument(
        "--layers", default="3,last", help="comma-separated 1-based layers; 'last' allowed"
    )
    parser.add_argument(
        "--corpus-size", type=int, default=100, help="SST-2 dev sentences for σ_S (0: fallback)"
    )
    parser.add_argument("--rate", type=float, default=0.1)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--compare-n",
        type=_non_negative,
        default=8,
        help="SST-2 dev sentences of the side-by-side comparison on the pooled embedding "
        "(0: skip it)",
    )
    parser.add_argument("--out", type=Path, default=Path("outputs"))
    argv = sys.argv[1:] if argv is None else argv
    args = parser.parse_args(argv)

    model, tokenizer = load_encoder(args.model)
    n_layers = len(model.encoder.layer)
    layers = [n_layers if t == "last" else int(t) for t in args.layers.split(",")]
    corpus = None
    if args.corpus_size > 0:
        try:
            corpus = [s for s, _ in sst2_dev(args.corpus_size)]
        except FileNotFoundError as err:
            print(f"note: {err}; using the reference fallback normaliser", file=sys.stderr)
    result = explain_layers(model, tokenizer, args.sentence, layers, corpus, args.rate, args.seed)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "explanation.json").write_text(json.dumps(result, indent=2), encoding="utf-8")
    write_html(result, args.out / "explanation.html")
    write_png(result, args.out / "explanation.png")
    for k, layer in result["layers"].items():
        order = sorted(range(len(result["tokens"])), key=lambda i: layer["sigma"][i])
        top = ", ".join(result["tokens"][i] for i in order[:4])
        print(f"layer {k}: smallest σ (most kept): {top}  [{layer['seconds']:.2f} s]")
    print(f"wrote {args.out}/explanation.html, explanation.png, explanation.json")
    if args.compare_n == 0:
        return 0

    start = time.perf_counter()
    sentences, compare_corpus, data, notes = comparison_data(
        args.compare_n, args.corpus_size, args.sentence
    )
    for note in notes:
        print(f"note: {note}", file=sys.stderr)
    name = f"{args.model or 'all-MiniLM-L6-v2 (packaged)'}, pooled embedding"
    tm = TextModel(model, tokenizer, "pooled", name=name)
    out_dir = args.out / "comparison"
    command = "python -m comparisons.main_job " + shlex.join(argv)
    store = compare_methods(
        tm, sentences, compare_corpus, out_dir, seed=args.seed, data=data, command=command
    )
    seconds = time.perf_counter() - start
    print(f"comparison [{seconds:.0f} s]: {summary_line(store)}")
    print(f"wrote {out_dir / 'report.html'} (and results.csv, explanations.jsonl, ... beside it)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
