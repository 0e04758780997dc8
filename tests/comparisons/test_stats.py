"""Tests of ``comparisons.stats``: the one bootstrap, one example set per comparison,
paired differences, the paired "best" rule and the sanity check's random floor.

The intervals the study relies on are checked for calibration here: the percentile
bootstrap's coverage of a known mean, and the random-floor bound's false-alarm rate on
unrelated rankings, each against a rate derived from the math with a binomial
tolerance.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
import pytest
from scipy import stats as sps

from comparisons.stats import (
    BOOTSTRAP_RESAMPLES,
    bootstrap_means,
    comparisons,
    paired_best,
    paired_differences,
    random_rho_bound,
    summarize,
)


def _rows(values: dict[str, Sequence[float]], metric: str = "m") -> list[dict]:
    return [
        {"method": m, "example": f"e{i:02d}", "metric": metric, "value": float(v)}
        for m, vs in values.items()
        for i, v in enumerate(vs)
    ]


# ---------------------------------------------------------------------- the bootstrap
def test_paired_differences_of_identical_and_shifted_methods() -> None:
    """Identical methods: difference interval [0, 0]. A constant shift c: exactly [c, c],
    though each method's own interval is wide."""
    x = np.random.default_rng(0).normal(size=40).round(3) * 8  # noisy, exactly representable
    c = 0.25
    rows = _rows({"ref": x, "same": x, "shift": x + c})
    diffs = {d["method"]: d for d in paired_differences(rows, "ref")}
    assert (diffs["same"]["diff"], diffs["same"]["lo"], diffs["same"]["hi"]) == (0.0, 0.0, 0.0)
    assert diffs["shift"]["diff"] == pytest.approx(c, abs=1e-12)
    assert diffs["shift"]["lo"] == diffs["shift"]["hi"] == diffs["shift"]["diff"]
    assert diffs["shift"]["n"] == 40
    own = {s["method"]: s for s in summarize(rows, {"m": "higher"})}
    assert own["shift"]["hi"] - own["shift"]["lo"] > 1.0


def test_one_resampling_serves_the_means_and_the_differences() -> None:
    """summarize's interval of a method is bootstrap_means of its row; rows resampled
    together share the resamples (a difference's interval is that of the difference)."""
    rng = np.random.default_rng(1)
    a, b = rng.normal(size=30), rng.normal(size=30)
    rows = _rows({"a": a, "b": b})
    _, lo, hi = bootstrap_means(np.vstack([a, b, b - a]), "m", seed=0)
    own = {s["method"]: s for s in summarize(rows, {"m": "higher"}, reference="a")}
    assert (own["a"]["lo"], own["a"]["hi"]) == pytest.approx((lo[0], hi[0]), abs=1e-12)
    assert (own["b"]["lo"], own["b"]["hi"]) == pytest.approx((lo[1], hi[1]), abs=1e-12)
    assert (own["b"]["diff_lo"], own["b"]["diff_hi"]) == pytest.approx((lo[2], hi[2]), abs=1e-12)
    (d,) = paired_differences(rows, "a")
    assert (d["lo"], d["hi"]) == pytest.approx((lo[2], hi[2]), abs=1e-12)

    # seeded and order-free
    def keyed(rs: list[dict]) -> dict:
        return {s["method"]: s for s in summarize(rs, {"m": "higher"}, reference="a")}

    assert keyed(list(reversed(rows))) == keyed(rows)
    other = bootstrap_means(np.vstack([a]), "m", seed=1)
    assert other[1][0] != lo[0]


def test_bootstrap_means_refuses_non_finite_values_and_handles_tiny_n() -> None:
    with pytest.raises(ValueError, match="finite"):
        bootstrap_means(np.array([[1.0, math.nan]]), "m")
    mean, lo, hi = bootstrap_means(np.array([[2.0]]), "m")
    assert (mean[0], lo[0], hi[0]) == (2.0, 2.0, 2.0)
    mean, lo, hi = bootstrap_means(np.zeros((1, 0)), "m")
    assert math.isnan(mean[0]) and math.isnan(lo[0])


def test_the_percentile_interval_covers_a_known_mean_at_its_expected_rate() -> None:
    """Calibration. For normal data the percentile interval of a mean behaves like
    x̄ ± z·s_n/√n (s_n with divisor n), whose exact coverage is
    P(|T_{n-1}| ≤ z·sqrt((n-1)/n)) ≈ 0.939 at n = 50. Over 400 seeded data sets the
    observed coverage must lie within 4 binomial standard deviations of it (plus the
    percentile endpoints' Monte-Carlo error, which moves coverage by < 0.005 at 2,000
    resamples)."""
    n, reps = 50, 400
    rng = np.random.default_rng(123)
    data = rng.normal(loc=1.0, size=(reps, n))
    _, lo, hi = bootstrap_means(data, "coverage", seed=0)  # rows resampled alike: fine here
    covered = float(np.mean((lo <= 1.0) & (hi >= 1.0)))
    z = sps.norm.ppf(0.975)
    expected = 2 * sps.t.cdf(z * math.sqrt((n - 1) / n), n - 1) - 1
    sd = math.sqrt(expected * (1 - expected) / reps)
    assert abs(covered - expected) <= 4 * sd + 0.005
    assert BOOTSTRAP_RESAMPLES == 2000


# ---------------------------------------------------------- one example set per comparison
def test_every_method_of_a_comparison_is_averaged_over_the_same_examples() -> None:
    """A NaN never shrinks one method's n alone: the main comparison keeps the methods
    that ran on the most examples, on the examples where all have a finite value; a
    method run on fewer examples gets its own comparison, the others restricted to them."""
    x = np.arange(6, dtype=float)
    rows = _rows({"a": x, "b": x + 1, "c": x + 2})
    rows = [r for r in rows if not (r["method"] == "c" and r["example"] >= "e03")]  # c: e00 to e02
    rows.append({"method": "b", "example": "e05", "metric": "m", "value": math.nan})
    found = comparisons({"a": {f"e{i:02d}": 0.0 for i in range(6)}, "c": {"e00": 0.0}})
    assert found == [("all", ["a"]), ("subset of c", ["c", "a"])]
    out = summarize(rows, {"m": "higher"}, reference="a")
    main = {s["method"]: s for s in out if s["comparison"] == "all"}
    assert set(main) == {"a", "b"}
    assert main["a"]["n"] == main["b"]["n"] == 5  # e05 is NaN for b: out for both
    assert main["a"]["mean"] == 2.0 and main["b"]["diff"] == 1.0
    sub = {s["method"]: s for s in out if s["comparison"] == "subset of c"}
    assert set(sub) == {"a", "b", "c"} and {s["n"] for s in sub.values()} == {3}


def test_the_main_comparison_uses_the_examples_all_its_methods_have() -> None:
    x = np.arange(5, dtype=float)
    rows = _rows({"a": x, "b": x + 1}) + _rows({"c": [9.0, 9.0]})
    out = summarize(rows, {"m": "higher"}, reference="a")
    main = {s["method"]: s for s in out if s["comparison"] == "all"}
    sub = {s["method"]: s for s in out if s["comparison"] == "subset of c"}
    assert set(main) == {"a", "b"} and main["a"]["n"] == main["b"]["n"] == 5
    assert set(sub) == {"c", "a", "b"} and {s["n"] for s in sub.values()} == {2}
    assert sub["a"]["mean"] == 0.5 and sub["c"]["diff"] == 8.5  # a on e00, e01 only


# ---------------------------------------------------------------------- best and paired
def test_best_needs_a_paired_interval_that_excludes_zero() -> None:
    x = np.arange(20, dtype=float)
    alternating = 0.5 * (-1.0) ** np.arange(20)
    rows = _rows({"a": x, "b": x + 1, "c": x + 1 + alternating, "floor": x + 9})
    best = paired_best(rows, {"m": "higher"}, exclude=["floor"])["m"]
    assert (best["leader"], best["method"]) in (("b", None), ("c", None))
    assert best["lo"] < 0 < best["hi"]
    assert not any(s["best"] for s in summarize(rows, {"m": "higher"}, exclude=["floor"]))
    rows = _rows({"a": x, "b": x + 2, "c": x + 1 + alternating})
    best = paired_best(rows, {"m": "higher"})["m"]
    assert (best["method"], best["runner_up"], best["diff"]) == ("b", "c", 1.0)
    assert paired_best(rows, {"m": "lower"})["m"]["method"] == "a"
    starred = {s["method"] for s in summarize(rows, {"m": "higher"}) if s["best"]}
    assert starred == {"b"}
    rows += _rows({"b|abs": x + 2})  # the same explanation ranked another way: not a rival
    assert paired_best(rows, {"m": "higher"})["m"]["method"] is None
    best = paired_best(rows, {"m": "higher"}, group=lambda m: m.removesuffix("|abs"))["m"]
    assert (best["method"], best["runner_up"]) == ("b", "c")


def test_a_metric_without_a_direction_has_no_best() -> None:
    rows = _rows({"a": [1.0, 2.0], "b": [5.0, 6.0]})
    assert not any(s["best"] for s in summarize(rows, {}))
    assert paired_best(rows, {}) == {}


# ------------------------------------------------------------------- the random floor
@pytest.mark.parametrize("lengths", [[12] * 10, list(range(5, 35, 3))])
def test_the_random_floor_bound_has_its_false_alarm_rate(lengths: list[int]) -> None:
    """Calibration of the sanity criterion. Unrelated random rankings of the same
    examples exceed the bound on their mean ρ with probability 1 − level = 5 %: over
    4,000 seeded sets the exceedance rate lies within 4 binomial standard deviations
    (0.014) of 0.05."""
    reps = 4000
    rng = np.random.default_rng(7)
    means = np.zeros(reps)
    for n in lengths:
        a = rng.permuted(np.tile(np.arange(n), (reps, 1)), axis=1).astype(float)
        b = rng.permuted(np.tile(np.arange(n), (reps, 1)), axis=1).astype(float)
        ac, bc = a - a.mean(1, keepdims=True), b - b.mean(1, keepdims=True)
        means += (ac * bc).sum(1) / np.sqrt((ac**2).sum(1) * (bc**2).sum(1))
    means /= len(lengths)
    rate = float(np.mean(means > random_rho_bound(lengths)))
    assert abs(rate - 0.05) <= 4 * math.sqrt(0.05 * 0.95 / reps)


def test_the_random_floor_bound_needs_two_tokens() -> None:
    with pytest.raises(ValueError, match="2 ranked tokens"):
        random_rho_bound([5, 1])
