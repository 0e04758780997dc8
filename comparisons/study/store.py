"""The run folder of a comparison: tidy, append-only files that a run resumes from.

A run folder holds

* ``meta.json`` — what was run: model, data, task, seed, date, command, the methods
  (``signed``, ``family``, ``stochastic``, ``description``), the metrics (``better``:
  ``"higher"`` or ``"lower"``, ``description``) and free-text ``notes``;
* ``results.csv`` — the long table ``method,example,metric,value`` (one number per row;
  ``nan`` allowed; a method's wall time per example is the metric ``"seconds"``);
* ``explanations.jsonl`` — one explanation per line: ``method``, ``example``, ``text``,
  ``tokens``, ``scores``, ``label``, ``pred``, ``seconds`` (extra keys are kept);
* ``curves.jsonl`` — ``method``, ``example``, ``curve`` (e.g. ``"deletion/mask"``),
  ``values``;
* ``sanity.jsonl`` — ``method``, ``example``, ``stage``, ``stage_index``, ``spearman``
  (ρ of the scores), ``spearman_abs`` (ρ of their magnitudes) and ``n_tokens`` (the
  tokens ranked; the last two absent in older runs).

Every append writes one whole line, newline included, in a single write and flushes
it, so the newline is the commit mark: a last line without one was cut off by a crash
and is ignored when reading (and dropped before the next append). A malformed line
anywhere else is an error. JSON lines are UTF-8; NaN is written as Python's ``json``
writes it (``NaN``).

The statistics of the rows (means, paired differences, the best method) are in
:mod:`comparisons.stats`.
"""

from __future__ import annotations

import csv
import io
import json
import os
import shutil
import tempfile
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

RESULTS_HEADER = ("method", "example", "metric", "value")
"""Columns of ``results.csv``, in order."""

TASKS = ("classifier", "state", "llm")
FAMILIES = ("ours", "gradient", "perturbation", "floor")
BETTER = ("higher", "lower")


def _check_name(value: object, what: str) -> str:
    """``value`` as a one-line string (names are keys of every file)."""
    if not isinstance(value, str) or not value or "\n" in value or "\r" in value:
        raise ValueError(f"{what} must be a non-empty one-line string, got {value!r}")
    return value


def _complete_lines(path: Path) -> list[bytes]:
    """The newline-terminated lines of ``path`` (a cut-off last line is left out)."""
    if not path.exists():
        return []
    data = path.read_bytes()
    return data.split(b"\n")[:-1]  # the part after the last newline is incomplete


def _append_line(path: Path, line: str, header: str | None = None) -> None:
    """Append ``line`` + newline in one write, after dropping a cut-off tail.

    ``header`` is written first when the file is empty (or held only a cut-off line).
    """
    data = line.encode("utf-8") + b"\n"
    with open(path, "a+b") as f:
        size = f.seek(0, os.SEEK_END)
        if size:
            f.seek(size - 1)
            if f.read(1) != b"\n":  # a crash cut the last line: drop it
                f.seek(0)
                keep = f.read().rfind(b"\n") + 1
                f.truncate(keep)
                size = keep
        if size == 0 and header is not None:
            f.write(header.encode("utf-8") + b"\n")
            f.flush()
        f.write(data)
        f.flush()


def _csv_line(fields: Sequence[object]) -> str:
    buf = io.StringIO()
    csv.writer(buf, lineterminator="\n").writerow(fields)
    return buf.getvalue()[:-1]


class RunStore:
    """Reads and appends the files of one run folder (created if missing).

    Lookups that make a run resumable (:meth:`explanation`, :meth:`has_results`) use
    indexes built from the files on first use and kept up to date by this object's
    appends; one process should write a run folder at a time.

    Args:
        run_dir: the run folder.

    Example:
        >>> import tempfile
        >>> store = RunStore(Path(tempfile.mkdtemp()))
        >>> store.add_results([("ig", "ex0", "tau_loo/mask", 0.5)])
        >>> store.has_results("ig", "ex0", "tau_loo"), store.has_results("ig", "ex1")
        (True, False)
        >>> store.results()[0]["value"]
        0.5
    """

    META = "meta.json"
    RESULTS = "results.csv"
    EXPLANATIONS = "explanations.jsonl"
    CURVES = "curves.jsonl"
    SANITY = "sanity.jsonl"

    def __init__(self, run_dir: Path | str) -> None:
        self.run_dir = Path(run_dir)
        self.run_dir.mkdir(parents=True, exist_ok=True)
        self._explained: dict[tuple[str, str], dict[str, Any]] | None = None
        self._result_keys: dict[tuple[str, str], set[str]] | None = None

    # ----------------------------------------------------------------------------- meta
    def write_meta(self, meta: Mapping[str, Any]) -> None:
        """Validate and (over)write ``meta.json`` atomically.

        Raises:
            ValueError: a required key is missing or a value is not one of the allowed
                ones (``task``, a method's ``family``, a metric's ``better``).
        """
        required = ("model", "data", "task", "seed", "date", "command", "methods", "metrics")
        missing = [k for k in required if k not in meta]
        if missing:
            raise ValueError(f"meta lacks {missing}")
        if meta["task"] not in TASKS:
            raise ValueError(f"task must be one of {TASKS}, got {meta['task']!r}")
        for name, m in meta["methods"].items():
            _check_name(name, "a method name")
            if m.get("family") not in FAMILIES:
                raise ValueError(f"method {name!r}: family must be one of {FAMILIES}")
            for key in ("signed", "stochastic", "description"):
                if key not in m:
                    raise ValueError(f"method {name!r} lacks {key!r}")
        for name, m in meta["metrics"].items():
            _check_name(name, "a metric name")
            if m.get("better") not in BETTER:
                raise ValueError(f"metric {name!r}: better must be one of {BETTER}")
        out = {"notes": [], **meta}
        tmp = self.run_dir / (self.META + ".tmp")
        tmp.write_text(json.dumps(out, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
        os.replace(tmp, self.run_dir / self.META)

    def read_meta(self) -> dict[str, Any]:
        """The contents of ``meta.json`` (``FileNotFoundError`` when not written yet)."""
        meta: dict[str, Any] = json.loads((self.run_dir / self.META).read_text("utf-8"))
        return meta

    # ------------------------------------------------------------------------ appending
    def _append_json(self, name: str, record: Mapping[str, Any]) -> None:
        line = json.dumps(record, ensure_ascii=False, separators=(",", ":"))
        _append_line(self.run_dir / name, line)

    def add_explanation(self, record: Mapping[str, Any]) -> None:
        """Append one explanation: ``method``, ``example``, ``text``, ``tokens`` (T),
        ``scores`` (T), ``seconds``, and optionally ``label``/``pred`` (int or None).

        Extra keys are stored as given (they must be JSON-serialisable).
        """
        for key in ("method", "example", "text", "tokens", "scores", "seconds"):
            if key not in record:
                raise ValueError(f"an explanation needs {key!r}")
        tokens = [str(t) for t in record["tokens"]]
        scores = [float(s) for s in record["scores"]]
        if len(tokens) != len(scores):
            raise ValueError(f"{len(tokens)} tokens but {len(scores)} scores")
        label, pred = record.get("label"), record.get("pred")
        out = {
            **record,
            "method": _check_name(record["method"], "method"),
            "example": _check_name(record["example"], "example"),
            "text": str(record["text"]),
            "tokens": tokens,
            "scores": scores,
            "label": None if label is None else int(label),
            "pred": None if pred is None else int(pred),
            "seconds": float(record["seconds"]),
        }
        self._append_json(self.EXPLANATIONS, out)
        if self._explained is not None:
            self._explained[(out["method"], out["example"])] = out

    def add_results(self, rows: Iterable[tuple[str, str, str, float]]) -> None:
        """Append ``(method, example, metric, value)`` rows to ``results.csv``."""
        keys = self._index_results()
        for method, example, metric, value in rows:
            fields = (
                _check_name(method, "method"),
                _check_name(example, "example"),
                _check_name(metric, "metric"),
                repr(float(value)),
            )
            _append_line(self.run_dir / self.RESULTS, _csv_line(fields), _csv_line(RESULTS_HEADER))
            keys.setdefault((method, example), set()).add(metric)

    def add_curve(self, method: str, example: str, curve: str, values: Iterable[float]) -> None:
        """Append one curve, e.g. ``curve="deletion/mask"``, ``values`` = p_ŷ per step."""
        self._append_json(
            self.CURVES,
            {
                "method": _check_name(method, "method"),
                "example": _check_name(example, "example"),
                "curve": _check_name(curve, "curve"),
                "values": [float(v) for v in values],
            },
        )

    def add_sanity(
        self,
        method: str,
        example: str,
        stage: str,
        stage_index: int,
        spearman: float,
        spearman_abs: float | None = None,
        n_tokens: int | None = None,
    ) -> None:
        """Append the Spearman ρ between the original and the stage's explanation, of
        the scores and (``spearman_abs``) of their magnitudes, over ``n_tokens`` tokens."""
        record: dict[str, Any] = {
            "method": _check_name(method, "method"),
            "example": _check_name(example, "example"),
            "stage": _check_name(stage, "stage"),
            "stage_index": int(stage_index),
            "spearman": float(spearman),
        }
        if spearman_abs is not None:
            record["spearman_abs"] = float(spearman_abs)
        if n_tokens is not None:
            record["n_tokens"] = int(n_tokens)
        self._append_json(self.SANITY, record)

    def copy_sanity(self, row: Mapping[str, Any]) -> None:
        """Append a sanity row read from another run folder (merges)."""
        self.add_sanity(
            row["method"], row["example"], row["stage"], row["stage_index"], row["spearman"],
            row.get("spearman_abs"), row.get("n_tokens"),
        )  # fmt: skip

    # -------------------------------------------------------------------------- reading
    def _read_jsonl(self, name: str) -> list[dict[str, Any]]:
        path = self.run_dir / name
        out = []
        for i, line in enumerate(_complete_lines(path), 1):
            if not line.strip():
                continue
            try:
                out.append(json.loads(line))
            except json.JSONDecodeError as err:
                raise ValueError(f"{path}:{i}: malformed line ({err})") from None
        return out

    def explanations(self) -> list[dict[str, Any]]:
        """Every stored explanation, in the order written (duplicates included)."""
        return self._read_jsonl(self.EXPLANATIONS)

    def curves(self) -> list[dict[str, Any]]:
        """Every stored curve, in the order written."""
        return self._read_jsonl(self.CURVES)

    def sanity(self) -> list[dict[str, Any]]:
        """Every stored sanity-check row, in the order written."""
        return self._read_jsonl(self.SANITY)

    def results(self) -> list[dict[str, Any]]:
        """The rows of ``results.csv`` as dicts (``value`` a float), in the order written."""
        path = self.run_dir / self.RESULTS
        lines = [b.decode("utf-8") for b in _complete_lines(path)]
        if not lines:
            return []
        rows = list(csv.reader(lines))
        if tuple(rows[0]) != RESULTS_HEADER:
            raise ValueError(f"{path}: header {rows[0]} is not {list(RESULTS_HEADER)}")
        out = []
        for i, row in enumerate(rows[1:], 2):
            if len(row) != len(RESULTS_HEADER):
                raise ValueError(f"{path}:{i}: expected 4 fields, got {len(row)}")
            try:
                value = float(row[3])
            except ValueError:
                raise ValueError(f"{path}:{i}: value {row[3]!r} is not a number") from None
            out.append({"method": row[0], "example": row[1], "metric": row[2], "value": value})
        return out

    # ----------------------------------------------------------------------- resuming
    def explanation(self, method: str, example: str) -> dict[str, Any] | None:
        """The stored explanation of ``example`` by ``method`` (the last one), or None."""
        if self._explained is None:
            self._explained = {(r["method"], r["example"]): r for r in self.explanations()}
        return self._explained.get((method, example))

    def _index_results(self) -> dict[tuple[str, str], set[str]]:
        if self._result_keys is None:
            self._result_keys = {}
            for r in self.results():
                self._result_keys.setdefault((r["method"], r["example"]), set()).add(r["metric"])
        return self._result_keys

    def has_results(self, method: str, example: str, metric_prefix: str | None = None) -> bool:
        """Whether a result row exists for ``(method, example)`` whose metric starts with
        ``metric_prefix`` (any metric when None)."""
        metrics = self._index_results().get((method, example), set())
        if metric_prefix is None:
            return bool(metrics)
        return any(m.startswith(metric_prefix) for m in metrics)


def merge_runs(out_dir: Path | str, runs: Sequence[Path | str]) -> RunStore:
    """Combine run folders (e.g. shards of one study run as separate processes) into one.

    Rows are copied in order; ``meta.json`` comes from the first run, with the methods,
    metrics and notes of all runs (the commands of all shards are kept as notes).

    Raises:
        ValueError: when two runs hold the same (method, example, metric) result, or the
            runs explain different models.
    """
    sources = [RunStore(r) for r in runs]
    if not sources:
        raise ValueError("merge_runs needs at least one run folder")
    metas = [s.read_meta() for s in sources]
    if len({m["model"] for m in metas}) != 1:
        raise ValueError(
            f"the runs explain different models: {sorted({m['model'] for m in metas})}"
        )
    out = RunStore(out_dir)
    meta = dict(metas[0])
    meta["methods"] = {k: v for m in metas for k, v in m["methods"].items()}
    meta["metrics"] = {k: v for m in metas for k, v in m["metrics"].items()}
    meta["notes"] = [n for m in metas for n in m.get("notes", [])] + [
        f"merged from {len(metas)} runs: " + " ; ".join(m["command"] for m in metas)
    ]
    out.write_meta(meta)
    seen: set[tuple[str, str, str]] = set()
    for src in sources:
        rows = [(r["method"], r["example"], r["metric"], r["value"]) for r in src.results()]
        for key in rows:
            if key[:3] in seen:
                raise ValueError(f"{key[:3]} is in two of the runs")
            seen.add(key[:3])
        out.add_results(rows)
        for e in src.explanations():
            out.add_explanation(e)
        for c in src.curves():
            out.add_curve(c["method"], c["example"], c["curve"], c["values"])
        for s in src.sanity():
            out.copy_sanity(s)
    return out


def write_merged(
    out_dir: Path | str,
    runs: Sequence[Path | str],
    meta: Mapping[str, Any],
    order: Mapping[str, int],
) -> RunStore:
    """Write the rows of ``runs`` into ``out_dir`` afresh, replacing its files.

    Unlike :func:`merge_runs` (which appends), the files are built in a temporary folder
    inside ``out_dir`` and moved over the old ones (``meta.json`` first), so merging the
    same runs again gives the same folder, and a merge cut short is simply done again.
    A file without rows is removed. One row is kept per key — ``(method, example,
    metric)``, ``(method, example)`` for an explanation, ``(method, example, curve)``,
    ``(method, example, stage_index)`` — the last one read (a resumed run may have
    written a row twice). Rows are sorted by the position of their example in ``order``
    (unknown examples last), sanity rows by stage first; ties keep the order read.

    Args:
        out_dir: the merged run folder (created if missing).
        runs: the run folders, read in this order.
        meta: the merged ``meta.json`` (validated as by :meth:`RunStore.write_meta`).
        order: example id → position.
    """
    out = RunStore(out_dir)
    sources = [RunStore(r) for r in runs]
    tmp = Path(tempfile.mkdtemp(prefix=".merge-", dir=out.run_dir))
    try:
        merged = RunStore(tmp)  # its appends write the lines as a run writes them
        merged.write_meta(meta)

        def position(example: str) -> int:
            return order.get(example, len(order))

        results: dict[tuple[str, ...], dict[str, Any]] = {}
        explanations: dict[tuple[str, ...], dict[str, Any]] = {}
        curves: dict[tuple[str, ...], dict[str, Any]] = {}
        sanity: dict[tuple[Any, ...], dict[str, Any]] = {}
        for src in sources:
            for r in src.results():
                results[(r["method"], r["example"], r["metric"])] = r
            for e in src.explanations():
                explanations[(e["method"], e["example"])] = e
            for c in src.curves():
                curves[(c["method"], c["example"], c["curve"])] = c
            for s in src.sanity():
                sanity[(s["method"], s["example"], int(s["stage_index"]))] = s
        merged.add_results(
            (r["method"], r["example"], r["metric"], r["value"])
            for r in sorted(results.values(), key=lambda r: position(r["example"]))
        )
        for e in sorted(explanations.values(), key=lambda e: position(e["example"])):
            merged.add_explanation(e)
        for c in sorted(curves.values(), key=lambda c: position(c["example"])):
            merged.add_curve(c["method"], c["example"], c["curve"], c["values"])
        by_stage = sorted(
            sanity.values(), key=lambda s: (int(s["stage_index"]), position(s["example"]))
        )
        for s in by_stage:
            merged.copy_sanity(s)
        files = (RunStore.RESULTS, RunStore.EXPLANATIONS, RunStore.CURVES, RunStore.SANITY)
        for name in (RunStore.META, *files):
            if (tmp / name).exists():
                os.replace(tmp / name, out.run_dir / name)
            else:
                (out.run_dir / name).unlink(missing_ok=True)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return RunStore(out.run_dir)
