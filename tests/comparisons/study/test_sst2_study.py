"""The comparison harness on a real fine-tuned classifier: MiniLM on SST-2 (slow).

Trains the ``small`` recipe of :mod:`comparisons.models.finetune` once per machine (cached by
content hash in ``$CAPTUM_PERTURB_CACHE``), checks its dev accuracy, then runs the real
study — every method of ``DEFAULT_METHODS`` on the first 8 SST-2 dev sentences, σ_S from
the last 100 — and checks its results, a faithfulness ordering and the report.

Cost on the project's 2-core CPU while three other jobs shared it (one thread): training
178 s plus about 25 s of dev evaluation, once per machine; the study and the checks
195 s (189 s of it the study: 8 sentences × 10 methods, their 17 rankings scored, Captum's
metrics on one sentence and the 8-stage sanity check on one).
"""

from __future__ import annotations

import dataclasses
import html
import json
import math
import re
from dataclasses import dataclass
from pathlib import Path

import pytest

pytest.importorskip("transformers")
pytest.importorskip("matplotlib")
pytest.importorskip("IPython")

from comparisons.models.finetune import RECIPES, sst2_classifier
from comparisons.models.resources import read_sentences
from comparisons.models.text_model import Example, TextModel
from comparisons.study.methods import DEFAULT_METHODS, METHODS
from comparisons.study.run import StudyConfig, run_study
from comparisons.study.store import RunStore

# Captum warns about gradient requirements and DeepLift's hooks on every call.
pytestmark = [pytest.mark.slow, pytest.mark.filterwarnings("ignore::UserWarning")]

N_EXAMPLES = 8
N_CORPUS = 100
N_DEV = 872

ACCURACY_FLOOR = 0.78
"""The small recipe (6,000 sentences, 1 epoch, 188 steps) reached 0.8200 dev accuracy
here (715 / 872; torch 2.13.0+cpu, 1 thread). The binomial standard error of an accuracy
near 0.82 on 872 sentences is sqrt(0.82 · 0.18 / 872) = 0.013, so the floor sits three
standard errors (3.9 points) below the measurement: room for another torch build or
thread count to train a slightly different model, while a fine-tune that is broken
(a head that does not learn, shuffled labels, a learning rate schedule gone wrong) lands
far below it — the majority class of dev is 0.509 and a frozen encoder with a
logistic-regression head about 0.80."""

_REMOVAL = {
    f"aopc_{kind}/{bins}/{remover}"
    for kind in ("comprehensiveness", "sufficiency")
    for bins in ("eraser", "ferret")
    for remover in ("mask", "delete")
} | {"tau_loo/mask", "tau_loo/delete"}
CURVES = {"deletion_area/mask", "insertion_area/mask"}
CAPTUM = {"infidelity", "sensitivity_max"}
STAGES = ["head", *(f"layer {k}" for k in range(6, 0, -1)), "embeddings"]


@dataclass
class SST2Run:
    out: Path
    examples: list[Example]


@pytest.fixture(scope="module")
def classifier_dir(minilm_dir: Path, sst2_train_path: Path, sst2_dev_path: Path) -> Path:
    return sst2_classifier(
        "small", base_dir=minilm_dir, train_path=sst2_train_path, dev_path=sst2_dev_path
    )


@pytest.fixture(scope="module")
def study(
    classifier_dir: Path, sst2_dev_path: Path, tmp_path_factory: pytest.TempPathFactory
) -> SST2Run:
    tm = TextModel.from_pretrained(classifier_dir, "probs")
    rows = read_sentences(sst2_dev_path)
    assert len(rows) == N_DEV
    examples = [tm.encode(s, f"dev-{i:04d}", y) for i, (s, y) in enumerate(rows[:N_EXAMPLES])]
    corpus = [s for s, _ in rows[-N_CORPUS:]]
    out = tmp_path_factory.mktemp("sst2") / "run"
    config = StudyConfig(DEFAULT_METHODS, captum_examples=1, sanity_examples=1)
    run_study(tm, examples, out, config, corpus=corpus, data="SST-2 dev", command="pytest")
    return SST2Run(out, examples)


def _labels() -> list[str]:
    """Each default method, then its ``|abs`` ranking when it is signed and its
    magnitudes are not another method's (``ours-signed``'s are ``ours``')."""
    by_abs = {n: METHODS[n].signed and METHODS[n].magnitudes_of is None for n in DEFAULT_METHODS}
    return [m for n in DEFAULT_METHODS for m in [n, f"{n}|abs"][: 1 + by_abs[n]]]


def _values(run: SST2Run, method: str, metric: str) -> list[float]:
    by_example = {
        r["example"]: r["value"]
        for r in RunStore(run.out).results()
        if r["method"] == method and r["metric"] == metric
    }
    return [by_example[ex.id] for ex in run.examples]


def test_small_classifier_reaches_the_accuracy_floor(classifier_dir: Path) -> None:
    recipe = json.loads((classifier_dir / "recipe.json").read_text(encoding="utf-8"))
    assert recipe == dataclasses.asdict(RECIPES["small"])
    metrics = json.loads((classifier_dir / "metrics.json").read_text(encoding="utf-8"))
    assert metrics["steps"] == 188  # 6,000 sentences in batches of 32, per chunk of 1,600
    assert metrics["dev_accuracy"] >= ACCURACY_FLOOR, metrics


def test_every_method_has_every_classifier_metric_for_every_example(study: SST2Run) -> None:
    rows = RunStore(study.out).results()
    keys = [(r["method"], r["example"], r["metric"]) for r in rows]
    assert len(keys) == len(set(keys)), "a result was written twice"
    found: dict[tuple[str, str], set[str]] = {}
    for method, example, metric in keys:
        found.setdefault((method, example), set()).add(metric)
    expected = {}
    for label in _labels():
        for i, ex in enumerate(study.examples):
            own = "|" not in label
            extra = (CURVES if own else set()) | (CAPTUM if own and i == 0 else set())
            expected[(label, ex.id)] = _REMOVAL | extra | {"seconds", "abstained"}
    assert found == expected
    for r in rows:
        # ferret's AOPC is NaN when no token has a positive score (no bin is used)
        if "/ferret/" not in r["metric"]:
            assert math.isfinite(r["value"]), r


def test_leave_one_out_and_ours_beat_the_random_floor(study: SST2Run) -> None:
    """Mean AOPC comprehensiveness (ERASER bins, [MASK]) over the 8 sentences.

    The floor is noisy: 100 random rankings of these 8 sentences gave 8-sentence means of
    0.051 ± 0.025 (sd; max 0.108). Measured (this model / the small recipe retrained with
    seed 1): leave-one-out 0.231 / 0.254, ours 0.105 / 0.116, random 0.056 / 0.087.
    Leave-one-out must clear the floor by 0.05 (two sd of the floor's own noise) and,
    as a second, robust anchor, agree with the leave-one-out reference (τ 0.558 / 0.621
    against random's 0.086 / 0.054; a random ranking's 8-sentence τ has sd 0.07). Ours
    only has to beat the floor's mean: its margin (0.049 / 0.029) is one to two sd of
    the floor's noise, and on confident sentences (p ≥ 0.95) it can return all-zero
    scores (every σ at σ_max), which rank the tokens in reading order.
    """
    mean = {
        (m, metric): sum(_values(study, m, metric)) / N_EXAMPLES
        for m in ("leave-one-out", "ours", "random")
        for metric in ("aopc_comprehensiveness/eraser/mask", "tau_loo/mask")
    }
    comp, tau = "aopc_comprehensiveness/eraser/mask", "tau_loo/mask"
    assert mean[("leave-one-out", comp)] > mean[("random", comp)] + 0.05, mean
    assert mean[("leave-one-out", tau)] > mean[("random", tau)] + 0.2, mean
    assert mean[("ours", comp)] > mean[("random", comp)], mean


def test_sanity_check_covers_every_method_and_stage(study: SST2Run) -> None:
    rows = RunStore(study.out).sanity()
    got = sorted((r["method"], r["stage"], r["stage_index"]) for r in rows)
    assert got == sorted((m, s, i) for m in DEFAULT_METHODS for i, s in enumerate(STAGES))
    assert {r["example"] for r in rows} == {study.examples[0].id}
    for r in rows:
        assert -1.0 <= r["spearman"] <= 1.0, r
        if r["method"] == "random":  # the floor does not depend on the weights
            assert r["spearman"] == pytest.approx(1.0)


def test_report_shows_every_method_for_every_example(study: SST2Run) -> None:
    page = (study.out / "report.html").read_text(encoding="utf-8")
    for ex in study.examples:
        match = re.search(
            rf"<h3>{re.escape(html.escape(ex.id))}</h3><p>.*?</p>"
            r"(?:<div class='captum'>)?(<table.*?</table>)",
            page,
            re.S,
        )
        assert match, f"no visualisation table for {ex.id}"
        methods = re.findall(r"<b>([^<]*)</b></text></td><td><text[^>]*><b>[-0-9.]+</b>", match[1])
        assert methods == list(DEFAULT_METHODS), ex.id
    assert page.count('src="data:image/png;base64,') == 3  # curves, trade-off, sanity
