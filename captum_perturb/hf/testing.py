"""Tiny tokenizers for examples and tests: a fast WordPiece tokenizer over a given
vocabulary, with BERT's special tokens, so that whole words and word pieces behave as a
real checkpoint's do. For contract tests and docstrings, never for claims about quality."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

SPECIALS = ("[PAD]", "[UNK]", "[CLS]", "[SEP]")


def word_tokenizer(words: Sequence[str]) -> Any:
    """A ``PreTrainedTokenizerFast`` whose vocabulary is :data:`SPECIALS` then ``words``
    (``"##piece"`` entries continue a word, as in BERT); it adds [CLS] … [SEP]."""
    import transformers
    from tokenizers import Tokenizer, models, pre_tokenizers, processors

    vocab = {w: i for i, w in enumerate([*SPECIALS, *words])}
    core = Tokenizer(models.WordPiece(vocab, unk_token="[UNK]"))
    core.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    core.post_processor = processors.TemplateProcessing(
        single="[CLS] $A [SEP]",
        pair="[CLS] $A [SEP] $B [SEP]",
        special_tokens=[("[CLS]", vocab["[CLS]"]), ("[SEP]", vocab["[SEP]"])],
    )
    return transformers.PreTrainedTokenizerFast(
        tokenizer_object=core,
        unk_token="[UNK]",
        pad_token="[PAD]",
        cls_token="[CLS]",
        sep_token="[SEP]",
        model_max_length=64,
    )
