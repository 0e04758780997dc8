"""Turn Captum-style feature masks into dense per-example group ids."""

from __future__ import annotations

import math
from typing import Literal

import torch
from torch import Tensor

from captum_perturb._utils.compat import format_tensor_into_tuples, is_mask_valid

#: ``"token"``: one group per position of a ``(B, T, ..., D)`` tensor, shared over its last
#: dimension (one σ per token of a hidden state); tensors of fewer than 3 dimensions keep
#: one group per scalar.
FeatureMask = Tensor | tuple[Tensor, ...] | Literal["token"] | None


def _token_ids(x: Tensor) -> Tensor:
    """One id per position of ``(B, T, ..., D)``, shared over the last dimension."""
    shape = x.shape[1:]
    per = torch.arange(math.prod(shape[:-1]), device=x.device)
    return per.reshape(1, *shape[:-1], 1).expand(1, *shape)


def token_feature_mask(inputs: Tensor | tuple[Tensor, ...]) -> Tensor | tuple[Tensor, ...]:
    """``feature_mask="token"`` as a tensor: one group per position, shared over the last
    dimension, ``(1, T, ..., 1)``-broadcastable ids (for each input of a tuple; the inputs'
    ids are offset so that no two inputs share a group).

    Captum's ``NoiseTunnel`` expands a ``feature_mask`` keyword itself and accepts only
    tensors, so under it pass ``feature_mask=token_feature_mask(inputs)`` instead of
    ``"token"``.

    Example:
        >>> import torch
        >>> from captum_perturb import token_feature_mask
        >>> token_feature_mask(torch.zeros(2, 3, 4)).tolist()
        [[[0], [1], [2]]]
    """
    tuple_in = isinstance(inputs, tuple)
    out: list[Tensor] = []
    offset = 0
    for x in inputs if isinstance(inputs, tuple) else (inputs,):
        # as "token": tensors of fewer than 3 dimensions keep one group per scalar
        ids = (_token_ids(x)[..., :1] if x.dim() >= 3 else _scalar_ids(x)) + offset
        offset += int(ids.max()) + 1 if ids.numel() else 0
        out.append(ids.contiguous())
    return tuple(out) if tuple_in else out[0]


def _scalar_ids(x: Tensor) -> Tensor:
    """One id per scalar of an example (Captum's default)."""
    return torch.arange(math.prod(x.shape[1:]), device=x.device).reshape(1, *x.shape[1:])


def raw_feature_ids(inputs: tuple[Tensor, ...], feature_mask: FeatureMask) -> tuple[Tensor, ...]:
    """Feature ids broadcast to each input's full shape (ids shared across inputs = one group).

    Raises:
        ValueError: a mask that is not integer, does not broadcast, or has the wrong count.
    """
    batch = inputs[0].shape[0]
    if feature_mask is None or isinstance(feature_mask, str):
        if isinstance(feature_mask, str) and feature_mask != "token":
            raise ValueError(
                f"feature_mask must be a tensor, a tuple, None or 'token', got {feature_mask!r}"
            )
        out = []
        offset = 0
        for x in inputs:
            ids = _token_ids(x) if feature_mask == "token" and x.dim() >= 3 else _scalar_ids(x)
            out.append((ids + offset).expand(batch, *x.shape[1:]))
            offset += int(ids.max()) + 1 if ids.numel() else 0
        return tuple(out)
    masks = format_tensor_into_tuples(feature_mask)
    if len(masks) != len(inputs):
        raise ValueError(
            f"feature_mask has {len(masks)} tensors for {len(inputs)} inputs; "
            "give one mask per input"
        )
    out = []
    for i, (m, x) in enumerate(zip(masks, inputs, strict=True)):
        if not isinstance(m, Tensor) or m.is_floating_point() or m.dtype == torch.bool:
            raise ValueError(f"feature_mask[{i}] must be an integer tensor of group ids")
        ok = is_mask_valid(m, x) and (m.dim() < x.dim() or m.shape[0] in (1, batch))
        if not ok:
            hint = ""
            if m.dim() == x.dim() and 1 < m.shape[0] < batch and batch % m.shape[0] == 0:
                hint = (
                    f". The inputs have {batch // m.shape[0]} × {m.shape[0]} rows: a wrapper "
                    "such as Captum's sensitivity_max repeated the examples but not "
                    "feature_mask; give the mask dimension 0 of size 1 (shared by all "
                    "examples) instead"
                )
            raise ValueError(
                f"feature_mask[{i}] of shape {tuple(m.shape)} does not broadcast to its input "
                f"of shape {tuple(x.shape)}: give each dimension the input's size or 1 "
                f"(dimension 0: 1 or the batch size){hint}"
            )
        if bool((m < 0).any()):
            raise ValueError(f"feature_mask[{i}] has negative ids; group ids must be >= 0")
        out.append(torch.broadcast_to(m.to(x.device), x.shape))
    return tuple(out)


def dense_groups(
    raw: tuple[Tensor, ...], keep: tuple[Tensor | None, ...]
) -> tuple[tuple[Tensor, ...], Tensor]:
    """Relabel each example's feature ids as ``0..G_b-1``, ``-1`` for elements not kept.

    Args:
        raw: feature ids, full shape per input.
        keep: per input, a bool tensor broadcastable to it (False = padding) or None.

    Returns:
        The dense ids per input and ``(B, G)`` with the original id of each dense group
        (``-1`` where example ``b`` has fewer groups).
    """
    batch = raw[0].shape[0]
    kept = []
    for ids, k in zip(raw, keep, strict=True):
        if k is None:
            kept.append(ids)
        else:
            kept.append(
                torch.where(torch.broadcast_to(k, ids.shape), ids, torch.full_like(ids, -1))
            )
    flat = torch.cat([k.reshape(batch, -1) for k in kept], dim=1)
    uniques = [torch.unique(row[row >= 0]) for row in flat]
    n_groups = max((len(u) for u in uniques), default=0)
    table = torch.full((batch, n_groups), -1, dtype=torch.long, device=flat.device)
    dense_flat = torch.full_like(flat, -1)
    for b, u in enumerate(uniques):
        table[b, : len(u)] = u
        sel = flat[b] >= 0
        dense_flat[b, sel] = torch.searchsorted(u, flat[b, sel])
    out = []
    start = 0
    for k in kept:
        n = k[0].numel() if k.dim() else 1
        out.append(dense_flat[:, start : start + n].reshape(k.shape))
        start += n
    return tuple(out), table
