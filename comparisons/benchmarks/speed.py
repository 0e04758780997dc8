"""Speed, memory and accuracy of the default estimator against Captum's LayerIntegratedGradients.

One run covers the workloads users run. Every workload puts the noise on the output of the
model's embeddings module, one group per token, ``attention_mask=`` given, σ_S from the
first 100 SST-2 dev sentences (:func:`captum_perturb.estimate_state_std`):

* ``layers1-3``: Φ = the first 3 encoder layers of the packaged all-MiniLM-L6-v2 (a
  truncated copy), its full ``[tokens × 384]`` state;
* ``layer k`` (k = 1..6): the packaged MiniLM's layer ``k`` full state (``state_layer=``);
* ``pooled``: its mean-pooled last hidden state;
* ``logits``: the SST-2 fine-tuned MiniLM's two logits (:mod:`comparisons.models.finetune`);
* ``target logit``: its predicted class's logit only (``target=`` the clean prediction).

Each is timed against Captum ``LayerIntegratedGradients(n_steps=50)`` on the same Φ and the
same inputs (baseline: pad token ids; its output: the normalised squared norm of the state
over unpadded elements, or the target logit itself with ``target=``), on the tutorial
sentence (median of ``--repeats`` runs after a warm-up) and on a padded batch of SST-2 dev
sentences 101.. (one run): seconds, the ratio ours / LIG, evaluations per sentence, the
converged fraction, and the peak resident memory of one call on the batch (in process, in
a call of its own after freed memory is handed back:
:func:`.speed_meters.peak_rss_increase`; ours on a two-iteration run, see
:func:`.speed_runs.peak_memory`), also for the default with ``internal_batch_size=``
(whose σ must equal the unbounded call's).

Accuracy against a high-precision optimum (:data:`captum_perturb.HIGH_PRECISION`, two
seeds) as mean |Δ log σ| and Spearman ρ over tokens: always for ``layers1-3`` (tutorial,
the first ``--hp-subset`` batch sentences, and the reference algorithm
:data:`captum_perturb.REFERENCE` on the tutorial), on the tutorial for the workloads named
in ``--hp-workloads`` (and those with optima in the ``--hp-from`` file). The optima are
stored in the output under their workload; ``--hp-from`` reuses them (it also reads the
single-workload layout of the files written before). ``--quick`` runs a few iterations of
each estimator on a batch of 4, to check the script runs. Not a test::

    python -m comparisons.benchmarks.speed --out docs/benchmark.json --hp-from docs/benchmark.json

This module is the entry point (the command line, one workload's run, the output file);
the parts live beside it:

* :mod:`.speed_workloads` — the workloads: models, forward functions, state capture, σ_S;
* :mod:`.speed_meters` — wall time and peak resident memory of one call;
* :mod:`.speed_runs` — the timed runs of ours and of LIG, and the configurations;
* :mod:`.speed_accuracy` — accuracy against the high-precision optimum;
* :mod:`.speed_report` — the Markdown table and the notes under it.
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import time
from pathlib import Path
from typing import Any

import torch

from comparisons.benchmarks.speed_accuracy import (
    HP_SEEDS,
    accuracy,
    reference_accuracy,
    spearman,
    subset_accuracy,
    tutorial_accuracy,
)
from comparisons.benchmarks.speed_meters import MB, peak_rss_increase, timed
from comparisons.benchmarks.speed_report import notes, table
from comparisons.benchmarks.speed_runs import (
    LIG_STEPS,
    Configs,
    Measured,
    configs,
    measure,
    ours,
    peak_memory,
    run_lig,
    same_sigma,
)
from comparisons.benchmarks.speed_workloads import (
    STD_SENTENCES,
    WORKLOADS,
    Forward,
    LigScalar,
    Workload,
    as_is,
    encode,
    first_layers,
    normalised_square,
    state_std,
    workloads,
)
from comparisons.models.finetune import load_classifier
from comparisons.models.resources import TUTORIAL_SENTENCE, sst2_dev

# the names this module held before it was split, importable from it as before
__all__ = [
    "HP_SEEDS",
    "LIG_STEPS",
    "MB",
    "STD_SENTENCES",
    "WORKLOADS",
    "Configs",
    "Forward",
    "LigScalar",
    "Measured",
    "Workload",
    "accuracy",
    "as_is",
    "configs",
    "encode",
    "first_layers",
    "load_classifier",
    "main",
    "measure",
    "normalised_square",
    "notes",
    "ours",
    "parse",
    "peak_memory",
    "peak_rss_increase",
    "prior_optima",
    "reference_accuracy",
    "run_lig",
    "run_workload",
    "same_sigma",
    "spearman",
    "state_std",
    "subset_accuracy",
    "table",
    "timed",
    "tutorial_accuracy",
    "workloads",
    "write_out",
]


def run_workload(
    w: Workload, args: argparse.Namespace, cfgs: Configs, prior: dict[str, Any]
) -> dict[str, Any]:
    """σ_S, then the tutorial and the batch, then the accuracy asked for."""
    std = state_std(w)
    tut = measure(w, std, [TUTORIAL_SENTENCE], cfgs.default, repeats=args.repeats)
    sentences = [s for s, _ in sst2_dev(args.batch, start=STD_SENTENCES)]
    batch = measure(w, std, sentences, cfgs.default, internal_batch_size=args.internal_batch_size)
    tut.row["tokens"] = w.tokenizer.convert_ids_to_tokens(encode(w, [TUTORIAL_SENTENCE])[0][0])
    stored = prior.get("tutorial", {})  # optima already computed are always used
    if w.name == "layers1-3" or w.name in args.hp_workloads or "hp_log_sigma_seeds" in stored:
        tut.row.update(tutorial_accuracy(w, std, tut, cfgs, stored))
    if w.name == "layers1-3":
        tut.row["reference"] = reference_accuracy(w, std, tut, cfgs)
        k = min(args.hp_subset, len(sentences))
        batch.row.update(subset_accuracy(w, std, batch, sentences, cfgs, k, prior.get("batch", {})))
    return {"tutorial": tut.row, "batch": batch.row}


def prior_optima(previous: dict[str, Any], name: str) -> dict[str, Any]:
    """A workload's entry in an earlier ``--out`` file (also the single-workload layout)."""
    if "workloads" in previous:
        entry: dict[str, Any] = previous["workloads"].get(name, {})
        return entry
    return previous if name == "layers1-3" else {}


def parse(argv: list[str] | None) -> argparse.Namespace:
    """The command line, with the workload lists split and the quick defaults filled in."""
    p = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    p.add_argument("--workloads", default=",".join(WORKLOADS), help="comma list (default all)")
    p.add_argument("--batch", type=int, default=None, help="SST-2 dev sentences (32; quick 4)")
    p.add_argument("--repeats", type=int, default=None, help="tutorial runs (3; quick 1)")
    p.add_argument("--hp-subset", type=int, default=4, help="layers1-3 batch sentences given HP")
    p.add_argument("--hp-from", type=Path, default=None, help="reuse the optima of an --out")
    p.add_argument("--hp-workloads", default="", help="comma list given HP on the tutorial")
    p.add_argument("--internal-batch-size", type=int, default=64)
    p.add_argument("--classifier", type=Path, default=None, help="SST-2 classifier folder")
    p.add_argument("--threads", type=int, default=None, help="torch threads")
    p.add_argument("--quick", action="store_true", help="tiny configs: checks the script runs")
    p.add_argument("--out", type=Path, default=None, help="write the numbers as JSON here")
    args = p.parse_args(argv)
    args.workloads = [n.strip() for n in args.workloads.split(",") if n.strip()]
    args.hp_workloads = [n.strip() for n in args.hp_workloads.split(",") if n.strip()]
    unknown = set(args.workloads + args.hp_workloads) - set(WORKLOADS)
    if unknown:
        p.error(f"unknown workloads {sorted(unknown)}; choose from {', '.join(WORKLOADS)}")
    args.batch = args.batch or (4 if args.quick else 32)
    args.repeats = args.repeats or (1 if args.quick else 3)
    return args


def write_out(
    args: argparse.Namespace,
    argv: list[str] | None,
    cfgs: Configs,
    results: dict[str, dict[str, Any]],
) -> None:
    """Write the results to ``args.out`` as JSON, under the run's date, machine and command."""
    meta = {
        "date": time.strftime("%Y-%m-%d"),
        "machine": f"{platform.machine()}, {torch.get_num_threads()} torch threads",
        "torch": torch.__version__,
        "quick": args.quick,
        "command": "python -m comparisons.benchmarks.speed "
        + " ".join(sys.argv[1:] if argv is None else argv),
        "default": repr(cfgs.default),
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({"meta": meta, "workloads": results}, indent=2) + "\n")
    print(f"wrote {args.out}")


def main(argv: list[str] | None = None) -> int:
    args = parse(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    cfgs = configs(args.quick)
    previous = json.loads(args.hp_from.read_text()) if args.hp_from else {}
    results: dict[str, dict[str, Any]] = {}
    for w in workloads(args.workloads, args.classifier):
        results[w.name] = run_workload(w, args, cfgs, prior_optima(previous, w.name))
        print(table({w.name: results[w.name]}).splitlines()[-1], flush=True)
    print(table(results), notes(results), sep="\n")
    if args.out is not None:
        write_out(args, argv, cfgs, results)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
