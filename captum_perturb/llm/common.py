"""The pieces of the LLM entry point: which prompt tokens make which feature, the rows of
one batched estimator call, and the state each row explains.

A prompt of ``P`` tokens and a target of ``T`` tokens make one sequence of ``P + T``
tokens, run with teacher forcing. Every row of the estimator's batch perturbs the same
prompt embeddings; row 0 explains the next-token log-probabilities at all ``T`` target
positions (``seq_attr``), row ``1 + t`` those at target position ``t`` alone (row ``t``
of ``token_attr``).
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch
from captum.attr import TextTemplateInput, TextTokenInput
from torch import Tensor, nn

from captum_perturb._utils.fingerprint import cache_key
from captum_perturb._utils.hf import call_without_cache
from captum_perturb._utils.hooks import replace

_OPEN, _CLOSE = "\ue000", "\ue001"  # private-use code points: never in real text


def token_features(inp: TextTokenInput) -> tuple[Tensor, Tensor]:
    """``(1, P)`` prompt ids and ``(P,)`` the interpretable feature of each (-1: skipped)."""
    ids = inp.to_model_input()
    if inp.itp_mask is None:
        return ids, torch.arange(ids.shape[1])
    keep = inp.itp_mask[0].bool()
    feature = torch.full((ids.shape[1],), -1, dtype=torch.long)
    feature[keep] = torch.arange(int(keep.sum()))
    return ids, feature


def template_spans(inp: TextTemplateInput) -> tuple[str, list[tuple[int, int, int]]]:
    """The prompt text and ``(start, end, value index)`` of every segment in it.

    The template is formatted with a marker in place of each value, and the markers are
    replaced by the values while counting characters, so a value that the template uses
    twice gets two spans.

    Raises:
        ValueError: the template changes its values (the text cannot be located).
    """
    n = len(inp.values)
    marks = [f"{_OPEN}{i}{_CLOSE}" for i in range(n)]
    if inp.dict_keys:
        marked = inp.format_fn(**dict(zip(inp.dict_keys, marks, strict=True)))
    else:
        marked = inp.format_fn(*marks)
    pieces: list[str] = []
    spans: list[tuple[int, int, int]] = []
    pos = 0
    for part in re.split(f"({_OPEN}\\d+{_CLOSE})", marked):
        if part.startswith(_OPEN) and part.endswith(_CLOSE):
            i = int(part[1:-1])
            spans.append((pos, pos + len(inp.values[i]), i))
            part = inp.values[i]
        pieces.append(part)
        pos += len(part)
    text = inp.to_model_input()
    if "".join(pieces) != text:
        raise ValueError(
            "the TextTemplateInput's template transforms its values, so its segments cannot "
            "be found in the prompt; use a template that inserts the values unchanged"
        )
    return text, spans


def template_features(inp: TextTemplateInput, tokenizer: Any) -> tuple[Tensor, Tensor]:
    """``(1, P)`` prompt ids and the feature of each token: the interpretable feature of
    the segment it overlaps most (-1: template text or special tokens)."""
    if not getattr(tokenizer, "is_fast", False):
        raise TypeError(
            "TextTemplateInput needs a fast tokenizer (character offsets locate the "
            "segments); load it with AutoTokenizer.from_pretrained(..., use_fast=True)"
        )
    text, spans = template_spans(inp)
    enc = tokenizer(text, return_offsets_mapping=True, return_tensors="pt")
    offsets = enc["offset_mapping"][0].tolist()
    feature = torch.full((len(offsets),), -1, dtype=torch.long)
    for p, (s, e) in enumerate(offsets):
        overlap = [(min(e, b) - max(s, a), i) for a, b, i in spans]
        best = max(overlap, default=(0, -1))
        if e > s and best[0] > 0:
            i = best[1]
            feature[p] = inp.formatted_mask[i] if inp.mask is not None else i
    return enc["input_ids"], feature


def prompt_features(inp: Any, tokenizer: Any) -> tuple[Tensor, Tensor]:
    """Prompt ids ``(1, P)`` and each token's feature, for either supported input."""
    if isinstance(inp, TextTokenInput):
        return token_features(inp)
    if isinstance(inp, TextTemplateInput):
        return template_features(inp, tokenizer)
    raise TypeError(
        f"inp must be a captum.attr.TextTokenInput or TextTemplateInput, got {type(inp).__name__}"
    )


def row_mask(n_target: int, per_token: bool) -> Tensor:
    """``(R, T, 1)`` which target positions each row explains: row 0 all of them, row
    ``1 + t`` (with ``per_token``) position ``t``."""
    rows = [torch.ones(n_target)]
    if per_token:
        rows += list(torch.eye(n_target))
    return torch.stack(rows).unsqueeze(-1)


def run_model(model: nn.Module, ids: Tensor, attention_mask: Tensor | None = None) -> Tensor:
    """Logits ``(n, L, V)`` of a causal LM for ids ``(n, L)``, KV cache off; no padding
    unless an ``attention_mask`` says where."""
    mask = torch.ones_like(ids) if attention_mask is None else attention_mask
    out = call_without_cache(model, input_ids=ids, attention_mask=mask)
    logits = out.logits if hasattr(out, "logits") else out
    if not isinstance(logits, Tensor):
        raise TypeError(
            f"the model returned {type(out).__name__} without .logits; a causal LM must "
            "return logits of shape (batch, tokens, vocabulary)"
        )
    return logits[:, 0] if logits.dim() == 4 else logits  # Llama-4 style (B, 1, L, V)


def answer_log_probs(
    logits: Tensor, n_prompt: int, n_target: int, dtype: torch.dtype = torch.float32
) -> Tensor:
    """``(n, T, V)`` next-token log-probs at the ``T`` answer positions of a teacher-forced
    sequence (prompt of ``n_prompt`` tokens, then the answer): position ``P - 1 + t``
    predicts answer token ``t``."""
    at = logits[:, n_prompt - 1 : n_prompt - 1 + n_target]
    return torch.log_softmax(at.to(dtype), dim=-1)


def answer_token_log_probs(logits: Tensor, n_prompt: int, answer: Tensor) -> Tensor:
    """``(n, T)`` float64 log-probability of each answer token (teacher forcing)."""
    lp = answer_log_probs(logits, n_prompt, len(answer), torch.float64)
    return lp.gather(2, answer.to(lp.device).view(1, -1, 1).expand(lp.shape[0], -1, 1))[..., 0]


def next_token_state(
    model: nn.Module, layer: nn.Module, ids: Tensor, n_prompt: int, n_target: int
) -> Callable[[tuple[Tensor, ...], Tensor], Tensor]:
    """The state function of the estimator: perturbed embeddings -> ``(n, T, V)`` log-probs
    of the next token at the ``T`` target positions (teacher forcing)."""

    def state_fn(perturbed: tuple[Tensor, ...], rows: Tensor) -> Tensor:
        done: list[bool] = []
        batch_ids = ids.expand(perturbed[0].shape[0], -1)
        with replace(layer, perturbed[0], done):
            logits = run_model(model, batch_ids)
        if not done:
            raise RuntimeError(
                f"the embedding layer {type(layer).__name__} did not run: pass the module "
                "that turns input_ids into embeddings as layer="
            )
        return answer_log_probs(logits, n_prompt, n_target)

    return state_fn


def context_size(model: nn.Module) -> int | None:
    """The model's maximum sequence length from its config, if it says."""
    config = getattr(model, "config", None)
    for key in ("max_position_embeddings", "n_positions", "n_ctx"):
        value = getattr(config, key, None)
        if isinstance(value, int):
            return value
    return None


def encode_corpus(tokenizer: Any, texts: Sequence[str]) -> tuple[Tensor, Tensor]:
    """``(N, L)`` ids and attention mask of ``texts``, tokenised one by one (special tokens
    as the tokenizer adds them) and right-padded with id 0: a causal model's real
    positions never see the padding after them, so its id does not matter."""
    rows = [list(tokenizer(t)["input_ids"]) for t in texts]
    width = max(len(r) for r in rows)
    ids = torch.zeros(len(rows), width, dtype=torch.long)
    mask = torch.zeros(len(rows), width, dtype=torch.long)
    for i, r in enumerate(rows):
        ids[i, : len(r)] = torch.tensor(r, dtype=torch.long)
        mask[i, : len(r)] = 1
    return ids, mask


def std_cache_path(model: nn.Module, ids: Tensor, mask: Tensor, cache_dir: str | Path) -> Path:
    """The σ_S cache file of :func:`~captum_perturb.next_token_state_std`: a key hashed
    from the model's weights and the tokenised corpus."""
    key = cache_key(model, {"input_ids": ids, "attention_mask": mask})
    return Path(cache_dir) / f"next-token-std-{key}.pt"
