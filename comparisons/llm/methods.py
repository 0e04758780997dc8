"""The LLM study's methods: how each one explains an example.

Owns the methods of :mod:`comparisons.llm.study` and how they run: our
:class:`~captum_perturb.LLMPerturbationEntropyAttribution` (:func:`ours`), Captum's
``LLMAttribution`` perturbation methods (:data:`CAPTUM_SETTINGS`), ``layer_ig`` (the
reference, :data:`REFERENCE`) and the seeded random floor, registered in
:data:`LLM_METHODS` as :class:`LLMMethod`; and the rankings stored for each method
(:func:`rankings`: a signed method also by magnitude).
"""

from __future__ import annotations

import warnings
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn

from comparisons.llm.prompts import CORPUS_SIZE, LLMExample

REFERENCE = "layer_ig"
IG_STEPS = 50
CAPTUM_SETTINGS = {"baseline_token_id": 0, "forward_in_tokens": False, "n_samples": 25}
"""How the three ``LLMAttribution`` methods run. Captum's defaults, but one: the
``TextTokenInput`` baseline id 0 (``<|endoftext|>`` for the SST-2 GPT-2), 25 permutations
(ShapleyValueSampling) or coalitions (KernelShap); the answer is scored in one teacher-forced
pass (``forward_in_tokens=False``), not by Captum 0.9's default token-by-token decoding with
the KV cache, which under transformers 5 feeds the whole sequence again with the cache and a
stale ``cache_position``: from the second answer token on its log-probs are not the model's
(and past the context it raises). ``forward_in_tokens=False`` gives the log-probs of
token-by-token decoding without the cache, and the ones the metrics and the other methods
use; the Captum change that exposed the flag (meta-pytorch/captum#1742) says its default
will become False."""

Explain = Callable[[LLMExample], tuple[Tensor, dict[str, Any]]]
"""One example -> ``(n,)`` seq_attr over its prompt tokens and extra facts to store."""


@dataclass
class LLMContext:
    """What the methods of one run share: the model, its tokenizer and σ_S."""

    model: nn.Module
    tokenizer: Any
    state_std: Tensor | None = None

    def text_input(self, ex: LLMExample) -> Any:
        """Captum's ``TextTokenInput`` of the prompt, BOS skipped, Captum's baseline."""
        from captum.attr import TextTokenInput

        return TextTokenInput(
            ex.prompt,
            self.tokenizer,
            baselines=CAPTUM_SETTINGS["baseline_token_id"],
            skip_tokens=[self.tokenizer.bos_token_id],
        )


@dataclass(frozen=True)
class LLMMethod:
    """A method of the LLM study (the fields of ``meta.json`` and how to build it)."""

    name: str
    signed: bool
    family: str
    stochastic: bool
    description: str
    build: Callable[[LLMContext], Explain]


def ours(ctx: LLMContext, per_token: bool = False) -> Explain:
    """Our method's explainer: ``seq_attr`` (and, with ``per_token``, ``token_attr`` in the
    same call, as the benchmark times it)."""
    from captum_perturb import LLMPerturbationEntropyAttribution

    llm_attr = LLMPerturbationEntropyAttribution(ctx.model, ctx.tokenizer, state_std=ctx.state_std)

    def explain(ex: LLMExample) -> tuple[Tensor, dict[str, Any]]:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # unconverged estimates are recorded instead
            res = llm_attr.attribute(
                ctx.text_input(ex), target=ex.target, per_token=per_token, seed=ex.seed
            )
        return res.seq_attr, {
            "converged": bool(res.converged.all()),
            "std_error": res.seq_std_error.tolist(),
            "evaluations": int(res.estimate.n_evaluations),
        }

    return explain


def _captum_perturbation(kind: str) -> Callable[[LLMContext], Explain]:
    def build(ctx: LLMContext) -> Explain:
        from captum.attr import FeatureAblation, KernelShap, LLMAttribution, ShapleyValueSampling

        from comparisons.models.surrogate import WeightedLeastSquares
        from comparisons.study.methods import seeded

        method: Any = {
            "feature_ablation": FeatureAblation,
            "shapley_sampling": ShapleyValueSampling,
            "kernel_shap": KernelShap,
        }[kind](ctx.model)
        kwargs = {} if kind == "feature_ablation" else {"n_samples": CAPTUM_SETTINGS["n_samples"]}
        if kind == "kernel_shap":  # Captum's default fit needs scikit-learn: the same fit
            method.interpretable_model = WeightedLeastSquares()
        llm_attr = LLMAttribution(method, ctx.tokenizer)

        def explain(ex: LLMExample) -> tuple[Tensor, dict[str, Any]]:
            with seeded(ex.seed):
                res = llm_attr.attribute(
                    ctx.text_input(ex),
                    target=ex.target,
                    forward_in_tokens=CAPTUM_SETTINGS["forward_in_tokens"],
                    **kwargs,
                )
            return res.seq_attr, {}

        return explain

    return build


def _layer_ig(ctx: LLMContext) -> Explain:
    from captum.attr import LayerIntegratedGradients, LLMGradientAttribution

    embeddings = ctx.model.get_input_embeddings()  # type: ignore[operator]
    llm_attr = LLMGradientAttribution(
        LayerIntegratedGradients(ctx.model, embeddings), ctx.tokenizer
    )

    def explain(ex: LLMExample) -> tuple[Tensor, dict[str, Any]]:
        res = llm_attr.attribute(ctx.text_input(ex), target=ex.target, n_steps=IG_STEPS)
        return res.seq_attr, {}

    return explain


def _random(ctx: LLMContext) -> Explain:
    def explain(ex: LLMExample) -> tuple[Tensor, dict[str, Any]]:
        return torch.rand(len(ex.features), generator=torch.Generator().manual_seed(ex.seed)), {}

    return explain


_CAPTUM = (
    "Captum LLMAttribution, baseline token id 0 (Captum's default), the answer scored in one "
    "teacher-forced pass (forward_in_tokens=False; see the notes)"
)
LLM_METHODS = {
    m.name: m
    for m in (
        LLMMethod(
            name="ours",
            signed=False,
            family="ours",
            stochastic=True,
            description="LLMPerturbationEntropyAttribution, seq_attr only (per_token=False), "
            f"nats; σ_S = next_token_state_std over {CORPUS_SIZE} first-half SST-2 train "
            "prompts; default estimator; seed per example",
            build=ours,
        ),
        LLMMethod(
            name="feature_ablation",
            signed=True,
            family="perturbation",
            stochastic=False,
            description=f"{_CAPTUM}; FeatureAblation (each token replaced by the baseline)",
            build=_captum_perturbation("feature_ablation"),
        ),
        LLMMethod(
            name="shapley_sampling",
            signed=True,
            family="perturbation",
            stochastic=True,
            description=f"{_CAPTUM}; ShapleyValueSampling, 25 permutations; seed per example",
            build=_captum_perturbation("shapley_sampling"),
        ),
        LLMMethod(
            name="kernel_shap",
            signed=True,
            family="perturbation",
            stochastic=True,
            description=f"{_CAPTUM}; KernelShap, 25 coalitions, Captum's weighted linear "
            "regression fitted exactly (comparisons.models.surrogate: scikit-learn is not "
            "installed); seed per example",
            build=_captum_perturbation("kernel_shap"),
        ),
        LLMMethod(
            name=REFERENCE,
            signed=True,
            family="gradient",
            stochastic=False,
            description="Captum LLMGradientAttribution(LayerIntegratedGradients on the input "
            f"embeddings), n_steps={IG_STEPS}, baseline: the embedding of token id 0; summed "
            "over the embedding and the answer tokens",
            build=_layer_ig,
        ),
        LLMMethod(
            name="random",
            signed=False,
            family="floor",
            stochastic=True,
            description="a seeded random ranking (the floor every method must beat)",
            build=_random,
        ),
    )
}
DEFAULT_LLM_METHODS = tuple(LLM_METHODS)


def rankings(name: str) -> list[tuple[str, bool]]:
    """``(label, signed)`` of the rankings stored for a method: its own, then ``|abs``."""
    signed = LLM_METHODS[name].signed
    return [(name, signed)] + ([(f"{name}|abs", False)] if signed else [])
