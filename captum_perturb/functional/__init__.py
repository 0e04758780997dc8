"""Functional core: plain, typed functions the classes, the harness and the docs call."""

from captum_perturb.functional.estimate import SigmaEstimate, StateFn, estimate_sigma, state_weights
from captum_perturb.functional.moments import embedding_sigma_max

__all__ = ["SigmaEstimate", "StateFn", "embedding_sigma_max", "estimate_sigma", "state_weights"]
