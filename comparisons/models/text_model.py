"""A Hugging Face text model seen the way attribution methods and metrics need it.

:class:`TextModel` wraps a sequence classifier (explained quantity: the class
probabilities) or an encoder (explained quantity: a hidden state — a layer's token states
or the pooled sentence embedding). Every method of the harness explains the same
function of the *output of the embedding module* (``model.bert.embeddings`` for BERT:
word + position + segment embeddings after LayerNorm — the site of Captum's BERT tutorial
``LayerIntegratedGradients(forward, model.bert.embeddings)`` and the paper's
:math:`x_i`, see ``docs/layers.rst``), so that gradient and perturbation methods,
Captum's ``infidelity`` and ``sensitivity_max`` all see one input space; the metrics see
token ids. Models without such a module (GPT-2) use the word embeddings.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn


class _StopError(Exception):
    """Ends a forward pass once the embedding output is captured."""


@dataclass(frozen=True)
class Example:
    """One tokenised sentence.

    Attributes:
        id: a stable name (``"dev-0005"``), the key of resumable runs.
        text: the sentence.
        label: its gold label, if any.
        input_ids: ``(T,)`` word-piece ids including special tokens.
        special: ``(T,)`` True at [CLS]/[SEP]-like positions (never ranked or removed).
        tokens: the ``T`` word pieces.
    """

    id: str
    text: str
    label: int | None
    input_ids: Tensor
    special: Tensor
    tokens: list[str]


class TextModel:
    """A classifier or an encoder state, with its tokenizer.

    Args:
        model: a Hugging Face model in eval mode (``AutoModelForSequenceClassification`` for
            ``state="probs"``, any encoder for the others).
        tokenizer: its tokenizer.
        state: ``"probs"`` (a classifier's softmax), ``"logits"``, ``"pooled"`` (mean of
            the last layer's token states over real tokens, the sentence-transformers
            embedding) or an int ``k``: encoder layer ``k``'s token states (1-based).
        name: shown in reports.
    """

    def __init__(
        self, model: nn.Module, tokenizer: Any, state: str | int = "probs", name: str = ""
    ):
        if state not in ("probs", "logits", "pooled") and not isinstance(state, int):
            raise ValueError(
                f"state must be 'probs', 'logits', 'pooled' or a layer number, got {state!r}"
            )
        self.model = model
        self.tokenizer = tokenizer
        self.state = state
        self.name = name or type(model).__name__
        word = model.get_input_embeddings()  # type: ignore[operator]
        base = getattr(model, getattr(model, "base_model_prefix", ""), model)
        site = getattr(base, "embeddings", None)
        #: the module whose output methods perturb or differentiate
        self.embeddings: nn.Module = site if isinstance(site, nn.Module) else word
        #: the word-embedding matrix (σ_max of our method is 10 × its std)
        self.word_embeddings: Tensor = word.weight

    # ----------------------------------------------------------------- construction
    @classmethod
    def from_pretrained(cls, where: str | Path, state: str | int = "probs") -> TextModel:
        """Load a local folder or hub id (``AutoModelForSequenceClassification`` for
        ``"probs"``/``"logits"``, ``AutoModel`` otherwise) in eval mode."""
        from transformers import AutoModel, AutoModelForSequenceClassification, AutoTokenizer

        tokenizer = AutoTokenizer.from_pretrained(str(where))
        auto = AutoModelForSequenceClassification if state in ("probs", "logits") else AutoModel
        model = auto.from_pretrained(str(where))
        model.eval()
        return cls(model, tokenizer, state, name=Path(str(where)).name)

    @property
    def is_classifier(self) -> bool:
        """Whether the explained quantity is a class distribution (labels make sense)."""
        return self.state in ("probs", "logits")

    @property
    def encoder_layers(self) -> Sequence[nn.Module]:
        """The transformer blocks, bottom up (BERT-, RoBERTa-, DistilBERT-, GPT-2-like)."""
        m = self.model
        base = getattr(m, getattr(m, "base_model_prefix", ""), m)
        for path in ("encoder.layer", "transformer.layer", "h", "layers"):
            obj: Any = base
            for part in path.split("."):
                obj = getattr(obj, part, None)
                if obj is None:
                    break
            if isinstance(obj, nn.ModuleList):
                return list(obj)
        raise ValueError(f"cannot find the transformer blocks of {type(m).__name__}")

    # ----------------------------------------------------------------- tokens
    def encode(self, text: str, example_id: str, label: int | None = None) -> Example:
        """Tokenise one sentence (with special tokens)."""
        enc = self.tokenizer(text, truncation=True, max_length=128, return_special_tokens_mask=True)
        ids = torch.tensor(enc["input_ids"])
        special = torch.tensor(enc["special_tokens_mask"], dtype=torch.bool)
        tokens = self.tokenizer.convert_ids_to_tokens(enc["input_ids"])
        return Example(example_id, text, label, ids, special, tokens)

    def pad(self, seqs: Sequence[Tensor]) -> tuple[Tensor, Tensor]:
        """Right-pad 1-D id tensors: ``(ids, attention_mask)``, both ``(B, T_max)``."""
        pad_id = self.tokenizer.pad_token_id
        pad_id = 0 if pad_id is None else pad_id
        width = max(len(s) for s in seqs)
        ids = torch.full((len(seqs), width), pad_id, dtype=torch.long)
        mask = torch.zeros((len(seqs), width), dtype=torch.long)
        for i, s in enumerate(seqs):
            ids[i, : len(s)] = s
            mask[i, : len(s)] = 1
        return ids, mask

    def embed(self, ids: Tensor) -> Tensor:
        """``(B, T, D)`` output of the embedding module for ids (no grad; what methods
        perturb or differentiate)."""
        captured: list[Tensor] = []

        def keep(module: nn.Module, args: Any, out: Any) -> None:
            captured.append(out[0] if isinstance(out, tuple) else out)
            raise _StopError

        handle = self.embeddings.register_forward_hook(keep)
        try:
            with torch.no_grad():
                self.model(input_ids=ids, attention_mask=torch.ones_like(ids))
        except _StopError:
            pass
        finally:
            handle.remove()
        return captured[0].detach()

    def _run(self, embeds: Tensor, attention_mask: Tensor, **kwargs: Any) -> Any:
        """The model with the embedding module's output replaced by ``embeds``."""

        def replace(module: nn.Module, args: Any, out: Any) -> Any:
            return (embeds, *tuple(out[1:])) if isinstance(out, tuple) else embeds

        handle = self.embeddings.register_forward_hook(replace)
        try:
            ids = torch.zeros(embeds.shape[:2], dtype=torch.long, device=embeds.device)
            return self.model(input_ids=ids, attention_mask=attention_mask, **kwargs)
        finally:
            handle.remove()

    # ----------------------------------------------------------------- functions of embeddings
    def forward_embeds(self, embeds: Tensor, attention_mask: Tensor) -> Tensor:
        """The explained quantity from embedding outputs ``(B, T, D)``: ``(B, C)`` for
        ``probs``/``logits``, ``(B, D)`` pooled, ``(B, T, D)`` for a layer."""
        if self.is_classifier:
            logits = self._run(embeds, attention_mask).logits
            return logits.softmax(-1) if self.state == "probs" else logits
        out = self._run(embeds, attention_mask, output_hidden_states=isinstance(self.state, int))
        if self.state == "pooled":
            h = out.last_hidden_state
            w = attention_mask.unsqueeze(-1).to(h.dtype)
            return (h * w).sum(1) / w.sum(1).clamp_min(1.0)
        return out.hidden_states[int(self.state)]

    def scalar_forward(
        self, reference: Tensor, std: Tensor | None
    ) -> Callable[[Tensor, Tensor], Tensor]:
        r"""For a hidden state: ``f(embeds, mask) -> (B, 1)``, the component of the
        (σ_S-normalised, flattened) state along the sentence's own state,

        .. math:: f(\tilde x) = \langle s(\tilde x)/\sigma_S, s/\sigma_S\rangle /
            \lVert s/\sigma_S \rVert^2 \quad (= 1 \text{ at } \tilde x = x),

        the scalar that gradient and ablation methods explain when there is no class
        (target 0). It is linear in the state, so its gradient at ``x`` is not zero (a
        cosine similarity would be at its maximum there, with zero gradient)."""
        scale = None if std is None else torch.where(torch.isfinite(std), std, torch.inf)
        ref = reference if scale is None else reference / scale
        direction = (ref / ref.pow(2).sum().clamp_min(1e-30)).flatten()

        def f(embeds: Tensor, attention_mask: Tensor) -> Tensor:
            s = self.forward_embeds(embeds, attention_mask)
            if scale is not None:
                s = s / scale
            if s.dim() == 3:  # token states: only the reference's real tokens
                s = s[:, : reference.shape[0]]
            return (s.flatten(1) @ direction.to(s.dtype)).unsqueeze(-1)

        return f

    # ----------------------------------------------------------------- functions of ids
    @torch.no_grad()
    def probabilities(self, seqs: list[Tensor], batch_size: int = 64) -> Tensor:
        """``(B, C)`` class probabilities of id sequences (the metrics' ``prob_fn``)."""
        out = []
        for start in range(0, len(seqs), batch_size):
            ids, mask = self.pad(seqs[start : start + batch_size])
            logits = self.model(input_ids=ids, attention_mask=mask).logits
            out.append(logits.float().softmax(-1))
        return torch.cat(out)

    @torch.no_grad()
    def states(self, seqs: list[Tensor], batch_size: int = 64) -> list[Tensor]:
        """The explained hidden state of each id sequence (unpadded), for ``state_shift``."""
        out: list[Tensor] = []
        for start in range(0, len(seqs), batch_size):
            part = seqs[start : start + batch_size]
            ids, mask = self.pad(part)
            s = self.forward_embeds(self.embed(ids), mask)
            out += [s[i, : len(p)] if s.dim() == 3 else s[i] for i, p in enumerate(part)]
        return out
