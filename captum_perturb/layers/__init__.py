"""The paper's layer-by-layer analysis: how much of each word every layer keeps.

:func:`explain_layers` explains every layer of a transformer in one staircase of
batches, on one scale (σ_S of each layer over a corpus: :func:`layer_state_std`, or the
σ_S shipped for known models in :mod:`captum_perturb.layers.packaged_std`).
"""

from captum_perturb.layers.explain import explain_layers
from captum_perturb.layers.information import LayerInformation
from captum_perturb.layers.state_std import layer_state_std

__all__ = ["LayerInformation", "explain_layers", "layer_state_std"]
