"""The Captum classes: noise on a model's inputs or on a layer, their result, and σ_S.

:class:`PerturbationEntropyAttribution` and :class:`LayerPerturbationEntropyAttribution`
are thin Captum classes over :func:`captum_perturb.functional.estimate_sigma`; the
arguments both take are checked and turned into one estimator call in
:mod:`captum_perturb.attr.plumbing`.
"""

from captum_perturb.attr.features import token_feature_mask
from captum_perturb.attr.layer_perturbation_entropy import LayerPerturbationEntropyAttribution
from captum_perturb.attr.perturbation_entropy import PerturbationEntropyAttribution
from captum_perturb.attr.result import PerturbationEntropyResult
from captum_perturb.attr.state_std import estimate_state_std

__all__ = [
    "LayerPerturbationEntropyAttribution",
    "PerturbationEntropyAttribution",
    "PerturbationEntropyResult",
    "estimate_state_std",
    "token_feature_mask",
]
