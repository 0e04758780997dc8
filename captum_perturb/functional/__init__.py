"""Functional core: plain, typed functions the classes, the harness and the docs call."""

from captum_perturb.functional.estimate import SigmaEstimate, StateFn, estimate_sigma, state_weights

__all__ = ["SigmaEstimate", "StateFn", "estimate_sigma", "state_weights"]
