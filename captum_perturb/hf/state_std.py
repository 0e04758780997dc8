"""σ_S for the one-line :func:`~captum_perturb.explain`: from a corpus (cached on disk),
the packaged statistics, or the reference fallback with a warning."""

from __future__ import annotations

import hashlib
import os
from collections.abc import Callable
from pathlib import Path

import torch
from torch import Tensor

from captum_perturb._utils.fingerprint import cache_key
from captum_perturb._utils.io import atomic_write
from captum_perturb.hf.models import HFModel, call_model, side_args

#: what a user reads when no corpus was given and nothing is packaged for the model
FALLBACK_NOTE = (
    "explain: no corpus= given, so σ_S (the explained output's spread over a corpus, which "
    "puts every text on one scale) is each text's own mean square, the reference code's "
    "fallback: the scores rank the words of a text, but their size is not comparable "
    "across texts or models. Pass corpus=[...] with a few hundred texts of your domain (a "
    "list or a datasets column): it is estimated once and cached on disk."
)
FALLBACK = "mean square fallback"
CORPUS = "corpus"
PACKAGED = "packaged state_std"


def cache_folder(cache_dir: str | Path | None) -> Path:
    """``cache_dir``, else ``$CAPTUM_PERTURB_CACHE/state_std``, else
    ``~/.cache/captum_perturb/state_std``."""
    if cache_dir is not None:
        return Path(cache_dir)
    root = os.environ.get("CAPTUM_PERTURB_CACHE")
    base = Path(root) if root else Path.home() / ".cache" / "captum_perturb"
    return base / "state_std"


def cached(
    hf: HFModel,
    what: str,
    corpus: list[str],
    cache_dir: str | Path | None,
    compute: Callable[[], Tensor],
) -> Tensor:
    """``compute()``, kept in the cache folder under a key of the weights, ``what`` (the
    explained output) and the corpus's texts."""
    texts = hashlib.sha256("\x1f".join(corpus).encode("utf-8")).hexdigest()
    key = cache_key(hf.model, {}, options=f"{what}|{texts}")
    path = cache_folder(cache_dir) / f"{what}-{key}.pt"
    if path.exists():
        return torch.load(path, map_location="cpu", weights_only=True)
    std = compute()
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write(path, lambda f: torch.save(std.cpu(), f))
    return std


def _corpus_encoding(hf: HFModel, corpus: list[str]) -> dict[str, Tensor]:
    enc = hf.tokenizer(
        corpus, return_tensors="pt", padding=True, truncation=True, return_special_tokens_mask=True
    )
    device = next(hf.model.parameters()).device
    return {k: v.to(device) for k, v in enc.items() if isinstance(v, Tensor)}


def classifier_logit_std(
    hf: HFModel, corpus: list[str] | None, cache_dir: str | Path | None
) -> tuple[Tensor | None, str]:
    """``(C,)`` each class logit's std over the corpus, or None (the fallback)."""
    if corpus is None:
        return None, FALLBACK
    from captum_perturb.attr.state_std import estimate_state_std

    def compute() -> Tensor:
        enc = _corpus_encoding(hf, corpus)
        return estimate_state_std(
            lambda ids, *args: call_model(hf.model, ids, *args).logits,
            enc["input_ids"],
            side_args(enc),
        )

    return cached(hf, "logits", corpus, cache_dir, compute), CORPUS


def encoder_state_std(
    hf: HFModel, corpus: list[str] | None, cache_dir: str | Path | None
) -> tuple[Tensor | None, str]:
    """σ_S of the last hidden state (over words, special tokens left out): from the
    corpus, the packaged statistics, or None (the fallback)."""
    if corpus is not None:
        from captum_perturb.attr.state_std import estimate_state_std

        def compute() -> Tensor:
            enc = _corpus_encoding(hf, corpus)
            words = enc["attention_mask"] * (1 - enc["special_tokens_mask"])
            return estimate_state_std(
                lambda ids, *args: call_model(hf.model, ids, *args).last_hidden_state,
                enc["input_ids"],
                side_args(enc),
                attention_mask=words,
            )

        return cached(hf, "last_hidden_state", corpus, cache_dir, compute), CORPUS
    from captum_perturb.layers.packaged_std import packaged_state_std

    packaged = packaged_state_std(hf.model)
    if packaged is not None:
        return packaged.std[max(packaged.std)], PACKAGED
    return None, FALLBACK


def layers_state_std(
    hf: HFModel, corpus: list[str] | None, cache_dir: str | Path | None
) -> tuple[dict[int, Tensor] | None, str]:
    """``{layer: σ_S}`` from the corpus (:func:`~captum_perturb.layer_state_std`, cached),
    or None: ``explain_layers`` then uses the packaged statistics or the fallback."""
    if corpus is None:
        return None, FALLBACK
    from captum_perturb.layers.state_std import layer_state_std

    enc = _corpus_encoding(hf, corpus)
    std = layer_state_std(hf.model, enc, cache_dir=cache_folder(cache_dir))
    return dict(std), CORPUS


def llm_state_std(
    hf: HFModel, corpus: list[str] | None, cache_dir: str | Path | None
) -> tuple[Tensor | None, str]:
    """``(V,)`` σ_S of the next-token log-probabilities over the corpus
    (:func:`~captum_perturb.next_token_state_std`, cached), or None (the fallback)."""
    if corpus is None:
        return None, FALLBACK
    from captum_perturb.llm.state_std import next_token_state_std

    std = next_token_state_std(hf.model, hf.tokenizer, corpus, cache_dir=cache_folder(cache_dir))
    return std, CORPUS
