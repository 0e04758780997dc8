"""The methods ours is compared with: Captum's attribution methods and the random floor.

Each factory here is registered by :mod:`comparisons.study.methods`; all explain
``x.forward``'s column ``x.target`` on the embedding output:

* gradients — :func:`integrated_gradients`, :func:`saliency`, :func:`input_x_gradient`,
  :func:`deeplift`, :func:`gradient_shap`;
* perturbations over tokens — :func:`leave_one_out`, :func:`kernel_shap`, :func:`lime`;
* the floor — :func:`random_floor`, a seeded random ranking.

The stochastic ones run :func:`seeded` by the example's seed.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager

import torch
from torch import Tensor, nn

from comparisons.study.context import AttributeFn, ExampleInputs, MethodContext


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


# ---------------------------------------------------------------------- gradients


def integrated_gradients(ctx: MethodContext) -> AttributeFn:
    """``integrated-gradients``."""
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


def saliency(ctx: MethodContext) -> AttributeFn:
    """``saliency``."""
    from captum.attr import Saliency

    def attribute(x: ExampleInputs) -> Tensor:
        return Saliency(x.forward).attribute(
            x.embeds, target=x.target, additional_forward_args=(x.mask,), abs=True
        )

    return attribute


def input_x_gradient(ctx: MethodContext) -> AttributeFn:
    """``input-x-gradient``."""
    from captum.attr import InputXGradient

    def attribute(x: ExampleInputs) -> Tensor:
        return InputXGradient(x.forward).attribute(
            x.embeds, target=x.target, additional_forward_args=(x.mask,)
        )

    return attribute


def deeplift(ctx: MethodContext) -> AttributeFn:
    """``deeplift``."""
    from captum.attr import DeepLift

    def attribute(x: ExampleInputs) -> Tensor:
        module = _Module(ctx.model.model, x.forward)
        return DeepLift(module).attribute(
            x.embeds, baselines=x.baseline, target=x.target, additional_forward_args=(x.mask,)
        )

    return attribute


def gradient_shap(ctx: MethodContext) -> AttributeFn:
    """``gradient-shap``."""
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


def leave_one_out(ctx: MethodContext) -> AttributeFn:
    """``leave-one-out``."""
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


def kernel_shap(ctx: MethodContext) -> AttributeFn:
    """``kernel-shap``."""
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


def lime(ctx: MethodContext) -> AttributeFn:
    """``lime``."""
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


def random_floor(ctx: MethodContext) -> AttributeFn:
    """``random``."""

    def attribute(x: ExampleInputs) -> Tensor:
        gen = torch.Generator().manual_seed(x.seed)
        t = x.embeds.shape[1]
        return (
            torch.rand(1, t, 1, generator=gen).expand(1, t, x.embeds.shape[2]) / x.embeds.shape[2]
        )

    return attribute
