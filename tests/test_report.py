"""The run folder (``comparisons.store``) and its HTML report (``comparisons.report``).

A synthetic run — three methods (one of them the random floor), four examples, three
metrics plus seconds, deletion/insertion curves and sanity-check rows — is written
through :class:`RunStore`, read back, summarised and rendered.
"""

from __future__ import annotations

import math
import operator
import re
from pathlib import Path
from typing import Any

import pytest

# `comparisons` is a folder of the repository, importable through pytest's `pythonpath = .`.
from comparisons.report import write_report
from comparisons.store import RunStore, summarize

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
    },
    "metrics": {
        COMP: {"better": "higher", "description": "ERASER AOPC comprehensiveness"},
        SUFF: {"better": "lower", "description": "ERASER AOPC sufficiency"},
        TAU: {"better": "higher", "description": "Kendall tau with leave-one-out"},
    },
    "notes": ["synthetic <run> & test"],
}
TOKENS = ["[CLS]", "a", "<b>", "film", "[SEP]"]


def value(method: str, metric: str, i: int) -> float:
    """A deterministic per-example value around the method's base."""
    if metric == "seconds":
        return BASE[method][metric] * (1 + 0.1 * i)
    return BASE[method][metric] + 0.01 * (i - 1.5) * (1 + METHODS.index(method))


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
            for kind, sign in (("deletion/mask", -1), ("insertion/mask", 1)):
                n = 5 + i  # curves of different lengths: the report interpolates
                vals = [0.5 + sign * 0.4 * k / (n - 1) / (j + 1) for k in range(n)]
                store.add_curve(method, ex, kind, vals)
            for k, stage in enumerate(("classifier", "layer 2", "layer 1")):
                store.add_sanity(method, ex, stage, k, 1.0 - 0.3 * k * (j + 1) / 3)
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
    assert len(rows) == len(METHODS) * len(EXAMPLES) * 4
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
        "spearman": pytest.approx(0.8),
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
    assert len(resumed.results()) == 48 and not resumed.has_results("lime", "ex0")

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
    rows = run.results()
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
    out = {(s["method"], s["metric"]): s for s in summarize(rows, {"m": "lower"})}
    a, b = out[("a", "m")], out[("b", "m")]
    assert (a["n"], a["mean"], a["lo"], a["hi"], a["best"]) == (1, 3.0, 3.0, 3.0, True)
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


def test_report_summary_and_figures(page: str) -> None:
    assert "tiny-bert" in page and "python -m comparisons.run --n 4" in page
    assert "synthetic &lt;run&gt; &amp; test" in page and "<run>" not in page
    assert "|score|" in page and "signed score" in page
    summary = page.split("<h2>Summary</h2>")[1].split("</table>")[0]
    rows = {m: re.search(rf"<tr><th>{m}</th>(.*?)</tr>", summary).group(1) for m in METHODS}  # type: ignore[union-attr]
    cells = {m: re.findall(r"<td[^>]*>(.*?)</td>", r) for m, r in rows.items()}
    header = re.findall(r"<th[^>]*>(.*?)</th>", summary.split("</tr>")[0])
    assert header[1:] == [f"{COMP}&nbsp;↑", f"{SUFF}&nbsp;↓", f"{TAU}&nbsp;↑", "seconds&nbsp;↓"]
    assert 'title="ERASER AOPC sufficiency"' in summary
    starred = {
        m: [i for i, c in enumerate(cs) if c.startswith("<b>") and c.endswith("★")]
        for m, cs in cells.items()
    }
    assert starred == {"ours": [0, 2], "ig": [1, 3], "random": []}  # the floor is never starred
    assert re.fullmatch(r"[\d.e-]+ \[[\d.e-]+, [\d.e-]+\]", cells["ig"][0])
    assert page.count('src="data:image/png;base64,') >= 3
    assert "Skipped" not in page


def test_report_is_self_contained(page: str) -> None:
    assert not re.search(r"""(src|href)\s*=\s*["']?\s*(https?:)?//""", page, re.I)
    assert not re.search(r"url\(|@import|<script|<link", page, re.I)


def test_report_skips_missing_figures(tmp_path: Path) -> None:
    store = RunStore(tmp_path)
    store.write_meta(META)
    store.add_results([("ig", "ex0", TAU, 0.1)])
    out = write_report(tmp_path, tmp_path / "r.html", title="Only <one> row")
    text = out.read_text(encoding="utf-8")
    assert text.count("Skipped:") == 3 and "No explanations stored" in text
    assert "<title>Only &lt;one&gt; row</title>" in text


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
