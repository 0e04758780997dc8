"""Token removal strategies and the ranking of tokens by their attribution.

How a token is removed is a strategy object (:class:`MaskRemover`,
:class:`DeleteRemover`, both satisfying the :class:`Remover` protocol), so that every
metric can be reported under both removal styles. :func:`rank_tokens` orders the
non-special tokens by their score, most important first.
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


def rank_tokens(scores: Tensor, special: Tensor, signed: bool) -> Tensor:
    r"""Positions of the non-special tokens, most important first.

    Tokens are sorted by descending ``score`` (``signed=True``: evidence for the class
    first, evidence against it last) or descending ``|score|`` (``signed=False``). Ties
    go to the lower position first (a stable sort), so the ranking is deterministic.

    Args:
        scores: ``(T,)`` attribution per token; values at special positions are ignored.
        special: ``(T,)`` bool, True at special tokens.
        signed: Rank by the signed score rather than its absolute value.

    Returns:
        ``(n,)`` long tensor of positions.

    Raises:
        ValueError: on a shape mismatch or a NaN score at a non-special position.

    Example:
        >>> scores = torch.tensor([9.0, 0.1, -0.5, 0.3, 9.0])
        >>> special = torch.tensor([True, False, False, False, True])
        >>> rank_tokens(scores, special, signed=True)
        tensor([3, 1, 2])
        >>> rank_tokens(scores, special, signed=False)
        tensor([2, 3, 1])
    """
    if scores.dim() != 1 or special.shape != scores.shape or special.dtype != torch.bool:
        raise ValueError("scores must be 1-D and special a bool tensor of the same shape")
    positions = torch.nonzero(~special).flatten()
    key = scores.detach()[positions].double()
    if bool(torch.isnan(key).any()):
        raise ValueError("scores contain NaN at a non-special position")
    if not signed:
        key = key.abs()
    order = torch.sort(key, descending=True, stable=True).indices
    return positions[order]
