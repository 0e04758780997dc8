"""The shift of a hidden state when the top tokens are removed (:func:`state_shift`)."""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import Tensor

from ._common import StateFn, _check_order, _check_sequence, _mask_of
from .removal import Remover


def state_shift(
    state_fn: StateFn,
    ids: Tensor,
    special: Tensor,
    order: Tensor,
    remover: Remover,
    *,
    ks: Sequence[int],
    reference: Tensor,
    std: Tensor | None,
    pooled: bool,
) -> list[float]:
    r"""How far a hidden state moves when the first ``k`` tokens of ``order`` are removed.

    With :math:`s` = ``reference`` (the state of the full input) and :math:`s'_k` the
    state after removing :math:`o_1, \dots, o_k`:

    .. math::

        d_k = \frac{1}{TD} \sum_{t, d} \Big(\frac{s'_{k,td} - s_{td}}{\sigma_{td}}\Big)^2
        \quad \text{(token states)}, \qquad
        d_k = 1 - \cos(s'_k, s) \quad \text{(pooled)}.

    Token states need a length-preserving remover (:class:`MaskRemover`): deleting a
    token shifts every later position, so the element-wise difference is meaningless.
    One ``state_fn`` call for all ``ks``.

    Args:
        state_fn: See :data:`StateFn`.
        ids: ``(T,)`` token ids, specials included.
        special: ``(T,)`` bool, True at special tokens.
        order: ``(n_o,)`` distinct non-special positions, most important first.
        remover: How tokens are removed.
        ks: Numbers of removed tokens, each in ``[0, n_o]``.
        reference: The unperturbed state, ``(T, D)`` or pooled ``(D,)``.
        std: :math:`\sigma`, broadcastable to ``(T, D)`` (e.g. ``(D,)``); None for 1.
            Ignored when ``pooled``.
        pooled: Whether the states are pooled vectors (cosine distance).

    Returns:
        One distance per ``k``; for pooled states NaN where a vector has zero norm.

    Raises:
        ValueError: for a ``k`` out of range, a remover that changes the length with
            token states, or a state whose shape differs from ``reference``.
    """
    _check_sequence(ids, special)
    _check_order(order, special)
    for k in ks:
        if not 0 <= k <= order.numel():
            raise ValueError(f"k={k} out of range [0, {order.numel()}]")
    seqs = [remover.apply(ids, special, _mask_of(order[:k], ids.numel(), ids.device)) for k in ks]
    if not pooled:
        for seq in seqs:
            if seq.numel() != ids.numel():
                raise ValueError(
                    f"token-state distances need a length-preserving remover, but remover "
                    f"{remover.name!r} changed the length from {ids.numel()} to "
                    f"{seq.numel()}; use MaskRemover, or pooled=True"
                )
    if not seqs:
        return []
    with torch.no_grad():
        states = state_fn(seqs)
    if len(states) != len(seqs):
        raise ValueError(f"state_fn returned {len(states)} states for {len(seqs)} sequences")
    ref = reference.detach().double()
    scale = None if std is None or pooled else std.detach().double().to(ref.device)
    out = []
    for state in states:
        s = state.detach().double().to(ref.device)
        if s.shape != ref.shape:
            raise ValueError(
                f"state shape {tuple(s.shape)} differs from reference {tuple(ref.shape)}"
            )
        if pooled:
            norm = float(torch.linalg.vector_norm(s) * torch.linalg.vector_norm(ref))
            out.append(math.nan if norm == 0.0 else 1.0 - float((s * ref).sum()) / norm)
        else:
            diff = s - ref if scale is None else (s - ref) / scale
            out.append(float(diff.pow(2).mean()))
    return out
