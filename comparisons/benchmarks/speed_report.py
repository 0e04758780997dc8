"""The report of the speed benchmark (:mod:`.speed`): the Markdown table of its results
(:func:`table`) and the lines under it (:func:`notes`)."""

from __future__ import annotations

import math
from typing import Any


def _accuracy_cell(r: dict[str, Any]) -> str:
    t, b = r["tutorial"], r["batch"]
    if "default_vs_hp" not in t:
        return "—"
    cell = (
        f"{t['default_vs_hp']['mean_abs_dlogsigma']:.4f} "
        f"(seeds {t['hp_seed_agreement']['mean_abs_dlogsigma']:.4f})"
    )
    if "default_vs_hp_on_subset" in b:
        cell += f"; batch {b['default_vs_hp_on_subset']['mean_abs_dlogsigma']:.4f}"
    return cell


def table(results: dict[str, dict[str, Any]]) -> str:
    """Markdown tables of :func:`.speed.run_workload`'s results (seconds per sentence, MB)."""
    n = next(iter(results.values()))["batch"]["sentences"] if results else 0
    size = next(iter(results.values()))["batch"].get("internal_batch", {}).get("size", "—")
    lines = [
        f"| workload | tutorial: ours s | LIG s | ratio | batch {n}: ours s/sent. | LIG s/sent. "
        f"| ratio | converged | evals/sent. | peak MB ours / LIG / ours with "
        f"internal_batch_size={size} | mean abs Δ log σ vs HP |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for name, r in results.items():
        t, b = r["tutorial"], r["batch"]
        ib = b.get("internal_batch", {})
        lines.append(
            f"| {name} | {t['ours_seconds_per_sentence']:.3f} | "
            f"{t['lig_seconds_per_sentence']:.3f} | {t['ratio']:.2f} "
            f"| {b['ours_seconds_per_sentence']:.3f} | {b['lig_seconds_per_sentence']:.3f} "
            f"| {b['ratio']:.2f} | {b['converged']:.0%} | {b['evaluations_per_sentence']:.0f} "
            f"| {b['peak_mb_ours']:.0f} / {b['peak_mb_lig']:.0f} "
            f"/ {ib.get('peak_mb', math.nan):.0f} "
            f"| {_accuracy_cell(r)} |"
        )
    return "\n".join(lines)


def notes(results: dict[str, dict[str, Any]]) -> str:
    """The lines under the table: the bounded calls and the reference algorithm."""
    lines = []
    for name, r in results.items():
        ib = r["batch"].get("internal_batch")
        if ib:
            same = "σ bit-equal" if ib["sigma_bit_equal"] else "σ differ"
            if ib.get("batch_dependent"):
                same += " (the model's round-off depends on the batch's shape here)"
            lines.append(
                f"{name}: internal_batch_size={ib['size']}: peak {ib['peak_mb']:.0f} MB, "
                f"{same} (max |Δ log σ| {ib['max_abs_dlogsigma']:.2e})"
            )
        ref = r["tutorial"].get("reference")
        if ref:
            lines.append(
                f"{name}: reference algorithm on the tutorial {ref['seconds']:.2f} s "
                f"(the default is {ref['default_speedup']:.0f}x faster), mean |Δ log σ| "
                f"{ref['mean_abs_dlogsigma']:.4f} vs HP"
            )
    return "\n".join(lines)
