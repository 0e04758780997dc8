"""Rank correlations used to compare explanations: Kendall's tau-b and Spearman's rho.

Both are ``scipy.stats``' (``kendalltau(variant="b")``, ``spearmanr``) over the positions
where neither value is NaN (e.g. the special tokens of
:func:`~comparisons.metrics.leave_one_out`), with one convention of ours: a constant side
(an explanation that ranks nothing, or a reference that does not move) gives 0, the
expected correlation over the random orders of its ties (:func:`~comparisons.metrics.tie_orders`),
never NaN. Fewer than two positions left give NaN (there is nothing to rank).
"""

from __future__ import annotations

import math

import numpy as np
from scipy import stats as sps
from torch import Tensor


def _paired(a: Tensor, b: Tensor) -> tuple[np.ndarray, np.ndarray] | None:
    """Float64 copies of ``a`` and ``b`` with every NaN pair dropped; None when fewer
    than two pairs are left."""
    if a.shape != b.shape:
        raise ValueError(f"shapes differ: {tuple(a.shape)} vs {tuple(b.shape)}")
    x = a.detach().flatten().double().cpu().numpy()
    y = b.detach().flatten().double().cpu().numpy()
    keep = ~(np.isnan(x) | np.isnan(y))
    if keep.sum() < 2:
        return None
    return x[keep], y[keep]


def _constant(x: np.ndarray) -> bool:
    return bool((x == x[0]).all())


def kendall_tau_b(a: Tensor, b: Tensor) -> float:
    r"""Kendall's :math:`\tau_b` (``scipy.stats.kendalltau``, ``variant="b"``).

    Over the pairs :math:`i < j` of the positions where neither value is NaN:

    .. math::

        \tau_b = \frac{n_c - n_d}{\sqrt{(n_0 - n_1)(n_0 - n_2)}}, \qquad
        n_0 = \tfrac{m (m - 1)}{2},

    with :math:`n_c, n_d` the concordant and discordant pairs and :math:`n_1, n_2` the
    pairs tied in ``a`` and in ``b``. A constant side gives 0: every order of its ties
    is equally likely, and the mean of :math:`\tau` over them is 0.

    Args:
        a: Values, any shape.
        b: Values, the shape of ``a``.

    Returns:
        :math:`\tau_b`; 0 when one side is constant; NaN with fewer than two positions.

    Example:
        >>> import torch
        >>> a, b = torch.tensor([1.0, 2.0, 3.0, 4.0]), torch.tensor([1.0, 3.0, 2.0, 4.0])
        >>> round(kendall_tau_b(a, b), 12)  # (5 - 1) / 6
        0.666666666667
        >>> kendall_tau_b(torch.zeros(4), torch.tensor([1.0, 3.0, 2.0, 4.0]))
        0.0
    """
    pair = _paired(a, b)
    if pair is None:
        return math.nan
    x, y = pair
    if _constant(x) or _constant(y):
        return 0.0
    return float(sps.kendalltau(x, y, variant="b").statistic)


def spearman(a: Tensor, b: Tensor) -> float:
    r"""Spearman's rank correlation :math:`\rho` (``scipy.stats.spearmanr``, average
    ranks for ties).

    The Pearson correlation of the ranks, over the positions where neither value is
    NaN:

    .. math::

        \rho = \frac{\sum_i (R_i - \bar R)(S_i - \bar S)}
                    {\sqrt{\sum_i (R_i - \bar R)^2 \sum_i (S_i - \bar S)^2}}

    A constant side gives 0, the mean of :math:`\rho` over the orders of its ties.

    Args:
        a: Values, any shape.
        b: Values, the shape of ``a``.

    Returns:
        :math:`\rho`; 0 when one side is constant; NaN with fewer than two positions.

    Example:
        >>> import torch
        >>> rho = spearman(torch.tensor([1.0, 2.0, 3.0, 4.0]), torch.tensor([1.0, 3.0, 2.0, 4.0]))
        >>> round(rho, 12)
        0.8
    """
    pair = _paired(a, b)
    if pair is None:
        return math.nan
    x, y = pair
    if _constant(x) or _constant(y):
        return 0.0
    return float(sps.spearmanr(x, y).statistic)
