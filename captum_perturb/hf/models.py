"""What a Hugging Face model is, for the one-line :func:`~captum_perturb.explain`.

Three kinds are explained: a sequence classifier (``...ForSequenceClassification``), a
causal language model (``...ForCausalLM``, GPT-2's ``LMHeadModel``) and an encoder
(``AutoModel``). A ``transformers.pipeline`` brings its model and tokenizer. The noise goes
on the word embeddings, ``model.get_input_embeddings()``; the user never names a layer.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Literal

from torch import Tensor, nn

Kind = Literal["classifier", "causal_lm", "encoder"]

#: pipeline tasks and the kind of model they hold
_TASKS: dict[str, Kind] = {
    "text-classification": "classifier",
    "sentiment-analysis": "classifier",
    "text-generation": "causal_lm",
    "feature-extraction": "encoder",
}


@dataclass(frozen=True)
class HFModel:
    """A model ready to explain: the module, its tokenizer, its kind and its embeddings."""

    model: nn.Module
    tokenizer: Any
    kind: Kind
    embeddings: nn.Embedding


def resolve(model: Any, tokenizer: Any) -> HFModel:
    """The model, tokenizer and kind of ``model`` (a model or a pipeline).

    Raises:
        TypeError: an unsupported model class, a missing tokenizer or embedding layer.
    """
    if is_pipeline(model):
        tokenizer = model.tokenizer if tokenizer is None else tokenizer
        task = getattr(model, "task", "")
        model = model.model
        kind: Kind | None = _TASKS.get(task)
        if kind is None:
            kind = _kind(model)
    else:
        kind = _kind(model)
    if tokenizer is None:
        raise TypeError(
            "pass the model's tokenizer: explain(model, tokenizer, texts), e.g. "
            "AutoTokenizer.from_pretrained(the same name or folder as the model)"
        )
    embeddings = model.get_input_embeddings() if hasattr(model, "get_input_embeddings") else None
    if not isinstance(embeddings, nn.Embedding):
        raise TypeError(
            f"{type(model).__name__} has no word-embedding layer (get_input_embeddings() "
            "returned no nn.Embedding): the noise goes on the word embeddings"
        )
    return HFModel(model=model, tokenizer=tokenizer, kind=kind, embeddings=embeddings)


def is_pipeline(obj: Any) -> bool:
    """Whether ``obj`` is a ``transformers.Pipeline``."""
    try:
        from transformers import Pipeline
    except ImportError:  # pragma: no cover - transformers is needed for a pipeline
        return False
    return isinstance(obj, Pipeline)


def _kind(model: Any) -> Kind:
    name = type(model).__name__
    if not isinstance(model, nn.Module) or not hasattr(model, "config"):
        raise TypeError(
            f"explain takes a Hugging Face transformers model or pipeline, got {name}; for "
            "any other PyTorch model use PerturbationEntropyAttribution"
        )
    if name.endswith("ForSequenceClassification"):
        return "classifier"
    if name.endswith(("ForCausalLM", "LMHeadModel")):
        return "causal_lm"
    if name.endswith("Model") and not name.endswith(("PreTrainedModel", "LMHeadModel")):
        return "encoder"
    raise TypeError(
        f"{name} is not a model class explain() supports: pass a ...ForSequenceClassification "
        "(a prediction), a ...ForCausalLM (an answer) or an AutoModel (its hidden states); "
        "for other heads use LayerPerturbationEntropyAttribution with your own forward"
    )


def check_vocabulary(hf: HFModel) -> None:
    """The tokenizer must fit the model: its ids index the model's embedding rows.

    Raises:
        ValueError: the tokenizer has more tokens than the model has embeddings.
    """
    rows = hf.embeddings.num_embeddings
    n_tokens = len(hf.tokenizer)
    if n_tokens > rows:
        raise ValueError(
            f"the tokenizer has {n_tokens} tokens but the model embeds only {rows}: they do "
            "not belong together; load both from the same name or folder"
        )


def max_length(hf: HFModel) -> int | None:
    """The longest input the model takes, in tokens (None: no limit known)."""
    limits: list[int] = []
    for key in ("max_position_embeddings", "n_positions", "max_sequence_length"):
        value = getattr(hf.model.config, key, None)
        if isinstance(value, int) and value > 0:
            limits.append(value)
    tok_max = getattr(hf.tokenizer, "model_max_length", None)
    if isinstance(tok_max, int) and 0 < tok_max < 1_000_000:
        limits.append(tok_max)
    return min(limits) if limits else None


def check_lengths(hf: HFModel, lengths: Sequence[int], extra: int = 0) -> None:
    """Every text (plus ``extra`` tokens, e.g. an answer) must fit the model's context.

    Raises:
        ValueError: naming the first text that does not fit.
    """
    limit = max_length(hf)
    if limit is None:
        return
    for i, n in enumerate(lengths):
        if n + extra > limit:
            raise ValueError(
                f"text {i} is {n} tokens{f' (+{extra} of the answer)' if extra else ''}, "
                f"longer than the model's context of {limit}: shorten it or split it"
            )


def side_args(enc: dict[str, Tensor]) -> tuple[Tensor, ...]:
    """The model's side inputs after ``input_ids``: the mask, and token types if any."""
    return (enc["attention_mask"], *([enc["token_type_ids"]] if "token_type_ids" in enc else []))


def call_model(model: Any, ids: Tensor, mask: Tensor, *types: Tensor) -> Any:
    """``model(input_ids, attention_mask[, token_type_ids])``, the order of :func:`side_args`."""
    kwargs = {"token_type_ids": types[0]} if types else {}
    return model(input_ids=ids, attention_mask=mask, **kwargs)
