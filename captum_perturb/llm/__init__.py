"""Language models through Captum's LLM API: which prompt tokens the answer keeps."""

from captum_perturb.llm.attribution import LLMPerturbationEntropyAttribution
from captum_perturb.llm.layer_attribution import LLMLayerAttribution
from captum_perturb.llm.result import LLMPerturbationEntropyResult
from captum_perturb.llm.state_std import next_token_state_std

__all__ = [
    "LLMLayerAttribution",
    "LLMPerturbationEntropyAttribution",
    "LLMPerturbationEntropyResult",
    "next_token_state_std",
]
