"""explain_corpus: rows, DataLoader input, resume after a kill, corrupt parts, torchrun.

Tiny random BERT models (fast); the numbers compared are the estimator's own outputs for
the same batch and seed, so equality is exact: the same batch is explained by the same
code with the same seed on one thread, whichever process or run takes it.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from torch import Tensor, nn
from torch.utils.data import DataLoader, DistributedSampler

import captum_perturb.corpus.explain as corpus_mod
from captum_perturb import (
    FixedPointConfig,
    LayerPerturbationEntropyAttribution,
    PerturbationEntropyAttribution,
    explain_corpus,
    explain_layers,
    read_layer_information,
)
from comparisons.layers.run import concat_information
from tests.distributed import run_processes

pq = pytest.importorskip("pyarrow.parquet")

CONFIG = FixedPointConfig(max_iter=20)
#: σ_max inside which the tiny model's σ land (its embeddings' default, 0.2, saturates all)
KW: dict[str, Any] = {"config": CONFIG, "sigma_max": 10.0}
ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(autouse=True, scope="module")
def _single_thread() -> Iterator[None]:
    saved = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(saved)


def tiny_bert(seed: int = 0) -> nn.Module:
    from transformers import BertConfig, BertModel

    torch.manual_seed(seed)
    config = BertConfig(
        vocab_size=60,
        hidden_size=16,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=32,
        max_position_embeddings=32,
    )
    return BertModel(config).eval()


def sentences(n: int = 7, seed: int = 1) -> list[list[int]]:
    g = torch.Generator().manual_seed(seed)
    lengths = torch.randint(3, 9, (n,), generator=g).tolist()
    return [[2, *torch.randint(5, 60, (k - 2,), generator=g).tolist(), 3] for k in lengths]


def collate(rows: list[Mapping[str, Any]]) -> dict[str, Tensor]:
    """Pad a list of ``{"input_ids": [...]}`` on the right (a DataCollatorWithPadding)."""
    width = max(len(r["input_ids"]) for r in rows)
    ids = torch.zeros(len(rows), width, dtype=torch.long)
    mask = torch.zeros(len(rows), width, dtype=torch.long)
    for i, r in enumerate(rows):
        ids[i, : len(r["input_ids"])] = torch.tensor(r["input_ids"])
        mask[i, : len(r["input_ids"])] = 1
    return {"input_ids": ids, "attention_mask": mask}


def batches(size: int = 2, n: int = 7) -> list[dict[str, Tensor]]:
    rows = [{"input_ids": s} for s in sentences(n)]
    return [collate(rows[i : i + size]) for i in range(0, len(rows), size)]


def run(model: nn.Module, data: Any, out: Path, **kw: Any) -> Any:
    kw = {**KW, "show_progress": False, **kw}
    return pq.read_table(explain_corpus(model, data, out, **kw))


# ---------------------------------------------------------------- rows and DataLoader
def test_rows_are_explain_layers_of_each_batch_with_seed_plus_index(tmp_path: Path) -> None:
    model = tiny_bert()
    data = batches()
    table = run(model, data, tmp_path / "a", seed=5)
    info = read_layer_information(tmp_path / "a" / "rows.parquet")
    direct = concat_information(
        [explain_layers(model, b, seed=5 + k, **KW) for k, b in enumerate(data)]
    )
    real = int(sum(b["attention_mask"].sum() for b in data))
    assert table.num_rows == real * 3  # layers 0, 1, 2
    assert info.meta["examples"] == list(range(7))
    for name in ("sigma", "nats_kept", "std_error", "entropy"):
        torch.testing.assert_close(getattr(info, name), getattr(direct, name), equal_nan=True)
    assert torch.equal(info.converged, direct.converged)
    assert info.evaluations is not None and direct.evaluations is not None
    assert torch.equal(info.evaluations, direct.evaluations)
    assert torch.equal(info.mask, direct.mask)
    score = table.column("score").to_numpy()
    nats = table.column("nats").to_numpy()
    assert (abs(score * info.dim - nats) < 1e-9 * abs(nats).max()).all()


def test_dataloader_gives_dataset_indices_and_the_same_rows(tmp_path: Path) -> None:
    model = tiny_bert()
    dataset = [{"input_ids": s} for s in sentences()]
    loader = DataLoader(dataset, batch_size=2, collate_fn=collate)  # type: ignore[arg-type]
    a = run(model, loader, tmp_path / "loader")
    b = run(model, batches(), tmp_path / "list")
    assert a.equals(b)  # same batches, same seeds: the same rows, ids = dataset indices


def test_id_key_names_the_examples(tmp_path: Path) -> None:
    data = [
        dict(b, idx=torch.arange(len(b["input_ids"])) * 10 + k) for k, b in enumerate(batches())
    ]
    table = run(tiny_bert(), data, tmp_path)
    assert sorted(set(table.column("example").to_pylist())) == sorted(
        int(i) for b in data for i in b["idx"]
    )


def test_shuffling_or_sharded_loaders_are_refused(tmp_path: Path) -> None:
    dataset = [{"input_ids": s} for s in sentences()]
    shuffled = DataLoader(dataset, batch_size=2, shuffle=True, collate_fn=collate)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="shuffle=False"):
        explain_corpus(tiny_bert(), shuffled, tmp_path / "s", show_progress=False)
    sampler = DistributedSampler(dataset, num_replicas=2, rank=0, shuffle=False)  # type: ignore[arg-type]
    sharded = DataLoader(dataset, batch_size=2, sampler=sampler, collate_fn=collate)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="DistributedSampler"):
        explain_corpus(tiny_bert(), sharded, tmp_path / "d", show_progress=False)


def test_bad_batches_and_explainers_are_refused(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="input_ids"):
        explain_corpus(tiny_bert(), [{"ids": torch.ones(1, 3)}], tmp_path / "a")
    with pytest.raises(TypeError, match="mappings"):
        explain_corpus(tiny_bert(), [torch.ones(1, 3)], tmp_path / "b")
    with pytest.raises(TypeError, match=r"nn\.Module"):
        explain_corpus("model", batches(), tmp_path / "c")  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="attribute_args"):
        explain_corpus(PerturbationEntropyAttribution(tiny_bert()), batches(), tmp_path / "d")


def test_other_settings_in_the_same_folder_are_refused(tmp_path: Path) -> None:
    model = tiny_bert()
    run(model, batches(), tmp_path, seed=0)
    with pytest.raises(ValueError, match="seed"):
        run(model, batches(), tmp_path, seed=1)
    with pytest.raises(ValueError, match="weights"):
        run(tiny_bert(seed=3), batches(), tmp_path, seed=0)
    other = batches(n=7)
    other[1]["input_ids"] = other[1]["input_ids"].flip(0)
    with pytest.raises(ValueError, match="batch 1 on disk"):
        run(model, other, tmp_path, seed=0)


def test_captum_layer_class_rows(tmp_path: Path) -> None:
    model = tiny_bert()

    def forward(input_ids: Tensor, attention_mask: Tensor) -> Tensor:
        return model(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state

    attr = LayerPerturbationEntropyAttribution(forward, model.embeddings)
    data = batches()
    table = run(attr, data, tmp_path, seed=2)
    rows = table.to_pylist()
    assert {r["layer"] for r in rows} == {None}
    for k, b in enumerate(data):
        res = attr.explain(
            b["input_ids"],
            additional_forward_args=(b["attention_mask"],),
            attention_mask=b["attention_mask"],
            seed=2 + k,
            **KW,
        )
        first = 2 * k
        got = [r for r in rows if r["example"] in (first, first + 1)]
        assert len(got) == int(b["attention_mask"].sum())
        for r in got:
            i = r["example"] - first
            g = int((res.group_ids[i] == r["position"]).nonzero())
            assert r["sigma"] == pytest.approx(float(res.estimate.sigma[i, g]), rel=1e-6)
            assert r["score"] == pytest.approx(float(res.estimate.score[i, g]), rel=1e-6)
            assert r["token"] == str(int(b["input_ids"][i, r["position"]]))
            assert r["converged"] == bool(res.converged[i])


# ----------------------------------------------------------------- resume and failures
def test_a_crashed_run_resumes_without_redoing_finished_batches(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    model = tiny_bert()
    data = batches()

    def crashing() -> Iterator[dict[str, Tensor]]:
        yield from data[:2]
        raise RuntimeError("the process died")

    with pytest.raises(RuntimeError, match="died"):
        explain_corpus(model, crashing(), tmp_path / "r", show_progress=False, **KW)
    assert len(list((tmp_path / "r" / "parts").glob("batch-*.parquet"))) == 2
    calls = []
    real = corpus_mod.explain_layers

    def counting(*args: Any, **kw: Any) -> Any:
        calls.append(kw["seed"])
        return real(*args, **kw)

    monkeypatch.setattr(corpus_mod, "explain_layers", counting)
    resumed = run(model, data, tmp_path / "r")
    assert calls == [2, 3]  # batches 2 and 3 (seed 0 + index), not 0 and 1
    assert resumed.equals(run(model, data, tmp_path / "fresh"))


def test_a_corrupt_part_is_redone_never_merged(tmp_path: Path) -> None:
    model = tiny_bert()
    data = batches()
    fresh = run(model, data, tmp_path)
    part = tmp_path / "parts" / "batch-00000001.parquet"
    part.write_bytes(part.read_bytes()[:-40])  # cut off: a partial file
    with pytest.warns(UserWarning, match="corrupt"):
        again = explain_corpus(model, data, tmp_path, show_progress=False, **KW)
    assert pq.read_table(again).equals(fresh)
    # damaged after the run: the merge refuses it instead of merging it silently
    blob = bytearray(part.read_bytes())
    blob[len(blob) // 3] ^= 0xFF
    part.write_bytes(bytes(blob))
    store = corpus_mod.PartStore(tmp_path)
    with pytest.raises(ValueError, match="corrupt"):
        store.merge(4, {})


_KILL_SCRIPT = """
import sys, time, torch
sys.path.insert(0, {root!r})
from tests.test_corpus import KW, batches, tiny_bert
from captum_perturb import explain_corpus
torch.set_num_threads(1)

def slow():
    for b in batches(size=1):
        yield b
        time.sleep(0.3)

explain_corpus(tiny_bert(), slow(), {out!r}, show_progress=False, **KW)
"""


def test_a_killed_run_restarts_complete_without_duplicates(tmp_path: Path) -> None:
    out = tmp_path / "killed"
    script = _KILL_SCRIPT.format(root=str(ROOT), out=str(out))
    proc = subprocess.Popen(
        [sys.executable, "-c", script], env={**os.environ, "OMP_NUM_THREADS": "1"}
    )
    parts = out / "parts"
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and len(list(parts.glob("batch-*.parquet"))) < 2:
        time.sleep(0.05)
        assert proc.poll() is None, "the run ended before it could be killed"
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=30)
    finished = len(list(parts.glob("batch-*.parquet")))
    assert 2 <= finished < 7
    model = tiny_bert()
    table = run(model, batches(size=1), out)
    ids = table.column("example").to_pylist()
    assert sorted(set(ids)) == list(range(7))
    keys = list(
        zip(
            ids,
            table.column("layer").to_pylist(),
            table.column("position").to_pylist(),
            strict=True,
        )
    )
    assert len(keys) == len(set(keys))  # no duplicate rows
    assert table.equals(run(model, batches(size=1), tmp_path / "fresh"))


# ---------------------------------------------------------------------------- torchrun
def _rank(rank: int, world: int, out: str, counts: str) -> None:
    # record which batches this process explained (their seeds: seed 0 + batch index)
    real, seeds = corpus_mod.explain_layers, []

    def counting(*args: Any, **kw: Any) -> Any:
        seeds.append(kw["seed"])
        return real(*args, **kw)

    corpus_mod.explain_layers = counting  # type: ignore[assignment]
    try:
        explain_corpus(tiny_bert(), batches(), out, show_progress=False, **KW)
    finally:
        corpus_mod.explain_layers = real  # type: ignore[assignment]
    Path(counts, f"rank-{rank}.json").write_text(json.dumps(seeds))
    parts = {p.name for p in (Path(out) / "parts").iterdir()}
    assert len(parts) == 4, parts


@pytest.mark.parametrize("world", [2, 3])
def test_processes_on_gloo_give_the_rows_of_one_process(tmp_path: Path, world: int) -> None:
    """4 batches over 2 processes (2 each) and over 3 (2, 1, 1): the same table, with each
    batch explained by exactly one process (duplicated work fails the count)."""
    counts = tmp_path / "counts"
    counts.mkdir()
    run_processes(_rank, world, str(tmp_path / "dist"), str(counts))
    done = [json.loads((counts / f"rank-{r}.json").read_text()) for r in range(world)]
    assert sorted(s for seeds in done for s in seeds) == [0, 1, 2, 3], done
    assert sorted(map(len, done), reverse=True) == ([2, 2] if world == 2 else [2, 1, 1])
    dist_rows = pq.read_table(tmp_path / "dist" / "rows.parquet")
    assert dist_rows.equals(run(tiny_bert(), batches(), tmp_path / "one"))
    meta = pq.read_schema(tmp_path / "dist" / "rows.parquet").metadata[b"captum_perturb"]
    assert b"explain_layers" in meta


#: imported by every Python process of the command (``sitecustomize``): in a process that
#: torchrun started (``RANK`` set), each explain_layers call of explain_corpus appends its
#: seed (seed + batch index) to ``$COUNT_DIR/rank-$RANK.txt``
_COUNTER = """
import os
if os.environ.get("COUNT_DIR") and os.environ.get("RANK"):
    import captum_perturb.corpus.explain as corpus
    real = corpus.explain_layers
    path = os.path.join(os.environ["COUNT_DIR"], "rank-" + os.environ["RANK"] + ".txt")
    def counting(*args, **kw):
        with open(path, "a") as f:
            f.write(str(kw["seed"]) + "\\n")
        return real(*args, **kw)
    corpus.explain_layers = counting
"""


def _layers_cli(out: Path, sentences: Path, procs: int, counts: Path | None = None) -> None:
    head = [sys.executable]
    if procs > 1:
        head += ["-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={procs}"]
    cmd = [
        *head, "-m", "comparisons", "layers", "--file", str(sentences), "--num-sentences", "5",
        "--models", "minilm", "--layers", "1,3", "--batch-size", "2", "--corpus", "0",
        "--bootstrap", "2000", "--threads", "1", "--out", str(out),
    ]  # fmt: skip
    path = str(ROOT)
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    if counts is not None:
        counts.mkdir()
        (counts / "site").mkdir()
        (counts / "site" / "sitecustomize.py").write_text(_COUNTER)
        path = os.pathsep.join([str(counts / "site"), path])
        env["COUNT_DIR"] = str(counts)
    env["PYTHONPATH"] = path
    subprocess.run(cmd, check=True, env=env, cwd=ROOT, timeout=300, capture_output=True)


def test_layers_command_under_torchrun_writes_the_one_process_folder(
    tmp_path: Path, minilm_dir: Path
) -> None:
    """``python -m torch.distributed.run --nproc-per-node 2 -m comparisons layers``: the
    processes share the 3 batches, process 0 writes one folder with the same rows, curves
    and pages as one process."""
    sentences = tmp_path / "sentences.txt"
    sentences.write_text(
        "a gorgeous , witty , seductive movie .\nit 's just dull .\n"
        "the plot is nothing but boilerplate clichés .\none of the most original films .\n"
        "i could not wait for it to end .\n",
        encoding="utf-8",
    )
    _layers_cli(tmp_path / "two", sentences, 2, counts=tmp_path / "counts")
    _layers_cli(tmp_path / "one", sentences, 1)
    # 3 batches of 2 sentences, each explained by exactly one of the two processes
    done = [(tmp_path / "counts" / f"rank-{r}.txt").read_text().split() for r in (0, 1)]
    assert sorted(s for seeds in done for s in seeds) == ["0", "1", "2"], done
    assert sorted(map(len, done)) == [1, 2], done
    rows = "minilm/rows/rows.parquet"
    assert pq.read_table(tmp_path / "two" / rows).equals(pq.read_table(tmp_path / "one" / rows))
    for name in ("index.html", "depth_curves.png", "minilm/information.json"):
        assert (tmp_path / "two" / name).is_file()
    curves = [
        json.loads((tmp_path / d / "curves.json").read_text())["curves"] for d in ("two", "one")
    ]
    assert curves[0] == curves[1]


def _rank_refused(rank: int, world: int, out: str) -> None:
    """Explain with another seed into a finished folder; record what each process raised."""
    try:
        explain_corpus(tiny_bert(), batches(), out, seed=9, show_progress=False, **KW)
    except Exception as err:
        Path(out, f"error-{rank}.txt").write_text(f"{type(err).__name__}: {err}")


def test_a_refusal_on_process_0_reaches_every_process(tmp_path: Path) -> None:
    """Process 0 checks the folder's settings; the others must not wait for it forever."""
    run(tiny_bert(), batches(), tmp_path)  # seed 0
    started = time.monotonic()
    run_processes(_rank_refused, 2, str(tmp_path))
    assert time.monotonic() - started < 50  # well before the group's 60 s timeout
    assert "ValueError" in (tmp_path / "error-0.txt").read_text()
    assert "process 0 failed: ValueError" in (tmp_path / "error-1.txt").read_text()
    assert "seed" in (tmp_path / "error-1.txt").read_text()


# ------------------------------------------------------------ edge cases of the input
def test_an_example_unconverged_in_any_layer_is_counted(tmp_path: Path) -> None:
    """The warning counts examples with at least one unconverged row, whatever the layer."""
    batch = batches(size=2, n=2)[0]

    def explain(b: Any, seed: int) -> tuple[dict[str, Any], dict[str, Any]]:
        rows = run(tiny_bert(), [batch], tmp_path / "real").to_pydict()
        pairs = zip(rows["example"], rows["layer"], strict=True)
        rows["converged"] = [(e, lay) != (0, 0) for e, lay in pairs]  # example 0, layer 0
        return {k: np.asarray(v) if k != "token" else v for k, v in rows.items()}, {}

    plan = corpus_mod._Plan([batch], 0, 1, "idx")
    store = corpus_mod.PartStore(tmp_path / "fake")
    _, unconverged, explained = corpus_mod._explain_batches(plan, {}, explain, store, 0, False)
    assert (unconverged, explained) == (1, 2)


class _Stream(torch.utils.data.IterableDataset):
    """An iterable dataset without a length (e.g. a streamed corpus)."""

    def __iter__(self) -> Iterator[dict[str, Any]]:
        yield from ({"input_ids": s} for s in sentences())


def test_an_iterable_dataset_without_length_streams_with_a_progress_bar(tmp_path: Path) -> None:
    loader = DataLoader(_Stream(), batch_size=2, collate_fn=collate)
    table = run(tiny_bert(), loader, tmp_path / "stream", show_progress=True)
    assert table.equals(run(tiny_bert(), batches(), tmp_path / "list"))


def test_an_id_twice_in_a_batch_is_refused(tmp_path: Path) -> None:
    data = [dict(b, idx=torch.zeros(len(b["input_ids"]), dtype=torch.long)) for b in batches()]
    with pytest.raises(ValueError, match="names an example twice"):
        run(tiny_bert(), data, tmp_path)


def test_a_shrunk_dataset_is_refused_on_resume(tmp_path: Path) -> None:
    dataset = [{"input_ids": s} for s in sentences()]
    model = tiny_bert()
    run(model, DataLoader(dataset, batch_size=2, collate_fn=collate), tmp_path)  # type: ignore[arg-type]
    shorter = DataLoader(dataset[:3], batch_size=2, collate_fn=collate)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="corpus or its batching changed"):
        run(model, shorter, tmp_path)


def _rank_disagreeing(rank: int, world: int, out: str) -> None:
    """Two ways processes can disagree; record what each process raised."""
    dataset = [{"input_ids": s} for s in sentences()]
    cases = {
        # each process its own folder: as if out_dir were not shared between machines
        "folder": (batches(), Path(out) / f"own-{rank}"),
        # a random sampler: each process would see other batches
        "sampler": (
            DataLoader(
                dataset,  # type: ignore[arg-type]
                batch_size=2,
                collate_fn=collate,
                sampler=torch.utils.data.SubsetRandomSampler(
                    range(7), generator=torch.Generator().manual_seed(rank)
                ),
            ),
            Path(out) / "shared",
        ),
    }
    for name, (data, folder) in cases.items():
        try:
            explain_corpus(tiny_bert(), data, folder, show_progress=False, **KW)
        except Exception as err:
            Path(out, f"{name}-{rank}.txt").write_text(f"{type(err).__name__}: {err}")


def test_processes_that_disagree_all_raise(tmp_path: Path) -> None:
    run_processes(_rank_disagreeing, 2, str(tmp_path))
    folder = [(tmp_path / f"folder-{r}.txt").read_text() for r in range(2)]
    assert "process 1 failed: ValueError" in folder[0]
    assert "every process sees" in folder[1]
    sampler = [(tmp_path / f"sampler-{r}.txt").read_text() for r in range(2)]
    assert all("differ between processes" in s for s in sampler)
