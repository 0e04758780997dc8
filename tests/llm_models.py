"""Tiny random causal LMs of three families and a word-level fast tokenizer for them.

GPT-2 (learned positions), Llama (RoPE, grouped-query attention: 4 query heads share 2
key/value heads) and Qwen2 (RoPE, GQA, biases on q/k/v) cover the decoder shapes Captum
users bring. They are for contract tests only, not for claims about quality.
"""

from __future__ import annotations

from typing import Any

import torch
import transformers
from tokenizers import Tokenizer, models, pre_tokenizers, processors
from torch import Tensor, nn

WORDS = [
    "<s>",
    "</s>",
    "the",
    "film",
    "is",
    "a",
    "charming",
    "and",
    "funny",
    "ride",
    "dull",
    "boring",
    "plot",
    ",",
    ".",
    "it",
    "was",
    "not",
    "very",
    "good",
    "bad",
    "movie",
    "story",
    "of",
    "love",
]
BOS, EOS = 0, 1
FAMILIES = ("gpt2", "llama", "qwen2")


def tokenizer() -> Any:
    """A fast word-level tokenizer that prepends ``<s>`` (like Llama's)."""
    core = Tokenizer(models.WordLevel({w: i for i, w in enumerate(WORDS)}, unk_token="<s>"))
    core.pre_tokenizer = pre_tokenizers.Whitespace()
    core.post_processor = processors.TemplateProcessing(
        single="<s> $A", special_tokens=[("<s>", BOS)]
    )
    return transformers.PreTrainedTokenizerFast(
        tokenizer_object=core, bos_token="<s>", eos_token="</s>", pad_token="</s>"
    )


def causal_lm(family: str, seed: int = 0) -> nn.Module:
    """A tiny random causal LM (2 layers, width 16, eval mode)."""
    torch.manual_seed(seed)
    common: dict[str, Any] = {"vocab_size": len(WORDS), "bos_token_id": BOS, "eos_token_id": EOS}
    if family == "gpt2":
        cfg: Any = transformers.GPT2Config(n_positions=32, n_embd=16, n_layer=2, n_head=2, **common)
        model: nn.Module = transformers.GPT2LMHeadModel(cfg)
    elif family in ("llama", "qwen2"):
        kwargs = dict(
            hidden_size=16,
            intermediate_size=32,
            num_hidden_layers=2,
            num_attention_heads=4,
            num_key_value_heads=2,
            max_position_embeddings=32,
            **common,
        )
        if family == "llama":
            model = transformers.LlamaForCausalLM(transformers.LlamaConfig(**kwargs))
        else:
            model = transformers.Qwen2ForCausalLM(transformers.Qwen2Config(**kwargs))
    else:
        raise ValueError(family)
    model.generation_config.pad_token_id = EOS
    return model.eval()


class PositionLocalLM(nn.Module):
    """Logits at position p from token p alone (embedding, tanh, head): no mixing.

    So the next-token distribution at the last prompt position depends on the last
    prompt token only, and at target positions on no prompt token at all — exact zeros
    for the attribution to reproduce. No ``generate``, no ``config``.
    """

    def __init__(self, vocab: int = len(WORDS), dim: int = 8) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.embed = nn.Embedding(vocab, dim)
        self.head = nn.Linear(dim, vocab)

    def get_input_embeddings(self) -> nn.Module:
        return self.embed

    def forward(self, input_ids: Tensor, attention_mask: Tensor | None = None) -> Any:
        logits = self.head(torch.tanh(self.embed(input_ids)))
        return transformers.modeling_outputs.CausalLMOutput(logits=logits)
