"""Command line of the harness: ``python -m comparisons <command>``.

Commands: study, report, merge, table, finetune, methods, layers, llm-study.

Examples::

    python -m comparisons study --model sst2 --n 200 --out runs/sst2   # the fine-tuned MiniLM
    python -m comparisons study --model minilm --state pooled --n 20 --out runs/pooled
    python -m comparisons study --model path/or/hub-id --data my.tsv --methods ours,lime
    python -m comparisons report runs/sst2
    python -m comparisons finetune
    python -m comparisons layers --n 50 --models minilm,sst2 --groups both
    python -m comparisons llm-study --n 50 --out outputs/llm_study   # the SST-2 GPT-2
"""

from __future__ import annotations

import argparse
import shlex
import sys
from pathlib import Path

from comparisons.study.methods import DEFAULT_METHODS, METHODS, get_method


def _limits(text: str) -> dict[str, int]:
    out = {}
    for part in filter(None, text.split(",")):
        name, _, n = part.partition("=")
        out[get_method(name).name] = int(n)
    return out


def _model_path(name: str, state: str | int) -> tuple[Path | str, str | int]:
    from comparisons.models.resources import packaged_minilm_dir

    if name == "sst2":
        from comparisons.models.finetune import sst2_classifier

        return sst2_classifier("full"), state
    if name == "sst2-small":
        from comparisons.models.finetune import sst2_classifier

        return sst2_classifier("small"), state
    if name == "minilm":
        return packaged_minilm_dir(), state
    return name, state


def study(args: argparse.Namespace) -> int:
    """One process, or under ``torchrun`` one share per process, merged by rank 0."""
    from captum_perturb.distributed import process_group_from_env

    with process_group_from_env(backend="gloo") as (rank, world):  # the harness runs on CPU
        return _study(args, rank, world)


def _study(args: argparse.Namespace, rank: int, world: int) -> int:
    import torch

    from captum_perturb.distributed import all_succeeded, on_first, process_0_first
    from comparisons.models.resources import data_dir, read_sentences
    from comparisons.models.text_model import TextModel
    from comparisons.study.run import StudyConfig, run_study
    from comparisons.study.shards import merge_study_parts, run_study_part

    if args.threads:
        torch.set_num_threads(args.threads)  # per process under torchrun
    methods = (
        tuple(get_method(m).name for m in args.methods.split(","))
        if args.methods
        else DEFAULT_METHODS
    )
    state: str | int = int(args.state) if args.state.isdigit() else args.state
    if args.model in ("minilm",) and state == "probs":
        state = "pooled"
    # process 0 first: it fine-tunes the classifier when it is not cached yet
    where, state = process_0_first(lambda: _model_path(args.model, state))
    tm = TextModel.from_pretrained(where, state)
    data = Path(args.data) if args.data else data_dir() / "sst2" / "dev.tsv"
    rows = read_sentences(data)
    examples = [
        tm.encode(s, f"{data.stem}-{args.start + i:04d}", y)
        for i, (s, y) in enumerate(rows[args.start : args.start + args.n])
    ]
    corpus = [s for s, _ in rows[-args.corpus :]] if args.corpus else []
    config = StudyConfig(
        methods=methods,
        seed=args.seed,
        captum_examples=args.captum_examples,
        sanity_examples=args.sanity_examples,
        limits=_limits(args.limit),
    )
    command = "python -m comparisons " + shlex.join(args.argv)
    if world == 1:
        run_study(tm, examples, args.out, config, corpus=corpus, data=str(data), command=command)
        print(f"wrote {args.out}/report.html and the tidy results in {args.out}/results.csv")
        return 0
    # torchrun: each process runs its share into out/parts/rank-R-of-N, then rank 0
    # checks and merges the parts into out and reports; the others wait for it (a
    # failure anywhere makes every process raise, none waits for the group's timeout)
    failure = None
    try:
        run_study_part(
            tm, examples, args.out, config, rank=rank, world=world, corpus=corpus,
            data=str(data), command=command,
        )  # fmt: skip
    except Exception as err:
        failure = err
    all_succeeded(failure)

    def merge_and_report() -> None:
        from comparisons.study.report import write_report

        merge_study_parts(
            tm, examples, args.out, config, world=world, corpus=corpus, command=command
        )
        write_report(args.out)
        print(
            f"merged {world} parts: wrote {args.out}/report.html and the tidy results in "
            f"{args.out}/results.csv"
        )

    on_first(merge_and_report)
    return 0


def report(args: argparse.Namespace) -> int:
    from comparisons.study.report import write_report

    path = write_report(args.run_dir, max_examples=args.examples)
    print(f"wrote {path}")
    return 0


def merge(args: argparse.Namespace) -> int:
    from comparisons.study.report import write_report
    from comparisons.study.store import merge_runs

    merge_runs(args.out, args.runs)
    path = write_report(args.out, max_examples=args.examples)
    print(f"merged {len(args.runs)} runs into {args.out}; wrote {path}")
    return 0


def table(args: argparse.Namespace) -> int:
    from comparisons.study.report import summary_markdown

    metrics = [m for m in args.metrics.split(",") if m] or None
    print(summary_markdown(args.run_dir, metrics), end="")
    return 0


def finetune(args: argparse.Namespace) -> int:
    from comparisons.models.finetune import main

    return main(["--recipe", args.recipe])


def methods(args: argparse.Namespace) -> int:
    for name, spec in METHODS.items():
        kind = "signed" if spec.signed else "magnitude"
        print(f"{name:22s} {spec.family:13s} {kind:10s} {spec.description}")
    return 0


def layers(args: argparse.Namespace) -> int:
    import torch

    from captum_perturb.distributed import process_0_first, process_group_from_env
    from comparisons.layers.run import default_threads, load_model, read_sentence_file, run_layers
    from comparisons.models.resources import data_dir, read_sentences

    torch.set_num_threads(args.threads or default_threads())
    dev = data_dir() / "sst2" / "dev.tsv"
    if args.sentence:
        sentences = [args.sentence]
    elif args.file:
        sentences = read_sentence_file(args.file)[: args.n]
    else:
        sentences = [s for s, _ in read_sentences(dev, limit=args.n)]
    corpus = None
    if args.corpus > 0 and dev.is_file():
        corpus = [s for s, _ in read_sentences(dev)[-args.corpus :]]
    elif args.corpus > 0:
        print(f"{dev} not found: no σ_S corpus, explain_layers uses its fallback")
    chosen = [int(k) for k in args.layers.split(",")] if args.layers else None
    names = list(filter(None, args.models.split(",")))
    # under torchrun: the processes share the batches, process 0 writes the pages
    with process_group_from_env(backend="gloo") as (rank, world):  # the harness runs on CPU
        # process 0 first: it fine-tunes (once) what the others then load
        models = process_0_first(lambda: {name: load_model(name) for name in names})
        run_layers(
            models,
            sentences,
            corpus,
            args.out,
            groups=args.groups,
            layers=chosen,
            seed=args.seed,
            batch_size=args.batch_size,
            bootstrap=args.bootstrap,
        )
    if rank == 0:
        print(f"wrote {args.out}/index.html and {args.out}/depth_curves.png ({world} processes)")
    return 0


def llm_study(args: argparse.Namespace) -> int:
    import torch

    from comparisons.llm import study as ls
    from comparisons.models.language_model import load_language_model
    from comparisons.models.resources import data_dir, read_sentences

    if args.threads:
        torch.set_num_threads(args.threads)
    methods = args.methods.split(",") if args.methods else list(ls.DEFAULT_LLM_METHODS)
    model, tokenizer, where = load_language_model(args.recipe)
    sst2 = data_dir() / "sst2"
    store = ls.run_llm_study(
        model,
        tokenizer,
        [s for s, _ in read_sentences(sst2 / "dev.tsv")],
        ls.corpus_prompts([s for s, _ in read_sentences(sst2 / "train.tsv")], args.corpus),
        args.out,
        n=args.n,
        methods=methods,
        seed=args.seed,
        model_name=where.name,
        command="python -m comparisons " + shlex.join(args.argv),
        max_examples=args.examples,
    )
    print(f"wrote {store.run_dir}/report.html and the tidy results in {store.run_dir}/results.csv")
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m comparisons", description=__doc__.splitlines()[0]
    )
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("study", help="explain, score and report")
    p.add_argument(
        "--model",
        default="sst2",
        help="'sst2' (MiniLM fine-tuned on SST-2, trained once and cached), 'sst2-small', "
        "'minilm' (the packaged encoder), or a local folder / hub id",
    )
    p.add_argument(
        "--state",
        default="probs",
        help="'probs' (classifier), 'logits', 'pooled' (sentence embedding) or a layer number",
    )
    p.add_argument("--data", default=None, help="a sentence<TAB>label file (default SST-2 dev)")
    # --num-examples and --first: torchrun's parser takes --n and --start for its own
    p.add_argument("--n", "--num-examples", type=int, default=200, help="number of examples")
    p.add_argument("--start", "--first", type=int, default=0, help="first example")
    p.add_argument(
        "--corpus", type=int, default=100, help="σ_S from the last N sentences of the data file"
    )
    p.add_argument(
        "--methods", default="", help=f"comma-separated (default: {','.join(DEFAULT_METHODS)})"
    )
    p.add_argument("--limit", default="", help="e.g. 'ours-reference=20': at most N examples")
    p.add_argument("--captum-examples", type=int, default=20)
    p.add_argument("--sanity-examples", type=int, default=10)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument(
        "--threads",
        type=int,
        default=0,
        help="torch threads, per process under torchrun (0: torch's default, which torchrun "
        "sets to 1 unless OMP_NUM_THREADS is set)",
    )
    p.add_argument(
        "--out",
        type=Path,
        default=Path("runs/study"),
        help="the run folder (under torchrun: the merged run; the shares in OUT/parts/)",
    )
    p.set_defaults(func=study)

    p = sub.add_parser("report", help="(re)write report.html of a run folder")
    p.add_argument("run_dir", type=Path)
    p.add_argument("--examples", type=int, default=10, help="examples shown as heatmaps")
    p.set_defaults(func=report)

    p = sub.add_parser("merge", help="combine run folders (shards of one study) and report")
    p.add_argument("runs", type=Path, nargs="+")
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--examples", type=int, default=10, help="examples shown as heatmaps")
    p.set_defaults(func=merge)

    p = sub.add_parser("table", help="print a run's summary as a Markdown table")
    p.add_argument("run_dir", type=Path)
    p.add_argument(
        "--metrics",
        default="",
        help="comma-separated metrics (default: the run's headline metrics, then the "
        "abstained rate and the seconds)",
    )
    p.set_defaults(func=table)

    p = sub.add_parser("finetune", help="train (once) the SST-2 classifier")
    p.add_argument("--recipe", default="full", choices=["full", "small"])
    p.set_defaults(func=finetune)

    p = sub.add_parser("methods", help="list the registered methods")
    p.set_defaults(func=methods)

    p = sub.add_parser("layers", help="information each layer keeps, per token group and model")
    which = p.add_mutually_exclusive_group()
    which.add_argument("--sentence", default=None, help="explain this one sentence")
    which.add_argument(
        "--file", type=Path, default=None, help="sentence<TAB>label file or one sentence a line"
    )
    p.add_argument(
        "--n",
        "--num-sentences",
        dest="n",
        type=int,
        default=50,
        help="first N sentences (default SST-2 dev); under torchrun write --num-sentences "
        "(torchrun takes --n for an abbreviation of its own options)",
    )
    p.add_argument(
        "--models",
        default="minilm,sst2",
        help="comma-separated: 'minilm' (packaged encoder), 'sst2' (it fine-tuned on SST-2), "
        "or local folders / hub ids",
    )
    p.add_argument(
        "--corpus", type=int, default=100, help="σ_S from the last N SST-2 dev sentences (0: none)"
    )
    p.add_argument("--groups", default="both", choices=["sentiment", "stopwords", "both"])
    p.add_argument(
        "--layers", default="", help="comma-separated layers (default all; 0 = embeddings)"
    )
    p.add_argument("--batch-size", type=int, default=8, help="sentences per explain_layers call")
    p.add_argument(
        "--bootstrap",
        type=int,
        default=2000,
        choices=(0, 2000),
        help="intervals over sentences: 2000 (the harness bootstrap's resamples) or 0 (none)",
    )
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=0, help="torch threads (0: $OMP_NUM_THREADS)")
    p.add_argument("--out", type=Path, default=Path("outputs/layers"))
    p.set_defaults(func=layers)

    p = sub.add_parser("llm-study", help="attribution methods compared on the SST-2 GPT-2")
    p.add_argument("--n", type=int, default=50, help="number of prompts (SST-2 dev)")
    p.add_argument("--recipe", default="full", choices=["full", "small"])
    p.add_argument(
        "--methods",
        default="",
        help="comma-separated (default: ours,feature_ablation,shapley_sampling,kernel_shap,"
        "layer_ig,random)",
    )
    p.add_argument(
        "--corpus", type=int, default=500, help="σ_S from the prompts of N SST-2 train sentences"
    )
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    p.add_argument("--examples", type=int, default=10, help="examples shown as heatmaps")
    p.add_argument("--out", type=Path, default=Path("outputs/llm_study"))
    p.set_defaults(func=llm_study)

    argv = sys.argv[1:] if argv is None else argv
    args = parser.parse_args(argv)
    args.argv = argv
    return int(args.func(args))


if __name__ == "__main__":
    raise SystemExit(main())
