"""``python -m comparisons.benchmarks.speed`` runs end to end, and its memory probe measures."""

from __future__ import annotations

import json
import math
import os
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch

from comparisons.benchmarks import speed as benchmark


def test_peak_rss_increase_sees_a_200_mb_tensor() -> None:
    if not os.access("/proc/self/clear_refs", os.W_OK):
        pytest.skip("no /proc/self/clear_refs (not Linux)")

    def allocate() -> float:
        x = torch.ones(50 * 2**20)  # 200 MiB, written so that every page is resident
        return float(x[-1])

    out, increase = benchmark.peak_rss_increase(allocate)
    assert out == 1.0
    assert increase >= 150 * 2**20


def test_peak_rss_increase_without_proc_is_nan(monkeypatch: pytest.MonkeyPatch) -> None:
    def unavailable(path: Path, text: str) -> int:
        raise OSError("no /proc here")

    monkeypatch.setattr(Path, "write_text", unavailable)
    with pytest.warns(RuntimeWarning, match="peak memory not measured"):
        out, increase = benchmark.peak_rss_increase(lambda: 3)
    assert out == 3 and math.isnan(increase)


@pytest.fixture
def keep_threads() -> Iterator[None]:
    """``--threads`` sets torch's thread count for the process: give it back afterwards."""
    threads = torch.get_num_threads()
    yield
    torch.set_num_threads(threads)


@pytest.mark.slow
@pytest.mark.usefixtures("keep_threads")
def test_benchmark_script_quick_run(
    tmp_path: Path, sst2_dev_path: Path, tiny_classifier: Path
) -> None:
    out = tmp_path / "bench.json"
    argv = ["--quick", "--workloads", "layers1-3,target logit", "--batch", "2"]
    argv += ["--internal-batch-size", "8", "--threads", "1", "--classifier", str(tiny_classifier)]
    assert benchmark.main([*argv, "--out", str(out)]) == 0
    data = json.loads(out.read_text())
    assert data["meta"]["quick"] and data["meta"]["command"].endswith(str(out))
    results = data["workloads"]
    assert list(results) == ["layers1-3", "target logit"]
    for r in results.values():
        tut, batch = r["tutorial"], r["batch"]
        assert tut["sentences"] == 1 and batch["sentences"] == 2
        for row in (tut, batch):
            assert row["ours_seconds_per_sentence"] > 0 and row["lig_seconds_per_sentence"] > 0
            assert 0.0 <= row["converged"] <= 1.0
            assert row["evaluations_per_sentence"] > 0
        assert batch["peak_mb_ours"] >= 0 and batch["peak_mb_lig"] > 0
        # 2 sentences × 16 draws in chunks of 8: the same noise, so σ is bit-equal unless
        # the model's round-off depends on the batch's shape (bit-equality under kernels
        # that round every row alike is the contract test's check_internal_batch_size)
        ib = batch["internal_batch"]
        assert ib["sigma_bit_equal"] == (ib["max_abs_dlogsigma"] == 0.0)
        assert isinstance(ib["batch_dependent"], bool)
    a = results["layers1-3"]
    assert a["tutorial"]["default_vs_hp"]["mean_abs_dlogsigma"] >= 0
    assert "reference" in a["tutorial"] and a["batch"]["hp_subset"] == 2
    assert "default_vs_hp" not in results["target logit"]["tutorial"]  # not in --hp-workloads

    # the optima are reused from the file, and asked for on the target logit
    again = tmp_path / "again.json"
    argv2 = ["--quick", "--workloads", "layers1-3,target logit", "--batch", "2", "--threads", "1"]
    argv2 += ["--classifier", str(tiny_classifier), "--hp-workloads", "target logit"]
    assert benchmark.main([*argv2, "--hp-from", str(out), "--out", str(again)]) == 0
    second = json.loads(again.read_text())["workloads"]
    for key in ("hp_log_sigma_seeds", "hp_seed_agreement"):
        assert second["layers1-3"]["tutorial"][key] == a["tutorial"][key]
    subset = [r["batch"]["hp_subset_log_sigma"] for r in (second["layers1-3"], a)]
    torch.testing.assert_close(*map(torch.tensor, subset), rtol=0, atol=0, equal_nan=True)
    assert len(second["target logit"]["tutorial"]["hp_log_sigma_seeds"]) == 2
