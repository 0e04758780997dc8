"""Index helpers shared by the estimators: groups of perturbed elements per example."""

from __future__ import annotations

from collections.abc import Iterator

import torch
from torch import Tensor


def flat_index(groups: tuple[Tensor, ...], n_groups: int) -> tuple[Tensor, ...]:
    """Flatten per-element group ids to ``(B, numel)`` with ``-1`` mapped to ``n_groups``."""
    out = []
    for g in groups:
        flat = g.reshape(g.shape[0], -1)
        out.append(torch.where(flat < 0, torch.full_like(flat, n_groups), flat))
    return tuple(out)


def group_sizes(flat: tuple[Tensor, ...], n_groups: int, dtype: torch.dtype) -> Tensor:
    """Number of perturbed elements in each group, ``(B, G)``."""
    batch = flat[0].shape[0]
    sizes = torch.zeros(batch, n_groups + 1, dtype=dtype, device=flat[0].device)
    for idx in flat:
        sizes.scatter_add_(1, idx, torch.ones_like(idx, dtype=dtype))
    return sizes[:, :n_groups]


def spread(
    values: Tensor, flat: tuple[Tensor, ...], rows: Tensor, shapes: tuple[torch.Size, ...]
) -> tuple[Tensor, ...]:
    """Give every element of each input its group's value.

    Args:
        values: ``(R, G)`` one value per group for each row.
        flat: flattened group ids from :func:`flat_index`, ``(B, numel)`` each.
        rows: ``(R,)`` example index of each row.
        shapes: the per-example shape of each input.

    Returns:
        One ``(R, *shape)`` tensor per input; unperturbed elements get 0.
    """
    padded = torch.cat([values, values.new_zeros(values.shape[0], 1)], dim=1)
    return tuple(
        torch.gather(padded, 1, idx[rows]).reshape(len(rows), *shape)
        for idx, shape in zip(flat, shapes, strict=True)
    )


def collect(
    per_element: tuple[Tensor, ...], flat: tuple[Tensor, ...], rows: Tensor, n_groups: int
) -> Tensor:
    """Sum per-element values over each group: the adjoint of :func:`spread`, ``(R, G)``."""
    first = per_element[0]
    out = first.new_zeros(first.shape[0], n_groups + 1)
    for val, idx in zip(per_element, flat, strict=True):
        out.scatter_add_(1, idx[rows], val.reshape(val.shape[0], -1))
    return out[:, :n_groups]


def chunks(n_rows: int, size: int | None) -> Iterator[slice]:
    """Consecutive row slices of at most ``size`` rows (all rows when ``size`` is None)."""
    step = n_rows if size is None else max(1, size)
    for start in range(0, n_rows, step):
        yield slice(start, min(start + step, n_rows))
