"""Deletion and insertion curves, their area, and leave-one-out reference scores.

:func:`deletion_curve` and :func:`insertion_curve` follow Petsiuk et al. (2018) over
tokens, :func:`curve_area` integrates them, and :func:`leave_one_out` gives the
reference scores that :func:`~comparisons.metrics.kendall_tau_b` compares against.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from ._common import ProbFn, _check_order, _check_sequence, _mask_of, _target_probs
from .removal import Remover


def deletion_curve(
    prob_fn: ProbFn,
    ids: Tensor,
    special: Tensor,
    order: Tensor,
    remover: Remover,
    *,
    target: int,
) -> Tensor:
    r"""Deletion curve (Petsiuk et al. 2018): :math:`p_t` as tokens are removed in order.

    .. math::

        c_j = p(x \setminus \{o_1, \dots, o_j\})_t, \qquad j = 0, \dots, n_o,

    with :math:`o` = ``order`` (one of :func:`tie_orders`) and :math:`n_o` its length.
    A faithful ranking makes the curve fall fast (small :func:`curve_area`). One
    ``prob_fn`` call.

    Args:
        prob_fn: See :data:`ProbFn`.
        ids: ``(T,)`` token ids, specials included.
        special: ``(T,)`` bool, True at special tokens.
        order: ``(n_o,)`` distinct non-special positions, most important first.
        remover: How tokens are removed.
        target: Class whose probability is tracked.

    Returns:
        ``(n_o + 1,)`` float64 tensor.
    """
    _check_sequence(ids, special)
    _check_order(order, special)
    seqs = [
        remover.apply(ids, special, _mask_of(order[:j], ids.numel(), ids.device))
        for j in range(order.numel() + 1)
    ]
    return _target_probs(prob_fn, seqs, target)


def insertion_curve(
    prob_fn: ProbFn,
    ids: Tensor,
    special: Tensor,
    order: Tensor,
    remover: Remover,
    *,
    target: int,
) -> Tensor:
    r"""Insertion curve: start with every non-special token removed, add ``order`` back.

    .. math::

        c_j = p\big(x \setminus (N \setminus \{o_1, \dots, o_j\})\big)_t,
        \qquad j = 0, \dots, n_o,

    with :math:`N` the set of non-special positions. A faithful ranking makes the curve
    rise fast (large :func:`curve_area`). If ``order`` covers every non-special token,
    the last point is :math:`p(x)_t`. One ``prob_fn`` call.

    Args:
        prob_fn: See :data:`ProbFn`.
        ids: ``(T,)`` token ids, specials included.
        special: ``(T,)`` bool, True at special tokens.
        order: ``(n_o,)`` distinct non-special positions, most important first.
        remover: How tokens are removed.
        target: Class whose probability is tracked.

    Returns:
        ``(n_o + 1,)`` float64 tensor.
    """
    _check_sequence(ids, special)
    _check_order(order, special)
    seqs = [
        remover.apply(ids, special, ~special & ~_mask_of(order[:j], ids.numel(), ids.device))
        for j in range(order.numel() + 1)
    ]
    return _target_probs(prob_fn, seqs, target)


def curve_area(curve: Tensor) -> float:
    r"""Trapezoid area under ``n + 1`` equally spaced points on :math:`x \in [0, 1]`.

    .. math::

        A = \frac{1}{n} \Big( \frac{c_0 + c_n}{2} + \sum_{j=1}^{n-1} c_j \Big)

    Args:
        curve: ``(n + 1,)`` values, ``n >= 1``.

    Returns:
        The area.

    Raises:
        ValueError: for fewer than two points (no interval to integrate over).

    Example:
        >>> curve_area(torch.tensor([1.0, 0.5, 0.0]))
        0.5
    """
    if curve.dim() != 1 or curve.numel() < 2:
        raise ValueError("curve_area needs a 1-D curve of at least two points")
    n = curve.numel() - 1
    return float(torch.trapezoid(curve.double(), dx=1.0 / n))


def leave_one_out(
    prob_fn: ProbFn,
    ids: Tensor,
    special: Tensor,
    remover: Remover,
    *,
    target: int,
) -> Tensor:
    r"""Leave-one-out drop of every token (ferret's ``taucorr_loo`` reference scores).

    .. math::

        \mathrm{loo}_i = p(x)_t - p(x \setminus \{i\})_t

    for each non-special position :math:`i`; NaN at special positions (so that
    :func:`kendall_tau_b` and :func:`spearman` drop them). One ``prob_fn`` call.

    Args:
        prob_fn: See :data:`ProbFn`.
        ids: ``(T,)`` token ids, specials included.
        special: ``(T,)`` bool, True at special tokens.
        remover: How tokens are removed.
        target: Class whose probability is tracked.

    Returns:
        ``(T,)`` float64 tensor (on the CPU).
    """
    _check_sequence(ids, special)
    positions = torch.nonzero(~special).flatten()
    seqs = [ids] + [
        remover.apply(ids, special, _mask_of(p.reshape(1), ids.numel(), ids.device))
        for p in positions
    ]
    probs = _target_probs(prob_fn, seqs, target)
    out = torch.full((ids.numel(),), math.nan, dtype=torch.float64)
    out[positions.cpu()] = probs[0] - probs[1:]
    return out
