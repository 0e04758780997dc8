"""Whole words, the unit a reader reads: which tokens of a tokenised text make each word.

A fast (Rust) tokenizer knows the word of every token (``word_ids``) and the characters
of every word (``word_to_chars``); special tokens belong to no word. A word split into
several tokens (``"seductive"`` → ``"sed", "##uctive"``) is one group of the noise, so it
gets one σ and one score.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor


@dataclass(frozen=True)
class Words:
    """The words of a batch of texts and the token groups they make.

    Attributes:
        words: per text, its words as they appear in the text.
        groups: ``(N, T)`` long, the word index of every token (``-1``: special tokens
            and padding, which are never perturbed).
    """

    words: list[list[str]]
    groups: Tensor


def word_groups(encoding: Any, texts: Sequence[str]) -> Words:
    """Whole-word groups of a batch encoded by a fast tokenizer.

    Args:
        encoding: ``tokenizer(texts, return_tensors="pt", padding=True)`` of a fast
            tokenizer (a ``BatchEncoding`` with ``word_ids``).
        texts: the texts that were encoded.

    Raises:
        TypeError: the tokenizer is not a fast one (no ``word_ids``).
        ValueError: a text without any word.
    """
    if not getattr(encoding, "is_fast", False) or not hasattr(encoding, "word_ids"):
        raise TypeError(
            "whole words need a fast tokenizer (AutoTokenizer.from_pretrained(..., "
            "use_fast=True)): a slow one does not say which word each token belongs to"
        )
    ids = encoding["input_ids"]
    groups = torch.full(ids.shape, -1, dtype=torch.long)
    words: list[list[str]] = []
    for i, text in enumerate(texts):
        word_ids = encoding.word_ids(i)
        seen: dict[int, int] = {}
        spelled: list[str] = []
        for position, w in enumerate(word_ids):
            if w is None:
                continue
            if w not in seen:
                seen[w] = len(spelled)
                span = encoding.word_to_chars(i, w)
                spelled.append(text[span.start : span.end])
            groups[i, position] = seen[w]
        if not spelled:
            raise ValueError(f"text {i} ({text!r}) has no word to explain")
        words.append(spelled)
    return Words(words=words, groups=groups)
