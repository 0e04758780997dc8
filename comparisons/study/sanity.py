"""The model-randomisation sanity check (Adebayo et al. 2018) of a run, summarised.

``sanity.jsonl`` holds, per method, example and randomisation stage, the Spearman ρ
between the explanation of the trained model and that of the model randomised down to
the stage: ``spearman`` (ρ of the scores), ``spearman_abs`` (ρ of their magnitudes) and
``n_tokens`` (the ranked tokens of the example). Runs written before the last two keys
existed lack them: what needs them is then not available (NaN, or ``passed=None``).

Each stage is summarised on one example set — the examples every method has a finite
``spearman`` for at that stage — so the methods' means are comparable, and the last
stage (the highest ``stage_index``: the fully randomised model) gives the verdict: a
method passes when both its mean signed ρ and its mean ``|score|`` ρ are at most
:func:`comparisons.stats.random_rho_bound` of those examples, the one-sided 95 % bound of
the mean ρ of unrelated random rankings of them.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np

from comparisons.stats import bootstrap_means, random_rho_bound


@dataclass(frozen=True)
class Stage:
    """One randomisation stage on its example set.

    Attributes:
        index: ``stage_index`` (0 the first stage randomised).
        name: the stage's name, e.g. ``"layer 2"``.
        methods: the methods with a finite ρ on at least one example, in order read.
        examples: the examples every one of ``methods`` has a finite ρ for.
        rho: ``(methods, examples)`` signed ρ.
        rho_abs: ``(methods, examples)`` ρ of the magnitudes; None when a row lacks it.
        n_tokens: ranked tokens per example; None when a row lacks it.
    """

    index: int
    name: str
    methods: list[str]
    examples: list[str]
    rho: np.ndarray
    rho_abs: np.ndarray | None
    n_tokens: list[int] | None


def _finite(x: Any) -> bool:
    return x is not None and math.isfinite(float(x))


def _stage(index: int, name: str, by_method: Mapping[str, Mapping[str, Any]]) -> Stage:
    """One stage from its rows, method → example → row."""
    finite = {
        m: {e for e, r in ex.items() if _finite(r["spearman"])} for m, ex in by_method.items()
    }
    methods = [m for m, found in finite.items() if found]
    examples = sorted(set.intersection(*(finite[m] for m in methods))) if methods else []
    cells = [[by_method[m][e] for e in examples] for m in methods]
    shape = (len(methods), len(examples))

    def table(key: str) -> np.ndarray:
        return np.array([[float(r[key]) for r in row] for row in cells], float).reshape(shape)

    flat = [r for row in cells for r in row]
    rho_abs = table("spearman_abs") if all(_finite(r.get("spearman_abs")) for r in flat) else None
    has_n = bool(cells) and all(r.get("n_tokens") is not None for r in cells[0])
    n_tokens = [int(r["n_tokens"]) for r in cells[0]] if has_n else None
    return Stage(index, name, methods, examples, table("spearman"), rho_abs, n_tokens)


def stages(rows: Iterable[Mapping[str, Any]]) -> list[Stage]:
    """The rows of ``sanity.jsonl`` as one :class:`Stage` per ``stage_index``, in order.

    The last row of a ``(method, example, stage_index)`` wins (a resumed run may have
    written one twice).
    """
    by_stage: dict[int, dict[str, dict[str, Mapping[str, Any]]]] = {}
    names: dict[int, str] = {}
    for r in rows:
        k = int(r["stage_index"])
        names.setdefault(k, str(r["stage"]))
        by_stage.setdefault(k, {}).setdefault(r["method"], {})[r["example"]] = r
    return [_stage(k, names[k], by_stage[k]) for k in sorted(by_stage)]


def sanity_summary(rows: Iterable[Mapping[str, Any]], seed: int = 0) -> list[dict[str, Any]]:
    """Per stage and method, the mean signed and ``|score|`` ρ with 95 % intervals.

    Every method of a stage is averaged over the stage's one example set
    (:func:`stages`); :func:`comparisons.stats.bootstrap_means` (key
    ``f"sanity/{stage}"``) resamples it once for all of them.

    Args:
        rows: the rows of ``sanity.jsonl``.
        seed: seed of the bootstrap.

    Returns:
        One dict per ``(stage, method)``, stages in order: ``stage``, ``stage_index``,
        ``method``, ``n``, ``rho``, ``rho_lo``, ``rho_hi``, ``rho_abs``,
        ``rho_abs_lo``, ``rho_abs_hi`` (NaN when not available).

    Example:
        >>> rows = [
        ...     {"method": m, "example": e, "stage": "top", "stage_index": 0, "spearman": v}
        ...     for m, v in (("a", 0.5), ("b", 0.1))
        ...     for e in ("e0", "e1")
        ... ]
        >>> [(s["method"], s["n"], s["rho"]) for s in sanity_summary(rows)]
        [('a', 2, 0.5), ('b', 2, 0.1)]
        >>> math.isnan(sanity_summary(rows)[0]["rho_abs"])  # an old run: no |score| ρ
        True
    """
    out = []
    for st in stages(rows):
        k = len(st.methods)
        table = st.rho if st.rho_abs is None else np.vstack([st.rho, st.rho_abs])
        mean, lo, hi = bootstrap_means(table, f"sanity/{st.name}", seed)
        nan = np.full(k, math.nan)
        abs_mean, abs_lo, abs_hi = (
            (mean[k:], lo[k:], hi[k:]) if st.rho_abs is not None else (nan, nan, nan)
        )
        for i, m in enumerate(st.methods):
            out.append(
                {
                    "stage": st.name,
                    "stage_index": st.index,
                    "method": m,
                    "n": len(st.examples),
                    "rho": float(mean[i]),
                    "rho_lo": float(lo[i]),
                    "rho_hi": float(hi[i]),
                    "rho_abs": float(abs_mean[i]),
                    "rho_abs_lo": float(abs_lo[i]),
                    "rho_abs_hi": float(abs_hi[i]),
                }
            )
    return out


def sanity_verdicts(rows: Iterable[Mapping[str, Any]]) -> dict[str, dict[str, Any]]:
    """Whether each method passes the check at the last (fully randomised) stage.

    A method passes when its mean signed ρ and its mean ``|score|`` ρ over the last
    stage's examples are both at most ``random_rho_bound(n_tokens of those examples)``.

    Returns:
        ``{method: {"passed", "rho", "rho_abs", "bound", "stage", "n"}}``, ``passed``
        None (and ``bound`` NaN where the token counts are missing) when the rows lack
        ``spearman_abs`` or ``n_tokens``; empty without rows (or without an example
        every method of the last stage has).

    Example:
        >>> rows = [
        ...     {"method": m, "example": f"e{i}", "stage": "all", "stage_index": 0,
        ...      "spearman": v, "spearman_abs": v, "n_tokens": 11}
        ...     for m, v in (("a", 0.9), ("b", 0.0))
        ...     for i in range(10)
        ... ]  # fmt: skip
        >>> {m: (v["passed"], round(v["bound"], 4)) for m, v in sanity_verdicts(rows).items()}
        {'a': (False, 0.1645), 'b': (True, 0.1645)}
    """
    found = stages(rows)
    if not found or not found[-1].examples:
        return {}
    last = found[-1]
    lengths = last.n_tokens
    bound = random_rho_bound(lengths) if lengths and min(lengths) >= 2 else math.nan
    out = {}
    for i, m in enumerate(last.methods):
        rho = float(last.rho[i].mean())
        rho_abs = float(last.rho_abs[i].mean()) if last.rho_abs is not None else math.nan
        known = math.isfinite(rho_abs) and math.isfinite(bound)
        out[m] = {
            "passed": bool(rho <= bound and rho_abs <= bound) if known else None,
            "rho": rho,
            "rho_abs": rho_abs,
            "bound": bound,
            "stage": last.name,
            "n": len(last.examples),
        }
    return out
