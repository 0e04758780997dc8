"""Captum's ``infidelity`` and ``sensitivity_max`` with seeded perturbations.

:func:`infidelity_score` draws its noise from a seeded ``torch.Generator``;
:func:`sensitivity_score` seeds the global RNG inside ``torch.random.fork_rng`` so that
the caller's RNG state is restored.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from captum.metrics import infidelity, sensitivity_max
from torch import Tensor


def _as_tuple(args: object) -> tuple[object, ...] | None:
    if args is None:
        return None
    return args if isinstance(args, tuple) else (args,)


def infidelity_score(
    forward_embeds: Callable[..., Tensor],
    embeds: Tensor,
    additional_forward_args: object,
    attributions: Tensor,
    *,
    target: int,
    n_perturb_samples: int = 10,
    noise_std: float,
    special: Tensor,
    seed: int,
) -> float:
    r"""Captum's normalised infidelity (Yeh et al. 2019) with seeded Gaussian noise.

    .. math::

        \mathrm{INFD} = \mathbb{E}_I\Big[\big(\beta\, I^\top \phi
            - (f(x) - f(x - I))\big)^2\Big], \qquad
        \beta = \frac{\mathbb{E}[I^\top \phi\,(f(x) - f(x - I))]}{\mathbb{E}[(I^\top \phi)^2]},

    with :math:`I \sim \mathcal{N}(0, \text{noise\_std}^2)` on the embeddings of the
    non-special tokens (zero on specials), drawn from a ``torch.Generator`` seeded with
    ``seed`` (the global RNG is not used). Lower is better; 0 for an exact linear
    explanation.

    Args:
        forward_embeds: ``forward_embeds(embeds, *additional_forward_args)`` gives
            ``(N, C)`` outputs.
        embeds: ``(1, T, D)`` input embeddings.
        additional_forward_args: Passed on to ``forward_embeds`` (None for none).
        attributions: ``(1, T, D)`` attributions to the embeddings.
        target: Output class.
        n_perturb_samples: Number of noise draws.
        noise_std: Standard deviation of the noise.
        special: ``(T,)`` bool, True at special tokens.
        seed: Seed of the noise.

    Returns:
        The infidelity.
    """
    if embeds.dim() != 3 or embeds.shape[0] != 1:
        raise ValueError(f"embeds must be (1, T, D), got {tuple(embeds.shape)}")
    if attributions.shape != embeds.shape:
        raise ValueError("attributions must have the shape of embeds")
    if special.dtype != torch.bool or special.shape != embeds.shape[1:2]:
        raise ValueError(f"special must be a bool tensor of shape ({embeds.shape[1]},)")
    generator = torch.Generator(device=embeds.device)
    generator.manual_seed(seed)
    keep = (~special).to(embeds.dtype)[None, :, None]

    def perturb(inputs: Tensor) -> tuple[Tensor, Tensor]:
        noise = torch.randn(
            inputs.shape, generator=generator, dtype=inputs.dtype, device=inputs.device
        )
        noise = noise * noise_std * keep
        return noise, inputs - noise

    value = infidelity(
        forward_embeds,
        perturb,
        embeds,
        attributions,
        additional_forward_args=_as_tuple(additional_forward_args),
        target=target,
        n_perturb_samples=n_perturb_samples,
        normalize=True,
    )
    return float(value.reshape(-1)[0])


def _fork_rng(device: torch.device) -> Any:
    """``torch.random.fork_rng`` over the CPU and, for a CUDA tensor, every CUDA device."""
    if device.type == "cuda":
        return torch.random.fork_rng(
            devices=list(range(torch.cuda.device_count())), device_type="cuda"
        )
    return torch.random.fork_rng(devices=[])


def sensitivity_score(
    explain_embeds: Callable[..., Tensor],
    embeds: Tensor,
    additional_forward_args: object,
    *,
    target: int,
    perturb_radius: float,
    n_perturb_samples: int = 5,
    seed: int,
) -> float:
    r"""Captum's max-sensitivity (Yeh et al. 2019) of an explanation, seeded.

    .. math::

        \mathrm{SENS}_{\max} = \max_{\|\delta\|_\infty \le r}
            \frac{\|\Phi(x + \delta) - \Phi(x)\|_F}{\|\Phi(x)\|_F}

    over ``n_perturb_samples`` uniform draws of :math:`\delta` (Captum's default
    perturbation, which draws from the global RNG). The global RNG is seeded with
    ``seed`` inside ``torch.random.fork_rng``, so the draws (and any randomness of the
    explainer) are reproducible and the caller's RNG state is restored afterwards.
    Lower is better; 0 for an explanation that ignores its input.

    Args:
        explain_embeds: ``explain_embeds(embeds, additional_forward_args=..., target=...)``
            returns attributions shaped like ``embeds``. ``additional_forward_args``
            arrives as a tuple (or None), as Captum's attribution methods accept it.
        embeds: ``(1, T, D)`` input embeddings.
        additional_forward_args: Extra model arguments (None for none).
        target: Output class.
        perturb_radius: :math:`r`, the L-infinity radius of the noise.
        n_perturb_samples: Number of draws.
        seed: Seed of the draws.

    Returns:
        The max-sensitivity.
    """
    if embeds.dim() != 3 or embeds.shape[0] != 1:
        raise ValueError(f"embeds must be (1, T, D), got {tuple(embeds.shape)}")

    def explain(inputs: Tensor | tuple[Tensor, ...], **kwargs: Any) -> Tensor | tuple[Tensor]:
        # Captum passes the unperturbed input as a 1-tuple (and expects a tuple back), the
        # perturbed ones as a bare tensor; explain_embeds always sees a tensor.
        if isinstance(inputs, tuple):
            return (explain_embeds(inputs[0], **kwargs),)
        return explain_embeds(inputs, **kwargs)

    with _fork_rng(embeds.device):
        torch.manual_seed(seed)
        value = sensitivity_max(
            explain,
            embeds,
            perturb_radius=perturb_radius,
            n_perturb_samples=n_perturb_samples,
            additional_forward_args=_as_tuple(additional_forward_args),
            target=target,
        )
    return float(value.reshape(-1)[0])
