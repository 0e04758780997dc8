"""Rank correlations used to compare explanations: Kendall's tau-b and Spearman's rho.

Both drop every position where either side is NaN (e.g. the special tokens of
:func:`~comparisons.metrics.leave_one_out`) and return NaN when undefined.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor


def _paired(a: Tensor, b: Tensor) -> tuple[Tensor, Tensor]:
    """Flattened float64 copies of ``a`` and ``b`` with every NaN pair dropped."""
    if a.shape != b.shape:
        raise ValueError(f"shapes differ: {tuple(a.shape)} vs {tuple(b.shape)}")
    x = a.detach().flatten().double().cpu()
    y = b.detach().flatten().double().cpu()
    keep = ~(torch.isnan(x) | torch.isnan(y))
    return x[keep], y[keep]


def kendall_tau_b(a: Tensor, b: Tensor) -> float:
    r"""Kendall's :math:`\tau_b` with the tie correction.

    Over the pairs :math:`i < j` of the positions where neither value is NaN:

    .. math::

        \tau_b = \frac{n_c - n_d}{\sqrt{(n_0 - n_1)(n_0 - n_2)}}, \qquad
        n_0 = \tfrac{m (m - 1)}{2},

    with :math:`n_c, n_d` the concordant and discordant pairs and :math:`n_1, n_2` the
    pairs tied in ``a`` and in ``b`` (the statistic of ``scipy.stats.kendalltau``'s
    default ``variant="b"``). Cost :math:`O(m^2)` time, computed in row chunks.

    Args:
        a: Values, any shape.
        b: Values, the shape of ``a``.

    Returns:
        :math:`\tau_b`, or NaN when undefined (fewer than two pairs left, or one side
        constant).

    Example:
        >>> kendall_tau_b(torch.tensor([1.0, 2.0, 3.0, 4.0]), torch.tensor([1.0, 3.0, 2.0, 4.0]))
        0.6666666666666666
    """
    x, y = _paired(a, b)
    m = x.numel()
    if m < 2:
        return math.nan
    s = 0.0
    ties_x = 0
    ties_y = 0
    cols = torch.arange(m)
    chunk = 1024
    for start in range(0, m, chunk):
        rows = torch.arange(start, min(start + chunk, m))
        upper = cols[None, :] > rows[:, None]
        dx = torch.sign(x[rows, None] - x[None, :])
        dy = torch.sign(y[rows, None] - y[None, :])
        s += float((dx * dy)[upper].sum())
        ties_x += int(((dx == 0) & upper).sum())
        ties_y += int(((dy == 0) & upper).sum())
    n0 = m * (m - 1) // 2
    denom = (n0 - ties_x) * (n0 - ties_y)
    if denom == 0:
        return math.nan
    return s / math.sqrt(denom)


def _average_ranks(x: Tensor) -> Tensor:
    """1-based ranks of a 1-D float64 tensor, tied values sharing their mean rank."""
    values, index = torch.sort(x, stable=True)
    _, inverse, counts = torch.unique_consecutive(values, return_inverse=True, return_counts=True)
    ends = torch.cumsum(counts, 0).double()
    mean_rank = ends - (counts.double() - 1.0) / 2.0
    ranks = torch.empty_like(x)
    ranks[index] = mean_rank[inverse]
    return ranks


def spearman(a: Tensor, b: Tensor) -> float:
    r"""Spearman's rank correlation :math:`\rho` (average ranks for ties).

    The Pearson correlation of the ranks, over the positions where neither value is
    NaN:

    .. math::

        \rho = \frac{\sum_i (R_i - \bar R)(S_i - \bar S)}
                    {\sqrt{\sum_i (R_i - \bar R)^2 \sum_i (S_i - \bar S)^2}}

    Args:
        a: Values, any shape.
        b: Values, the shape of ``a``.

    Returns:
        :math:`\rho`, or NaN when undefined (fewer than two values left, or one side
        constant).

    Example:
        >>> rho = spearman(torch.tensor([1.0, 2.0, 3.0, 4.0]), torch.tensor([1.0, 3.0, 2.0, 4.0]))
        >>> round(rho, 12)
        0.8
    """
    x, y = _paired(a, b)
    if x.numel() < 2:
        return math.nan
    rx = _average_ranks(x)
    ry = _average_ranks(y)
    rx = rx - rx.mean()
    ry = ry - ry.mean()
    denom = math.sqrt(float((rx * rx).sum()) * float((ry * ry).sum()))
    if denom == 0.0:
        return math.nan
    return float((rx * ry).sum()) / denom
