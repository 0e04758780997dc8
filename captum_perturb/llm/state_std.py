"""σ_S of a causal LM's next-token log-probabilities over a corpus."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from captum_perturb._utils.io import atomic_write
from captum_perturb.attr.state_std import estimate_state_std
from captum_perturb.llm import common as _llm


def next_token_state_std(
    model: nn.Module,
    tokenizer: Any,
    texts: Sequence[str],
    *,
    batch_size: int = 16,
    cache_dir: str | Path | None = None,
) -> Tensor:
    r"""σ_S of a causal LM's next-token log-probabilities over a corpus, ``(V,)``.

    The state :class:`~captum_perturb.LLMPerturbationEntropyAttribution` explains is the
    log-probability vector over the vocabulary at an answer position. Its σ_S is the
    population std of each vocabulary entry's log-probability over every (non-padding)
    position of every text — :func:`estimate_state_std` with ``token_reduction="pool"``,
    since the state is one position's vector, not a sentence mean. The texts are
    tokenised as the tokenizer does by default (a BOS where it adds one), right-padded
    (no pad token needed), and run with the KV cache off.

    Args:
        model: a causal LM returning ``.logits`` ``(B, L, V)``.
        tokenizer: its tokenizer.
        texts: prompts like the ones you explain (a few hundred to a few thousand).
        batch_size: texts per forward pass.
        cache_dir: keep the result in ``cache_dir`` under a key hashed from the model's
            weights and the tokenised corpus, and load it from there next time (as
            :func:`~captum_perturb.layer_state_std` does).

    Returns:
        ``(V,)`` σ_S in float32; vocabulary entries constant over the corpus get ``inf``
        (left out of the loss, with a warning).
    """
    if not texts:
        raise ValueError("texts is empty: pass a corpus of prompts")
    device = next(model.parameters()).device
    ids, mask = _llm.encode_corpus(tokenizer, texts)
    path = None if cache_dir is None else _llm.std_cache_path(model, ids, mask, cache_dir)
    if path is not None and path.is_file():
        return torch.load(path, map_location=device)
    ids, mask = ids.to(device), mask.to(device)

    def log_probs(input_ids: Tensor, attention_mask: Tensor) -> Tensor:
        return torch.log_softmax(_llm.run_model(model, input_ids, attention_mask).float(), -1)

    std = estimate_state_std(
        log_probs,
        ids,
        (mask,),
        attention_mask=mask,
        token_reduction="pool",
        batch_size=batch_size,
    ).float()
    if path is not None:
        path.parent.mkdir(parents=True, exist_ok=True)
        atomic_write(path, lambda f: torch.save(std.cpu(), f))
    return std
