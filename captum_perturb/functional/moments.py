"""Moments of an explained state: σ_S from running sums, and the reference code's fallback."""

from __future__ import annotations

import warnings

import torch
from torch import Tensor

from captum_perturb._utils.common import user_stacklevel

#: what a result records as its normaliser when no corpus σ_S was given
#: (:func:`fallback_mean_square`)
FALLBACK_LABEL = "mean square fallback"


def embedding_sigma_max(weight: Tensor) -> float:
    """The default σ_max for noise on embeddings: 10 × the std of the word-embedding matrix
    (the authors' recommendation). The one place this rule lives; each entry point
    passes its own embedding matrix.

    Args:
        weight: ``(V, D)`` the word-embedding matrix (any dtype, any device).

    Returns:
        ``10 * std`` over all its elements (float32 reduction), as a Python float.
    """
    return 10.0 * float(weight.detach().float().std())


def state_moments(
    state: Tensor, attention_mask: Tensor | None, token_reduction: str
) -> tuple[Tensor, Tensor, Tensor]:
    """Sums, sums of squares and counts of a batch of states for :func:`std_from_moments`
    (float64; a ``(B, T, ...)`` state is reduced over its tokens as ``token_reduction``
    says, skipping padding)."""
    state = state.double()
    weight = torch.ones_like(state)
    dims: tuple[int, ...] = (0,)
    if state.dim() >= 3:
        if attention_mask is not None:
            m = attention_mask.to(state.device, state.dtype)
            weight = weight * m.reshape(*m.shape, *([1] * (state.dim() - 2)))
        if token_reduction == "mean":
            state = (weight * state).sum(1) / weight.sum(1).clamp_min(1)
            weight = torch.ones_like(state)
        elif token_reduction == "pool":
            dims = (0, 1)
    return (weight * state).sum(dims), (weight * state.square()).sum(dims), weight.sum(dims)


def std_from_moments(
    total: Tensor, total_sq: Tensor, count: Tensor, constant_rtol: float = 1e-6
) -> Tensor:
    """Population std from accumulated moments; constant elements get ``inf`` (warned)."""
    mean = total / count.clamp_min(1)
    var = (total_sq / count.clamp_min(1) - mean.square()).clamp_min(0)
    std = var.sqrt()
    constant = std <= constant_rtol * std.max()
    if bool(constant.any()):
        warnings.warn(
            f"{int(constant.sum())} of {std.numel()} elements of the state are constant over "
            "the corpus; they get state_std = inf and are left out of the loss",
            UserWarning,
            stacklevel=user_stacklevel(),
        )
        std = torch.where(constant, torch.full_like(std, float("inf")), std)
    return std


def fallback_mean_square(state: Tensor, mask: Tensor | None = None) -> Tensor:
    r"""The reference code's σ_S fallback: :math:`\sigma_S^2 = \mathrm{mean}(\Phi(x)^2)`
    over each example's counted elements (one number per example).

    Used when no corpus σ_S is given (:func:`~captum_perturb.functional.state_weights`,
    :func:`~captum_perturb.explain_layers`). Each example is then measured on its own
    scale, so scores are not comparable across examples, layers or models.

    Args:
        state: ``(B, *S)`` the explained state :math:`\Phi(x)`.
        mask: broadcastable to ``(B, *S)``; zero marks elements that are not counted
            (padding). ``None`` counts every element.

    Returns:
        ``(B,)`` the mean square of each example's counted elements.

    Raises:
        ValueError: the state is zero for some example (the fallback would divide by 0).
    """
    batch = state.shape[0]
    m = torch.ones_like(state) if mask is None else mask.to(state.dtype)
    m = torch.broadcast_to(m, state.shape)
    count = m.reshape(batch, -1).sum(1).clamp_min(1.0)
    mean_sq = (m * state.square()).reshape(batch, -1).sum(1) / count
    if bool((mean_sq <= torch.finfo(state.dtype).tiny).any()):
        raise ValueError(
            "The explained state is zero for some example, so the fallback normaliser "
            "mean(Φ(x)²) is zero. Pass state_std estimated on a corpus."
        )
    return mean_sq
