r"""The functional core: learn the largest per-group noise that keeps a state.

Everything else in the package (the Captum classes, the reference-code drop-in, the
benchmark) calls :func:`estimate_sigma`.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor

from captum_perturb._utils.common import user_stacklevel
from captum_perturb._utils.compat import progress
from captum_perturb.config import DEFAULT, AdamConfig, EstimatorConfig, FixedPointConfig
from captum_perturb.functional.adam import adam
from captum_perturb.functional.fixed_point import fixed_point
from captum_perturb.functional.moments import fallback_mean_square
from captum_perturb.functional.problem import (
    Problem,
    SigmaEstimate,
    StateFn,
    check_finite,
)

__all__ = [
    "SigmaEstimate",
    "StateFn",
    "check_finite",
    "check_rate",
    "estimate_sigma",
    "state_weights",
]


def check_rate(rate: Any) -> None:
    """``rate`` must be a finite positive number.

    Raises:
        ValueError: otherwise (``inf`` would make every σ reach σ_max: the entropy term
            outweighs any change of the state).
    """
    if (
        isinstance(rate, bool)
        or not isinstance(rate, (int, float))
        or not math.isfinite(rate)
        or not rate > 0
    ):
        raise ValueError(
            f"rate must be a positive finite number, got {rate!r}: it weighs the entropy "
            "term against the change of the state (the reference code's default is 0.1)"
        )


def state_weights(state: Tensor, state_std: Tensor | None, output_mask: Tensor | None) -> Tensor:
    r"""Per-element weights :math:`w_j = 1 / (M \sigma_{S,j}^2)` of the squared error.

    ``M`` counts the state's unmasked elements of each example, so that the first term
    of the objective is the reference code's *mean* over elements.

    Args:
        state: ``(B, *S)`` the explained state :math:`\Phi(x)`.
        state_std: σ_S, broadcastable to ``S`` (``inf`` leaves an element out); ``None``
            uses the reference code's
            fallback :math:`\sigma_S^2 = \mathrm{mean}(\Phi(x)^2)` per example (with a
            warning: a corpus σ_S is the sound choice).
        output_mask: broadcastable to ``(B, *S)``; zero marks padding that is not counted.

    Returns:
        ``(B, *S)`` weights.

    Raises:
        ValueError: σ_S of the wrong shape, non-finite or with zeros; a state that is
            identically zero under the fallback.
    """
    mask = torch.ones_like(state) if output_mask is None else output_mask.to(state.dtype)
    mask = torch.broadcast_to(mask, state.shape)
    count = mask.reshape(state.shape[0], -1).sum(1).clamp_min(1.0)
    view = (-1,) + (1,) * (state.dim() - 1)
    if state_std is None:
        warnings.warn(
            "No state_std (σ_S) given: dividing the squared error by mean(Φ(x)²) of each "
            "example, as the reference code does. This is unstable for outputs near zero; "
            "estimate σ_S on a corpus with captum_perturb.estimate_state_std.",
            UserWarning,
            stacklevel=user_stacklevel(),
        )
        mean_sq = fallback_mean_square(state, mask)
        return mask / (mean_sq * count).reshape(view)
    std = torch.as_tensor(state_std, dtype=state.dtype, device=state.device)
    try:
        var = torch.broadcast_to(std, state.shape[1:]).square()
    except RuntimeError:
        raise ValueError(
            f"state_std has shape {tuple(std.shape)}, which does not broadcast to the "
            f"explained state's per-example shape {tuple(state.shape[1:])}. Estimate it "
            "for the same state (and target) you explain."
        ) from None
    if bool(torch.isnan(std).any()) or bool((std <= 0).any()) or bool((var <= 0).any()):
        raise ValueError(
            "state_std must be strictly positive (or +inf to leave an element out); it has "
            "zeros or NaN (a constant element of the state?). estimate_state_std marks "
            "constant elements with inf for you; or clamp it, e.g. state_std.clamp_min(1e-6)."
        )
    # elements with σ_S = inf are left out of the loss and of the count M
    mask = mask * torch.isfinite(var).to(mask.dtype).unsqueeze(0)
    count = mask.reshape(state.shape[0], -1).sum(1).clamp_min(1.0)
    var = torch.where(torch.isfinite(var), var, torch.ones_like(var))
    return mask / (var.unsqueeze(0) * count.reshape(view))


def estimate_sigma(
    state_fn: StateFn,
    inputs: tuple[Tensor, ...],
    groups: tuple[Tensor, ...],
    *,
    sigma_max: Tensor | float,
    rate: float = 0.1,
    state_std: Tensor | None = None,
    output_mask: Tensor | Callable[[Tensor], Tensor | None] | None = None,
    config: EstimatorConfig = DEFAULT,
    generator: torch.Generator | None = None,
    batch_size: int | None = None,
    show_progress: bool = False,
    progress_desc: str = "Perturbation Entropy attribution",
) -> SigmaEstimate:
    r"""Learn, per group of input elements, the largest Gaussian noise that keeps a state.

    With :math:`\tilde x = x + \sigma\odot\varepsilon`, :math:`\varepsilon\sim N(0, I)` and
    each element's σ shared by its group, minimise over
    :math:`0 < \sigma_g \le \sigma_{max}`

    .. math::

        L(\sigma) = \mathbb{E}_\varepsilon \sum_j w_j (\Phi(\tilde x)_j - \Phi(x)_j)^2
        \;-\; \frac{\lambda_{rate}}{N} \sum_g m_g \log\frac{\sigma_g}{\sigma_{max}},

    where :math:`w_j = 1/(M\sigma_{S,j}^2)` (:func:`state_weights`), :math:`m_g` is the
    number of elements in group ``g`` and :math:`N = \sum_g m_g`. For groups of equal
    size this is the reference code's loss; the paper's λ is
    :math:`\lambda_{rate}\, M/N` per element of entropy.

    Args:
        state_fn: ``state_fn(perturbed_inputs, rows)`` returns the explained state of a
            stack of copies, ``(R, *S)``; ``rows`` ``(R,)`` says which example each copy
            belongs to. It must be deterministic (no dropout).
        inputs: the values noise is added to, each ``(B, *D_k)``, floating point.
        groups: per-element group ids, each ``(B, *D_k)`` long; ``0..G-1`` for
            perturbed elements (ids need not be used by every example) and ``-1`` for
            elements that are never perturbed (padding).
        sigma_max: the bound σ_max, a float or ``(B,)``.
        rate: weight of the entropy term (reference code's ``rate``), > 0.
        state_std: σ_S, broadcastable to ``S``; see :func:`state_weights`.
        output_mask: broadcastable to ``(B, *S)``; zeros mark state elements not counted.
            A callable receives the clean state and returns such a mask (or None).
        config: :class:`~captum_perturb.FixedPointConfig` (default) or
            :class:`~captum_perturb.AdamConfig`.
        generator: source of all noise (on the inputs' device); ``None`` = torch's global RNG.
        batch_size: perturbed copies per call of ``state_fn`` (speed and memory). The noise
            and every step are the same for any value, so the result is bit-identical
            when ``state_fn`` rounds each row alike in any batch; BLAS kernels that round
            by the matrix's shape can change it by up to about the standard error
            (:attr:`SigmaEstimate.batch_dependent` records it when seen).
        show_progress: show a progress bar over iterations.
        progress_desc: the progress bar's label.

    Returns:
        A :class:`SigmaEstimate`.

    Example:
        A linear state :math:`\Phi(x) = \sum_i W_i x_i` has the closed form
        :math:`\sigma_i = \sqrt{rate / (2 n \bar c)} / |W_i|` (here :math:`\bar c = 1`):

        >>> import torch
        >>> from captum_perturb.functional import estimate_sigma
        >>> W = torch.tensor([1.0, 2.0, 4.0])
        >>> x = torch.randn(1, 3, 8)
        >>> def phi(inp, rows):
        ...     return torch.einsum("i,rid->rd", W, inp[0])
        >>> groups = (torch.arange(3).view(1, 3, 1).expand(1, 3, 8),)
        >>> est = estimate_sigma(
        ...     phi,
        ...     (x,),
        ...     groups,
        ...     sigma_max=10.0,
        ...     rate=0.1,
        ...     state_std=torch.ones(8),
        ...     generator=torch.Generator().manual_seed(0),
        ... )
        >>> closed = (0.1 / (2 * 3)) ** 0.5 / W
        >>> bool(torch.allclose(est.sigma[0], closed, rtol=0.02))
        True
    """
    check_rate(rate)
    smax = _checked_inputs(inputs, sigma_max)
    n_groups = int(max(int(g.max()) for g in groups)) + 1 if groups else 0
    if n_groups <= 0:
        raise ValueError("no element is perturbed: every group id is -1 (all padding?)")
    everyone = torch.arange(len(smax), device=smax.device)
    with torch.no_grad():
        state = state_fn(tuple(x.detach() for x in inputs), everyone).detach()
    check_finite(state, "The model output")
    if callable(output_mask):
        output_mask = output_mask(state)
    weight = state_weights(state, state_std, output_mask)
    prob = Problem(
        state_fn,
        tuple(x.detach() for x in inputs),
        groups,
        n_groups,
        state,
        weight,
        float(rate),
        smax,
        batch_size,
    )
    prob.count(everyone)  # the clean pass
    return _solve(prob, config, generator, show_progress, progress_desc)


def _checked_inputs(inputs: tuple[Tensor, ...], sigma_max: Tensor | float) -> Tensor:
    """Check the inputs (floating point, not empty, finite) and return σ_max, one per
    example.

    Raises:
        ValueError, TypeError: naming the input or σ_max at fault.
    """
    if not inputs:
        raise ValueError("inputs is empty: pass at least one tensor to perturb")
    for x in inputs:
        if not x.is_floating_point():
            raise TypeError(f"inputs must be floating point, got {x.dtype}")
        if x.numel() == 0:
            raise ValueError(
                f"an input of shape {tuple(x.shape)} is empty (zero-length sequence?); "
                "every example needs at least one element to perturb"
            )
    ref = inputs[0]
    batch = ref.shape[0]
    smax = torch.as_tensor(sigma_max, dtype=ref.dtype, device=ref.device).reshape(-1)
    smax = smax.expand(batch).clone() if smax.numel() == 1 else smax
    if smax.shape != (batch,) or not bool(torch.isfinite(smax).all()) or bool((smax <= 0).any()):
        raise ValueError(
            "sigma_max must be a positive finite number (or one per example); "
            f"got {sigma_max!r}. The authors recommend 10 × the std of the word embeddings."
        )
    for x in inputs:
        check_finite(x, "The inputs")
    return smax


def _solve(
    prob: Problem,
    config: EstimatorConfig,
    generator: torch.Generator | None,
    show_progress: bool,
    progress_desc: str,
) -> SigmaEstimate:
    """Run the configured optimiser on the problem, with a progress bar if asked."""
    if isinstance(config, FixedPointConfig):
        total = config.max_iter
    elif isinstance(config, AdamConfig):
        total = config.steps
    else:
        raise TypeError(
            f"config must be a FixedPointConfig or an AdamConfig, got {type(config).__name__}"
        )
    bar = None
    if show_progress:
        bar = progress(desc=progress_desc, total=total)

    def tick() -> None:
        if bar is not None:
            bar.update()

    try:
        if isinstance(config, FixedPointConfig):
            return fixed_point(prob, config, generator, tick)
        return adam(prob, config, generator, tick)
    finally:
        if bar is not None:
            bar.close()
