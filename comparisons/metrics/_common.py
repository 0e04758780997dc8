"""Shared pieces of the metrics: the model-call types and the input checks.

Private to :mod:`comparisons.metrics`; the package re-exports :data:`ProbFn` and
:data:`StateFn`.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor

ProbFn = Callable[[list[Tensor]], Tensor]
"""Maps a list of ``B`` variable-length 1-D id tensors to ``(B, C)`` class probabilities."""

StateFn = Callable[[list[Tensor]], list[Tensor]]
"""Maps a list of 1-D id tensors to one hidden state each: ``(T, D)`` or pooled ``(D,)``."""


def _check_sequence(ids: Tensor, special: Tensor) -> None:
    if ids.dim() != 1:
        raise ValueError(f"ids must be 1-D, got shape {tuple(ids.shape)}")
    if special.dtype != torch.bool or special.shape != ids.shape:
        raise ValueError(f"special must be a bool tensor of shape {tuple(ids.shape)}")


def _target_probs(prob_fn: ProbFn, seqs: list[Tensor], target: int) -> Tensor:
    """``p(seq)_target`` for every sequence, in one ``prob_fn`` call, as float64."""
    with torch.no_grad():
        probs = prob_fn(seqs)
    if probs.dim() != 2 or probs.shape[0] != len(seqs):
        raise ValueError(
            f"prob_fn must return (B, C) = ({len(seqs)}, C) probabilities, "
            f"got shape {tuple(probs.shape)}"
        )
    if not 0 <= target < probs.shape[1]:
        raise ValueError(f"target {target} out of range for {probs.shape[1]} classes")
    return probs[:, target].detach().double().cpu()


def _mask_of(positions: Tensor, length: int, device: torch.device) -> Tensor:
    mask = torch.zeros(length, dtype=torch.bool, device=device)
    mask[positions.to(device)] = True
    return mask


def _check_order(order: Tensor, special: Tensor) -> None:
    if order.dim() != 1 or order.dtype not in (torch.int64, torch.int32):
        raise ValueError("order must be a 1-D integer tensor of positions")
    if order.numel() == 0:
        return
    if int(order.min()) < 0 or int(order.max()) >= special.numel():
        raise ValueError("order holds a position outside the sequence")
    if torch.unique(order).numel() != order.numel():
        raise ValueError("order holds a position twice")
    if bool(special[order].any()):
        raise ValueError("order holds a special position; special tokens are never removed")
