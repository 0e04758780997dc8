"""LLMLayerAttribution: Captum's ``LLMGradientAttribution`` that also takes our layer class."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from captum.attr import LLMGradientAttribution
from torch import Tensor

from captum_perturb.attr.layer_perturbation_entropy import LayerPerturbationEntropyAttribution


class LLMLayerAttribution(LLMGradientAttribution):
    r"""Captum's :class:`~captum.attr.LLMGradientAttribution`, with
    :class:`~captum_perturb.LayerPerturbationEntropyAttribution` among its methods.

    For users who already wrap ``LayerIntegratedGradients`` on the embedding layer, one
    line swaps the method and keeps everything else (Captum's loop over answer tokens,
    ``seq_attr`` as the sum of ``token_attr``, its plots)::

        llm_attr = LLMGradientAttribution(LayerIntegratedGradients(model, emb), tok)
        llm_attr = LLMLayerAttribution(LayerPerturbationEntropyAttribution(model, emb), tok)

    Captum's wrapper calls the method once per answer token with
    :math:`\Phi` = that token's log-probability (one scalar), the estimator's noisiest
    state, and sums the rows; keyword arguments of ``attribute`` (``state_std=``,
    ``config=``, ``seed=``) reach our method. σ_S of a scalar log-prob is one number,
    the spread of the next token's log-prob over a corpus (2.4 nats for the SST-2
    GPT-2); without it each token is divided by its own log-prob squared, with a
    warning. For the information measure of
    the paper on the whole next-token distribution, in one batched call, use
    :class:`~captum_perturb.LLMPerturbationEntropyAttribution`.
    """

    SUPPORTED_METHODS = (
        *LLMGradientAttribution.SUPPORTED_METHODS,
        LayerPerturbationEntropyAttribution,
    )

    def __init__(self, attr_method: Any, tokenizer: Any) -> None:
        super().__init__(attr_method, tokenizer)
        method: Any = vars(self)["attr_method"]  # set by Captum's __init__
        if isinstance(method, LayerPerturbationEntropyAttribution):
            self.attr_method = _PerAnswerToken(method.forward_func, method.layer)


@dataclass(frozen=True)
class _Whole:
    """A side input that is the same for every copy (not a batch to index)."""

    value: Any


class _PerAnswerToken(LayerPerturbationEntropyAttribution):
    """Our layer method as Captum's wrapper calls it, once per answer token.

    The wrapper passes the answer's token ids ``(T,)`` among the side inputs; Captum's
    gradient methods repeat them along dim 0, ours would index them as a batch. They are
    handed through whole instead.
    """

    def __init__(self, forward: Any, layer: Any) -> None:
        def unwrapped(x: Tensor, inp: Any, answer: _Whole, index: int) -> Tensor:
            return forward(x, inp, answer.value, index)

        super().__init__(unwrapped, layer)  # the eval-mode guard finds the model in it

    def attribute(
        self, inputs: Any, target: Any = None, additional_forward_args: Any = None, **kwargs: Any
    ) -> Any:
        inp, answer, index = additional_forward_args
        return super().attribute(inputs, target, (inp, _Whole(answer), index), **kwargs)
