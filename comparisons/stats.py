"""The statistics of the harness: one bootstrap, paired comparisons, one example set.

Every interval in the study report, the LLM study and the layer analysis comes from
:func:`bootstrap_mean_function` (``scipy.stats.bootstrap``, percentile intervals, the
examples — or sentences — resampled with replacement, every series over the same
resamples): means through :func:`bootstrap_means`, functions of means (ratios, paired
changes of ratios) directly.

A *comparison* is a set of methods scored on one set of examples (:func:`summarize`):
every method of it is averaged over exactly the same examples, and the differences
between methods are paired over them. A method run on fewer examples (e.g. a slow
configuration limited to a subset) gets a comparison of its own on its examples, with
the other methods restricted to them.
"""

from __future__ import annotations

import math
import warnings
import zlib
from collections.abc import Callable, Iterable, Mapping
from typing import Any

import numpy as np
from scipy import stats as sps

BOOTSTRAP_RESAMPLES = 2000
"""Resamples of every bootstrap interval."""

LEVEL = 0.95
"""Confidence level of every interval."""

BETTER = ("higher", "lower")


def _rng(key: str, seed: int) -> np.random.Generator:
    """The resampling generator of stream ``key``: the same key, seed and ``n`` give the
    same resamples (``numpy.random.default_rng([seed, crc32(key)])``)."""
    return np.random.default_rng([seed, zlib.crc32(key.encode("utf-8"))])


def bootstrap_means(
    values: np.ndarray, key: str, seed: int = 0
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Means of the rows of ``values`` with 95 % percentile bootstrap intervals, paired.

    :func:`bootstrap_mean_function` with the identity: ``values`` is ``(m, n)``, ``m``
    series (methods, or differences between methods) over the same ``n`` units
    (examples, sentences), in the same order; every row is averaged over the same
    resamples of the units, so the rows' intervals are paired (the interval of ``b − a``
    is that of the difference of the resampled means). A constant row's interval is its
    value; with one unit the interval is the value itself; with none, everything is NaN.

    Args:
        values: ``(m, n)`` finite numbers.
        key: names the resampling stream (the metric), so that the same ``key``, ``seed``
            and ``n`` give the same resamples.
        seed: seed of the bootstrap.

    Returns:
        ``(mean, lo, hi)``, each ``(m,)``.

    Example:
        >>> x = np.array([[1.0, 2.0, 3.0], [2.0, 3.0, 4.0]])
        >>> mean, lo, hi = bootstrap_means(np.vstack([x, x[1] - x[0]]), "acc")
        >>> mean.tolist(), float(hi[2] - lo[2])  # a constant difference: zero width
        ([2.0, 3.0, 1.0], 0.0)
    """
    values = np.asarray(values, dtype=float)
    if values.ndim != 2:
        raise ValueError(f"values must be (series, units), got shape {values.shape}")
    if not np.isfinite(values).all():
        raise ValueError("values must be finite: choose the units every series has first")
    mean, lo, hi = bootstrap_mean_function(values, lambda means: means, key, seed)
    if values.shape[1]:
        # a constant row has a degenerate distribution; its interval is the value
        constant = np.ptp(values, axis=1) == 0
        lo[constant], hi[constant] = mean[constant], mean[constant]
    return mean, lo, hi


_GATHER = 4_000_000
"""Values gathered at once by the bootstrap's statistic (bounds its memory)."""


def _on_indices(
    values: np.ndarray, combine: Callable[[np.ndarray], np.ndarray]
) -> Callable[..., np.ndarray]:
    """The vectorized statistic of :func:`bootstrap_mean_function`: resampled unit
    indices ``(n,)`` or ``(resamples, n)`` → ``combine`` of the rows' means, the
    resampled values gathered a few resamples at a time."""
    step = max(1, _GATHER // max(1, values.size))

    def statistic(idx: np.ndarray, axis: int = -1) -> np.ndarray:
        idx = np.asarray(idx, dtype=np.intp)
        if idx.ndim == 1:
            return combine(values[:, idx].mean(axis=-1))
        chunks = [values[:, idx[k : k + step]].mean(axis=-1) for k in range(0, len(idx), step)]
        return combine(np.concatenate(chunks, axis=1))

    return statistic


def bootstrap_mean_function(
    values: np.ndarray,
    combine: Callable[[np.ndarray], np.ndarray],
    key: str,
    seed: int = 0,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """A function of the row means of ``values``, with percentile bootstrap intervals.

    :func:`~comparisons.stats.bootstrap_means` with ``combine`` applied to the
    resampled means: ``scipy.stats.bootstrap`` with the harness's settings and
    generator, resampling the ``n`` unit indices (the data it is given) once per
    resample, so that the same ``key``, ``seed`` and ``n`` draw the same resamples as
    ``bootstrap_means`` (with ``combine`` the identity, the same intervals for every
    row that is not constant).

    Args:
        values: ``(m, n)`` finite numbers, ``m`` series over the same ``n`` units.
        combine: the row means ``(m, ...)`` → the statistics ``(k, ...)`` (vectorized
            over the trailing resample axis).
        key: names the resampling stream.
        seed: seed of the bootstrap.

    Returns:
        ``(estimate, lo, hi)``, each ``(k,)``; with one unit the interval is the
        estimate, with none everything is NaN; a resample where ``combine`` gives NaN
        (e.g. a group without tokens) makes that interval NaN.

    Example:
        >>> x = np.array([[1.0, 2.0, 3.0, 4.0], [2.0, 4.0, 6.0, 8.0]])
        >>> est, lo, hi = bootstrap_mean_function(x, lambda m: m[1:] / m[:1], "ratio")
        >>> est.tolist(), lo.tolist(), hi.tolist()  # proportional rows: a fixed ratio
        ([2.0], [2.0], [2.0])
    """
    values = np.asarray(values, dtype=float)
    if values.ndim != 2 or not np.isfinite(values).all():
        raise ValueError(f"values must be finite (series, units), got shape {values.shape}")
    n = values.shape[1]
    with np.errstate(divide="ignore", invalid="ignore"), warnings.catch_warnings():
        warnings.simplefilter("ignore", sps.DegenerateDataWarning)
        est = np.asarray(combine(values.mean(axis=1) if n else np.full(len(values), np.nan)))
        if n < 2:
            return est, est.copy(), est.copy()
        res = sps.bootstrap(
            (np.arange(n),),
            _on_indices(values, combine),
            axis=-1,
            vectorized=True,
            n_resamples=BOOTSTRAP_RESAMPLES,
            confidence_level=LEVEL,
            method="percentile",
            rng=_rng(key, seed),
        )
    lo = np.asarray(res.confidence_interval.low, dtype=float)
    hi = np.asarray(res.confidence_interval.high, dtype=float)
    return est, lo, hi


def _table(rows: Iterable[Mapping[str, Any]]) -> dict[str, dict[str, dict[str, float]]]:
    """metric → method → example → value (the last row per example: a resumed run may
    have written one twice)."""
    table: dict[str, dict[str, dict[str, float]]] = {}
    for r in rows:
        by_method = table.setdefault(r["metric"], {})
        by_method.setdefault(r["method"], {})[r["example"]] = float(r["value"])
    return table


def comparisons(by_method: Mapping[str, Mapping[str, float]]) -> list[tuple[str, list[str]]]:
    """Split the methods of one metric into comparisons, each on one example set.

    The methods that ran on the most examples form the main comparison (label
    ``"all"``). Each smaller set of examples that other methods ran on (e.g. a slow
    configuration limited to a subset) gets a comparison labelled ``"subset of
    <methods>"`` holding those methods and the main ones. Within a comparison, every
    method is scored on the examples where all of them have a finite value
    (:func:`summarize`): a value that is undefined for an example (NaN: nothing to rank)
    takes the example out for every method alike.

    Returns:
        ``[(label, methods)]``, the main comparison first; methods in first-appearance
        order.
    """
    ran = {m: frozenset(ex) for m, ex in by_method.items()}
    if not ran:
        return []
    most = max(len(s) for s in ran.values())
    main = [m for m in ran if len(ran[m]) == most]
    out: list[tuple[str, list[str]]] = [("all", main)]
    rest: dict[frozenset[str], list[str]] = {}
    for m in ran:
        if m not in main:
            rest.setdefault(ran[m], []).append(m)
    for group in rest.values():
        out.append(("subset of " + ", ".join(group), group + main))
    return out


def _values(
    by_method: Mapping[str, Mapping[str, float]], methods: list[str]
) -> tuple[list[str], np.ndarray]:
    """The examples every one of ``methods`` has a finite value for, and the
    ``(methods, examples)`` table of those values."""
    sets = [{e for e, v in by_method[m].items() if math.isfinite(v)} for m in methods]
    examples = sorted(set.intersection(*sets)) if sets else []
    values = np.array([[by_method[m][e] for e in examples] for m in methods], float)
    return examples, values.reshape(len(methods), len(examples))


def summarize(
    rows: Iterable[Mapping[str, Any]],
    better: Mapping[str, str],
    seed: int = 0,
    *,
    reference: str | None = None,
    exclude: Iterable[str] = (),
    group: Callable[[str], str] | None = None,
) -> list[dict[str, Any]]:
    """Each method's mean, interval and paired difference from ``reference``, per metric.

    Per metric, the methods are split into :func:`comparisons`; in each, every method is
    averaged over the same examples (those all of its methods have a finite value for),
    and :func:`bootstrap_means` (``key`` the metric) resamples them once for all methods
    and all differences, so every interval of a comparison is paired.

    ``best`` marks, per comparison of a metric in ``better``, the method with the best
    mean (the leader; ``exclude`` — e.g. the random floor — is never best) only where
    the paired interval of leader − runner-up excludes 0; the runner-up is the best
    method outside the leader's ``group`` (two rankings of one explanation are not rivals).

    Args:
        rows: dicts with ``method``, ``example``, ``metric``, ``value``.
        better: metric name → ``"higher"`` or ``"lower"``.
        seed: seed of the bootstrap.
        reference: the method every other is compared with (``diff`` columns); None or
            a method without values for a metric gives NaN differences.
        exclude: methods that are never best.
        group: method → its group (default: every method its own).

    Returns:
        One dict per ``(metric, comparison, method)``: ``metric``, ``comparison``,
        ``method``, ``n``, ``mean``, ``lo``, ``hi``, ``reference``, ``diff``,
        ``diff_lo``, ``diff_hi`` (method − reference, paired) and ``best``.

    Example:
        >>> rows = [
        ...     {"method": m, "example": f"e{i}", "metric": "acc", "value": v + i}
        ...     for m, v in (("a", 1.0), ("b", 2.0))
        ...     for i in range(3)
        ... ]
        >>> out = summarize(rows, {"acc": "lower"}, reference="b")
        >>> [(s["method"], s["mean"], s["diff"], s["best"]) for s in out]
        [('a', 2.0, -1.0, True), ('b', 3.0, 0.0, False)]
    """
    never = set(exclude)
    key = group or (lambda m: m)
    out: list[dict[str, Any]] = []
    for metric, by_method in _table(rows).items():
        for label, methods in comparisons(by_method):
            examples, values = _values(by_method, methods)
            ref = methods.index(reference) if reference in methods else None
            diffs = values - values[ref] if ref is not None else np.empty((0, len(examples)))
            mean, lo, hi = bootstrap_means(np.vstack([values, diffs]), metric, seed)
            k = len(methods)
            for i, m in enumerate(methods):
                d = (mean[k + i], lo[k + i], hi[k + i]) if ref is not None else (math.nan,) * 3
                out.append(
                    {
                        "metric": metric,
                        "comparison": label,
                        "method": m,
                        "n": len(examples),
                        "mean": float(mean[i]),
                        "lo": float(lo[i]),
                        "hi": float(hi[i]),
                        "reference": reference if ref is not None else None,
                        "diff": float(d[0]),
                        "diff_lo": float(d[1]),
                        "diff_hi": float(d[2]),
                        "best": False,
                    }
                )
            leader = _best(values, methods, better.get(metric), never, key, metric, seed)
            if leader is not None:
                for s in out[-k:]:
                    s["best"] = s["method"] == leader
    return out


def _best(
    values: np.ndarray,
    methods: list[str],
    direction: str | None,
    never: set[str],
    key: Callable[[str], str],
    metric: str,
    seed: int,
) -> str | None:
    """The leader of one comparison when its paired interval against the runner-up
    excludes 0, else None."""
    entry = leader_and_runner_up(values, methods, direction, never, key, metric, seed)
    return entry["method"] if entry else None


def leader_and_runner_up(
    values: np.ndarray,
    methods: list[str],
    direction: str | None,
    never: Iterable[str] = (),
    key: Callable[[str], str] | None = None,
    metric: str = "",
    seed: int = 0,
) -> dict[str, Any] | None:
    """Leader, runner-up and their paired difference on a ``(methods, examples)`` table.

    Returns:
        None when ``direction`` is not ``"higher"``/``"lower"`` or there is no rival;
        else ``{"method", "leader", "runner_up", "diff", "lo", "hi"}`` with ``method``
        the leader when the interval of leader − runner-up excludes 0, else None.
    """
    if direction not in BETTER or values.shape[1] == 0:
        return None
    key = key or (lambda m: m)
    skip = set(never)
    candidates = [i for i, m in enumerate(methods) if m not in skip]
    sign = -1.0 if direction == "higher" else 1.0
    order = sorted(candidates, key=lambda i: sign * float(values[i].mean()))
    if not order:
        return None
    rivals = [i for i in order[1:] if key(methods[i]) != key(methods[order[0]])]
    if not rivals:
        return None
    first, second = order[0], rivals[0]
    mean, lo, hi = bootstrap_means(values[[first]] - values[[second]], metric, seed)
    entry: dict[str, Any] = {"leader": methods[first], "runner_up": methods[second]}
    entry.update(diff=float(mean[0]), lo=float(lo[0]), hi=float(hi[0]))
    entry["method"] = methods[first] if (lo[0] > 0 or hi[0] < 0) else None
    return entry


def paired_differences(
    rows: Iterable[Mapping[str, Any]], reference: str, seed: int = 0
) -> list[dict[str, Any]]:
    """Each method's mean difference from ``reference``, paired, on the main comparison.

    The rows of :func:`summarize` for the main comparison (``"all"``) of every metric
    the reference has, in the shape ``metric``, ``method``, ``reference``, ``n``,
    ``diff``, ``lo``, ``hi``.

    Example:
        >>> rows = [
        ...     {"method": m, "example": f"e{i}", "metric": "acc", "value": i + shift}
        ...     for m, shift in (("ref", 0.0), ("a", 0.5))
        ...     for i in range(4)
        ... ]
        >>> [(d["method"], d["diff"], d["lo"], d["hi"]) for d in paired_differences(rows, "ref")]
        [('a', 0.5, 0.5, 0.5)]
    """
    return [
        {
            "metric": s["metric"],
            "method": s["method"],
            "reference": reference,
            "n": s["n"],
            "diff": s["diff"],
            "lo": s["diff_lo"],
            "hi": s["diff_hi"],
        }
        for s in summarize(rows, {}, seed, reference=reference)
        if s["comparison"] == "all" and s["reference"] == reference and s["method"] != reference
    ]


def paired_difference(
    rows: Iterable[Mapping[str, Any]], metric: str, a: str, b: str, seed: int = 0
) -> dict[str, Any]:
    """The mean of ``a − b`` on ``metric`` with its paired 95 % interval.

    On the examples :func:`summarize` averages the metric's main comparison over, with
    the same resamples (same ``metric`` key, ``seed`` and ``n``), so the interval agrees
    with the intervals of the summary.

    Returns:
        ``{"a", "b", "n", "diff", "lo", "hi"}``.

    Example:
        >>> rows = [
        ...     {"method": m, "example": f"e{i}", "metric": "acc", "value": i + shift}
        ...     for m, shift in (("a", 0.5), ("b", 0.0))
        ...     for i in range(4)
        ... ]
        >>> d = paired_difference(rows, "acc", "a", "b")
        >>> (d["n"], d["diff"], d["lo"], d["hi"])
        (4, 0.5, 0.5, 0.5)
    """
    by_method = _table(r for r in rows if r["metric"] == metric).get(metric, {})
    if a not in by_method or b not in by_method:
        raise ValueError(f"{metric!r} has no values for {a!r} and {b!r} to compare")
    _, methods = comparisons(by_method)[0]
    examples, values = _values(by_method, methods)
    diff = values[[methods.index(a)]] - values[[methods.index(b)]]
    mean, lo, hi = bootstrap_means(diff, metric, seed)
    entry: dict[str, Any] = {"a": a, "b": b, "n": len(examples)}
    entry.update(diff=float(mean[0]), lo=float(lo[0]), hi=float(hi[0]))
    return entry


def paired_best(
    rows: Iterable[Mapping[str, Any]],
    better: Mapping[str, str],
    exclude: Iterable[str] = (),
    seed: int = 0,
    group: Callable[[str], str] | None = None,
) -> dict[str, dict[str, Any]]:
    """The best method of each metric's main comparison, with its runner-up.

    Per metric in ``better``: :func:`leader_and_runner_up` on the main comparison of
    :func:`summarize` (``exclude`` never best, ``group`` as there), plus ``n``.

    Returns:
        ``{metric: {"method", "leader", "runner_up", "n", "diff", "lo", "hi"}}``.
    """
    out: dict[str, dict[str, Any]] = {}
    for metric, by_method in _table(rows).items():
        if better.get(metric) not in BETTER:
            continue
        _, methods = comparisons(by_method)[0]
        examples, values = _values(by_method, methods)
        entry: dict[str, Any] = {"method": None, "leader": None, "runner_up": None}
        entry.update(n=len(examples), diff=math.nan, lo=math.nan, hi=math.nan)
        got = leader_and_runner_up(values, methods, better[metric], exclude, group, metric, seed)
        entry.update(got or {})
        out[metric] = entry
    return out


def random_rho_bound(lengths: Iterable[int], level: float = LEVEL) -> float:
    r"""Upper bound of the mean Spearman ρ of unrelated rankings over examples.

    Two independent random rankings of ``n`` tokens have a Spearman ρ with mean 0 and
    variance :math:`1/(n-1)` (exact, without ties). The mean over independent examples
    of lengths :math:`n_1 … n_m` therefore has variance
    :math:`\sum_i 1/(n_i - 1) / m^2`, and by the central limit theorem its one-sided
    ``level`` quantile is :math:`z_{\text{level}}\sqrt{\sum_i 1/(n_i-1)}/m`. An
    explanation of a fully randomised model whose mean ρ with the original stays above
    this bound is more alike than unrelated rankings of the same examples are: the
    sanity check fails.

    Args:
        lengths: number of ranked tokens per example (each ≥ 2).
        level: one-sided level.

    Example:
        >>> round(random_rho_bound([11] * 10), 4)  # z_0.95 * sqrt(10 * 1/10) / 10
        0.1645
    """
    n = np.asarray(list(lengths), dtype=float)
    if n.size == 0 or (n < 2).any():
        raise ValueError("every example needs at least 2 ranked tokens")
    return float(sps.norm.ppf(level) * math.sqrt(float((1.0 / (n - 1)).sum())) / n.size)
