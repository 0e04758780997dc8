"""What an explanation returns besides the attributions."""

from __future__ import annotations

from dataclasses import dataclass

from torch import Tensor

from captum_perturb.functional.estimate import SigmaEstimate


@dataclass(frozen=True)
class PerturbationEntropyResult:
    r"""The full result of :meth:`PerturbationEntropyAttribution.explain`.

    Attributes:
        attributions: per element :math:`\log(\sigma_{max}/\sigma_g)` of its group (nats per
            dimension, ``>= 0``; 0 for elements never perturbed), shaped like the inputs (or
            the layer) and structured like them (tensor or tuple).
        sigma: per element σ of its group, NaN where nothing is perturbed; same structure.
        estimate: the group-level :class:`~captum_perturb.functional.SigmaEstimate`
            (σ, entropy :math:`H_g`, sizes, standard errors, loss, convergence).
        group_ids: ``(B, G)`` the ``feature_mask`` id of each group column of ``estimate``
            (``-1`` where an example has fewer groups).
        sigma_max_source: how σ_max was chosen (``"given"``, ``"word embeddings"`` or
            ``"inputs"``).
        normaliser: ``"state_std"`` or ``"mean square fallback"``.
    """

    attributions: Tensor | tuple[Tensor, ...]
    sigma: Tensor | tuple[Tensor, ...]
    estimate: SigmaEstimate
    group_ids: Tensor
    sigma_max_source: str
    normaliser: str

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
