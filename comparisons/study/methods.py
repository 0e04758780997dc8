"""The registry of attribution methods the harness compares.

Every method explains the same function of the output of the embedding module for one
sentence (``model.bert.embeddings`` for BERT, see
:class:`~comparisons.models.text_model.TextModel`):
a classifier's probability of its predicted class, or — for a hidden state without
classes — the projection of the σ_S-normalised state onto the sentence's own state, 1 at
the input (:meth:`~comparisons.models.text_model.TextModel.scalar_forward`).
Ours explains the state itself (the logits of a classifier by default). Token scores are
the attributions summed over the embedding dimension.

Adding a method is one :func:`register` call::

    @register("my-method", signed=True, family="gradient", description="...")
    def _my_method(ctx: MethodContext) -> AttributeFn:
        return lambda x: ...  # x: ExampleInputs -> (1, T, D) attributions

``METHODS[name]`` holds the :class:`MethodSpec`; :func:`get_method` raises with the
valid names for an unknown one. This module names every method (its flags and its line
for reports); the code is elsewhere:

* :mod:`comparisons.study.context` — what a method gets and gives (:class:`MethodContext`,
  :class:`ExampleInputs`, :func:`token_scores`);
* :mod:`comparisons.study.ours` — our method's variants (and :func:`noise_sign`);
* :mod:`comparisons.study.baselines` — Captum's methods and the random floor.

Their names are importable from here too.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from comparisons.study import baselines, ours
from comparisons.study.baselines import seeded
from comparisons.study.context import (
    REUSED,
    AttributeFn,
    ExampleInputs,
    MethodContext,
    NotApplicableError,
    token_scores,
)
from comparisons.study.ours import SIGN_DRAWS, noise_sign

__all__ = [
    "DEFAULT_METHODS",
    "METHODS",
    "REUSED",
    "SIGN_DRAWS",
    "AttributeFn",
    "ExampleInputs",
    "MethodContext",
    "MethodSpec",
    "NotApplicableError",
    "get_method",
    "noise_sign",
    "register",
    "seeded",
    "token_scores",
]


@dataclass(frozen=True)
class MethodSpec:
    """A registered method.

    Attributes:
        name: the registry key.
        factory: ``factory(ctx) -> attribute(inputs) -> (1, T, D)``.
        signed: whether scores are signed evidence for/against the target (ranked by
            value; the harness also reports the ranking by magnitude) or a magnitude.
        family: ``"ours"``, ``"gradient"``, ``"perturbation"`` or ``"floor"``.
        stochastic: whether it draws random numbers (seeded per example).
        description: one line for reports.
        magnitudes_of: the method whose scores are this signed method's magnitudes by
            construction (``"ours"`` for ``"ours-signed"``): its ranking by magnitude
            would be a copy of that method's ranking, so the harness does not store it.
    """

    name: str
    factory: Callable[[MethodContext], AttributeFn]
    signed: bool
    family: str
    stochastic: bool
    description: str
    magnitudes_of: str | None = None


METHODS: dict[str, MethodSpec] = {}


def register(
    name: str,
    *,
    signed: bool,
    family: str,
    description: str,
    stochastic: bool = False,
    magnitudes_of: str | None = None,
) -> Callable[[Callable[[MethodContext], AttributeFn]], Callable[[MethodContext], AttributeFn]]:
    """Decorator adding a factory to :data:`METHODS` under ``name`` (the keywords are
    :class:`MethodSpec`'s attributes)."""

    def add(
        factory: Callable[[MethodContext], AttributeFn],
    ) -> Callable[[MethodContext], AttributeFn]:
        if name in METHODS:
            raise ValueError(f"method {name!r} is already registered")
        METHODS[name] = MethodSpec(
            name, factory, signed, family, stochastic, description, magnitudes_of
        )
        return factory

    return add


def get_method(name: str) -> MethodSpec:
    """The registered method ``name``; the error lists the valid names."""
    try:
        return METHODS[name]
    except KeyError:
        raise ValueError(
            f"unknown method {name!r}; valid names: {', '.join(sorted(METHODS))}"
        ) from None


# ---------------------------------------------------------------------- ours

register(
    "ours",
    signed=False,
    family="ours",
    stochastic=True,
    description="perturbation entropy, default estimator; Φ = the classifier's logits "
    "(or the explained hidden state), σ_S from the corpus",
)(ours.ours_default)

register(
    "ours-signed",
    signed=True,
    family="ours",
    stochastic=True,
    magnitudes_of="ours",
    description="ours' scores with the sign of the expected loss of the target when the "
    f"word is drowned in σ_max noise ({ours.SIGN_DRAWS} draws per word)",
)(ours.ours_signed)

register(
    "ours-reference",
    signed=False,
    family="ours",
    stochastic=True,
    description="perturbation entropy with the authors' algorithm (Adam, 5,000 single-sample "
    "steps); same Φ and σ_S as 'ours'",
)(ours.ours_reference)

register(
    "ours-prob",
    signed=False,
    family="ours",
    stochastic=True,
    description="perturbation entropy explaining the predicted class's probability",
)(ours.ours_prob)

register(
    "ours-hidden",
    signed=False,
    family="ours",
    stochastic=True,
    description="perturbation entropy explaining the last encoder layer's token states "
    "(the paper's target)",
)(ours.ours_hidden)


# ---------------------------------------------------------------------- gradients

register(
    "integrated-gradients",
    signed=True,
    family="gradient",
    description="IntegratedGradients on the embedding output (= LayerIntegratedGradients on "
    "model.bert.embeddings), pad-token baseline, 50 steps",
)(baselines.integrated_gradients)

register(
    "saliency",
    signed=False,
    family="gradient",
    description="Saliency: |∂f/∂embedding| summed over the embedding dimension",
)(baselines.saliency)

register(
    "input-x-gradient",
    signed=True,
    family="gradient",
    description="InputXGradient on the embedding output",
)(baselines.input_x_gradient)

register(
    "deeplift",
    signed=True,
    family="gradient",
    description="DeepLift (rescale rule) on the embedding output, pad-token baseline; "
    "GELU and the attention softmax are not DeepLift-rule modules in Hugging Face BERT, "
    "so they pass gradients",
)(baselines.deeplift)

register(
    "gradient-shap",
    signed=True,
    family="gradient",
    stochastic=True,
    description="GradientShap, baselines {pad tokens, zeros}, 20 samples, stdevs 0",
)(baselines.gradient_shap)


# ---------------------------------------------------------------------- perturbations

register(
    "leave-one-out",
    signed=True,
    family="perturbation",
    description="FeatureAblation over tokens: each token's embedding replaced by the pad "
    "token's, one at a time",
)(baselines.leave_one_out)

register(
    "kernel-shap",
    signed=True,
    family="perturbation",
    stochastic=True,
    description="KernelShap over tokens (pad-token baseline), 200 coalitions, exact weighted "
    "least squares",
)(baselines.kernel_shap)

register(
    "lime",
    signed=True,
    family="perturbation",
    stochastic=True,
    description="Lime over tokens (pad-token baseline, Captum's default cosine kernel), 200 "
    "samples, exact weighted ridge surrogate (alpha = 0.01)",
)(baselines.lime)


# ---------------------------------------------------------------------- the floor

register(
    "random",
    signed=False,
    family="floor",
    stochastic=True,
    description="a seeded random ranking (the floor every method must beat)",
)(baselines.random_floor)

DEFAULT_METHODS = (
    "ours",
    "ours-signed",
    "integrated-gradients",
    "saliency",
    "input-x-gradient",
    "deeplift",
    "gradient-shap",
    "leave-one-out",
    "kernel-shap",
    "lime",
    "random",
)
