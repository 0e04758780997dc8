"""``python -m comparisons.benchmarks.convergence`` runs end to end and its summary adds up."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from comparisons.benchmarks import convergence


@pytest.mark.slow
def test_convergence_script_summarises_a_small_run(
    tmp_path: Path, sst2_dev_path: Path, sst2_train_path: Path, minilm_dir: Path
) -> None:
    out = tmp_path / "convergence.json"
    argv = ["--no-classifier", "--workloads", "layer 1,pooled", "--n", "3", "--batch", "2"]
    argv += ["--corpus", "8", "--max-iter", "3", "--threads", "1", "--out", str(out)]
    assert convergence.main(argv) == 0
    data = json.loads(out.read_text())
    assert data["meta"]["command"].endswith(" ".join(argv))
    assert [r["workload"] for r in data["results"]] == ["layer 1", "pooled"]
    for r in data["results"]:
        assert r["sentences"] == 3
        for key in ("converged", "saturated", "abstains", "paper_abstains"):
            assert 0.0 <= r[key] <= 1.0
        # the clean pass, 8 projections, 16 draws, then 16 draws + 2 re-evaluations per
        # further iteration (at most 3 in all)
        assert 9 + 16 <= r["evaluations_per_sentence"] <= 9 + 16 + 18 * 2
    # a layer's state depends on every token: its channel score never abstains
    assert data["results"][0]["abstains"] == 0.0
