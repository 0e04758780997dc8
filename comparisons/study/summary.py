"""A run's summary as the report reads it: what ``meta.json`` says, and the statistics.

The verdict (:mod:`comparisons.study.verdict`), the figures
(:mod:`comparisons.study.figures`) and the tables (:mod:`comparisons.study.tables`) read
the rows of :func:`study_summary` — one per method × metric × comparison, from
:func:`comparisons.stats.summarize` — through the helpers here: the direction of each
metric (:func:`better_of`), the floor (:func:`floors_of`), the reference
(:func:`reference_of`), the headline metrics (:func:`headline_of`) and how a ranking is
made (:func:`ranking_kind`). A method ``"<name>|abs"`` is the ranking of ``<name>``'s
explanation by magnitude.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from comparisons.html import fmt
from comparisons.stats import summarize
from comparisons.study.vocabulary import (
    ABSTAINED,
    BETTER,
    DESCRIPTIONS,
    HEADLINE,
    REFERENCE,
    SECONDS,
)

DEFAULT_BETTER = {SECONDS: "lower", ABSTAINED: "lower"}
"""The directions of the metrics every run has, whatever its ``meta.json`` says."""


def base_method(method: str) -> str:
    """The method whose explanation a ranking ranks (``"ig|abs"`` → ``"ig"``)."""
    return method.removesuffix("|abs")


def is_abs(method: str) -> bool:
    """Whether ``method`` is a ranking by magnitude (``"<name>|abs"``)."""
    return method.endswith("|abs")


def ordered(first: Iterable[str], seen: Iterable[str]) -> list[str]:
    """``first`` then the names of ``seen`` not in it, each once, in order.

    Example:
        >>> ordered(["b", "a"], ["c", "a", "c"])
        ['b', 'a', 'c']
    """
    return list(dict.fromkeys([*first, *seen]))


def with_known_metrics(
    meta: Mapping[str, Any], rows: Iterable[Mapping[str, Any]]
) -> dict[str, Any]:
    """``meta`` with every metric of ``rows`` that it does not describe yet described
    from the study's vocabulary (by the name before the first ``/``): a run still going
    has written its metrics' directions only at its start, before any result."""
    known = dict(meta.get("metrics", {}))
    for name in {r["metric"] for r in rows} - set(known):
        base = name.split("/")[0]
        if base in BETTER:
            known[name] = {"better": BETTER[base], "description": DESCRIPTIONS[base]}
    return {**meta, "metrics": known}


def better_of(meta: Mapping[str, Any]) -> dict[str, str]:
    """Metric → ``"higher"``/``"lower"`` from ``meta.json`` (seconds and abstained lower)."""
    info = meta.get("metrics", {})
    return DEFAULT_BETTER | {m: v["better"] for m, v in info.items() if "better" in v}


def floors_of(meta: Mapping[str, Any]) -> set[str]:
    """The methods of family ``"floor"`` (never best)."""
    return {m for m, v in meta.get("methods", {}).items() if v.get("family") == "floor"}


def reference_of(
    meta: Mapping[str, Any], rows: Iterable[Mapping[str, Any]], override: str | None = None
) -> str:
    """``override``, else ``meta["reference"]``, else :data:`~.vocabulary.REFERENCE` — the
    first of them with result ``rows`` — else the first method with rows (``meta.json``
    order)."""
    scored = {r["method"] for r in rows}
    for name in (override, meta.get("reference"), REFERENCE):
        if name in scored:
            return str(name)
    first = [m for m in ordered(meta.get("methods", {}), sorted(scored)) if m in scored]
    return first[0] if first else REFERENCE


def headline_of(meta: Mapping[str, Any], available: Iterable[str]) -> list[str]:
    """``meta["headline"]`` (else :data:`~.vocabulary.HEADLINE` of the task) restricted to
    the metrics present; without any, the first three metrics with a direction.

    Example:
        >>> headline_of({"task": "state"}, ["tau_loo/mask", "seconds"])
        ['tau_loo/mask']
    """
    present = set(available)
    wanted = meta.get("headline") or HEADLINE.get(meta.get("task", ""), ())
    chosen = [m for m in wanted if m in present]
    if chosen:
        return chosen
    better = better_of(meta)
    return [m for m in sorted(present) if m in better and m not in DEFAULT_BETTER][:3]


def copied_rankings(meta: Mapping[str, Any]) -> set[str]:
    """The ``"<name>|abs"`` rankings that copy another method's ranking: ``<name>``'s
    magnitudes are that method's scores (``magnitudes_of`` in ``meta.json``). Runs
    written before the harness stopped storing them still have their rows.

    Example:
        >>> copied_rankings({"methods": {"s": {"magnitudes_of": "u"}, "ig": {}}})
        {'s|abs'}
    """
    methods = meta.get("methods", {})
    return {f"{m}|abs" for m, info in methods.items() if info.get("magnitudes_of")}


def study_summary(
    rows: Sequence[Mapping[str, Any]], meta: Mapping[str, Any], reference: str, seed: int = 0
) -> list[dict[str, Any]]:
    """:func:`comparisons.stats.summarize` of the rows as the report uses it: the floor
    never best, a method's two rankings one group, differences from ``reference``, and
    no :func:`copied_rankings` (a copy would be its original's rival)."""
    copies = copied_rankings(meta)
    return summarize(
        [r for r in rows if r["method"] not in copies],
        better_of(meta),
        seed,
        reference=reference,
        exclude=floors_of(meta),
        group=base_method,
    )


def ranking_kind(method: str, meta: Mapping[str, Any]) -> str:
    """``"magnitude"`` for an unsigned method or a ``|abs`` ranking, else ``"signed"``.

    Example:
        >>> meta = {"methods": {"ours": {"signed": False}, "ig": {"signed": True}}}
        >>> [ranking_kind(m, meta) for m in ("ours", "ig", "ig|abs")]
        ['magnitude', 'signed', 'magnitude']
    """
    info = meta.get("methods", {}).get(method)
    signed = info.get("signed", True) if info else not is_abs(method)
    return "signed" if signed else "magnitude"


def main_rows(summary: Iterable[Mapping[str, Any]], metric: str) -> list[Mapping[str, Any]]:
    """The summary rows of ``metric`` over all examples (comparison ``"all"``) with a
    finite mean."""
    rows = [s for s in summary if s["metric"] == metric and s["comparison"] == "all"]
    return [s for s in rows if math.isfinite(s["mean"])]


def comparison_words(s: Mapping[str, Any], better: str) -> str:
    """``"better"``, ``"worse"`` or ``"indistinguishable"``: how the summary row ``s``
    compares with the reference (by the paired 95 % interval of the difference).

    Example:
        >>> comparison_words({"diff_lo": 0.1, "diff_hi": 0.3}, "lower")
        'worse'
    """
    lo, hi = s["diff_lo"], s["diff_hi"]
    if not (lo > 0 or hi < 0):
        return "indistinguishable"
    return "better" if (lo > 0) == (better == "higher") else "worse"


def difference_text(s: Mapping[str, Any]) -> str:
    """The paired difference of the summary row ``s`` from the reference, signed, with
    its 95 % interval.

    Example:
        >>> difference_text({"diff": 0.25, "diff_lo": 0.5, "diff_hi": 1.0})
        '+0.25 [0.5, 1]'
    """
    sign = "+" if s["diff"] > 0 else ""
    return f"{sign}{fmt(s['diff'])} [{fmt(s['diff_lo'])}, {fmt(s['diff_hi'])}]"
