"""Information-based perturbation attribution (Guan et al., ICML 2019) for Captum.

The supported API is what this module exports. The package is in capability folders
(``docs/architecture.rst``): :mod:`~captum_perturb.functional` (the estimator),
:mod:`~captum_perturb.attr` (the Captum classes), :mod:`~captum_perturb.layers`,
:mod:`~captum_perturb.llm` and :mod:`~captum_perturb.corpus`, over private helpers in
``_utils``.
"""

from captum_perturb.attr import (
    LayerPerturbationEntropyAttribution,
    PerturbationEntropyAttribution,
    PerturbationEntropyResult,
    estimate_state_std,
    token_feature_mask,
)
from captum_perturb.config import (
    DEFAULT,
    HIGH_PRECISION,
    LAYERWISE,
    REFERENCE,
    AdamConfig,
    FixedPointConfig,
)
from captum_perturb.corpus import explain_corpus, read_layer_information
from captum_perturb.hf import Explanation, explain
from captum_perturb.layers import LayerInformation, explain_layers, layer_state_std
from captum_perturb.llm import (
    LLMLayerAttribution,
    LLMPerturbationEntropyAttribution,
    LLMPerturbationEntropyResult,
    next_token_state_std,
)
from captum_perturb.options import EstimatorOptions, EstimatorSettings
from captum_perturb.reference import Interpreter, calculate_regularization

__version__ = "0.1.0"

__all__ = [
    "DEFAULT",
    "HIGH_PRECISION",
    "LAYERWISE",
    "REFERENCE",
    "AdamConfig",
    "EstimatorOptions",
    "EstimatorSettings",
    "Explanation",
    "FixedPointConfig",
    "Interpreter",
    "LLMLayerAttribution",
    "LLMPerturbationEntropyAttribution",
    "LLMPerturbationEntropyResult",
    "LayerInformation",
    "LayerPerturbationEntropyAttribution",
    "PerturbationEntropyAttribution",
    "PerturbationEntropyResult",
    "calculate_regularization",
    "estimate_state_std",
    "explain",
    "explain_corpus",
    "explain_layers",
    "layer_state_std",
    "next_token_state_std",
    "read_layer_information",
    "token_feature_mask",
]
