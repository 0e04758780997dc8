"""The LLM comparison (:mod:`comparisons.llm.study`) and its speed benchmark.

Metrics on hand-made cases with known answers: a fake log-prob function where deleting
prompt token ``j`` costs ``w_j`` nats, so a ranking's drops are sums of weights. Ties are
scored over random orders, never reading order, within a tolerance derived from the exact
distribution over all orders. The paired bootstrap on synthetic data. Then the whole study
and the benchmark end to end on 2 prompts (1 for the benchmark) of the ``small`` SST-2 GPT-2
(trained once per machine by :mod:`comparisons.models.language_model`).

Cost on the project's 2-core CPU with one thread: about 30 s once the small LM is cached
(the end-to-end study 7 s, the benchmark smoke test 19 s); training it the first time adds
about 45 s.
"""

from __future__ import annotations

import itertools
import json
import math
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import Tensor

from comparisons.llm import study as ls
from comparisons.metrics import tie_orders
from comparisons.study.store import RunStore

BOS = 99


def _fake(weights: Sequence[float]) -> tuple[Tensor, Tensor, ls.LogProbFn, list[int]]:
    """Prompt ``[BOS, 0, …, n−1]`` and a log-prob that loses ``w_j`` when token j is gone."""
    n = len(weights)
    prompt = torch.tensor([BOS, *range(n)])
    calls: list[int] = []

    def log_prob(prompts: Sequence[Tensor]) -> Tensor:
        calls.append(len(prompts))
        out = []
        for p in prompts:
            assert int(p[0]) == BOS  # BOS is never deleted
            present = set(p.tolist())
            out.append(-math.fsum(w for j, w in enumerate(weights) if j not in present))
        return torch.tensor(out, dtype=torch.float64)

    return prompt, torch.arange(1, n + 1), log_prob, calls


def _exact_over_orders(weights: Sequence[float]) -> tuple[float, float, float, float]:
    """Mean and variance of (drop_top_k, drop_keep_bottom_k) of one uniformly random order
    of all tokens, by enumerating every order."""
    n, total = len(weights), math.fsum(weights)
    ks = ls.rationale_ks(n)
    tops, bottoms = [], []
    for order in itertools.permutations(range(n)):
        tops.append(np.mean([sum(weights[j] for j in order[:k]) for k in ks]))
        bottoms.append(np.mean([total - sum(weights[j] for j in order[n - k :]) for k in ks]))
    return (
        float(np.mean(tops)),
        float(np.var(tops)),
        float(np.mean(bottoms)),
        float(np.var(bottoms)),
    )


# ------------------------------------------------------------------------------- metrics
def test_rationale_sizes() -> None:
    assert list(ls.rationale_ks(2)) == [1]
    assert list(ls.rationale_ks(3)) == [1, 2]
    assert list(ls.rationale_ks(12)) == [1, 2, 3]
    with pytest.raises(ValueError, match="no k"):
        ls.rationale_ks(1)


def test_a_correct_ranking_drops_the_top_k_sums() -> None:
    """Without ties: one order, every distinct prompt scored in one call; drop_top_k is the
    mean over k of the k largest weights' sum, drop_keep_bottom_k the mean of what the k
    smallest leave out."""
    w = [0.5, 4.0, 1.0, 2.0, 0.25]
    prompt, features, log_prob, calls = _fake(w)
    got = ls.faithfulness(torch.tensor(w), prompt, features, log_prob, seed=0)
    top = sorted(w, reverse=True)
    assert got["drop_top_k"] == pytest.approx(np.mean([sum(top[:k]) for k in (1, 2, 3)]))
    kept = [sum(sorted(w)[:k]) for k in (1, 2, 3)]
    assert got["drop_keep_bottom_k"] == pytest.approx(np.mean([sum(w) - s for s in kept]))
    assert calls == [5]  # the full prompt and 4 deletions (keeping k = deleting n - k)
    reverse = ls.faithfulness(-torch.tensor(w), prompt, features, log_prob, seed=0)
    assert reverse["drop_top_k"] == pytest.approx(np.mean([sum(sorted(w)[:k]) for k in (1, 2, 3)]))


def test_ties_are_never_broken_in_reading_order() -> None:
    """All-equal scores: the metric is the mean over 16 random orders. It matches the
    exact expectation over all 120 orders within 4 standard errors of a 16-order mean
    (the exact variance, by enumeration), and is far from the reading-order value."""
    w = [10.0, 0.0, 0.0, 0.0, 0.0]  # reading order would put the only costly token first
    prompt, features, log_prob, _ = _fake(w)
    mean_top, var_top, mean_bottom, var_bottom = _exact_over_orders(w)
    assert (mean_top, mean_bottom) == pytest.approx((4.0, 6.0))  # E[pos] argument, by hand
    for scores in (torch.zeros(5), torch.full((5,), 0.3)):
        got = ls.faithfulness(scores, prompt, features, log_prob, seed=7)
        assert abs(got["drop_top_k"] - mean_top) <= 4 * math.sqrt(var_top / ls.N_TIE_ORDERS)
        assert abs(got["drop_keep_bottom_k"] - mean_bottom) <= 4 * math.sqrt(var_bottom / 16)
        reading = ls.faithfulness(torch.tensor([5.0, 4, 3, 2, 1]), prompt, features, log_prob)
        assert reading["drop_top_k"] == 10.0
        assert abs(got["drop_top_k"] - reading["drop_top_k"]) > 4 * math.sqrt(var_top / 16)


def test_the_tie_average_is_the_mean_over_the_drawn_orders() -> None:
    """Exactly: the metric with ties is the plain mean of the metric of each order."""
    w = [3.0, 1.0, 2.0, 0.5, 4.0, 0.0]
    prompt, features, log_prob, _ = _fake(w)
    scores = torch.tensor([1.0, 2.0, 2.0, 2.0, 0.0, 1.0])
    orders = tie_orders(scores, torch.zeros(len(scores), dtype=torch.bool), True, seed=3)
    assert len(orders) == ls.N_TIE_ORDERS
    for order in orders:  # ties permuted among themselves only
        assert set(order[:3].tolist()) == {1, 2, 3} and int(order[5]) == 4
    assert len({tuple(o.tolist()) for o in orders}) > 1
    per_order = []
    for order in orders:
        rank = torch.empty(6)
        rank[order] = -torch.arange(6, dtype=torch.float32)  # the order, without ties
        per_order.append(ls.faithfulness(rank, prompt, features, log_prob))
    got = ls.faithfulness(scores, prompt, features, log_prob, seed=3)
    for key in ("drop_top_k", "drop_keep_bottom_k"):
        assert got[key] == pytest.approx(np.mean([p[key] for p in per_order]), abs=1e-12)


def test_metric_inputs_are_checked() -> None:
    prompt, features, log_prob, _ = _fake([1.0, 2.0, 3.0])
    with pytest.raises(ValueError, match="NaN"):
        ls.faithfulness(torch.tensor([1.0, math.nan, 0.0]), prompt, features, log_prob)
    with pytest.raises(ValueError, match="scores for 3 features"):
        ls.faithfulness(torch.ones(2), prompt, features, log_prob)


# ------------------------------------------------------------------- on the SST-2 GPT-2
@pytest.fixture(scope="module")
def small_lm(sst2_train_path: Path, sst2_dev_path: Path) -> Path:
    pytest.importorskip("transformers")
    from comparisons.models.language_model import sst2_language_model

    return sst2_language_model("small", train_path=sst2_train_path, dev_path=sst2_dev_path)


@pytest.mark.slow
def test_study_end_to_end(small_lm: Path, tmp_path: Path) -> None:
    """Every method × example × metric row, the explanations, σ_S and the report; a
    second run resumes without adding a row."""
    from comparisons.__main__ import main

    out = tmp_path / "run"
    argv = ["llm-study", "--n", "2", "--recipe", "small", "--corpus", "50", "--out", str(out)]
    assert main(argv) == 0
    store = RunStore(out)
    meta = store.read_meta()
    examples = meta["examples"]
    assert len(examples) == 2 and meta["reference"] == "layer_ig"
    assert meta["headline"] == ["drop_top_k", "drop_keep_bottom_k"]
    labels = [label for m in ls.DEFAULT_LLM_METHODS for label, _ in ls.rankings(m)]
    assert set(meta["methods"]) == set(labels)
    results = store.results()
    have = {(r["method"], r["example"], r["metric"]) for r in results}
    for label, ex in itertools.product(labels, examples):
        for metric in ("drop_top_k", "drop_keep_bottom_k", "abstained", "seconds"):
            assert (label, ex, metric) in have, (label, ex, metric)
    assert all(math.isfinite(r["value"]) for r in results)
    assert {(r["example"]) for r in results if r["metric"] == "converged"} == set(examples)
    explained = store.explanations()
    assert len(explained) == len(ls.DEFAULT_LLM_METHODS) * 2
    assert all(len(e["tokens"]) == len(e["scores"]) >= 2 for e in explained)
    (cached,) = out.glob("next-token-std-*.pt")  # σ_S, kept for a resumed run
    assert torch.load(cached).ndim == 1
    page = (out / "report.html").read_text(encoding="utf-8")
    assert "Paired differences from layer_ig" in page and "Best method per metric" in page
    assert main(argv) == 0
    assert len(RunStore(out).results()) == len(results)


@pytest.mark.slow
def test_benchmark_smoke(small_lm: Path, tmp_path: Path) -> None:
    from comparisons.benchmarks.llm import main

    out = tmp_path / "bench.json"
    assert main(["--n", "1", "--recipe", "small", "--corpus", "50", "--out", str(out)]) == 0
    record = json.loads(out.read_text(encoding="utf-8"))
    names = ("ours_seq", "ours_token_batched", "ours_token_separate", "layer_ig")
    assert set(names) < set(record["methods"]) and record["n_prompts"] == 1
    assert record["methods"]["layer_ig"]["median_vs_layer_ig"] == 1.0
    assert all(m["median_s"] > 0 for m in record["methods"].values())
    assert {"date", "command", "torch_threads", "target_met"} <= set(record)
