"""Throughput of the corpus commands on 1 and 2 processes.

``python -m comparisons.benchmarks.scaling``.

Runs the same ``layers`` (and ``study``) command three ways, one after the other, each in
a fresh output folder, and prints examples per second and the scaling efficiency against
the first::

    1 process  × 1 thread    python -m comparisons <cmd> --threads 1
    1 process  × 2 threads   python -m comparisons <cmd> --threads 2
    2 processes × 1 thread   python -m torch.distributed.run --standalone --nproc-per-node 2
                             -m comparisons <cmd> --threads 1

Efficiency of a configuration with P cores = (its examples/s) / (P × the 1 × 1 rate).
Wall time covers the whole command (model loading, σ_S, explaining, merging, the report),
as a user sees it. Also checks that the 2-process run's rows equal the 1-process run's.

Example::

    python -m comparisons.benchmarks.scaling --layers-n 32 --study-n 16 --out docs/scaling.json
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

CONFIGS = (
    ("1 process × 1 thread", 1, 1),
    ("1 process × 2 threads", 1, 2),
    ("2 processes × 1 thread", 2, 1),
)


def _command(procs: int, threads: int, args: list[str]) -> list[str]:
    head = [sys.executable]
    if procs > 1:
        head += ["-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={procs}"]
    return [*head, "-m", "comparisons", *args, "--threads", str(threads)]


def _run(cmd: list[str]) -> float:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    started = time.perf_counter()
    subprocess.run(cmd, check=True, env=env, stdout=subprocess.DEVNULL)
    return time.perf_counter() - started


def _same_rows(a: Path, b: Path) -> bool:
    import pyarrow.parquet as pq

    return bool(pq.read_table(a).equals(pq.read_table(b)))


def _same_results(a: Path, b: Path) -> bool:
    import csv

    def rows(p: Path) -> set[tuple[str, ...]]:
        with open(p / "results.csv", newline="", encoding="utf-8") as f:
            return {tuple(r) for r in csv.reader(f) if r and r[2] != "seconds"}

    return rows(a) == rows(b)


def measure(name: str, args: list[str], n: int, root: Path) -> dict[str, Any]:
    """Time ``args`` under every configuration; ``n`` examples each."""
    runs: list[dict[str, Any]] = []
    for label, procs, threads in CONFIGS:
        out = root / f"{name}-{procs}x{threads}"
        seconds = _run(_command(procs, threads, [*args, "--out", str(out)]))
        runs.append({"config": label, "processes": procs, "threads": threads,
                     "seconds": seconds, "examples_per_s": n / seconds})  # fmt: skip
        print(f"{name:7s} {label:24s} {seconds:8.1f} s  {n / seconds:.3f} examples/s", flush=True)
    base = runs[0]["examples_per_s"]
    for r in runs:
        r["speedup"] = r["examples_per_s"] / base
        r["efficiency"] = r["speedup"] / (r["processes"] * r["threads"])
    one, two = root / f"{name}-1x1", root / f"{name}-2x1"
    if name == "layers":
        same = _same_rows(
            one / "minilm" / "rows" / "rows.parquet", two / "minilm" / "rows" / "rows.parquet"
        )
    else:
        same = _same_results(one, two)
    return {"command": args, "examples": n, "runs": runs, "two_processes_equal_one": same}


def storage(copies: int, root: Path) -> dict[str, Any]:
    """Size of real rows as Parquet against JSON lines, and the merge's rate.

    The rows are :func:`~captum_perturb.explain_corpus` of 8 SST-2 dev sentences on the
    packaged MiniLM (all layers, batches of 4); their parts are then copied ``copies``
    times under new batch indices and example ids, and the merge of all of them is timed
    (rows per second: read, check, write).
    """
    import pyarrow.compute as pc
    import pyarrow.parquet as pq
    from transformers import AutoModel, AutoTokenizer

    from captum_perturb import explain_corpus
    from captum_perturb.corpus.parts import PartStore
    from comparisons.models.resources import data_dir, packaged_minilm_dir, read_sentences

    where = packaged_minilm_dir()
    model, tok = AutoModel.from_pretrained(where).eval(), AutoTokenizer.from_pretrained(where)
    sentences = [s for s, _ in read_sentences(data_dir() / "sst2" / "dev.tsv", limit=8)]
    batches = [tok(sentences[i : i + 4], return_tensors="pt", padding=True) for i in (0, 4)]
    path = explain_corpus(model, batches, root / "rows", tokenizer=tok, show_progress=False)
    table = pq.read_table(path)
    jsonl = root / "rows.jsonl"
    with open(jsonl, "w", encoding="utf-8") as f:
        for row in table.to_pylist():
            f.write(json.dumps(row) + "\n")
    store = PartStore(root / "merge")
    n_ex = len(set(table.column("example").to_pylist()))
    for k in range(copies):
        shifted = table.set_column(0, "example", pc.add(table.column("example"), k * n_ex))
        ids = shifted.column("example").unique().to_pylist()
        store.write_part(k, shifted.replace_schema_metadata(None), ids, {}, f"copy {k}")
    started = time.perf_counter()
    store.merge(copies, {})
    seconds = time.perf_counter() - started
    rows = copies * table.num_rows
    out = {
        "rows": table.num_rows,
        "parquet_bytes_per_row": Path(path).stat().st_size / table.num_rows,
        "jsonl_bytes_per_row": jsonl.stat().st_size / table.num_rows,
        "merge_rows": rows,
        "merge_seconds": seconds,
        "merge_rows_per_s": rows / seconds,
    }
    print(
        f"storage: {out['parquet_bytes_per_row']:.1f} bytes/row as Parquet, "
        f"{out['jsonl_bytes_per_row']:.1f} as JSON lines; merge of {rows} rows in "
        f"{seconds:.1f} s ({rows / seconds:,.0f} rows/s)",
        flush=True,
    )
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--layers-n", type=int, default=32, help="SST-2 dev sentences (0: skip)")
    parser.add_argument("--study-n", type=int, default=16, help="study examples (0: skip)")
    parser.add_argument(
        "--merge-copies", type=int, default=0, help="parts in the merge measurement (0: skip)"
    )
    parser.add_argument("--out", type=Path, default=None, help="write the numbers as JSON")
    args = parser.parse_args(argv)
    results: dict[str, Any] = {"date": time.strftime("%Y-%m-%d"), "cpus": os.cpu_count()}
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        if args.layers_n:
            cmd = ["layers", "--num-sentences", str(args.layers_n), "--models", "minilm",
                   "--batch-size", "8", "--bootstrap", "0"]  # fmt: skip
            results["layers"] = measure("layers", cmd, args.layers_n, root)
        if args.study_n:
            cmd = ["study", "--model", "sst2", "--num-examples", str(args.study_n),
                   "--captum-examples", "0", "--sanity-examples", "0"]  # fmt: skip
            results["study"] = measure("study", cmd, args.study_n, root)
        if args.merge_copies:
            results["storage"] = storage(args.merge_copies, root)
    for name in ("layers", "study"):
        if name in results:
            for r in results[name]["runs"]:
                speed, eff = r["speedup"], r["efficiency"]
                print(f"{name:7s} {r['config']:24s} speed-up {speed:.2f}  efficiency {eff:.2f}")
            same = results[name]["two_processes_equal_one"]
            print(f"{name:7s} 2-process rows equal the 1-process rows: {same}")
    if args.out:
        args.out.write_text(json.dumps(results, indent=1), encoding="utf-8")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
