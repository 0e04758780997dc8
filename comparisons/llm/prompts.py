"""The LLM study's examples: which prompts it asks and the answers it explains.

Owns the choice of the examples of :mod:`comparisons.llm.study`: the prompt of SST-2 dev
sentence ``i`` is the first half of its words (:func:`first_half`; sentences of fewer than
:data:`MIN_WORDS` words are skipped), the target is the model's own greedy continuation
(:func:`greedy_answer`), and :func:`build_examples` keeps the usable ones as
:class:`LLMExample`. Also σ_S's corpus of train prompts (:func:`corpus_prompts`).
"""

from __future__ import annotations

import zlib
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn

MIN_WORDS = 4
MAX_NEW_TOKENS = 8
CORPUS_SIZE = 500


@dataclass(frozen=True)
class LLMExample:
    """One prompt and the model's answer to it.

    Attributes:
        id: ``dev-NNNN``, NNNN the row of the sentence in ``dev.tsv``.
        prompt: the first half of the sentence's words.
        prompt_ids: ``(P,)`` its token ids, BOS first.
        features: ``(n,)`` positions in ``prompt_ids`` of the explained tokens (not BOS).
        tokens: the explained tokens, readable.
        target: ``(T,)`` the greedy continuation's ids (no EOS).
        continuation: its text.
        seed: this example's seed (from the run's seed and ``id``).
    """

    id: str
    prompt: str
    prompt_ids: Tensor
    features: Tensor
    tokens: list[str]
    target: Tensor
    continuation: str
    seed: int


def example_seed(seed: int, example_id: str) -> int:
    """A seed per example that does not depend on the order examples are run in."""
    return zlib.crc32(f"{seed}:{example_id}".encode()) & 0x7FFFFFFF


def first_half(sentence: str) -> str | None:
    """The first half of the words of ``sentence``; None under :data:`MIN_WORDS` words."""
    words = sentence.split()
    return " ".join(words[: len(words) // 2]) if len(words) >= MIN_WORDS else None


@torch.no_grad()
def greedy_answer(model: nn.Module, tokenizer: Any, prompt_ids: Tensor) -> Tensor:
    """The greedy continuation of ``prompt_ids`` ``(P,)``: at most :data:`MAX_NEW_TOKENS`
    new ids, cut before the first EOS."""
    ids = prompt_ids.unsqueeze(0)
    out = model.generate(  # type: ignore[operator]
        input_ids=ids,
        attention_mask=torch.ones_like(ids),
        max_new_tokens=MAX_NEW_TOKENS,
        do_sample=False,
        pad_token_id=tokenizer.pad_token_id,
    )[0, ids.shape[1] :]
    stop = (out == tokenizer.eos_token_id).nonzero()
    return out[: int(stop[0])] if len(stop) else out


def _example_or_skip(
    model: nn.Module, tokenizer: Any, i: int, sentence: str, seed: int
) -> LLMExample | str:
    """The example of dev sentence ``i``, or why it is skipped (a key of
    :func:`build_examples`'s counts)."""
    from captum.attr import TextTokenInput

    bos = tokenizer.bos_token_id
    prompt = first_half(sentence)
    if prompt is None:
        return "short"
    ids = torch.tensor(tokenizer.encode(prompt), dtype=torch.long)
    features = (ids != bos).nonzero().flatten()
    if len(features) < 2:
        return "one_token"
    target = greedy_answer(model, tokenizer, ids)
    if len(target) == 0:
        return "empty"
    ex_id = f"dev-{i:04d}"
    return LLMExample(
        id=ex_id,
        prompt=prompt,
        prompt_ids=ids,
        features=features,
        # Captum's names of the prompt's features, as its LLM results show them
        tokens=TextTokenInput(prompt, tokenizer, skip_tokens=[bos]).values,
        target=target,
        continuation=tokenizer.decode(target),
        seed=example_seed(seed, ex_id),
    )


def build_examples(
    model: nn.Module, tokenizer: Any, sentences: Sequence[str], n: int, seed: int = 0
) -> tuple[list[LLMExample], dict[str, int]]:
    """The first ``n`` usable prompts of ``sentences`` (dev) and the model's answers.

    Returns:
        The examples and how many sentences were skipped before the ``n``-th, by reason:
        ``short`` (under :data:`MIN_WORDS` words), ``one_token`` (a prompt of one token:
        no k to score), ``empty`` (the continuation is EOS at once).
    """
    examples: list[LLMExample] = []
    skipped = {"short": 0, "one_token": 0, "empty": 0}
    for i, sentence in enumerate(sentences):
        if len(examples) == n:
            break
        got = _example_or_skip(model, tokenizer, i, sentence, seed)
        if isinstance(got, str):
            skipped[got] += 1
            continue
        examples.append(got)
    return examples, skipped


def corpus_prompts(sentences: Sequence[str], size: int = CORPUS_SIZE) -> list[str]:
    """The first-half prompts of the first ``size`` usable sentences (σ_S's corpus)."""
    prompts = [p for p in map(first_half, sentences) if p is not None]
    return prompts[:size]
