"""The run folder (``comparisons.study.store``) and its HTML report
(``comparisons.study.report`` and its parts: ``summary``, ``verdict``, ``tables``,
``figures``, ``heatmaps``).

A synthetic run — three methods (one of them the random floor) and a fourth on two
examples only (a subset comparison), four examples, three metrics plus seconds and
abstained, deletion/insertion curves and sanity-check rows — is written through
:class:`RunStore`, read back, summarised and rendered.
"""

from __future__ import annotations

import math
import operator
import re
from html.parser import HTMLParser
from pathlib import Path
from typing import Any

import pytest

from comparisons.html import fmt
from comparisons.stats import paired_difference, random_rho_bound, summarize

# `comparisons` is a folder of the repository, importable through pytest's `pythonpath = .`.
from comparisons.study.report import summary_markdown, write_report
from comparisons.study.sanity import sanity_summary, sanity_verdicts
from comparisons.study.store import RunStore
from comparisons.study.summary import headline_of, reference_of, study_summary
from comparisons.study.verdict import verdict

pytest.importorskip("matplotlib")
pytest.importorskip("IPython")

METHODS = ("ours", "ig", "random")
EXAMPLES = ("ex0", "ex1", "ex2", "ex3")
COMP, SUFF, TAU = (
    "aopc_comprehensiveness/eraser/mask",
    "aopc_sufficiency/eraser/mask",
    "tau_loo/mask",
)
# Per-method base values: ours leads comprehensiveness, ig leads sufficiency (lower).
BASE = {
    "ours": {COMP: 0.6, SUFF: 0.20, TAU: 0.5, "seconds": 2.0},
    "ig": {COMP: 0.4, SUFF: 0.10, TAU: 0.3, "seconds": 0.5},
    "random": {COMP: 0.1, SUFF: 0.40, TAU: 0.0, "seconds": 0.001},
}
ABSTAINS = {"ours": "ex3"}  # ours ranks nothing on ex3: abstained 25 %
SLOW = ("slow", ("ex0", "ex1"))  # a method run on two examples only
# The last sanity stage: (signed ρ, |score| ρ) per method; 4 examples of 11 tokens.
N_TOKENS = 11
LAST = {"ours": (0.05, 0.1), "ig": (0.05, 0.6), "random": (0.9, 0.9)}
BOUND = random_rho_bound([N_TOKENS] * 4)
META: dict[str, Any] = {
    "model": "tiny-bert",
    "data": "sst2 dev (4)",
    "task": "classifier",
    "seed": 0,
    "date": "2025-01-01",
    "command": "python -m comparisons.run --n 4",
    "methods": {
        "ours": {"signed": False, "family": "ours", "stochastic": True, "description": "σ"},
        "ig": {"signed": True, "family": "gradient", "stochastic": False, "description": "IG"},
        "random": {"signed": True, "family": "floor", "stochastic": True, "description": "U"},
        "slow": {"signed": True, "family": "perturbation", "stochastic": False, "description": "s"},
    },
    "metrics": {
        COMP: {"better": "higher", "description": "ERASER AOPC comprehensiveness"},
        SUFF: {"better": "lower", "description": "ERASER AOPC sufficiency"},
        TAU: {"better": "higher", "description": "Kendall tau with leave-one-out"},
        "abstained": {"better": "lower", "description": "1 when it ranks nothing"},
    },
    "notes": ["synthetic <run> & test"],
    "reference": "ig",
}
TOKENS = ["[CLS]", "a", "<b>", "film", "[SEP]"]


def value(method: str, metric: str, i: int) -> float:
    """A deterministic per-example value around the method's base."""
    if metric == "seconds":
        return BASE[method][metric] * (1 + 0.1 * i)
    return BASE[method][metric] + 0.01 * (i - 1.5) * (1 + METHODS.index(method))


def rho(method: str, k: int, i: int) -> tuple[float, float]:
    """Sanity ρ (signed, |score|) of ``method`` at stage ``k`` on example ``i``."""
    if k < 2:
        return 1.0 - 0.3 * k, 1.0 - 0.2 * k
    signed, magnitude = LAST[method]
    return signed + 0.01 * (i - 1.5), magnitude + 0.01 * (i - 1.5)


def build_run(run_dir: Path) -> RunStore:
    store = RunStore(run_dir)
    store.write_meta(META)
    for i, ex in enumerate(EXAMPLES):
        for j, method in enumerate(METHODS):
            store.add_explanation(
                {
                    "method": method,
                    "example": ex,
                    "text": f"a <b> film & {i}",
                    "tokens": TOKENS,
                    "scores": [0.0, 0.5 * (j + 1), -1.0, 2.0 + i, 0.0],
                    "label": i % 2,
                    "pred": 1,
                    "seconds": BASE[method]["seconds"],
                }
            )
            store.add_results((method, ex, m, value(method, m, i)) for m in BASE[method])
            store.add_results([(method, ex, "abstained", float(ABSTAINS.get(method) == ex))])
            for kind, sign in (("deletion/mask", -1), ("insertion/mask", 1)):
                n = 5 + i  # curves of different lengths: the report interpolates
                vals = [0.5 + sign * 0.4 * k / (n - 1) / (j + 1) for k in range(n)]
                store.add_curve(method, ex, kind, vals)
            for k, stage in enumerate(("classifier", "layer 2", "layer 1")):
                signed, magnitude = rho(method, k, i)
                store.add_sanity(method, ex, stage, k, signed, magnitude, N_TOKENS)
    method, examples = SLOW
    for i, ex in enumerate(examples):
        store.add_results([(method, ex, TAU, 0.9 + 0.01 * i), (method, ex, "seconds", 9.0)])
    return store


@pytest.fixture(scope="module")
def run(tmp_path_factory: pytest.TempPathFactory) -> RunStore:
    return build_run(tmp_path_factory.mktemp("run"))


@pytest.fixture(scope="module")
def page(run: RunStore) -> str:
    return write_report(run.run_dir, max_examples=3).read_text(encoding="utf-8")


def test_round_trip(run: RunStore) -> None:
    store = RunStore(run.run_dir)  # a fresh reader
    meta = store.read_meta()
    assert meta == META
    rows = store.results()
    assert len(rows) == len(METHODS) * len(EXAMPLES) * 5 + 4
    assert rows[0] == {
        "method": "ours",
        "example": "ex0",
        "metric": COMP,
        "value": value("ours", COMP, 0),
    }
    exps = store.explanations()
    assert len(exps) == 12
    assert exps[1]["tokens"] == TOKENS and exps[1]["scores"] == [0.0, 1.0, -1.0, 2.0, 0.0]
    assert exps[1]["label"] == 0 and exps[1]["pred"] == 1 and exps[1]["seconds"] == 0.5
    curves = store.curves()
    assert len(curves) == 24 and curves[0]["curve"] == "deletion/mask"
    assert curves[0]["values"][0] == 0.5 and len(curves[-1]["values"]) == 8
    sanity = store.sanity()
    assert len(sanity) == 36
    assert sanity[2] == {
        "method": "ours",
        "example": "ex0",
        "stage": "layer 1",
        "stage_index": 2,
        "spearman": pytest.approx(0.035),
        "spearman_abs": pytest.approx(0.085),
        "n_tokens": N_TOKENS,
    }


def test_nan_and_odd_names_round_trip(tmp_path: Path) -> None:
    store = RunStore(tmp_path)
    store.add_results([('lime "k=5", v2', "ex,0", "infidelity", math.nan)])
    store.add_curve("m", "e", "deletion/mask", [1.0, math.nan])
    (row,) = RunStore(tmp_path).results()
    assert row["method"] == 'lime "k=5", v2' and row["example"] == "ex,0"
    assert math.isnan(row["value"])
    assert math.isnan(RunStore(tmp_path).curves()[0]["values"][1])
    with pytest.raises(ValueError, match="one-line"):
        store.add_results([("a\nb", "e", "m", 1.0)])


def test_resume_and_truncated_lines(tmp_path: Path) -> None:
    build_run(tmp_path)
    store = RunStore(tmp_path)
    found = store.explanation("ig", "ex2")
    assert found is not None and found["scores"][3] == 4.0
    assert store.explanation("ig", "ex9") is None
    assert store.has_results("ours", "ex1") and store.has_results("ours", "ex1", "aopc_")
    assert not store.has_results("ours", "ex1", "infidelity")
    assert not store.has_results("lime", "ex1")

    # A crash cut the last line of every file: reading ignores it, without an error.
    for name in (RunStore.EXPLANATIONS, RunStore.CURVES, RunStore.SANITY):
        with open(tmp_path / name, "a", encoding="utf-8") as f:
            f.write('{"method": "lime", "example": "ex0", "te')
    with open(tmp_path / RunStore.RESULTS, "a", encoding="utf-8") as f:
        f.write("lime,ex0,tau_loo/mask,0.12")  # parses, but has no newline: incomplete
    resumed = RunStore(tmp_path)
    assert len(resumed.explanations()) == 12 and resumed.explanation("lime", "ex0") is None
    assert len(resumed.curves()) == 24 and len(resumed.sanity()) == 36
    assert len(resumed.results()) == 64 and not resumed.has_results("lime", "ex0")

    # The next appends drop the cut-off tail and land on a line of their own.
    resumed.add_explanation({**found, "method": "lime", "example": "ex0"})
    resumed.add_results([("lime", "ex0", TAU, 0.25)])
    again = RunStore(tmp_path)
    assert len(again.explanations()) == 13 and again.explanation("lime", "ex0") is not None
    assert again.results()[-1] == {"method": "lime", "example": "ex0", "metric": TAU, "value": 0.25}
    assert again.has_results("lime", "ex0", "tau")


def test_malformed_middle_line_is_an_error(tmp_path: Path) -> None:
    store = RunStore(tmp_path)
    store.add_curve("m", "e", "deletion/mask", [1.0])
    with open(tmp_path / RunStore.CURVES, "a", encoding="utf-8") as f:
        f.write("{broken\n")
    store.add_curve("m", "e2", "deletion/mask", [1.0])
    with pytest.raises(ValueError, match=":2: malformed"):
        store.curves()


def test_write_meta_validates(tmp_path: Path) -> None:
    store = RunStore(tmp_path)
    with pytest.raises(ValueError, match="task"):
        store.write_meta({**META, "task": "regression"})
    bad = {**META, "metrics": {"x": {"better": "up", "description": ""}}}
    with pytest.raises(ValueError, match="better"):
        store.write_meta(bad)
    with pytest.raises(ValueError, match="lacks"):
        store.write_meta({"model": "m"})
    no_notes = {k: v for k, v in META.items() if k != "notes"}
    store.write_meta(no_notes)
    assert store.read_meta()["notes"] == []


def test_summarize(run: RunStore) -> None:
    rows = [r for r in run.results() if r["method"] in METHODS and r["metric"] != "abstained"]
    better = {m: v["better"] for m, v in META["metrics"].items()} | {"seconds": "lower"}
    summary = summarize(rows, better, seed=3)
    cells = {(s["method"], s["metric"]): s for s in summary}
    assert len(summary) == 12
    for method in METHODS:
        for metric in BASE[method]:
            s = cells[(method, metric)]
            expected = sum(value(method, metric, i) for i in range(4)) / 4
            assert s["n"] == 4
            assert s["mean"] == pytest.approx(expected, abs=1e-12)
            assert s["lo"] < s["mean"] < s["hi"]
    best = {(s["metric"], s["method"]) for s in summary if s["best"]}
    assert best == {(COMP, "ours"), (SUFF, "ig"), (TAU, "ours"), ("seconds", "random")}
    assert summarize(rows, better, seed=3) == summary  # deterministic for a seed
    shuffled = summarize(list(reversed(rows)), better, seed=3)  # order-free
    key = operator.itemgetter("metric", "method")
    assert sorted(shuffled, key=key) == sorted(summary, key=key)
    other = {(s["method"], s["metric"]): s for s in summarize(rows, better, seed=4)}
    assert other[("ours", COMP)]["lo"] != cells[("ours", COMP)]["lo"]


def test_summarize_nan_duplicates_and_unknown_direction() -> None:
    rows = [
        {"method": "a", "example": "e0", "metric": "m", "value": 1.0},
        {"method": "a", "example": "e1", "metric": "m", "value": math.nan},
        {"method": "a", "example": "e0", "metric": "m", "value": 3.0},  # resumed: last wins
        {"method": "b", "example": "e0", "metric": "m", "value": math.nan},
        {"method": "a", "example": "e0", "metric": "free", "value": 1.0},
    ]
    summary = summarize(rows, {"m": "lower"})
    out = {(s["method"], s["metric"]): s for s in summary if s["comparison"] == "all"}
    a = out[("a", "m")]
    (b,) = [s for s in summary if s["method"] == "b"]  # no finite value: a comparison of its own
    # alone in its comparison: no runner-up to beat, so not best
    assert (a["n"], a["mean"], a["lo"], a["hi"], a["best"]) == (1, 3.0, 3.0, 3.0, False)
    assert b["n"] == 0 and math.isnan(b["mean"]) and not b["best"]
    assert not out[("a", "free")]["best"]


def sections(page: str) -> dict[str, str]:
    """The HTML after each example heading, up to the next heading."""
    parts = re.split(r"<h3>(ex\d)</h3>", page)
    return {parts[i]: parts[i + 1].split("<h3>")[0] for i in range(1, len(parts) - 1, 2)}


def test_report_example_rows(page: str) -> None:
    shown = sections(page)
    assert list(shown) == ["ex0", "ex1", "ex2"]  # max_examples=3
    for section in shown.values():
        # One visualize_text row per method: its name in the attribution-label cell.
        for method in METHODS:
            assert section.count(f"<b>{method}</b>") == 1
        assert section.count("<mark") == len(METHODS) * len(TOKENS)
        assert "&lt;b&gt;" in section  # the token "<b>" is escaped, not markup
    assert "Legend" in page  # captum's legend: inline styles only


class Tables(HTMLParser):
    """The tables of a page (cells as text, rows as lists) and the order of its
    images and tables."""

    def __init__(self) -> None:
        super().__init__()
        self.tables: list[list[list[str]]] = []
        self.order: list[str] = []
        self._depth = 0
        self._in_cell = False

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        if tag == "img" and not self._depth:
            self.order.append("img")
        elif tag == "table":
            self._depth += 1
            self.order.append("table")
            self.tables.append([])
        elif tag == "tr":
            self.tables[-1].append([])
        elif tag in ("td", "th"):
            self.tables[-1][-1].append("")
            self._in_cell = True

    def handle_endtag(self, tag: str) -> None:
        if tag == "table":
            self._depth -= 1
        elif tag in ("td", "th"):
            self._in_cell = False

    def handle_data(self, data: str) -> None:
        if self._in_cell:
            self.tables[-1][-1][-1] += data


def parse(page: str) -> Tables:
    parser = Tables()
    parser.feed(page)
    parser.close()
    return parser


def headline_rows(page: str) -> list[dict[str, list[str]]]:
    """Per headline table: method → its cells."""
    section = page.split("on the headline metrics</h2>")[1].split("<h2>")[0]
    return [{row[0]: row[1:] for row in t[1:]} for t in parse(section).tables]


def test_report_header_and_definitions(page: str) -> None:
    assert "tiny-bert" in page and "python -m comparisons.run --n 4" in page
    assert "4 examples" in page and "2025-01-01" in page
    assert "synthetic &lt;run&gt; &amp; test" in page and "<run>" not in page
    assert "|score|" in page and "signed score" in page
    assert 'title="ERASER AOPC sufficiency"' in page
    assert "Paired differences from ig" in page and "Best method per metric" in page


def test_report_top_figure_comes_first(page: str) -> None:
    found = parse(page)
    assert found.order[0] == "img" and "table" in found.order
    assert page.count('src="data:image/png;base64,') == 3  # overview, sanity, curves
    assert "Skipped" not in page


def test_every_table_fits(page: str) -> None:
    tables = parse(page).tables
    assert len(tables) > 8
    for table in tables:
        assert max(len(row) for row in table) <= 8, table[0]


def test_headline_tables(page: str) -> None:
    tables = headline_rows(page)
    assert len(tables) == 3  # 1 + 3 × 2 + 2 columns > 7: one table per metric
    comp, suff, tau = tables
    assert list(comp) == ["ours", "ig", "random"]
    # mean [lo, hi] ★ for the paired best, the difference from ig, abstained, seconds
    assert comp["ours"][0].endswith("★") and not comp["ig"][0].endswith("★")
    assert re.fullmatch(r"[\d.e-]+ \[[\d.e-]+, [\d.e-]+\]", comp["ig"][0])
    assert comp["ig"][1] == "reference" and comp["ours"][1].startswith("+0.2")
    assert suff["ig"][0].endswith("★") and suff["ours"][1].startswith("+0.1")
    assert [comp[m][2] for m in METHODS] == ["25 %", "0 %", "0 %"]  # abstained
    assert comp["ours"][3] == "2.3" and tau["ig"][3] == "0.575"  # seconds, mean
    assert not any(c.endswith("★") for t in tables for c in t["random"])  # the floor


def test_subset_comparison_has_its_own_table(page: str) -> None:
    section = page.split("Comparison on a subset: subset of slow</h3>")[1].split("<h2>")[0]
    (table,) = parse(section).tables
    assert [row[0] for row in table[1:]] == ["ours", "ig", "random", "slow"]
    assert "n = 2" in table[0][1]
    slow = table[-1]
    assert slow[1].startswith("0.905 [0.9, 0.91]")


def test_sanity_table_and_criterion(page: str) -> None:
    section = page.split("<h2>Sanity check</h2>")[1].split("<h2>")[0]
    assert f"at most\n{BOUND:.3g}" in section or f"at most {BOUND:.3g}" in section
    (table,) = parse(section).tables
    assert table[0] == ["method", "classifiern = 4", "layer 2n = 4", "layer 1n = 4", "verdict"]
    verdicts = {row[0]: row[-1] for row in table[1:]}
    assert verdicts == {"ours": "pass", "ig": "fail", "random": "fail"}
    assert table[1][1] == "1 / 1"


def test_verdict_paragraph(page: str) -> None:
    text = page.split('<p class="verdict">')[1].split("</p>")[0]
    assert f"On {COMP} (higher is better) ours is best" in text
    assert f"On {SUFF} (lower is better) ig is best" in text
    assert "Among the magnitude rankings, ours ranks 1st of 1" in text
    assert "ours 25 %" in text  # abstentions
    sanity = text.split("Sanity check failed")[1].split(". ")[0]
    # the floor is not among the failures: it is named as the check's negative control
    assert sanity.endswith(
        f"(layer 1, bound {BOUND:.2f}): ig (random, which ignores the model, fails as it must)"
    )
    assert "ours takes 4× the seconds per example of ig" in text


def rows_of(spread: float) -> list[dict[str, Any]]:
    """Two methods on 8 examples: b − a = 0.1 ± ``spread``, alternating in sign."""
    return [
        {"method": m, "example": f"e{i}", "metric": "acc", "value": v}
        for i in range(8)
        for m, v in (("a", 0.5), ("b", 0.6 + spread * (-1) ** i))
    ]


@pytest.mark.parametrize(("spread", "named"), [(0.01, True), (1.0, False)])
def test_verdict_names_the_best_only_when_the_interval_excludes_0(
    spread: float, named: bool
) -> None:
    meta = {
        "task": "classifier",
        "methods": {m: {"signed": True, "family": "gradient"} for m in "ab"},
        "metrics": {"acc": {"better": "higher"}},
    }
    summary = study_summary(rows_of(spread), meta, "a")
    (first, *_) = verdict(summary, rows_of(spread), {}, meta, ["acc"], "a")
    assert ("b is best" in first) is named
    assert ("no method is distinguishable from the runner-up" in first) is not named


def _magnitude_rows() -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """ours (magnitude), ig (signed) with ig|abs, and s (signed, ours' magnitudes) with
    a stored copy s|abs of ours' ranking, on 8 examples of one metric."""
    meta = {
        "task": "classifier",
        "methods": {
            "ours": {"signed": False, "family": "ours"},
            "ig": {"signed": True, "family": "gradient"},
            "ig|abs": {"signed": False, "family": "gradient"},
            "s": {"signed": True, "family": "ours", "magnitudes_of": "ours"},
            "s|abs": {"signed": False, "family": "ours"},
        },
        "metrics": {"acc": {"better": "higher"}},
    }
    base = {"ours": 0.5, "ig": 0.7, "ig|abs": 0.4, "s": 0.6, "s|abs": 0.5}
    rows = [
        {"method": m, "example": f"e{i}", "metric": "acc", "value": v + 0.1 * (i % 3)}
        for i in range(8)
        for m, v in base.items()
    ]
    return meta, rows


def test_a_copied_ranking_is_left_out_of_the_summary_and_the_ranks() -> None:
    meta, rows = _magnitude_rows()
    summary = study_summary(rows, meta, "ig")
    assert {s["method"] for s in summary} == {"ours", "ig", "ig|abs", "s"}
    sentences = verdict(summary, rows, {}, meta, ["acc"], "ig")
    (magnitude,) = [s for s in sentences if s.startswith("Among the magnitude")]
    # ours leads ig|abs by exactly 0.1 on every example: a zero-width paired interval
    assert magnitude == (
        "Among the magnitude rankings, ours ranks 1st of 2 on acc "
        "(+0.1 [0.1, 0.1] vs the runner-up ig|abs: better)."
    )
    (signed,) = [s for s in sentences if s.startswith("Among the signed")]
    assert signed == (
        "Among the signed rankings, s ranks 2nd of 2 on acc "
        "(-0.1 [-0.1, -0.1] vs the leader ig: worse)."
    )


@pytest.mark.parametrize("seed", [0, 3])
def test_paired_difference_agrees_with_the_summary(seed: int) -> None:
    rows = rows_of(1.0)
    (b,) = [s for s in summarize(rows, {}, seed, reference="a") if s["method"] == "b"]
    d = paired_difference(rows, "acc", "b", "a", seed)
    assert d["n"] == 8  # the same resamples: equal up to floating-point rounding
    assert [d["diff"], d["lo"], d["hi"]] == pytest.approx([b["diff"], b["diff_lo"], b["diff_hi"]])
    assert d["lo"] < 0 < d["hi"]  # b − a = 0.1 ± 1: the interval spans 0
    with pytest.raises(ValueError, match="no values for 'a' and 'x'"):
        paired_difference(rows, "acc", "a", "x")


def test_the_verdicts_difference_uses_the_summarys_seed() -> None:
    meta = {
        "task": "classifier",
        "methods": {m: {"signed": False, "family": f} for m, f in (("a", "ours"), ("b", "x"))},
        "metrics": {"acc": {"better": "higher"}},
    }
    rows = [  # 12 uneven differences: different seeds give different intervals
        {"method": m, "example": f"e{i}", "metric": "acc", "value": (i * step) % 1.0}
        for i in range(12)
        for m, step in (("a", 0.37), ("b", 0.61))
    ]
    found = []
    for seed in (0, 3):
        d = paired_difference(rows, "acc", "a", "b", seed)
        found.append((d["lo"], d["hi"]))
        summary = study_summary(rows, meta, "b", seed)
        sentences = verdict(summary, rows, {}, meta, ["acc"], "b", seed)
        (sentence,) = [s for s in sentences if "ranks" in s]
        assert f"[{fmt(d['lo'])}, {fmt(d['hi'])}] vs the " in sentence
    assert found[0] != found[1]


def test_sanity_verdicts_against_the_bound() -> None:
    n, bound = 21, random_rho_bound([21] * 5)  # 1.645 × sqrt(5 / 20) / 5 ≈ 0.164
    rows = [
        {"method": m, "example": f"e{i}", "stage": s, "stage_index": k,
         "spearman": 0.9 if k == 0 else v, "spearman_abs": 0.9 if k == 0 else w, "n_tokens": n}
        for m, (v, w) in {"in": (bound - 0.01, bound - 0.01), "out": (0.0, bound + 0.01)}.items()
        for k, s in enumerate(("top", "all"))
        for i in range(5)
    ]  # fmt: skip
    found = sanity_verdicts(rows)
    assert {m: v["passed"] for m, v in found.items()} == {"in": True, "out": False}
    assert found["in"]["bound"] == pytest.approx(bound) and found["in"]["stage"] == "all"
    old = [{k: v for k, v in r.items() if k not in ("spearman_abs", "n_tokens")} for r in rows]
    assert {m: v["passed"] for m, v in sanity_verdicts(old).items()} == {"in": None, "out": None}
    summary = sanity_summary(old)
    assert len(summary) == 4 and all(math.isnan(s["rho_abs"]) for s in summary)
    assert sanity_verdicts([]) == {}


def test_sanity_summary_uses_one_example_set() -> None:
    rows = [
        {"method": m, "example": e, "stage": "all", "stage_index": 0, "spearman": v}
        for m, e, v in (("a", "e0", 0.1), ("a", "e1", 0.3), ("b", "e0", 0.2), ("b", "e2", 0.9))
    ]
    out = {s["method"]: s for s in sanity_summary(rows)}
    assert out["a"]["n"] == out["b"]["n"] == 1  # only e0 is held by both
    assert (out["a"]["rho"], out["b"]["rho"]) == (0.1, 0.2)


def test_defaults_of_headline_and_reference() -> None:
    meta = {"task": "classifier", "methods": {"x": {}, "y": {}}, "metrics": {}}
    assert headline_of(meta, [TAU, "seconds", COMP]) == [COMP, TAU]
    assert headline_of({**meta, "headline": [TAU, "nope"]}, [TAU, COMP]) == [TAU]
    rows = [{"method": m} for m in ("y", "x", "integrated-gradients")]
    assert reference_of(meta, rows) == "integrated-gradients"
    assert reference_of(meta, rows[:2]) == "x"  # absent: the first method with rows
    assert reference_of({**meta, "reference": "y"}, rows) == "y"
    assert reference_of(meta, rows, "x") == "x"


def test_summary_markdown(run: RunStore) -> None:
    text = summary_markdown(run.run_dir)
    head, rule, *rows = text.splitlines()
    assert head.startswith(f"| method | {COMP} ↑ (mean [95 % interval], n = 4) | minus ig |")
    assert head.endswith("| abstained ↓ | seconds ↓ |") and rule == "|---" * 9 + "|"
    ours = rows[0].split(" | ")
    assert ours[0] == "| ours" and ours[1].startswith("**") and ours[1].endswith("★")
    assert ours[7] == "25 %"


def test_report_is_self_contained(page: str) -> None:
    assert not re.search(r"""(src|href)\s*=\s*["']?\s*(https?:)?//""", page, re.I)
    assert not re.search(r"url\(|@import|<script|<link", page, re.I)


def test_report_skips_missing_figures(tmp_path: Path) -> None:
    store = RunStore(tmp_path)
    store.write_meta({k: v for k, v in META.items() if k != "reference"})
    store.add_results([("ig", "ex0", TAU, 0.1)])
    out = write_report(tmp_path, tmp_path / "r.html", title="Only <one> row")
    text = out.read_text(encoding="utf-8")
    assert text.count("Skipped:") == 2 and "No explanations stored" in text
    assert "<title>Only &lt;one&gt; row</title>" in text
    assert "Paired differences from ig" in text  # the only method with results


def test_report_missing_method_and_probability(tmp_path: Path) -> None:
    store = build_run(tmp_path)
    store.add_explanation(
        {
            "method": "ig",
            "example": "extra",
            "text": "t",
            "tokens": ["t"],
            "scores": [0.0],
            "label": None,
            "pred": 0,
            "prob": 0.75,
            "seconds": 0.1,
        }
    )
    page = write_report(tmp_path, max_examples=5).read_text(encoding="utf-8")
    extra = page.split("<h3>extra</h3>")[1]
    assert "<b>0 (0.75)</b>" in extra and "<b>&ndash;</b>" in extra  # pred (prob), no label
    assert "Not explained: ours, random" in extra


def test_verdict_without_a_rival() -> None:
    meta = {
        "task": "classifier",
        "methods": {"a": {"signed": True, "family": "gradient"}, "r": {"family": "floor"}},
        "metrics": {"acc": {"better": "higher"}},
    }
    rows = [r | {"method": "r" if r["method"] == "b" else "a"} for r in rows_of(0.01)]
    (first, *_) = verdict(study_summary(rows, meta, "a"), rows, {}, meta, ["acc"], "a")
    assert first == "On acc fewer than two methods besides the floor are scored."
