"""``python -m comparisons study`` sharded over processes (torchrun), merged and resumed.

A two-layer, 32-wide random BERT classifier saved with ``save_pretrained`` and a
word-level tokenizer stand in for a real model. The torchrun tests launch
``python -m torch.distributed.run --standalone --nproc-per-node 2 -m comparisons study``
as CI does and compare its merged run folder with the same command in one process; the
in-process tests drive :func:`~comparisons.study.shards.run_study_part` and
:func:`~comparisons.study.shards.merge_study_parts` directly (the checks of the parts).

The numbers are compared exactly: every example is explained and scored by the same
code, with the same seed (from the run's seed and the example id) and the same single
thread, whichever process takes it, so only the ``seconds`` metric (wall time) differs.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

pytest.importorskip("transformers")
pytest.importorskip("matplotlib")
pytest.importorskip("IPython")

from transformers import BertForSequenceClassification, BertTokenizer

from comparisons.models.text_model import TextModel
from comparisons.study.run import StudyConfig, run_study
from comparisons.study.shards import merge_study_parts, part_dir, run_study_part, share
from comparisons.study.store import RunStore
from tests.comparisons.study.test_harness import CORPUS, SPECIAL_TOKENS, WORDS, _build
from tests.comparisons.study.test_harness import SENTENCES as HARNESS_SENTENCES

# Captum warns about gradient requirements on every call.
pytestmark = pytest.mark.filterwarnings("ignore::UserWarning")

ROOT = Path(__file__).resolve().parents[3]
# the harness tests' vocabulary and sentences; the last three rows: the σ_S corpus
SENTENCES = (*HARNESS_SENTENCES, *((s, 0) for s in CORPUS))  # (--corpus 3; labels unused)
N = 6
METHODS = ("ours", "saliency", "random")
CONFIG = StudyConfig(METHODS, captum_examples=2, sanity_examples=2)
TIMEOUT = 300  # seconds a command may take before the test fails (never hangs CI)


@pytest.fixture(scope="module")
def setting(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """The saved classifier folder, the data file and the same model in memory."""
    folder = tmp_path_factory.mktemp("distributed")
    vocab = folder / "vocab.txt"
    vocab.write_text("\n".join([*SPECIAL_TOKENS, *WORDS]) + "\n", encoding="utf-8")
    tokenizer = BertTokenizer(str(vocab))
    model = _build(BertForSequenceClassification, 0)  # the harness tests' tiny classifier
    model_dir = folder / "tiny-bert"
    model.save_pretrained(model_dir)
    tokenizer.save_pretrained(model_dir)
    data = folder / "data.tsv"
    rows = ["sentence\tlabel", *(f"{s}\t{y}" for s, y in SENTENCES)]
    data.write_text("\n".join(rows) + "\n", encoding="utf-8")
    tm = TextModel(model, tokenizer, "probs", name="tiny-bert")
    examples = [tm.encode(s, f"data-{i:04d}", y) for i, (s, y) in enumerate(SENTENCES[:N])]
    corpus = [s for s, _ in SENTENCES[-3:]]
    return {"model_dir": model_dir, "data": data, "tm": tm, "examples": examples, "corpus": corpus}


# ------------------------------------------------------------------------------- helpers


def _study_args(setting: dict[str, Any], out: Path, *extra: str) -> list[str]:
    # --num-examples, not --n: torchrun's own parser would take --n for one of its options
    return [
        "study", "--model", str(setting["model_dir"]), "--data", str(setting["data"]),
        "--num-examples", str(N), "--corpus", "3", "--methods", ",".join(METHODS),
        "--captum-examples", "2", "--sanity-examples", "2", "--threads", "1",
        "--out", str(out), *extra,
    ]  # fmt: skip


def _run(args: list[str], nproc: int) -> subprocess.CompletedProcess[str]:
    """``python -m comparisons ARGS``, under torchrun with ``nproc`` processes if > 0."""
    launcher = ["-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={nproc}"]
    command = [sys.executable, *(launcher if nproc else []), "-m", "comparisons", *args]
    path = os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))
    env = {
        **os.environ,
        "PYTHONPATH": path,
        "OMP_NUM_THREADS": "1",
        "HF_HUB_OFFLINE": "1",
        "TRANSFORMERS_OFFLINE": "1",
        "MPLBACKEND": "Agg",
    }
    return subprocess.run(
        command, cwd=ROOT, env=env, capture_output=True, text=True, timeout=TIMEOUT, check=False
    )


def _ok(proc: subprocess.CompletedProcess[str]) -> None:
    assert proc.returncode == 0, f"exit {proc.returncode}\n{proc.stdout}\n{proc.stderr[-4000:]}"


Key = tuple[str, ...]


def _keyed(rows: list[dict[str, Any]], *fields: str) -> dict[Key, dict[str, Any]]:
    """Rows by key, failing on a duplicate key."""
    out = {tuple(str(r[f]) for f in fields): r for r in rows}
    assert len(out) == len(rows), f"duplicate {fields} rows"
    return out


def _contents(run_dir: Path) -> dict[str, Any]:
    """What a run folder holds, timing left out: results without ``seconds``,
    explanations without their seconds, curves, sanity rows (all keyed) and meta."""
    store = RunStore(run_dir)
    results = _keyed(store.results(), "method", "example", "metric")
    meta = store.read_meta()
    return {
        "results": {k: r["value"] for k, r in results.items() if k[2] != "seconds"},
        "result keys": set(results),
        "explanations": {
            k: {f: v for f, v in e.items() if f != "seconds"}
            for k, e in _keyed(store.explanations(), "method", "example").items()
        },
        "curves": _keyed(store.curves(), "method", "example", "curve"),
        "sanity": _keyed(store.sanity(), "method", "example", "stage_index"),
        "meta": {k: v for k, v in meta.items() if k not in ("date", "command", "parts")},
    }


def _seconds(run_dir: Path) -> dict[Key, float]:
    rows = RunStore(run_dir).results()
    return {(r["method"], r["example"]): r["value"] for r in rows if r["metric"] == "seconds"}


# ---------------------------------------------------------------------------- torchrun


@pytest.fixture(scope="module")
def runs(setting: dict[str, Any], tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """The same study in one process and under torchrun with two processes."""
    folder = tmp_path_factory.mktemp("runs")
    one, two = folder / "one", folder / "two"
    _ok(_run(_study_args(setting, one), nproc=0))
    proc = _run(_study_args(setting, two), nproc=2)
    _ok(proc)
    assert f"merged 2 parts: wrote {two}/report.html" in proc.stdout
    return {"one": one, "two": two}


def test_torchrun_study_writes_the_rows_of_one_process(runs: dict[str, Path]) -> None:
    one, two = _contents(runs["one"]), _contents(runs["two"])
    assert len(one["results"]) > 0 and len(one["sanity"]) > 0 and len(one["curves"]) > 0
    for what in one:
        assert two[what] == one[what], what  # exact: same seed, same code, one thread
    examples = {f"data-{i:04d}" for i in range(N)}
    assert {k[1] for k in one["result keys"]} == examples
    assert {k[1] for k in one["sanity"]} == {"data-0000", "data-0001"}
    assert {k[1] for k in one["result keys"] if k[2] == "infidelity"} == {"data-0000", "data-0001"}
    assert (runs["two"] / "report.html").is_file()
    meta = RunStore(runs["two"]).read_meta()
    assert meta["parts"] == {"world": 2, "folders": ["parts/rank-0-of-2", "parts/rank-1-of-2"]}
    assert meta["command"].startswith("python -m comparisons study --model ")


def test_torchrun_study_shards_by_position(runs: dict[str, Path]) -> None:
    for rank in (0, 1):
        held = [f"data-{i:04d}" for i in range(rank, N, 2)]
        part = part_dir(runs["two"], rank, 2)
        assert RunStore(part).read_meta()["shard"] == {"rank": rank, "world": 2, "examples": held}
        assert sorted({r["example"] for r in RunStore(part).results()}) == held
        assert not (part / "report.html").exists()
    # the merged rows are in the order of a one-process run (examples, then methods)
    for name in ("curves.jsonl", "sanity.jsonl"):
        assert (runs["two"] / name).read_bytes() == (runs["one"] / name).read_bytes(), name


def test_torchrun_study_resumes_a_cut_part_and_redoes_only_what_is_missing(
    runs: dict[str, Path], setting: dict[str, Any], tmp_path: Path
) -> None:
    out = tmp_path / "two"
    shutil.copytree(runs["two"], out)
    before = _seconds(out)
    part0, part1 = part_dir(out, 0, 2), part_dir(out, 1, 2)
    part0_files = {p.name: p.read_bytes() for p in part0.iterdir() if p.name != "meta.json"}
    # rank 1 "died" while scoring its last example: its rows and explanations are gone,
    # and the last line of results.csv was cut off mid-write; the merge never happened
    lost = "data-0005"
    for name in ("results.csv", "explanations.jsonl", "curves.jsonl"):
        path = part1 / name
        lines = path.read_text(encoding="utf-8").splitlines(keepends=True)
        path.write_text("".join(line for line in lines if lost not in line), encoding="utf-8")
    with (part1 / "results.csv").open("a", encoding="utf-8") as f:
        f.write(f"ours,{lost},aopc_compre")
    kept1 = (part1 / "explanations.jsonl").read_text("utf-8").splitlines()
    for name in ("results.csv", "explanations.jsonl", "curves.jsonl", "sanity.jsonl"):
        (out / name).unlink()
    (out / "report.html").unlink()

    _ok(_run(_study_args(setting, out), nproc=2))

    assert _contents(out) == _contents(runs["two"])  # complete, without duplicates
    after = _seconds(out)
    assert after.keys() == before.keys()
    redone = {k for k in before if after[k] != before[k]}
    assert {k[1] for k in redone} <= {lost}  # finished examples kept their timings
    assert {p.name: p.read_bytes() for p in part0.iterdir() if p.name != "meta.json"} == (
        part0_files
    )  # rank 0 had nothing left to do
    explained = (part1 / "explanations.jsonl").read_text("utf-8").splitlines()
    assert explained[: len(kept1)] == kept1
    assert [json.loads(line)["example"] for line in explained[len(kept1) :]] == [lost] * len(
        METHODS
    )
    assert (out / "report.html").is_file()

    # the same command again changes nothing: the merge is written afresh, not appended
    merged = {n: (out / n).read_bytes() for n in ("results.csv", "explanations.jsonl")}
    _ok(_run(_study_args(setting, out), nproc=2))
    assert {n: (out / n).read_bytes() for n in merged} == merged

    # a part of another run (here: another seed) is refused, and nothing is merged
    proc = _run(_study_args(setting, out, "--seed", "1"), nproc=2)
    assert proc.returncode != 0
    assert "rank-0-of-2 is not this run's share: seed 0" in proc.stderr
    assert {n: (out / n).read_bytes() for n in merged} == merged


# ------------------------------------------------------------------- parts, in process


def _sharded(setting: dict[str, Any], out: Path, world: int = 2) -> RunStore:
    """Every share of a study run one after the other in this process, then merged."""
    for rank in range(world):
        run_study_part(
            setting["tm"], setting["examples"], out, CONFIG, rank=rank, world=world,
            corpus=setting["corpus"], command="pytest",
        )  # fmt: skip
    return merge_study_parts(
        setting["tm"], setting["examples"], out, CONFIG, world=world,
        corpus=setting["corpus"], command="pytest",
    )  # fmt: skip


@pytest.fixture(scope="module")
def in_process(setting: dict[str, Any], tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("in-process") / "run"
    _sharded(setting, out, world=3)
    return out


def test_share_is_every_worldth_example() -> None:
    assert share(7, 0, 3) == [0, 3, 6] and share(7, 2, 3) == [2, 5]
    assert sorted(i for r in range(4) for i in share(10, r, 4)) == list(range(10))


def test_shares_merged_in_process_equal_one_run(
    in_process: Path, setting: dict[str, Any], tmp_path: Path
) -> None:
    one = tmp_path / "one"
    run_study(
        setting["tm"], setting["examples"], one, CONFIG, corpus=setting["corpus"], report=False
    )
    assert _contents(in_process) == _contents(one)


def test_merging_again_gives_the_same_folder(in_process: Path, setting: dict[str, Any]) -> None:
    files = {p.name: p.read_bytes() for p in in_process.iterdir() if p.is_file()}
    merge_study_parts(
        setting["tm"], setting["examples"], in_process, CONFIG, world=3,
        corpus=setting["corpus"], command="pytest",
    )  # fmt: skip
    again = {p.name: p.read_bytes() for p in in_process.iterdir() if p.is_file()}
    assert again.keys() == files.keys()
    for name in files:
        if name != "meta.json":
            assert again[name] == files[name], name
    assert not list(in_process.glob(".merge-*"))


def _merge(setting: dict[str, Any], out: Path, world: int = 3) -> None:
    merge_study_parts(
        setting["tm"], setting["examples"], out, CONFIG, world=world,
        corpus=setting["corpus"], command="pytest",
    )  # fmt: skip


@pytest.fixture
def damaged(in_process: Path, tmp_path: Path) -> Path:
    out = tmp_path / "run"
    shutil.copytree(in_process, out)
    return out


def test_a_part_with_another_share_is_refused(damaged: Path, setting: dict[str, Any]) -> None:
    part1, part2 = part_dir(damaged, 1, 3), part_dir(damaged, 2, 3)
    shutil.rmtree(part2)
    shutil.copytree(part1, part2)  # rank 1's rows where rank 2's belong
    with pytest.raises(ValueError, match=r"rank-2-of-3 is not this run's share: .*records rank 1"):
        _merge(setting, damaged)
    with pytest.raises(ValueError, match=r"rank-2-of-3 is not this run's share"):
        run_study_part(
            setting["tm"], setting["examples"], damaged, CONFIG, rank=2, world=3,
            corpus=setting["corpus"],
        )  # fmt: skip


def test_a_part_missing_rows_is_refused_then_completed(
    damaged: Path, in_process: Path, setting: dict[str, Any]
) -> None:
    results = part_dir(damaged, 0, 3) / "results.csv"
    lines = results.read_text(encoding="utf-8").splitlines(keepends=True)
    results.write_text("".join(lines[:-3]), encoding="utf-8")
    with pytest.raises(ValueError, match=r"rank-0-of-3 is not this run's share: unfinished: "):
        _merge(setting, damaged)
    # running the share again completes it
    _sharded(setting, damaged, world=3)
    assert _contents(damaged) == _contents(in_process)


def test_a_malformed_line_is_refused(damaged: Path, setting: dict[str, Any]) -> None:
    path = part_dir(damaged, 1, 3) / "explanations.jsonl"
    lines = path.read_text(encoding="utf-8").splitlines(keepends=True)
    path.write_text("".join([lines[0], "{not json\n", *lines[1:]]), encoding="utf-8")
    with pytest.raises(ValueError, match=r"rank-1-of-3.*explanations.jsonl:2: malformed line"):
        _merge(setting, damaged)


def test_other_sentences_under_the_same_ids_are_refused(
    damaged: Path, setting: dict[str, Any]
) -> None:
    examples = list(setting["examples"])
    examples[1] = setting["tm"].encode("the movie was great", examples[1].id, 1)
    with pytest.raises(ValueError, match=r"rank-1-of-3 .*other sentences under the ids data-0001"):
        run_study_part(
            setting["tm"], examples, damaged, CONFIG, rank=1, world=3, corpus=setting["corpus"]
        )


def test_a_one_process_run_folder_is_not_overwritten(
    setting: dict[str, Any], tmp_path: Path
) -> None:
    out = tmp_path / "run"
    tm, examples = setting["tm"], setting["examples"][:1]
    run_study(tm, examples, out, StudyConfig(("random",), 0, 0, 0), report=False)
    with pytest.raises(ValueError, match=r"holds a run written by one process"):
        run_study_part(tm, examples, out, CONFIG, rank=0, world=2)
    assert not (out / "parts").exists()
