r"""Corpus σ_S sharded over processes: ``layer_moments`` / ``layer_state_std`` under
``torch.distributed`` (a real two-process gloo group on loopback), a corpus streamed as
batches, and the cache file.

Tolerances. Sharding only changes the order in which the float64 moments are summed:
each sum has at most 7 terms of magnitude below 10 here, so two orders differ by at
most :math:`7 \cdot 10 \cdot 2^{-53} \approx 10^{-14}` — ``atol = 1e-12`` and
``rtol = 1e-10`` on the moments; counts are exact. σ_S is rounded to float32 from them,
so it may land on the other side of one float32 rounding step: ``rtol = 1e-6``.
Processes of one group receive the same bits from the all-reduce: compared exactly.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import pytest
import torch
import torch.distributed as dist
import transformers
from torch import Tensor, nn
from torch.utils.data import DataLoader, DistributedSampler

from captum_perturb.layers import state_std as layerwise
from captum_perturb.layers.state_std import layer_moments, layer_state_std
from tests.distributed import run_processes

LENGTHS = (5, 3, 7, 4, 6, 2, 5)
"""Seven sentences: batch sizes 2, 3 and 8 make 4, 3 and 1 forward passes, so the two
processes get 2 + 2, 2 + 1 and 1 + 0 of them."""

PASSES = {2: [2, 2], 3: [2, 1], 8: [1, 0]}
"""Forward passes per rank for each batch size."""


def assert_std_close(got: Tensor, expected: Tensor) -> None:
    """Float32 σ_S from moments summed in another order (module docstring)."""
    assert got.dtype == torch.float32
    torch.testing.assert_close(got, expected, rtol=1e-6, atol=0.0)


def tiny_bert() -> nn.Module:
    """A tiny random ``BertModel``, the same weights in every process (seeded)."""
    torch.manual_seed(0)
    cfg = transformers.BertConfig(
        vocab_size=50,
        hidden_size=16,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=32,
        max_position_embeddings=16,
    )
    return transformers.BertModel(cfg).eval()


def encoding() -> dict[str, Tensor]:
    """Random ids padded on the right (pad 0), with segment ids."""
    gen = torch.Generator().manual_seed(1)
    n, t = len(LENGTHS), max(LENGTHS)
    mask = (torch.arange(t)[None] < torch.tensor(LENGTHS)[:, None]).long()
    ids = torch.randint(5, 50, (n, t), generator=gen) * mask
    segments = torch.randint(0, 2, (n, t), generator=gen) * mask
    return {"input_ids": ids, "attention_mask": mask, "token_type_ids": segments}


def rows(enc: dict[str, Tensor]) -> list[dict[str, Tensor]]:
    """The encoding as one dict per sentence (a dataset for a ``DataLoader``)."""
    return [{k: v[i] for k, v in enc.items()} for i in range(len(LENGTHS))]


def assert_moments_close(got: dict[int, Any], expected: dict[int, Any]) -> None:
    assert sorted(got) == sorted(expected)
    for k in expected:
        for a, b in zip(got[k][:2], expected[k][:2], strict=True):
            assert a.dtype == torch.float64
            torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-12, msg=f"layer {k}")
        assert torch.equal(got[k][2], expected[k][2]), f"layer {k}: counts differ"


# --- one process ---------------------------------------------------------------------


def test_batches_streamed_equal_one_encoding() -> None:
    model, enc = tiny_bert(), encoding()
    expected = layer_moments(model, enc, batch_size=3)
    loader = DataLoader(rows(enc), batch_size=2)  # full width: trailing padding trimmed
    assert_moments_close(layer_moments(model, loader), expected)
    as_list = [{k: v[i : i + 3] for k, v in enc.items()} for i in range(0, len(LENGTHS), 3)]
    got = layer_state_std(model, iter(as_list), layers=[2, 0])
    want = layer_state_std(model, enc, layers=[0, 2])
    assert sorted(got) == [0, 2]
    for k in want:
        assert_std_close(got[k], want[k])


def test_bad_corpora_and_options(tmp_path: Path) -> None:
    model, enc = tiny_bert(), encoding()
    with pytest.raises(ValueError, match="cache_dir needs the corpus as one encoding"):
        layer_state_std(model, DataLoader(rows(enc), batch_size=2), cache_dir=tmp_path)
    assert list(tmp_path.iterdir()) == []
    with pytest.raises(ValueError, match="no sentences"):
        layer_moments(model, [])
    with pytest.raises(ValueError, match="no sentences"):
        layer_state_std(model, {k: v[:0] for k, v in enc.items()})
    with pytest.raises(TypeError, match="each batch of the corpus must be a mapping"):
        layer_moments(model, [enc["input_ids"]])  # type: ignore[list-item]
    with pytest.raises(TypeError, match="corpus must be"):
        layer_moments(model, enc["input_ids"])
    with pytest.raises(ValueError, match="distributed=True needs"):
        layer_moments(model, enc, distributed=True)


def test_cache_written_atomically(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    model, enc = tiny_bert(), encoding()

    def failing_save(obj: Any, f: Any) -> None:  # torch.save writes into an open file
        f.write(b"half a file")
        raise OSError("disk full")

    monkeypatch.setattr(layerwise.torch, "save", failing_save)
    with pytest.raises(OSError, match="disk full"):
        layer_state_std(model, enc, cache_dir=tmp_path)
    assert list(tmp_path.iterdir()) == []  # no partial cache file, no temporary left
    monkeypatch.undo()
    first = layer_state_std(model, enc, cache_dir=tmp_path)
    assert [p.name.startswith("layer-std-") for p in tmp_path.iterdir()] == [True]
    again = layer_state_std(model, enc, cache_dir=tmp_path)
    assert all(torch.equal(again[k], first[k]) for k in first)


# --- two processes -------------------------------------------------------------------


def _count_calls(name: str, counter: list[int]) -> None:
    """Count the calls of ``layers.state_std.<name>`` from now on (this process only)."""
    real = getattr(layerwise, name)

    def counted(*args: Any, **kwargs: Any) -> Any:
        counter[0] += 1
        return real(*args, **kwargs)

    setattr(layerwise, name, counted)


def _cache_runs(rank: int, model: nn.Module, enc: dict[str, Tensor], cache: Path) -> dict:
    """σ_S with a cache: computed and written once, loaded, and computed when only one
    process finds the file (batches of 2: both processes run forward passes)."""
    passes, saves = [0], [0]
    _count_calls("layer_states", passes)
    _count_calls("_save_atomically", saves)
    out: dict[str, Any] = {"first": layer_state_std(model, enc, batch_size=2, cache_dir=cache)}
    out["first_counts"] = (passes[0], saves[0])
    dist.barrier()
    out["files"] = sorted(p.name for p in cache.iterdir())
    out["loaded"] = layer_state_std(model, enc, batch_size=2, cache_dir=cache)
    out["loaded_counts"] = (passes[0], saves[0])
    dist.barrier()  # a process without the file: both compute (none waits alone)
    mine = cache if rank == 0 else cache / "empty"
    out["split"] = layer_state_std(model, enc, batch_size=2, cache_dir=mine)
    out["split_counts"] = (passes[0], saves[0])
    return out


def _worker(rank: int, world: int, out_dir: str) -> None:
    model, enc = tiny_bert(), encoding()
    got: dict[str, Any] = {}
    passes = [0]
    _count_calls("layer_states", passes)
    for bs in PASSES:
        before = passes[0]
        got[f"moments-{bs}"] = layer_moments(model, enc, batch_size=bs)
        got[f"passes-{bs}"] = passes[0] - before
    got["pool"] = layer_moments(model, enc, token_reduction="pool", batch_size=3)
    got["std"] = layer_state_std(model, enc, batch_size=3, distributed=True)
    got["alone"] = layer_moments(model, enc, batch_size=3, distributed=False)
    got["loader"] = layer_moments(model, DataLoader(rows(enc), batch_size=3))
    for name, corpus in {
        "empty": [],
        "sampler": DataLoader(rows(enc), sampler=DistributedSampler(rows(enc), 2, rank)),
    }.items():
        try:
            layer_moments(model, corpus)
        except ValueError as err:
            got[f"error-{name}"] = str(err)
    got["cache"] = _cache_runs(rank, model, enc, Path(out_dir) / "cache")
    torch.save(got, Path(out_dir) / f"rank{rank}.pt")


@pytest.fixture(scope="module")
def two_ranks(tmp_path_factory: pytest.TempPathFactory) -> list[dict[str, Any]]:
    """What each of two gloo processes computed (one group for all the checks)."""
    out = tmp_path_factory.mktemp("ranks")
    (out / "cache" / "empty").mkdir(parents=True)
    run_processes(_worker, 2, str(out))
    return [torch.load(out / f"rank{r}.pt", weights_only=False) for r in range(2)]


@pytest.mark.parametrize("bs", sorted(PASSES))
def test_every_rank_gets_the_one_process_moments(two_ranks: list[dict], bs: int) -> None:
    expected = layer_moments(tiny_bert(), encoding(), batch_size=bs)
    assert [got[f"passes-{bs}"] for got in two_ranks] == PASSES[bs]  # sharded, 8: one idle
    for got in two_ranks:
        assert_moments_close(got[f"moments-{bs}"], expected)
    mine, theirs = (got[f"moments-{bs}"] for got in two_ranks)
    assert all(torch.equal(a, b) for k in mine for a, b in zip(mine[k], theirs[k], strict=True))


def test_every_rank_gets_the_one_process_std(two_ranks: list[dict]) -> None:
    model, enc = tiny_bert(), encoding()
    expected = layer_state_std(model, enc, batch_size=3)
    pool = layer_moments(model, enc, token_reduction="pool", batch_size=3)
    whole = layer_moments(model, enc, batch_size=3)
    for got in two_ranks:
        assert sorted(got["std"]) == [0, 1, 2]
        for k in expected:
            assert_std_close(got["std"][k], expected[k])
            assert torch.equal(got["std"][k], two_ranks[0]["std"][k])
        assert_moments_close(got["pool"], pool)
        assert_moments_close(got["alone"], whole)  # distributed=False: the whole corpus
        assert_moments_close(got["loader"], whole)  # streamed batches, sharded


def test_ranks_agree_on_errors(two_ranks: list[dict]) -> None:
    for got in two_ranks:  # raised on both processes, none left waiting
        assert "no sentences" in got["error-empty"]
        assert "DistributedSampler" in got["error-sampler"]


def test_cache_written_once_and_loaded_everywhere(two_ranks: list[dict]) -> None:
    expected = layer_state_std(tiny_bert(), encoding())
    for rank, got in enumerate(two_ranks):
        cache = got["cache"]
        for key in ("first", "loaded", "split"):
            for k in expected:
                assert_std_close(cache[key][k], expected[k])
                assert torch.equal(cache[key][k], two_ranks[0]["cache"][key][k])
        files = cache["files"]
        assert len(files) == 2 and files[0] == "empty" and files[1].startswith("layer-std-")
        writes = 1 if rank == 0 else 0
        assert cache["first_counts"] == (PASSES[2][rank], writes)
        assert cache["loaded_counts"] == cache["first_counts"]  # loaded: no pass, no write
        # rank 1 does not see the file in its folder: both compute, rank 0 writes again
        assert cache["split_counts"] == (2 * PASSES[2][rank], 2 * writes)


def _worker_failing(rank: int, world: int, out_dir: str) -> None:
    """Process 1 gets a broken corpus; record what each process raised."""
    good = [{"input_ids": encoding()["input_ids"], "attention_mask": encoding()["attention_mask"]}]
    corpus = good if rank == 0 else [*good, {"ids": torch.ones(1, 3)}]
    try:
        layer_moments(tiny_bert(), corpus)
    except Exception as err:
        Path(out_dir, f"error-{rank}.txt").write_text(f"{type(err).__name__}: {err}")


def test_a_process_that_fails_makes_every_process_raise(tmp_path: Path) -> None:
    """No process waits in the all-reduce for one that failed (the group's timeout is 60 s)."""
    started = time.monotonic()
    run_processes(_worker_failing, 2, str(tmp_path))
    assert time.monotonic() - started < 50
    assert "input_ids" in (tmp_path / "error-1.txt").read_text()
    assert "process 1 failed: ValueError" in (tmp_path / "error-0.txt").read_text()
