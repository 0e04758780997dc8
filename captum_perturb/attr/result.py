"""What an explanation returns besides the attributions."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from captum_perturb.functional.diagnostics import score_std_error_of
from captum_perturb.functional.estimate import SigmaEstimate


@dataclass(frozen=True)
class PerturbationEntropyResult:
    r"""The full result of :meth:`PerturbationEntropyAttribution.explain`.

    Attributes:
        attributions: per element the score of its group in nats per dimension (``>= 0``;
            0 for elements never perturbed), shaped like the inputs (or the layer) and
            structured like them (tensor or tuple). ``score="channel"`` (default):
            :math:`\tfrac12\log(1 + \sigma_{max}^2/\sigma_g^{*2})`
            (:attr:`~captum_perturb.functional.SigmaEstimate.score`), which ranks groups at
            the bound too; ``score="paper"``: :math:`\log(\sigma_{max}/\sigma_g)`, 0 at
            the bound.
        sigma: per element σ of its group, NaN where nothing is perturbed; same structure.
        estimate: the group-level :class:`~captum_perturb.functional.SigmaEstimate`
            (σ, entropy :math:`H_g`, sizes, standard errors, loss, convergence).
        group_ids: ``(B, G)`` the ``feature_mask`` id of each group column of ``estimate``
            (``-1`` where an example has fewer groups).
        sigma_max_source: how σ_max was chosen (``"given"``, ``"word embeddings"`` or
            ``"inputs"``).
        normaliser: ``"state_std"`` or ``"mean square fallback"``.
        score: ``"channel"`` or ``"paper"``, the score in ``attributions``.
    """

    attributions: Tensor | tuple[Tensor, ...]
    sigma: Tensor | tuple[Tensor, ...]
    estimate: SigmaEstimate
    group_ids: Tensor
    sigma_max_source: str
    normaliser: str
    score: str = "channel"

    @property
    def group_sigma(self) -> Tensor:
        """``(B, G)`` σ of each group."""
        return self.estimate.sigma

    @property
    def entropy(self) -> Tensor:
        """``(B, G)`` entropy of each group's noise in nats (paper Eq. 7)."""
        return self.estimate.entropy

    @property
    def information(self) -> Tensor:
        r"""``(B, G)`` nats of each group the state keeps, :math:`H_{max} - H_g`."""
        return self.estimate.information

    @property
    def converged(self) -> Tensor:
        """``(B,)`` whether the estimator's stopping rule was met."""
        return self.estimate.converged

    @property
    def std_error(self) -> Tensor:
        """``(B, G)`` standard error of each group's score (nats per dimension)."""
        return score_std_error_of(self.estimate, self.score)

    @property
    def saturated(self) -> Tensor:
        """``(B, G)`` groups whose σ sits at the bound σ_max."""
        return self.estimate.saturated

    @property
    def diagnostics(self) -> dict[str, Tensor]:
        """Per example ``(B,)``: ``converged``, ``saturated_fraction`` (groups at σ_max),
        ``max_std_error`` (the largest standard error of a group's score; NaN where the
        estimator reports none, as Adam),
        ``no_effect`` (groups that do not move the state), ``evaluations`` and
        ``batch_dependent`` (the model's round-off changed with the batch's shape, so the
        result can change with ``internal_batch_size``)."""
        est = self.estimate
        se = self.std_error
        known = torch.where(se.isnan(), torch.full_like(se, -float("inf")), se).amax(1)
        return {
            "converged": est.converged,
            "saturated_fraction": est.saturated_fraction,
            "max_std_error": known.masked_fill(known == -float("inf"), float("nan")),
            "no_effect": est.no_effect.sum(1),
            "evaluations": est.evaluations,
            "batch_dependent": est.batch_dependent,
        }
