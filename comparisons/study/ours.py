"""Our method's entries of the registry: perturbation entropy in its variants.

Each factory here is registered by :mod:`comparisons.study.methods`:

* :func:`ours_default` — ``ours``: Φ = the classifier's logits (or the explained state);
* :func:`ours_signed` — ``ours-signed``: ``ours``' scores with :func:`noise_sign`'s sign;
* :func:`ours_reference` — ``ours-reference``: the authors' algorithm;
* :func:`ours_prob` — ``ours-prob``: Φ = the predicted class's probability;
* :func:`ours_hidden` — ``ours-hidden``: Φ = the last encoder layer's token states.

They share one estimator call (:func:`_ours`): the variant picks Φ and the layer it
reads, σ_S comes from the run's context, and the same call for the same inputs is
computed once (``ours-signed`` reads ``ours``' result).
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor, nn

from comparisons.models.text_model import TextModel
from comparisons.study.context import AttributeFn, ExampleInputs, MethodContext, NotApplicableError


def _explained(
    tm: TextModel, variant: str
) -> tuple[Callable[[Tensor, Tensor], Tensor], nn.Module | None]:
    """Φ of ``variant`` and the layer whose state it is (None: Φ's output itself)."""
    layer: nn.Module | None = None
    if not tm.is_classifier:
        if variant != "state":
            raise NotApplicableError(f"'{variant}' needs a classifier; this model explains a state")

        def phi(e: Tensor, m: Tensor) -> Tensor:
            return tm.forward_embeds(e, m)

    else:

        def phi(e: Tensor, m: Tensor) -> Tensor:
            return tm._run(e, m).logits

        if variant == "prob":

            def phi(e: Tensor, m: Tensor) -> Tensor:
                return tm._run(e, m).logits.softmax(-1)

        elif variant == "hidden":
            layer = tm.encoder_layers[-1]
    return phi, layer


def _reused(ctx: MethodContext, key: str, reference: bool, compute: AttributeFn) -> AttributeFn:
    """``compute``, whose result for the same call on the same inputs is reused."""

    def attribute(x: ExampleInputs) -> Tensor:
        # the same call for the same inputs is reused (ours-signed reads ours' scores)
        fingerprint = (float(x.embeds.double().sum()), float(x.embeds.double().abs().sum()))
        memo_key = (key, reference, x.example.id, x.seed, tuple(x.embeds.shape), fingerprint)
        return ctx.reuse(memo_key, lambda: compute(x))

    return attribute


def _ours(ctx: MethodContext, variant: str, reference: bool = False) -> AttributeFn:
    """The estimator on Φ of ``variant`` (``"logits"``, ``"prob"``, ``"hidden"`` or
    ``"state"``), with the authors' algorithm if ``reference``."""
    from captum_perturb import REFERENCE, PerturbationEntropyAttribution
    from captum_perturb.functional import embedding_sigma_max

    tm = ctx.model
    phi, layer = _explained(tm, variant)
    key = f"ours:{variant}"
    explainer = PerturbationEntropyAttribution(phi)
    config = REFERENCE if reference else None
    # σ_max as LayerPerturbationEntropyAttribution(forward, model.embeddings) sets it
    sigma_max = embedding_sigma_max(tm.word_embeddings)

    def compute(x: ExampleInputs) -> Tensor:
        target = x.target if variant == "prob" else None
        std = ctx.state_std(
            key + (f":{target}" if target is not None else ""),
            phi,
            target=target,
            state_layer=layer,
        )
        return explainer.attribute(
            x.embeds,
            target=target,
            additional_forward_args=(x.mask,),
            feature_mask="token",
            state_layer=layer,
            attention_mask=x.mask * ~x.example.special.unsqueeze(0),  # specials stay clean
            state_std=std,
            sigma_max=sigma_max,
            config=config,
            seed=x.seed,
        )

    return _reused(ctx, key, reference, compute)


def ours_default(ctx: MethodContext) -> AttributeFn:
    """``ours``: Φ = the classifier's logits, or the explained state."""
    return _ours(ctx, "logits" if ctx.model.is_classifier else "state")


SIGN_DRAWS = 8
"""Noise draws per word of the sign of :func:`noise_sign`."""


def noise_sign(x: ExampleInputs, sigma_max: float, draws: int = SIGN_DRAWS) -> Tensor:
    r"""The direction of each word's effect on the explained output, at σ_max.

    With :math:`f_t` the explained output (``x.forward``'s column ``x.target``: the
    predicted class's probability, as every method here explains it):

    .. math::

        d_i = f_t(x) - \mathbb{E}_{\varepsilon \sim N(0, \sigma_{max}^2 I)}
              \big[f_t(x_1, \dots, x_i + \varepsilon, \dots, x_n)\big],

    the expected loss of the target when word *i*'s information is drowned by the
    largest noise the method allows (σ_max, where the paper's information of the word is
    0), estimated from ``draws`` seeded draws per word in batched forward passes.
    :math:`d_i > 0`: the word is evidence for the class; :math:`d_i < 0`: against it.
    Returns ``sign(d)`` per token (0 at special tokens), ``(T,)``.
    """
    special = x.example.special
    words = torch.nonzero(~special).flatten()
    n, (_, length, dim) = len(words), x.embeds.shape
    gen = torch.Generator().manual_seed(x.seed)
    noise = torch.randn(n * draws, dim, generator=gen, dtype=x.embeds.dtype) * sigma_max
    batch = x.embeds.detach().expand(n * draws, length, dim).clone()
    batch[torch.arange(n * draws), words.repeat_interleave(draws)] += noise
    with torch.no_grad():
        clean = x.forward(x.embeds, x.mask)[0, x.target]
        noisy = torch.cat(
            [
                x.forward(chunk, x.mask.expand(len(chunk), -1))[:, x.target]
                for chunk in batch.split(64)
            ]
        )
    sign = torch.zeros(length, dtype=x.embeds.dtype)
    sign[words] = torch.sign(clean - noisy.view(n, draws).mean(1)).to(sign.dtype)
    return sign


def ours_signed(ctx: MethodContext) -> AttributeFn:
    """``ours-signed``: ``ours``' scores times :func:`noise_sign` at σ_max."""
    from captum_perturb.functional import embedding_sigma_max

    unsigned = _ours(ctx, "logits" if ctx.model.is_classifier else "state")
    sigma_max = embedding_sigma_max(ctx.model.word_embeddings)

    def attribute(x: ExampleInputs) -> Tensor:
        return unsigned(x) * noise_sign(x, sigma_max)[None, :, None]

    return attribute


def ours_reference(ctx: MethodContext) -> AttributeFn:
    """``ours-reference``: ``ours`` with the authors' algorithm."""
    return _ours(ctx, "logits" if ctx.model.is_classifier else "state", reference=True)


def ours_prob(ctx: MethodContext) -> AttributeFn:
    """``ours-prob``: Φ = the predicted class's probability."""
    return _ours(ctx, "prob")


def ours_hidden(ctx: MethodContext) -> AttributeFn:
    """``ours-hidden``: Φ = the last encoder layer's token states."""
    return _ours(ctx, "hidden")
