"""``captum-perturb explain``: the one-line API from a shell, for a model folder or hub id.

    captum-perturb explain --model DIR_OR_HUB_ID "a gorgeous , witty , seductive movie ." \\
        [--target positive] [--layers all] [--corpus corpus.txt] [--out outputs]

writes ``explanation.html`` (the page :meth:`~captum_perturb.hf.Explanation.to_html`
writes), ``explanation.png`` (the first text's bars) and ``explanation.csv`` (one row
per word, :meth:`~captum_perturb.hf.Explanation.to_pandas`) into ``--out``.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

#: the model class loaded for each kind (``--kind``; default: from the config)
_AUTO = {
    "classifier": "AutoModelForSequenceClassification",
    "causal_lm": "AutoModelForCausalLM",
    "encoder": "AutoModel",
}


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="captum-perturb", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    cmd = sub.add_parser("explain", help="explain texts with a Hugging Face model")
    cmd.add_argument("texts", nargs="+", help="the texts to explain")
    cmd.add_argument("--model", required=True, help="a model folder or hub id")
    cmd.add_argument("--kind", choices=sorted(_AUTO), help="default: from the model's config")
    cmd.add_argument("--target", help="a class (index or label) or a causal LM's answer")
    cmd.add_argument("--layers", help="'all' (an encoder's every layer) or e.g. 0,3,6")
    cmd.add_argument("--corpus", type=Path, help="a text file, one corpus text per line (σ_S)")
    cmd.add_argument("--seed", type=int, default=0)
    cmd.add_argument("--max-iter", type=int, help="the estimator's iteration bound")
    cmd.add_argument("--out", type=Path, default=Path("outputs"))
    return parser


def _kind(config: Any) -> str:
    names = " ".join(getattr(config, "architectures", None) or [])
    if "ForSequenceClassification" in names:
        return "classifier"
    if "ForCausalLM" in names or "LMHeadModel" in names:
        return "causal_lm"
    return "encoder"


def _load(name: str, kind: str | None) -> tuple[Any, Any]:
    import transformers

    config = transformers.AutoConfig.from_pretrained(name)
    auto = getattr(transformers, _AUTO[kind or _kind(config)])
    model = auto.from_pretrained(name).eval()
    return model, transformers.AutoTokenizer.from_pretrained(name)


def _target(value: str | None) -> Any:
    return int(value) if value is not None and value.lstrip("-").isdigit() else value


def _layers(value: str | None) -> Any:
    if value is None or value == "all":
        return value
    return [int(k) for k in value.split(",")]


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line; returns the exit status."""
    args = _parser().parse_args(argv)
    from captum_perturb import FixedPointConfig, explain

    model, tokenizer = _load(args.model, args.kind)
    corpus = None
    if args.corpus is not None:
        corpus = [line for line in args.corpus.read_text(encoding="utf-8").splitlines() if line]
    settings: dict[str, Any] = {"seed": args.seed}
    if args.max_iter is not None:
        settings["config"] = FixedPointConfig(max_iter=args.max_iter)
    exp = explain(
        model, tokenizer, list(args.texts), target=_target(args.target),
        layers=_layers(args.layers), corpus=corpus, **settings,
    )  # fmt: skip
    args.out.mkdir(parents=True, exist_ok=True)
    exp.to_html(args.out / "explanation.html")
    exp.plot().savefig(args.out / "explanation.png", dpi=120)
    exp.to_pandas().to_csv(args.out / "explanation.csv", index=False)
    print(f"wrote {args.out}/explanation.html, .png and .csv ({exp})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
