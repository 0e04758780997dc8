r"""Model-agnostic faithfulness metrics for token attributions of text models.

Every metric here is a plain, typed function of one example (no global state, no
printing); the harness loops over examples and methods. The definitions follow
``shared/guides/evaluation.md``:

* ERASER / ferret AOPC comprehensiveness and sufficiency (:func:`aopc`),
* deletion and insertion curves with their area (:func:`deletion_curve`,
  :func:`insertion_curve`, :func:`curve_area`),
* agreement with leave-one-out (:func:`leave_one_out`, :func:`kendall_tau_b`),
* the shift of a hidden state when the top tokens are removed (:func:`state_shift`),
* Captum's ``infidelity`` and ``sensitivity_max`` with seeded perturbations
  (:func:`infidelity_score`, :func:`sensitivity_score`),
* Adebayo et al.'s cascading model randomisation (:class:`ModelRandomization`) and the
  rank correlation used to compare explanations (:func:`spearman`).

Ties. A ranking never breaks tied scores in reading order: :func:`tie_orders` gives one
order without ties and seeded random orders of the ties otherwise, and the metrics of
the harness average over them (the expectation over the orders of the ties). An
explanation that ties every token (:func:`abstains`) is therefore scored as a random
ranking, and its rank correlation is 0.

Conventions. A sequence is a 1-D ``LongTensor`` of word-piece ids *including* its
special tokens ([CLS], [SEP], ...); ``special`` is a bool tensor of the same length
that marks them. Special tokens never enter a rationale and are never removed; ``n``
below is the number of non-special tokens. How a token is removed is a strategy
object (:class:`MaskRemover`, :class:`DeleteRemover`), so that every metric can be
reported under both removal styles.

Layout. One module per family, all re-exported here (only the names in ``__all__``
are API): :mod:`.removal` (removal strategies, :func:`tie_orders`, :func:`abstains`),
:mod:`.aopc`, :mod:`.curves` (deletion / insertion curves, :func:`curve_area`,
:func:`leave_one_out`), :mod:`.correlation`, :mod:`.hidden`, :mod:`.captum_metrics` and
:mod:`.randomization`.
"""

from __future__ import annotations

from ._common import ProbFn, StateFn
from .aopc import BINS, AOPCResult, aopc, rationale_sizes
from .captum_metrics import infidelity_score, sensitivity_score
from .correlation import kendall_tau_b, spearman
from .curves import curve_area, deletion_curve, insertion_curve, leave_one_out
from .hidden import state_shift
from .randomization import ModelRandomization
from .removal import N_TIE_ORDERS, DeleteRemover, MaskRemover, Remover, abstains, tie_orders

__all__ = [
    "BINS",
    "N_TIE_ORDERS",
    "AOPCResult",
    "DeleteRemover",
    "MaskRemover",
    "ModelRandomization",
    "ProbFn",
    "Remover",
    "StateFn",
    "abstains",
    "aopc",
    "curve_area",
    "deletion_curve",
    "infidelity_score",
    "insertion_curve",
    "kendall_tau_b",
    "leave_one_out",
    "rationale_sizes",
    "sensitivity_score",
    "spearman",
    "state_shift",
    "tie_orders",
]
