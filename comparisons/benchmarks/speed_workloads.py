"""The workloads of the speed benchmark (:mod:`.speed`): each Φ's model, its forward
function, how its state is captured (:class:`Workload`), the tokenised inputs and σ_S."""

from __future__ import annotations

import copy
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from captum_perturb import estimate_state_std
from comparisons.benchmarks import convergence
from comparisons.models.finetune import load_classifier
from comparisons.models.resources import sst2_dev

Forward = Callable[[Tensor, Tensor], Tensor]
LigScalar = Callable[[Tensor, Tensor, Tensor], Tensor]

WORKLOADS = ("layers1-3", *(f"layer {k}" for k in range(1, 7)), "pooled", "logits", "target logit")
STD_SENTENCES = 100  # σ_S: SST-2 dev sentences 1-100; the batch starts after them


def normalised_square(state: Tensor, mask: Tensor, std: Tensor) -> Tensor:
    """LIG's scalar for a vector state: the mean of ``(state / σ_S)²`` over the unpadded
    elements of each example."""
    s = state / std
    if s.dim() < 3:
        return s.square().flatten(1).mean(1)
    m = mask[..., None].to(s.dtype)
    return (m * s.square()).sum((1, 2)) / (m.sum((1, 2)) * s.shape[-1])


def as_is(state: Tensor, mask: Tensor, std: Tensor) -> Tensor:
    """LIG's output for a selected logit: the logits, ``target=`` picks the class."""
    return state


@dataclass
class Workload:
    """One Φ: ``forward(ids, mask)`` runs the model; the state is its output, or
    ``state_layer``'s output; noise on ``model``'s embeddings."""

    name: str
    model: nn.Module
    tokenizer: Any
    forward: Forward
    state_layer: nn.Module | None = None
    lig_scalar: LigScalar = normalised_square
    predicted_target: bool = False  # Φ = the logit of the class predicted on the clean input

    def state(self, ids: Tensor, mask: Tensor) -> Tensor:
        """Φ's state, with its graph (a state layer's output ends the forward pass)."""
        if self.state_layer is None:
            return self.forward(ids, mask)
        return _output_of(self.state_layer, lambda: self.forward(ids, mask))

    def targets(self, ids: Tensor, mask: Tensor) -> list[int] | None:
        """The target of each example: its predicted class, or None (the whole state)."""
        if not self.predicted_target:
            return None
        with torch.no_grad():
            return self.forward(ids, mask).argmax(-1).tolist()


class _ReachedError(Exception):
    """Raised by :func:`_output_of`'s hook: the rest of the forward pass is not needed."""


def _output_of(layer: nn.Module, run: Callable[[], Any]) -> Tensor:
    """``layer``'s (first) output tensor during ``run()``, which is cut short there (as our
    method cuts its own forward passes short), with its graph."""
    sink: list[Tensor] = []

    def hook(_module: nn.Module, _args: Any, out: Any) -> None:
        sink.append(out[0] if isinstance(out, (tuple, list)) else out)
        raise _ReachedError

    handle = layer.register_forward_hook(hook)
    try:
        run()
    except _ReachedError:
        pass
    finally:
        handle.remove()
    if not sink:
        raise ValueError(f"{type(layer).__name__} did not run in the forward pass")
    return sink[0]


def first_layers(model: nn.Module, tokenizer: Any, n: int) -> Workload:
    """Φ = the first ``n`` encoder layers of a truncated copy of ``model``."""
    phi: Any = copy.deepcopy(model)
    phi.encoder.layer = phi.encoder.layer[:n]

    def forward(ids: Tensor, mask: Tensor) -> Tensor:
        return phi(input_ids=ids, attention_mask=mask).last_hidden_state

    return Workload(f"layers1-{n}", phi, tokenizer, forward)


def workloads(names: Sequence[str], classifier: Path | None = None) -> list[Workload]:
    """The named workloads (see :mod:`.speed`), sharing one MiniLM and one classifier."""
    built: dict[str, Workload] = {}
    if set(names) - {"logits", "target logit"}:
        layers = [k for k in range(1, 7) if f"layer {k}" in names]
        for name, (m, tok, fwd, layer) in convergence.workloads(
            layers, with_classifier=False
        ).items():
            built[name] = Workload(name, m, tok, fwd, layer)
        minilm = built["pooled"]
        if "layers1-3" in names:
            built["layers1-3"] = first_layers(minilm.model, minilm.tokenizer, 3)
    if {"logits", "target logit"} & set(names):
        clf, tok = load_classifier(classifier)

        def logits(ids: Tensor, mask: Tensor) -> Tensor:
            return clf(input_ids=ids, attention_mask=mask).logits

        built["logits"] = Workload("logits", clf, tok, logits)
        built["target logit"] = Workload(
            "target logit", clf, tok, logits, lig_scalar=as_is, predicted_target=True
        )
    return [built[n] for n in names]


def encode(w: Workload, sentences: Sequence[str]) -> tuple[Tensor, Tensor]:
    """Token ids and attention mask of ``sentences``, padded to the longest."""
    enc = w.tokenizer(list(sentences), return_tensors="pt", padding=True)
    return enc["input_ids"], enc["attention_mask"]


def state_std(w: Workload) -> Tensor:
    """σ_S of the workload's state over SST-2 dev sentences 1-100 (the same for all)."""
    ids, mask = encode(w, [s for s, _ in sst2_dev(STD_SENTENCES)])
    target = w.targets(ids, mask)
    return estimate_state_std(
        w.forward, ids, (mask,), target=target, state_layer=w.state_layer, attention_mask=mask
    )
