"""What a method of the registry gets and gives, and what the methods of one run share.

A method (:mod:`comparisons.study.methods`) is a factory ``factory(ctx) -> attribute``:
``ctx`` is the run's :class:`MethodContext` (the model, σ_S per key, results reused
between entries), ``attribute`` maps one example's :class:`ExampleInputs` to ``(1, T, D)``
attributions, which :func:`token_scores` sums to one score per token.
"""

from __future__ import annotations

import time
import zlib
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor

from comparisons.models.text_model import Example, TextModel


class NotApplicableError(Exception):
    """The method cannot explain this model (e.g. a classifier-only variant on a state)."""


@dataclass
class ExampleInputs:
    """What a method needs to explain one example.

    Attributes:
        example: the tokenised sentence.
        embeds: ``(1, T, D)`` the embedding module's output (what is perturbed or
            differentiated).
        mask: ``(1, T)`` attention mask.
        baseline: ``(1, T, D)`` the embedding of the sentence with every non-special token
            replaced by the pad token (so [CLS]/[SEP] are never ablated), as in Captum's
            BERT tutorial.
        forward: ``f(embeds, mask) -> (B, C)``, the function explained by Captum's methods.
        target: the output column explained (the predicted class, or 0 for a state).
        seed: this example's seed (derived from the run's seed and the example id).
    """

    example: Example
    embeds: Tensor
    mask: Tensor
    baseline: Tensor
    forward: Callable[[Tensor, Tensor], Tensor]
    target: int
    seed: int


AttributeFn = Callable[[ExampleInputs], Tensor]

REUSED = 16
"""Results :meth:`MethodContext.reuse` keeps: an example's explanation and the perturbed
copies Captum's ``sensitivity_max`` re-explains, so that an entry built on another's
result (``ours-signed`` on ``ours``) does not recompute them."""


@dataclass
class MethodContext:
    """Shared, lazily computed resources for the methods of one run.

    Args:
        model: the wrapped model.
        corpus: sentences whose states give σ_S (ours only).
        seed: the run's seed.
    """

    model: TextModel
    corpus: list[str]
    seed: int = 0
    _std: dict[str, Tensor | None] = field(default_factory=dict)
    _memo: dict[tuple[Any, ...], tuple[Tensor, float]] = field(default_factory=dict)
    #: seconds of reused results handed out since the last :meth:`reset_charge` (so an
    #: entry that reuses another's computation is charged its time too)
    charged: float = 0.0

    def reuse(self, key: tuple[Any, ...], compute: Callable[[], Tensor]) -> Tensor:
        """``compute()`` once per ``key`` (the latest :data:`REUSED` keys are kept); a
        repeat call returns the same tensor and adds the seconds it took to
        :attr:`charged`."""
        if key in self._memo:
            value, seconds = self._memo[key]
            self.charged += seconds
            return value
        start = time.perf_counter()
        value = compute()
        self._memo[key] = (value, time.perf_counter() - start)
        while len(self._memo) > REUSED:
            del self._memo[next(iter(self._memo))]  # the oldest
        return value

    def forget(self) -> None:
        """Drop what depends on the weights (they changed, e.g. randomised): reused
        results and σ_S."""
        self._memo.clear()
        self._std.clear()

    @contextmanager
    def weights_restored(self) -> Iterator[None]:
        """A block that changes the weights and puts them back: on exit, reused results
        are dropped and σ_S of the original weights is restored."""
        saved = dict(self._std)
        try:
            yield
        finally:
            self.forget()
            self._std.update(saved)

    def example_seed(self, example_id: str) -> int:
        """A seed per example that does not depend on the order examples are run in."""
        return zlib.crc32(f"{self.seed}:{example_id}".encode()) & 0x7FFFFFFF

    def state_std(self, key: str, forward: Callable[..., Tensor], **kwargs: Any) -> Tensor | None:
        """σ_S of ``forward`` over the corpus (cached per ``key``); None without a corpus."""
        if key not in self._std:
            if not self.corpus:
                self._std[key] = None
            else:
                from captum_perturb import estimate_state_std

                tm = self.model
                enc = tm.tokenizer(self.corpus, padding=True, truncation=True, return_tensors="pt")
                embeds = tm.embed(enc["input_ids"])
                self._std[key] = estimate_state_std(
                    forward,
                    embeds,
                    (enc["attention_mask"],),
                    attention_mask=enc["attention_mask"],
                    **kwargs,
                )
        return self._std[key]

    def inputs(self, example: Example) -> ExampleInputs:
        """Embeddings, baseline, explained function and target of one example."""
        tm = self.model
        ids = example.input_ids.unsqueeze(0)
        mask = torch.ones_like(ids)
        embeds = tm.embed(ids)
        pad_id = tm.tokenizer.pad_token_id if tm.tokenizer.pad_token_id is not None else 0
        baseline = tm.embed(torch.where(example.special, ids, torch.full_like(ids, pad_id)))
        forward: Callable[[Tensor, Tensor], Tensor]
        if tm.is_classifier:
            forward = tm.forward_embeds
            with torch.no_grad():
                target = int(forward(embeds, mask).argmax(-1))
        else:
            std = self.state_std("state", tm.forward_embeds)
            with torch.no_grad():
                reference = tm.forward_embeds(embeds, mask)[0]
            forward = tm.scalar_forward(reference, std)
            target = 0
        return ExampleInputs(
            example, embeds, mask, baseline, forward, target, self.example_seed(example.id)
        )


def token_scores(attributions: Tensor) -> Tensor:
    """``(T,)`` token scores: attributions ``(1, T, D)`` summed over the embedding dim."""
    return attributions.detach().double().sum(-1)[0].float()
