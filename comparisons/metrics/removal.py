"""Token removal strategies and the ranking of tokens by their attribution.

How a token is removed is a strategy object (:class:`MaskRemover`,
:class:`DeleteRemover`, both satisfying the :class:`Remover` protocol), so that every
metric can be reported under both removal styles. :func:`tie_orders` orders the
non-special tokens by their score, most important first, ties in random orders, and
:func:`abstains` says when an explanation ranks nothing.
"""

from __future__ import annotations

from typing import Any, Protocol

import torch
from torch import Tensor


class Remover(Protocol):
    """How tokens are taken out of a sequence (a strategy shared by all metrics)."""

    name: str

    def apply(self, ids: Tensor, special: Tensor, drop: Tensor) -> Tensor:
        """Remove the tokens marked by ``drop``.

        Args:
            ids: ``(T,)`` token ids, special tokens included.
            special: ``(T,)`` bool, True at special tokens.
            drop: ``(T,)`` bool, True at the tokens to remove; never True on a special one.

        Returns:
            The new 1-D id tensor (its length may differ from ``T``).
        """
        ...


def _check_drop(ids: Tensor, special: Tensor, drop: Tensor) -> None:
    if drop.dtype != torch.bool or drop.shape != ids.shape:
        raise ValueError(f"drop must be a bool tensor of shape {tuple(ids.shape)}")
    if bool((drop & special).any()):
        raise ValueError("drop is True on a special token; special tokens are never removed")


class MaskRemover:
    """Replaces each removed token by ``mask_id``; the length is preserved.

    Args:
        mask_id: The id that stands for a removed token (e.g. the tokenizer's [MASK]).

    Example:
        >>> ids = torch.tensor([0, 5, 6, 1])
        >>> special = torch.tensor([True, False, False, True])
        >>> MaskRemover(2).apply(ids, special, torch.tensor([False, True, False, False]))
        tensor([0, 2, 6, 1])
    """

    name = "mask"

    def __init__(self, mask_id: int) -> None:
        self.mask_id = int(mask_id)

    def apply(self, ids: Tensor, special: Tensor, drop: Tensor) -> Tensor:
        """See :meth:`Remover.apply`."""
        _check_drop(ids, special, drop)
        return ids.masked_fill(drop, self.mask_id)


class _Tokenizer(Protocol):
    def convert_ids_to_tokens(self, ids: list[int]) -> list[str]: ...

    def convert_tokens_to_string(self, tokens: list[str]) -> str: ...

    def __call__(self, text: str) -> Any: ...


class DeleteRemover:
    """Deletes the removed tokens (ferret's default removal).

    Without a tokenizer the ids are simply dropped (specials kept in place). With a
    Hugging Face tokenizer the remaining *non-special* tokens are turned back into text
    with ``convert_tokens_to_string`` and re-tokenised with ``tokenizer(text)``, so the
    tokenizer re-adds its special tokens and word pieces re-merge as they would for a
    user's text (an empty text gives ``[CLS] [SEP]``). This mirrors ferret, which
    decodes the kept ids and re-tokenises the string.

    Args:
        tokenizer: Optional Hugging Face tokenizer.
    """

    name = "delete"

    def __init__(self, tokenizer: _Tokenizer | None = None) -> None:
        self.tokenizer = tokenizer

    def apply(self, ids: Tensor, special: Tensor, drop: Tensor) -> Tensor:
        """See :meth:`Remover.apply`."""
        _check_drop(ids, special, drop)
        if self.tokenizer is None:
            return ids[~drop]
        kept = ids[~drop & ~special].tolist()
        text = self.tokenizer.convert_tokens_to_string(self.tokenizer.convert_ids_to_tokens(kept))
        new_ids = self.tokenizer(text)["input_ids"]
        return torch.as_tensor(list(new_ids), dtype=ids.dtype, device=ids.device)


N_TIE_ORDERS = 16
"""Random orders of the tied tokens that a ranking with ties is scored over."""


def _ranking_key(scores: Tensor, special: Tensor, signed: bool) -> tuple[Tensor, Tensor]:
    """Positions of the non-special tokens and the key they are ranked by (float64)."""
    if scores.dim() != 1 or special.shape != scores.shape or special.dtype != torch.bool:
        raise ValueError("scores must be 1-D and special a bool tensor of the same shape")
    positions = torch.nonzero(~special).flatten()
    key = scores.detach()[positions].double().cpu()
    if bool(torch.isnan(key).any()):
        raise ValueError("scores contain NaN at a non-special position")
    return positions, key if signed else key.abs()


def abstains(scores: Tensor, special: Tensor, signed: bool) -> bool:
    """Whether an explanation ranks nothing: ≥ 2 non-special tokens, all tied.

    Tied under the ranking's key: the signed score (``signed=True``) or ``|score|``. An
    all-zero explanation abstains under both.

    Example:
        >>> special = torch.tensor([True, False, False, True])
        >>> abstains(torch.tensor([5.0, 0.0, 0.0, 1.0]), special, signed=True)
        True
        >>> abstains(torch.tensor([0.0, 1.0, -1.0, 0.0]), special, signed=True)
        False
        >>> abstains(torch.tensor([0.0, 1.0, -1.0, 0.0]), special, signed=False)
        True
    """
    _, key = _ranking_key(scores, special, signed)
    return key.numel() >= 2 and bool((key == key[0]).all())


def tie_orders(
    scores: Tensor,
    special: Tensor,
    signed: bool,
    n_orders: int = N_TIE_ORDERS,
    seed: int = 0,
) -> list[Tensor]:
    r"""Positions of the non-special tokens, most important first, ties in random order.

    Tokens are sorted by descending ``score`` (``signed=True``: evidence for the class
    first, evidence against it last) or descending ``|score|`` (``signed=False``).
    Without ties there is one order. With ties, ``n_orders`` orders: each sorts a seeded
    random permutation of the tokens by the key (a stable sort), so tied tokens come in
    a uniformly random order — never in reading order — and a metric averaged over the
    orders estimates its expectation over the orders of the ties (unbiased; for an
    explanation that ties everything, the expected score of a random ranking).

    Args:
        scores: ``(T,)`` attribution per token; values at special positions are ignored.
        special: ``(T,)`` bool, True at special tokens.
        signed: Rank by the signed score rather than its absolute value.
        n_orders: Orders drawn when there are ties.
        seed: Seeds the orders (``torch.Generator().manual_seed(seed)``).

    Returns:
        One or ``n_orders`` ``(n,)`` long tensors of positions.

    Raises:
        ValueError: on a shape mismatch or a NaN score at a non-special position.

    Example:
        >>> scores = torch.tensor([9.0, 0.1, -0.5, 0.3, 9.0])
        >>> special = torch.tensor([True, False, False, False, True])
        >>> tie_orders(scores, special, signed=True)
        [tensor([3, 1, 2])]
        >>> tie_orders(scores, special, signed=False)
        [tensor([2, 3, 1])]
        >>> len(tie_orders(torch.zeros(5), special, signed=True, n_orders=4))
        4
    """
    positions, key = _ranking_key(scores, special, signed)
    if n_orders < 1:
        raise ValueError(f"n_orders must be >= 1, got {n_orders}")
    if len(torch.unique(key)) == len(key):
        return [positions[torch.sort(key, descending=True, stable=True).indices]]
    gen = torch.Generator().manual_seed(seed)
    orders = []
    for _ in range(n_orders):
        perm = torch.randperm(len(key), generator=gen)
        orders.append(positions[perm[torch.sort(key[perm], descending=True, stable=True).indices]])
    return orders
