"""The study's metric vocabulary: one definition of each metric's name, direction and
meaning, of the headline metrics per task and of the default reference method.

:mod:`comparisons.study.run` writes these into a run's ``meta.json``; the report
(:mod:`comparisons.study.report`) falls back on them for a ``meta.json`` without
``headline`` or ``reference``.

Example:
    >>> BETTER[ABSTAINED], HEADLINE["state"]
    ('lower', ('state_shift/mask', 'tau_loo/mask'))
"""

from __future__ import annotations

SECONDS, ABSTAINED = "seconds", "abstained"
"""The metrics of every ranking in every study: its cost and whether it ranks nothing."""

BETTER = {
    "aopc_comprehensiveness": "higher",
    "aopc_sufficiency": "lower",
    "tau_loo": "higher",
    "deletion_area": "lower",
    "insertion_area": "higher",
    "state_shift": "higher",
    "infidelity": "lower",
    "sensitivity_max": "lower",
    SECONDS: "lower",
    ABSTAINED: "lower",
}
"""Metric family (the name up to the first ``/``) → ``"higher"`` or ``"lower"`` is better."""

HEADLINE = {
    "classifier": (
        "aopc_comprehensiveness/eraser/mask",
        "aopc_sufficiency/eraser/mask",
        "tau_loo/mask",
    ),
    "state": ("state_shift/mask", "tau_loo/mask"),
    "llm": ("drop_top_k", "drop_keep_bottom_k"),
}
"""The metrics the report's top figure and verdict are about, per task (``meta["task"]``)."""

REFERENCE = "integrated-gradients"
"""The method the paired differences are taken from, unless a run names another."""

DESCRIPTIONS = {
    "aopc_comprehensiveness": "p(x)_ŷ − p(x without r_k)_ŷ averaged over the bins (ERASER "
    "1/5/10/20/50 %, or ferret 10…100 % with positive scores only); tokens masked or deleted",
    "aopc_sufficiency": "p(x)_ŷ − p(r_k)_ŷ averaged over the bins",
    "tau_loo": "Kendall τ-b between the scores and the leave-one-out drop of p_ŷ (or of the state)",
    "deletion_area": "area under p_ŷ while removing tokens in ranked order ([MASK])",
    "insertion_area": "area under p_ŷ while adding tokens back in ranked order ([MASK])",
    "state_shift": "how far the hidden state moves when the top-k tokens are removed "
    "(mean squared σ_S-normalised change, or 1 − cosine for a pooled vector)",
    "infidelity": "Captum infidelity(normalize=True), Gaussian noise on the embedding output",
    "sensitivity_max": "Captum sensitivity_max, uniform noise on the embedding output",
    SECONDS: "seconds per example to explain",
    ABSTAINED: "1 when the explanation ranks nothing (every token tied), else 0; its "
    "metrics are then those of a random ranking (the mean over random orders of the ties)",
}
"""Metric family → what it measures (``meta.json``'s ``description``)."""
