"""One study shared by N processes (``torchrun``): the shares and their merge.

Process ``r`` of ``N`` runs the examples at positions ``r, r + N, …`` (:func:`share`) into
``out/parts/rank-{r}-of-{N}`` (:func:`run_study_part`), with their positions in the whole
study, so the limits, ``captum_examples`` and ``sanity_examples`` pick the same examples
as one process would; then one process checks the parts and merges them into the run
folder (:func:`merge_study_parts`). Each part resumes like a run folder.
"""

from __future__ import annotations

import datetime
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from captum_perturb.distributed import is_shard
from comparisons.models.text_model import Example, TextModel
from comparisons.study.run import Study, StudyConfig
from comparisons.study.store import RunStore, write_merged

PARTS = "parts"
"""The folder of a run folder that holds the shares of a sharded study."""


def part_dir(out_dir: Path | str, rank: int, world: int) -> Path:
    """The run folder of process ``rank``'s share: ``out_dir/parts/rank-{rank}-of-{world}``."""
    return Path(out_dir) / PARTS / f"rank-{rank}-of-{world}"


def share(n: int, rank: int, world: int) -> list[int]:
    """The positions of process ``rank``'s examples among ``n``: ``rank, rank + world, …``
    (:func:`captum_perturb._utils.distributed.is_shard`; disjoint, covering, never padded)."""
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
    ignored. The merged files are written afresh (:func:`~comparisons.study.store.write_merged`:
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
