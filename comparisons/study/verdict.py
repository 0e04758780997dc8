"""The verdict paragraph of the report, written from the numbers alone.

:func:`verdict` is a pure function of the summary rows
(:func:`comparisons.study.summary.study_summary`), the results they summarise, the
sanity verdicts (:func:`comparisons.study.sanity.sanity_verdicts`) and ``meta.json``:
one sentence per headline metric (the best method, or that none is distinguishable from
the runner-up), where each ranking of family ``"ours"`` ranks among the rankings of its
kind (signed or by magnitude) with its paired difference from the best other one, the
abstentions, the sanity-check failures and the cost of ``"ours"`` relative to the
reference.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from comparisons.html import fmt, interval, percent
from comparisons.stats import paired_difference
from comparisons.study.summary import (
    base_method,
    better_of,
    comparison_words,
    difference_text,
    floors_of,
    is_abs,
    main_rows,
    ordered,
    ranking_kind,
)
from comparisons.study.vocabulary import ABSTAINED, SECONDS


def _by_rank(rows: Iterable[Mapping[str, Any]], better: str) -> list[Mapping[str, Any]]:
    return sorted(rows, key=lambda s: -s["mean"] if better == "higher" else s["mean"])


def _ordinal(k: int) -> str:
    """``1st``, ``2nd``, ``3rd``, ``4th``, …, ``11th``, …, ``21st``.

    Example:
        >>> [_ordinal(k) for k in (1, 2, 3, 4, 11, 12, 21)]
        ['1st', '2nd', '3rd', '4th', '11th', '12th', '21st']
    """
    suffix = "th" if 10 <= k % 100 <= 20 else {1: "st", 2: "nd", 3: "rd"}.get(k % 10, "th")
    return f"{k}{suffix}"


def _metric_sentence(
    summary: Sequence[Mapping[str, Any]], metric: str, meta: Mapping[str, Any]
) -> str:
    """The best method on ``metric``, or that none is distinguishable from the runner-up."""
    better = better_of(meta).get(metric, "?")
    rows = [s for s in main_rows(summary, metric) if s["method"] not in floors_of(meta)]
    if len({base_method(s["method"]) for s in rows}) < 2:
        return f"On {metric} fewer than two methods besides the floor are scored."
    best = [s for s in rows if s["best"]]
    if best:
        s = best[0]
        return (
            f"On {metric} ({better} is better) {s['method']} is best: "
            f"{interval(s['mean'], s['lo'], s['hi'])}, and the paired 95 % interval of "
            "its difference from the runner-up excludes 0."
        )
    leader = _by_rank(rows, better)[0]
    return (
        f"On {metric} no method is distinguishable from the runner-up (paired 95 % interval "
        f"of leader − runner-up spans 0; leader by mean: {leader['method']}, "
        f"{fmt(leader['mean'])})."
    )


def _rank_phrase(
    summary: Sequence[Mapping[str, Any]],
    rows: Sequence[Mapping[str, Any]],
    meta: Mapping[str, Any],
    method: str,
    metric: str,
    seed: int,
) -> str | None:
    """Where ``method`` ranks on ``metric`` among the rankings of its kind (signed or
    magnitude, the floor left out) and its paired difference from the best other one
    (the runner-up when it leads, else the leader); None when it is not scored there."""
    better = better_of(meta).get(metric, "higher")
    kind = ranking_kind(method, meta)
    main = [s for s in main_rows(summary, metric) if s["method"] not in floors_of(meta)]
    peers = [s for s in main if ranking_kind(s["method"], meta) == kind]
    ranked = [s["method"] for s in _by_rank(peers, better)]
    if method not in ranked:
        return None
    place = f"{_ordinal(ranked.index(method) + 1)} of {len(ranked)} on {metric}"
    rivals = [m for m in ranked if base_method(m) != base_method(method)]
    if not rivals:
        return place
    rival = rivals[0]
    d = paired_difference(rows, metric, method, rival, seed)
    s = {"diff": d["diff"], "diff_lo": d["lo"], "diff_hi": d["hi"]}
    role = "runner-up" if ranked.index(method) < ranked.index(rival) else "leader"
    words = comparison_words(s, better)
    return f"{place} ({difference_text(s)} vs the {role} {rival}: {words})"


def _ours_sentences(
    summary: Sequence[Mapping[str, Any]],
    rows: Sequence[Mapping[str, Any]],
    meta: Mapping[str, Any],
    headline: Sequence[str],
    reference: str,
    seed: int,
) -> list[str]:
    """Where each ranking of family ``"ours"`` ranks among its kind, per headline metric."""
    methods = meta.get("methods", {})
    labels = ordered(methods, (s["method"] for s in summary))
    ours = [m for m in labels if methods.get(base_method(m), {}).get("family") == "ours"]
    out = []
    for m in (m for m in ours if m != reference):
        phrases = [_rank_phrase(summary, rows, meta, m, metric, seed) for metric in headline]
        parts = [p for p in phrases if p is not None]
        if parts:
            kind = ranking_kind(m, meta)
            out.append(f"Among the {kind} rankings, {m} ranks " + "; ".join(parts) + ".")
    return out


def _abstention_sentence(summary: Sequence[Mapping[str, Any]]) -> list[str]:
    """The share of examples on which each ranking abstains (none without the metric)."""
    rows = main_rows(summary, ABSTAINED)
    if not rows:
        return []
    some = [f"{s['method']} {percent(s['mean'])}" for s in rows if s["mean"] > 0]
    if not some:
        return ["No ranking abstains (ranks nothing) on any example."]
    return ["Abstentions (the ranking ranks nothing, every token tied): " + ", ".join(some) + "."]


def _sanity_sentence(verdicts: Mapping[str, Mapping[str, Any]], floors: Iterable[str]) -> list[str]:
    """Who fails the sanity check; the floor, which ignores the weights by construction,
    is the check's negative control and is named as such."""
    floor = set(floors)
    checked = {m: v for m, v in verdicts.items() if m not in floor}
    if not checked:
        return []
    first = next(iter(checked.values()))
    failed = [m for m, v in checked.items() if v["passed"] is False]
    if all(v["passed"] is None for v in checked.values()):
        return ["The sanity check has no |score| ρ or token counts here (an older run)."]
    where = f"the fully randomised model ({first['stage']}, bound {fmt(first['bound'])})"
    control = [m for m, v in verdicts.items() if m in floor and v["passed"] is False]
    tail = f" ({', '.join(control)}, which ignores the model, fails as it must)" if control else ""
    if not failed:
        return [f"Every method passes the sanity check on {where}{tail}."]
    return [f"Sanity check failed on {where}: " + ", ".join(failed) + f"{tail}."]


def _cost_sentences(
    summary: Sequence[Mapping[str, Any]], meta: Mapping[str, Any], reference: str
) -> list[str]:
    """The seconds per example of each ``"ours"`` method as a multiple of the reference's."""
    seconds = {s["method"]: s["mean"] for s in main_rows(summary, SECONDS)}
    methods = meta.get("methods", {})
    ours = [m for m in seconds if methods.get(m, {}).get("family") == "ours" and not is_abs(m)]
    ref = seconds.get(reference, math.nan)
    if not (ref > 0):
        return []
    return [
        f"{m} takes {fmt(seconds[m] / ref)}× the seconds per example of {reference} "
        f"({fmt(seconds[m])} s vs {fmt(ref)} s)."
        for m in ours
        if m != reference
    ]


def verdict(
    summary: Sequence[Mapping[str, Any]],
    rows: Sequence[Mapping[str, Any]],
    sanity: Mapping[str, Mapping[str, Any]],
    meta: Mapping[str, Any],
    headline: Sequence[str],
    reference: str,
    seed: int = 0,
) -> list[str]:
    """The verdict paragraph, one sentence per item, from the numbers alone.

    Args:
        summary: rows of :func:`comparisons.study.summary.study_summary`.
        rows: the results it summarises (``method``, ``example``, ``metric``,
            ``value``), for the paired differences between rankings.
        sanity: :func:`comparisons.study.sanity.sanity_verdicts`.
        meta: the run's ``meta.json`` (families, signedness, directions).
        headline: the metrics the verdict is about.
        reference: the method the differences are from.
        seed: seed of the bootstrap (the summary's, so that the resamples are the same).

    Returns:
        Sentences: per headline metric the best method (or that none is distinguishable
        from the runner-up), where each ``"ours"`` ranking ranks among the rankings of
        its kind and its paired difference from the best other one, the abstentions,
        the sanity-check failures and the cost of each ``"ours"`` method relative to
        the reference.
    """
    return [
        *(_metric_sentence(summary, m, meta) for m in headline),
        *_ours_sentences(summary, rows, meta, headline, reference, seed),
        *_abstention_sentence(summary),
        *_sanity_sentence(sanity, floors_of(meta)),
        *_cost_sentences(summary, meta, reference),
    ]
