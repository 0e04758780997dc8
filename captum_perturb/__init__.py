"""Information-based perturbation attribution (Guan et al., ICML 2019) for Captum.

The supported API is what this module exports.
"""

from captum_perturb._features import token_feature_mask
from captum_perturb.config import (
    DEFAULT,
    HIGH_PRECISION,
    LAYERWISE,
    REFERENCE,
    AdamConfig,
    FixedPointConfig,
)
from captum_perturb.corpus import explain_corpus, read_layer_information
from captum_perturb.layer_information import LayerInformation
from captum_perturb.layer_perturbation_entropy import LayerPerturbationEntropyAttribution
from captum_perturb.layerwise import explain_layers, layer_state_std
from captum_perturb.llm_layer_attribution import LLMLayerAttribution
from captum_perturb.llm_perturbation_entropy import LLMPerturbationEntropyAttribution
from captum_perturb.llm_result import LLMPerturbationEntropyResult
from captum_perturb.normalizer import estimate_state_std, next_token_state_std
from captum_perturb.perturbation_entropy import PerturbationEntropyAttribution
from captum_perturb.reference import Interpreter, calculate_regularization
from captum_perturb.result import PerturbationEntropyResult

__version__ = "0.1.0"

__all__ = [
    "DEFAULT",
    "HIGH_PRECISION",
    "LAYERWISE",
    "REFERENCE",
    "AdamConfig",
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
    "explain_corpus",
    "explain_layers",
    "layer_state_std",
    "next_token_state_std",
    "read_layer_information",
    "token_feature_mask",
]
