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
valid names for an unknown one.
"""

from __future__ import annotations

import time
import zlib
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor, nn

from comparisons.models.text_model import Example, TextModel


class NotApplicableError(Exception):
    """The method cannot explain this model (e.g. a classifier-only variant on a state)."""


@dataclass
class ExampleInputs:
    """What a method needs to explain one example.

    Attributes:
        example: the tokenised sentence.
        embeds: ``(1, T, D)`` the embedding module's output (what is perturbed or
            differentiated).
        mask: ``(1, T)`` attention mask.
        baseline: ``(1, T, D)`` the embedding of the sentence with every non-special token
            replaced by the pad token (so [CLS]/[SEP] are never ablated), as in Captum's
            BERT tutorial.
        forward: ``f(embeds, mask) -> (B, C)``, the function explained by Captum's methods.
        target: the output column explained (the predicted class, or 0 for a state).
        seed: this example's seed (derived from the run's seed and the example id).
    """

    example: Example
    embeds: Tensor
    mask: Tensor
    baseline: Tensor
    forward: Callable[[Tensor, Tensor], Tensor]
    target: int
    seed: int


AttributeFn = Callable[[ExampleInputs], Tensor]

REUSED = 16
"""Results :meth:`MethodContext.reuse` keeps: an example's explanation and the perturbed
copies Captum's ``sensitivity_max`` re-explains, so that an entry built on another's
result (``ours-signed`` on ``ours``) does not recompute them."""


@dataclass
class MethodContext:
    """Shared, lazily computed resources for the methods of one run.

    Args:
        model: the wrapped model.
        corpus: sentences whose states give σ_S (ours only).
        seed: the run's seed.
    """

    model: TextModel
    corpus: list[str]
    seed: int = 0
    _std: dict[str, Tensor | None] = field(default_factory=dict)
    _memo: dict[tuple[Any, ...], tuple[Tensor, float]] = field(default_factory=dict)
    #: seconds of reused results handed out since the last :meth:`reset_charge` (so an
    #: entry that reuses another's computation is charged its time too)
    charged: float = 0.0

    def reuse(self, key: tuple[Any, ...], compute: Callable[[], Tensor]) -> Tensor:
        """``compute()`` once per ``key`` (the latest :data:`REUSED` keys are kept); a
        repeat call returns the same tensor and adds the seconds it took to
        :attr:`charged`."""
        if key in self._memo:
            value, seconds = self._memo[key]
            self.charged += seconds
            return value
        start = time.perf_counter()
        value = compute()
        self._memo[key] = (value, time.perf_counter() - start)
        while len(self._memo) > REUSED:
            del self._memo[next(iter(self._memo))]  # the oldest
        return value

    def forget(self) -> None:
        """Drop what depends on the weights (they changed, e.g. randomised): reused
        results and σ_S."""
        self._memo.clear()
        self._std.clear()

    @contextmanager
    def weights_restored(self) -> Iterator[None]:
        """A block that changes the weights and puts them back: on exit, reused results
        are dropped and σ_S of the original weights is restored."""
        saved = dict(self._std)
        try:
            yield
        finally:
            self.forget()
            self._std.update(saved)

    def example_seed(self, example_id: str) -> int:
        """A seed per example that does not depend on the order examples are run in."""
        return zlib.crc32(f"{self.seed}:{example_id}".encode()) & 0x7FFFFFFF

    def state_std(self, key: str, forward: Callable[..., Tensor], **kwargs: Any) -> Tensor | None:
        """σ_S of ``forward`` over the corpus (cached per ``key``); None without a corpus."""
        if key not in self._std:
            if not self.corpus:
                self._std[key] = None
            else:
                from captum_perturb import estimate_state_std

                tm = self.model
                enc = tm.tokenizer(self.corpus, padding=True, truncation=True, return_tensors="pt")
                embeds = tm.embed(enc["input_ids"])
                self._std[key] = estimate_state_std(
                    forward,
                    embeds,
                    (enc["attention_mask"],),
                    attention_mask=enc["attention_mask"],
                    **kwargs,
                )
        return self._std[key]

    def inputs(self, example: Example) -> ExampleInputs:
        """Embeddings, baseline, explained function and target of one example."""
        tm = self.model
        ids = example.input_ids.unsqueeze(0)
        mask = torch.ones_like(ids)
        embeds = tm.embed(ids)
        pad_id = tm.tokenizer.pad_token_id if tm.tokenizer.pad_token_id is not None else 0
        baseline = tm.embed(torch.where(example.special, ids, torch.full_like(ids, pad_id)))
        forward: Callable[[Tensor, Tensor], Tensor]
        if tm.is_classifier:
            forward = tm.forward_embeds
            with torch.no_grad():
                target = int(forward(embeds, mask).argmax(-1))
        else:
            std = self.state_std("state", tm.forward_embeds)
            with torch.no_grad():
                reference = tm.forward_embeds(embeds, mask)[0]
            forward = tm.scalar_forward(reference, std)
            target = 0
        return ExampleInputs(
            example, embeds, mask, baseline, forward, target, self.example_seed(example.id)
        )


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


def token_scores(attributions: Tensor) -> Tensor:
    """``(T,)`` token scores: attributions ``(1, T, D)`` summed over the embedding dim."""
    return attributions.detach().double().sum(-1)[0].float()


@contextmanager
def seeded(seed: int) -> Iterator[None]:
    """Run with torch's and numpy's global RNGs seeded, restoring their states afterwards
    (Captum's Lime and KernelShap draw from torch's, GradientShap from numpy's)."""
    import numpy as np

    numpy_state = np.random.get_state()
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        np.random.seed(seed)
        try:
            yield
        finally:
            np.random.set_state(numpy_state)


class _Module(nn.Module):
    """An ``nn.Module`` around an explained function (DeepLift needs a module)."""

    def __init__(self, model: nn.Module, forward: Callable[[Tensor, Tensor], Tensor]):
        super().__init__()
        self.model = model
        self._f = forward

    def forward(self, embeds: Tensor, mask: Tensor) -> Tensor:
        return self._f(embeds, mask)


# ---------------------------------------------------------------------- ours


def _ours(ctx: MethodContext, variant: str, reference: bool = False) -> AttributeFn:
    from captum_perturb import REFERENCE, PerturbationEntropyAttribution
    from captum_perturb.functional import embedding_sigma_max

    tm = ctx.model
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

    def attribute(x: ExampleInputs) -> Tensor:
        # the same call for the same inputs is reused (ours-signed reads ours' scores)
        fingerprint = (float(x.embeds.double().sum()), float(x.embeds.double().abs().sum()))
        memo_key = (key, reference, x.example.id, x.seed, tuple(x.embeds.shape), fingerprint)
        return ctx.reuse(memo_key, lambda: compute(x))

    return attribute


@register(
    "ours",
    signed=False,
    family="ours",
    stochastic=True,
    description="perturbation entropy, default estimator; Φ = the classifier's logits "
    "(or the explained hidden state), σ_S from the corpus",
)
def _ours_default(ctx: MethodContext) -> AttributeFn:
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


@register(
    "ours-signed",
    signed=True,
    family="ours",
    stochastic=True,
    magnitudes_of="ours",
    description="ours' scores with the sign of the expected loss of the target when the "
    f"word is drowned in σ_max noise ({SIGN_DRAWS} draws per word)",
)
def _ours_signed(ctx: MethodContext) -> AttributeFn:
    from captum_perturb.functional import embedding_sigma_max

    unsigned = _ours(ctx, "logits" if ctx.model.is_classifier else "state")
    sigma_max = embedding_sigma_max(ctx.model.word_embeddings)

    def attribute(x: ExampleInputs) -> Tensor:
        return unsigned(x) * noise_sign(x, sigma_max)[None, :, None]

    return attribute


@register(
    "ours-reference",
    signed=False,
    family="ours",
    stochastic=True,
    description="perturbation entropy with the authors' algorithm (Adam, 5,000 single-sample "
    "steps); same Φ and σ_S as 'ours'",
)
def _ours_reference(ctx: MethodContext) -> AttributeFn:
    return _ours(ctx, "logits" if ctx.model.is_classifier else "state", reference=True)


@register(
    "ours-prob",
    signed=False,
    family="ours",
    stochastic=True,
    description="perturbation entropy explaining the predicted class's probability",
)
def _ours_prob(ctx: MethodContext) -> AttributeFn:
    return _ours(ctx, "prob")


@register(
    "ours-hidden",
    signed=False,
    family="ours",
    stochastic=True,
    description="perturbation entropy explaining the last encoder layer's token states "
    "(the paper's target)",
)
def _ours_hidden(ctx: MethodContext) -> AttributeFn:
    return _ours(ctx, "hidden")


# ---------------------------------------------------------------------- gradients


@register(
    "integrated-gradients",
    signed=True,
    family="gradient",
    description="IntegratedGradients on the embedding output (= LayerIntegratedGradients on "
    "model.bert.embeddings), pad-token baseline, 50 steps",
)
def _ig(ctx: MethodContext) -> AttributeFn:
    from captum.attr import IntegratedGradients

    def attribute(x: ExampleInputs) -> Tensor:
        return IntegratedGradients(x.forward).attribute(
            x.embeds,
            baselines=x.baseline,
            target=x.target,
            additional_forward_args=(x.mask,),
            n_steps=50,
        )

    return attribute


@register(
    "saliency",
    signed=False,
    family="gradient",
    description="Saliency: |∂f/∂embedding| summed over the embedding dimension",
)
def _saliency(ctx: MethodContext) -> AttributeFn:
    from captum.attr import Saliency

    def attribute(x: ExampleInputs) -> Tensor:
        return Saliency(x.forward).attribute(
            x.embeds, target=x.target, additional_forward_args=(x.mask,), abs=True
        )

    return attribute


@register(
    "input-x-gradient",
    signed=True,
    family="gradient",
    description="InputXGradient on the embedding output",
)
def _ixg(ctx: MethodContext) -> AttributeFn:
    from captum.attr import InputXGradient

    def attribute(x: ExampleInputs) -> Tensor:
        return InputXGradient(x.forward).attribute(
            x.embeds, target=x.target, additional_forward_args=(x.mask,)
        )

    return attribute


@register(
    "deeplift",
    signed=True,
    family="gradient",
    description="DeepLift (rescale rule) on the embedding output, pad-token baseline; "
    "GELU and the attention softmax are not DeepLift-rule modules in Hugging Face BERT, "
    "so they pass gradients",
)
def _deeplift(ctx: MethodContext) -> AttributeFn:
    from captum.attr import DeepLift

    def attribute(x: ExampleInputs) -> Tensor:
        module = _Module(ctx.model.model, x.forward)
        return DeepLift(module).attribute(
            x.embeds, baselines=x.baseline, target=x.target, additional_forward_args=(x.mask,)
        )

    return attribute


@register(
    "gradient-shap",
    signed=True,
    family="gradient",
    stochastic=True,
    description="GradientShap, baselines {pad tokens, zeros}, 20 samples, stdevs 0",
)
def _gradshap(ctx: MethodContext) -> AttributeFn:
    from captum.attr import GradientShap

    def attribute(x: ExampleInputs) -> Tensor:
        baselines = torch.cat([x.baseline, torch.zeros_like(x.embeds)])
        with seeded(x.seed):
            return GradientShap(x.forward).attribute(
                x.embeds,
                baselines=baselines,
                target=x.target,
                additional_forward_args=(x.mask,),
                n_samples=20,
            )

    return attribute


# ---------------------------------------------------------------------- perturbations


def _token_mask(x: ExampleInputs) -> Tensor:
    return torch.arange(x.embeds.shape[1]).view(1, -1, 1)


@register(
    "leave-one-out",
    signed=True,
    family="perturbation",
    description="FeatureAblation over tokens: each token's embedding replaced by the pad "
    "token's, one at a time",
)
def _loo(ctx: MethodContext) -> AttributeFn:
    from captum.attr import FeatureAblation

    def attribute(x: ExampleInputs) -> Tensor:
        return FeatureAblation(x.forward).attribute(
            x.embeds,
            baselines=x.baseline,
            target=x.target,
            additional_forward_args=(x.mask,),
            feature_mask=_token_mask(x),
            perturbations_per_eval=16,
        )

    return attribute


@register(
    "kernel-shap",
    signed=True,
    family="perturbation",
    stochastic=True,
    description="KernelShap over tokens (pad-token baseline), 200 coalitions, exact weighted "
    "least squares",
)
def _kernelshap(ctx: MethodContext) -> AttributeFn:
    from captum.attr import KernelShap

    from comparisons.models.surrogate import WeightedLeastSquares

    def attribute(x: ExampleInputs) -> Tensor:
        ks = KernelShap(x.forward)
        ks.interpretable_model = WeightedLeastSquares()
        with seeded(x.seed):
            return ks.attribute(
                x.embeds,
                baselines=x.baseline,
                target=x.target,
                additional_forward_args=(x.mask,),
                feature_mask=_token_mask(x),
                n_samples=200,
                perturbations_per_eval=50,
            )

    return attribute


@register(
    "lime",
    signed=True,
    family="perturbation",
    stochastic=True,
    description="Lime over tokens (pad-token baseline, Captum's default cosine kernel), 200 "
    "samples, exact weighted ridge surrogate (alpha = 0.01)",
)
def _lime(ctx: MethodContext) -> AttributeFn:
    from captum.attr import Lime

    from comparisons.models.surrogate import WeightedLeastSquares

    def attribute(x: ExampleInputs) -> Tensor:
        lime = Lime(x.forward, interpretable_model=WeightedLeastSquares(alpha=0.01))
        with seeded(x.seed):
            return lime.attribute(
                x.embeds,
                baselines=x.baseline,
                target=x.target,
                additional_forward_args=(x.mask,),
                feature_mask=_token_mask(x),
                n_samples=200,
                perturbations_per_eval=50,
            )

    return attribute


@register(
    "random",
    signed=False,
    family="floor",
    stochastic=True,
    description="a seeded random ranking (the floor every method must beat)",
)
def _random(ctx: MethodContext) -> AttributeFn:
    def attribute(x: ExampleInputs) -> Tensor:
        gen = torch.Generator().manual_seed(x.seed)
        t = x.embeds.shape[1]
        return (
            torch.rand(1, t, 1, generator=gen).expand(1, t, x.embeds.shape[2]) / x.embeds.shape[2]
        )

    return attribute


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
