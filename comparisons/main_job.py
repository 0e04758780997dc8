"""The main job on the embedded default: explain a sentence with the packaged MiniLM.

First the paper's analysis: how much of each word every layer keeps
(:func:`captum_perturb.explain_layers`, all layers in one call: the embedding output and
the 6 blocks, noise on the embedding output, each layer's full ``[tokens × 384]`` state
normalised by its σ_S: for the packaged MiniLM the σ_S that ships with the package
(5,000 SST-2 train sentences, :mod:`comparisons.models.packaged_std`), so the picture is the same
with or without the data on disk; for another ``--model``, σ_S from SST-2 dev sentences,
or without the data the reference fallback, with a warning). Writes

* ``explanation.html`` — one Captum ``visualize_text`` row per layer,
* ``explanation.png`` — a tokens × layers heatmap of the nats each layer keeps,
* ``explanation.json`` / ``.csv`` — σ, entropies and nats per token and layer
  (:class:`captum_perturb.LayerInformation`, loadable).

Then, on the GPT-2 trained on SST-2 (:mod:`comparisons.models.language_model`), which
prompt words its own answer keeps (:mod:`comparisons.llm.page`): ``llm/index.html``. By
default the GPT-2 of the ``small`` recipe (about a minute of training on first use, then
cached by content hash); ``--full-llm`` (or ``--llm full``) takes the full recipe (about
15 minutes on a 2-core CPU once), ``--llm none`` skips the page. Without SST-2 on disk
the page is skipped (its GPT-2 is trained on SST-2).

Opt-in (``--compare``, or ``--compare-n N``; off by default, as it takes minutes even for
one sentence): the side-by-side comparison of every method of
:data:`comparisons.study.methods.DEFAULT_METHODS` on the same encoder's pooled sentence
embedding (no labels, no training): the first ``--compare-n`` SST-2 dev sentences
(:data:`COMPARE_N` with ``--compare``), σ_S from the last ``--corpus-size`` dev
sentences, Captum's infidelity / sensitivity and the sanity check on the first two
sentences (:func:`comparisons.study.run.run_study`). Without the data it compares on
``--sentence`` alone with the fallback normaliser. Writes

* ``comparison/report.html`` — the side-by-side report (:mod:`comparisons.study.report`),
* ``comparison/results.csv`` and the other files of a run folder (:mod:`comparisons.study.store`),

and prints the mean ``state_shift/delete`` of each method (:data:`COMPARE_METRIC`). The
run folder is resumed when it was written with the same settings
(``comparison/main_job.json``) and started afresh otherwise.

Each step prints a numbered line and its seconds (the long ones show progress bars), and
the job ends with a summary of what ran, what was skipped, and the flag that turns each
skipped part on.

Run ``python -m comparisons.main_job --help`` for the options.
"""

from __future__ import annotations

import argparse
import dataclasses
import hashlib
import json
import math
import shlex
import shutil
import sys
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from captum_perturb import LayerInformation, explain_layers, layer_state_std
from captum_perturb.layers.packaged_std import packaged_state_std
from comparisons.layers.page import layers_html
from comparisons.layers.plots import heatmap
from comparisons.llm.page import llm_page
from comparisons.models.finetune import cache_root
from comparisons.models.resources import (
    DATA_ENV_VAR,
    TUTORIAL_SENTENCE,
    data_dir,
    load_encoder,
    read_sentences,
    sst2_dev,
)
from comparisons.models.text_model import TextModel
from comparisons.stats import summarize
from comparisons.study.methods import DEFAULT_METHODS
from comparisons.study.run import BETTER, StudyConfig, run_study
from comparisons.study.store import RunStore

COMPARE_METRIC = "state_shift/delete"
"""The metric the comparison's one-line summary prints (higher is better): 1 − cos of the
pooled embedding after deleting the top 10/20/50 % of the tokens. Deleting rather than
masking, because [MASK] is foreign to the sentence-transformers MiniLM: masking one or
two random tokens of a dev sentence already gives 1 − cos ≈ 0.45, so the masked shift
barely separates the methods from the random floor (8 sentences: 0.58 to 0.70 against
0.61), where deletion does (0.19 to 0.51 against 0.26). The report shows both."""

DEFAULT_CORPUS_SIZE = 100
"""SST-2 dev sentences for σ_S when no shipped σ_S applies, and for the comparison."""

COMPARE_N = 8
"""SST-2 dev sentences the comparison takes with ``--compare`` (``--compare-n`` sets any)."""

COMPARE_CAPTUM_EXAMPLES = 2
"""Sentences of the comparison that get Captum's infidelity and sensitivity_max."""

COMPARE_SANITY_EXAMPLES = 2
"""Sentences of the comparison that go through the cascading randomisation check."""


def explain_all_layers(
    model: Any,
    tokenizer: Any,
    sentence: str,
    layers: list[int] | None,
    corpus: list[str] | None,
    rate: float = 0.1,
    seed: int = 0,
    show_progress: bool = False,
) -> LayerInformation:
    """Information every layer (embedding output included) keeps of each token, in one
    :func:`captum_perturb.explain_layers` call; σ_S of every layer from ``corpus``, or,
    without one, what ``explain_layers`` finds: the shipped σ_S of a known model (the
    packaged MiniLM), else the reference fallback (``info.normaliser`` says which).
    ``show_progress``: a progress bar over the estimator's iterations (same result)."""
    std = None
    if corpus:
        cenc = tokenizer(corpus, return_tensors="pt", padding=True)
        std = layer_state_std(model, cenc, layers, cache_dir=cache_root() / "layer_std")
    enc = tokenizer([sentence], return_tensors="pt")
    info = explain_layers(
        model,
        enc,
        layers,
        state_std=std,
        tokenizer=tokenizer,
        rate=rate,
        seed=seed,
        show_progress=show_progress,
    )
    return dataclasses.replace(info, meta={"sentence": sentence})


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
    """The mean of ``metric`` per method (its own ranking, not ``|abs``), best first, over
    the sentences every method has (methods with fewer are named after them)."""
    rows = [r for r in store.results() if r["metric"] == metric and "|" not in r["method"]]
    summary = summarize(rows, {metric: BETTER[metric.split("/")[0]]})
    main = [s for s in summary if s["comparison"] == "all"]
    if not main:
        return f"no {metric} results"
    higher = BETTER[metric.split("/")[0]] == "higher"
    main.sort(key=lambda s: (math.isnan(s["mean"]), -s["mean"] if higher else s["mean"]))
    parts = ", ".join(f"{s['method']} {s['mean']:.3g}" for s in main)
    fewer = sorted({r["method"] for r in rows} - {s["method"] for s in main})
    word = "higher" if higher else "lower"
    line = f"mean {metric} over {main[0]['n']} sentence(s), {word} is better: {parts}"
    return line + (f" (on fewer sentences, left out: {', '.join(fewer)})" if fewer else "")


def _non_negative(text: str) -> int:
    value = int(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be >= 0, got {value}")
    return value


def _parser() -> argparse.ArgumentParser:
    """The command line of :func:`main`."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sentence", default=TUTORIAL_SENTENCE)
    parser.add_argument(
        "--model", default=None, help="local path or hub id (default: packaged MiniLM)"
    )
    parser.add_argument(
        "--layers",
        default="all",
        help="'all' (embedding output and every block) or comma-separated layers "
        "(0 = embedding output, k = block k, negatives count from the last)",
    )
    parser.add_argument(
        "--corpus-size",
        type=_non_negative,
        default=None,
        help="SST-2 dev sentences for σ_S (0: fallback). Default: for the layers, the σ_S "
        "shipped with the package when the model has one (the packaged MiniLM), else "
        f"{DEFAULT_CORPUS_SIZE}; for the comparison, {DEFAULT_CORPUS_SIZE}",
    )
    parser.add_argument("--rate", type=float, default=0.1)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--compare",
        action="store_true",
        help=f"also compare every method side by side on the pooled embedding, with the "
        f"sanity check (the first {COMPARE_N} SST-2 dev sentences; minutes, even for one "
        "sentence); off by default",
    )
    parser.add_argument(
        "--compare-n",
        type=_non_negative,
        default=None,
        help="SST-2 dev sentences of that comparison (turns it on; 0: skip it). Default: "
        f"{COMPARE_N} with --compare, else 0",
    )
    parser.add_argument(
        "--llm",
        choices=("full", "small", "none"),
        default="small",
        help="the language-model page (OUT/llm/index.html) on the SST-2 GPT-2 of this "
        "recipe: 'small' (default) trains ~1 min the first time, then is cached; 'full' "
        "~15 min on a 2-core CPU the first time; 'none' skips it",
    )
    parser.add_argument(
        "--full-llm",
        dest="llm",
        action="store_const",
        const="full",
        help="the same as --llm full: the LLM page on the fully trained GPT-2",
    )
    parser.add_argument("--out", type=Path, default=Path("outputs"))
    return parser


def _layer_corpus(model: Any, corpus_size_arg: int | None) -> tuple[list[str] | None, int]:
    """The layers' σ_S corpus (``None``: shipped σ_S or fallback) and the corpus size."""
    corpus = None
    corpus_size = DEFAULT_CORPUS_SIZE if corpus_size_arg is None else corpus_size_arg
    packaged = packaged_state_std(model) if corpus_size_arg is None else None
    if packaged is not None:
        print(f"note: {packaged.describe()}", file=sys.stderr)
    elif corpus_size > 0:
        try:
            corpus = [s for s, _ in sst2_dev(corpus_size)]
        except FileNotFoundError as err:
            print(f"note: {err}; using the reference fallback normaliser", file=sys.stderr)
    return corpus, corpus_size


def _write_explanation(info: LayerInformation, out: Path, sentence: str, seconds: float) -> None:
    """Write the layers' explanation files and print what each layer keeps most."""
    out.mkdir(parents=True, exist_ok=True)
    info.save(out / "explanation.json")
    info.save(out / "explanation.csv")
    title = f"How much of each word the layers keep: {sentence}"
    layers_html(info, [0], out / "explanation.html", title)
    heatmap(info, 0, out / "explanation.png", title="Information kept (nats per token)")
    means = info.mean_by_layer()["all"]
    for j, name in enumerate(info.layer_names()):
        real = (info.mask[0] & ~info.special[0]).nonzero().flatten().tolist()
        order = sorted(real, key=lambda t: -float(info.nats_kept[0, j, t]))
        top = ", ".join(info.tokens[0][t] for t in order[:4])
        print(f"{name:10s} mean {means[j]:7.1f} nats kept per word; most kept: {top}")
    print(f"all {len(info.layers)} layers in one call: {seconds:.2f} s")
    print(f"wrote {out}/explanation.html, explanation.png, explanation.json, explanation.csv")


def _run_comparison(
    model: Any,
    tokenizer: Any,
    args: argparse.Namespace,
    chosen: tuple[list[tuple[str, int | None]], list[str], str, list[str]],
    argv: list[str],
) -> None:
    """The side-by-side comparison on the pooled embedding (``chosen``: what
    :func:`comparison_data` returns), and its one-line summary."""
    start = time.perf_counter()
    sentences, compare_corpus, data, notes = chosen
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


def _compare_n(args: argparse.Namespace) -> int:
    """Sentences of the comparison: ``--compare-n`` when given, else :data:`COMPARE_N`
    with ``--compare``, else 0 (skipped)."""
    if args.compare_n is not None:
        return int(args.compare_n)
    return COMPARE_N if args.compare else 0


class _Steps:
    """Numbered step lines with each step's seconds, and the job's closing summary."""

    def __init__(self, total: int) -> None:
        self.total = total
        self.done = 0
        self.ran: list[str] = []
        self.skipped: list[str] = []
        self.start = time.perf_counter()

    @contextmanager
    def step(self, title: str) -> Iterator[None]:
        self.done += 1
        label = f"[{self.done}/{self.total}] {title}"
        print(f"{label} ...", flush=True)
        start = time.perf_counter()
        yield
        seconds = time.perf_counter() - start
        print(f"{label}: done in {seconds:.0f} s", flush=True)
        self.ran.append(f"{title} ({seconds:.0f} s)")

    def skip(self, what: str) -> None:
        self.skipped.append(what)

    def summary(self) -> str:
        seconds = time.perf_counter() - self.start
        lines = [f"main job done in {seconds:.0f} s"]
        lines += [f"  ran:     {what}" for what in self.ran]
        lines += [f"  skipped: {what}" for what in self.skipped]
        return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    args = _parser().parse_args(argv)
    compare_n = _compare_n(args)
    llm_train = data_dir() / "sst2" / "train.tsv"  # the LLM page's GPT-2 is trained on it
    llm = args.llm != "none" and llm_train.is_file()
    steps = _Steps(1 + llm + (compare_n > 0))

    model, tokenizer = load_encoder(args.model)
    layers = None if args.layers == "all" else [int(t) for t in args.layers.split(",")]
    corpus, corpus_size = _layer_corpus(model, args.corpus_size)
    with steps.step("explanation of the sentence, every layer"):
        start = time.perf_counter()
        info = explain_all_layers(
            model, tokenizer, args.sentence, layers, corpus, args.rate, args.seed, True
        )
        seconds = time.perf_counter() - start
        _write_explanation(info, args.out, args.sentence, seconds)
    if args.llm == "none":
        steps.skip("the LLM page (--llm none; --llm small or --full-llm turns it on)")
    elif not llm:
        print(f"note: {llm_train} not found: the LLM page needs SST-2 to train its GPT-2")
        steps.skip(f"the LLM page: {llm_train} not found (set {DATA_ENV_VAR})")
    else:
        with steps.step(f"LLM page on the GPT-2 of the {args.llm} recipe"):
            page = llm_page(args.out / "llm", args.llm, seed=args.seed)
            print(f"wrote {page} (and layers.html, llm.json beside it)")
        if args.llm == "small":
            steps.skip("the full GPT-2 training (--full-llm: ~15 min once, then cached)")
    if compare_n == 0:
        steps.skip(
            "the comparison of the methods and its sanity check (--compare for "
            f"{COMPARE_N} SST-2 dev sentences, or --compare-n N; minutes)"
        )
    else:
        chosen = comparison_data(compare_n, corpus_size, args.sentence)
        with steps.step(f"comparison of the methods on {len(chosen[0])} sentence(s)"):
            _run_comparison(model, tokenizer, args, chosen, argv)
    print(steps.summary())
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
