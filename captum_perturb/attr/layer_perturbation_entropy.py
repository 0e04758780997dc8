"""LayerPerturbationEntropyAttribution: the noise goes on a layer's output (or input)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from captum.attr import LayerAttribution, PerturbationAttribution
from captum.log import log_usage
from torch import Tensor, nn
from typing_extensions import Unpack

from captum_perturb._utils.common import index_args
from captum_perturb._utils.hooks import captured_value, replace
from captum_perturb.attr.checks import in_dtypes, working_dtype
from captum_perturb.attr.features import FeatureMask
from captum_perturb.attr.plumbing import (
    EntropyFlags,
    Site,
    embedding_matrix,
    explain,
    module_named,
)
from captum_perturb.attr.result import PerturbationEntropyResult
from captum_perturb.options import EstimatorOptions, EstimatorSettings, resolve_options


class LayerPerturbationEntropyAttribution(EntropyFlags, LayerAttribution, PerturbationAttribution):
    r"""Perturbation entropy with the noise on a layer's value, so token ids can be explained.

    The objective and the scores are those of
    :class:`~captum_perturb.PerturbationEntropyAttribution`; the perturbed :math:`x` is the
    output of ``layer`` (its first input with ``attribute_to_layer_input=True``; for a
    Hugging Face block returning a tuple, ``out[0]``). The paper, and the usual Captum
    choice for BERT-like models, is ``model.bert.embeddings``: word + position + segment
    embeddings after LayerNorm, the representation of each word entering the encoder.

    Attributions have the layer value's shape. By default (``layer_mask="token"``) a
    ``(B, T, D)`` value gets one σ per token, shared across its ``D`` dimensions, as in the
    paper; pass a Captum-style mask (or ``None``: one σ per scalar) for other groupings.

    Args:
        forward_func: the model or a function of the inputs returning a tensor.
        layer: the module whose output (or input) gets the noise. If it is, or holds, the
            word embeddings, the default σ_max is 10 × their std (the authors' advice).
        device_ids: accepted for Captum's signature; ``DataParallel`` models are not
            supported (the value must be None).

    Example:
        >>> import torch
        >>> from captum_perturb import LayerPerturbationEntropyAttribution
        >>> emb = torch.nn.Embedding(10, 8)
        >>> head = torch.nn.Linear(8, 2)
        >>> model = lambda ids: head(emb(ids).mean(1))
        >>> lpe = LayerPerturbationEntropyAttribution(model, emb)
        >>> ids = torch.tensor([[1, 2, 3, 4]])
        >>> attr = lpe.attribute(ids, target=1, state_std=torch.tensor(1.0))
        >>> attr.shape  # (batch, tokens, embedding dims), one σ per token
        torch.Size([1, 4, 8])
        >>> bool((attr[0, :, 0:1] == attr[0]).all())
        True
    """

    def __init__(
        self,
        forward_func: Callable[..., Any],
        layer: nn.Module,
        device_ids: list[int] | None = None,
    ) -> None:
        if device_ids is not None:
            raise NotImplementedError(
                "device_ids (DataParallel) is not supported; explain the model on one device"
            )
        if isinstance(layer, (list, tuple)):
            raise TypeError(
                f"layer is a {type(layer).__name__} of {len(layer)} modules, but the noise goes "
                "on one module's output: make one LayerPerturbationEntropyAttribution per "
                "layer, or, for how much of each word every layer of a transformer keeps, "
                "use captum_perturb.explain_layers"
            )
        if not isinstance(layer, nn.Module):
            raise TypeError(f"layer must be a torch.nn.Module, got {type(layer).__name__}")
        LayerAttribution.__init__(self, forward_func, layer, device_ids)
        PerturbationAttribution.__init__(self, forward_func)

    @log_usage(part_of_slo=False)
    def attribute(
        self,
        inputs: Any,
        target: Any = None,
        additional_forward_args: Any = None,
        layer_mask: FeatureMask = "token",
        *,
        attribute_to_layer_input: bool = False,
        state_layer: nn.Module | str | None = None,
        attention_mask: Tensor | None = None,
        internal_batch_size: int | None = None,
        options: EstimatorOptions | None = None,
        **settings: Unpack[EstimatorSettings],
    ) -> Tensor:
        r"""Attribute the explained state to the layer's value.

        Args:
            inputs: the model's inputs (token ids allowed), dim 0 = batch.
            target: as in Captum (see
                :meth:`captum_perturb.PerturbationEntropyAttribution.attribute`).
            additional_forward_args: side inputs passed after ``inputs``.
            layer_mask: groups of the layer's elements: ``"token"`` (default, one σ per
                position of a ``(B, T, D)`` value), ``None`` (one per scalar) or integer ids
                broadcastable to the layer's value.
            attribute_to_layer_input: perturb the layer's first input instead of its output.
            state_layer: explain this module's output (after the perturbed layer) instead
                of the model output: the module, or its name in ``forward_func``.
            attention_mask: ``(B, T)`` with 0 at padding: padded positions are neither
                perturbed nor counted in the loss. Give it to the model through
                ``additional_forward_args`` too: under Captum's ``NoiseTunnel`` or
                ``sensitivity_max``, which expand only those, the expanded copy is used.
            internal_batch_size: perturbed copies per forward pass (speed and memory), as
                for :meth:`captum_perturb.PerturbationEntropyAttribution.attribute`.
            options: the estimator's settings, :class:`~captum_perturb.EstimatorOptions`
                (the default σ_max is 10 × the std of the word embeddings when the layer
                is or holds them, else 10 × the std of each example's layer value).
            **settings: any of :class:`~captum_perturb.EstimatorOptions`' fields by
                keyword (``rate``, ``sigma_max``, ``state_std``, ``config``, ``seed``,
                ``score``, ``show_progress``), over ``options``.

        Returns:
            Attributions shaped like the layer's value, in its dtype (a float16 or
            bfloat16 value is perturbed and compared in float32).
        """
        result = self.explain(
            inputs,
            target,
            additional_forward_args,
            layer_mask,
            attribute_to_layer_input=attribute_to_layer_input,
            state_layer=state_layer,
            attention_mask=attention_mask,
            internal_batch_size=internal_batch_size,
            options=options,
            **settings,
        )
        assert isinstance(result.attributions, Tensor)
        return result.attributions

    def explain(
        self,
        inputs: Any,
        target: Any = None,
        additional_forward_args: Any = None,
        layer_mask: FeatureMask = "token",
        *,
        attribute_to_layer_input: bool = False,
        state_layer: nn.Module | str | None = None,
        attention_mask: Tensor | None = None,
        internal_batch_size: int | None = None,
        options: EstimatorOptions | None = None,
        **settings: Unpack[EstimatorSettings],
    ) -> PerturbationEntropyResult:
        """Like :meth:`attribute`, returning σ, entropies and diagnostics too."""
        who = self.get_name()
        opts = resolve_options(options, settings, who)
        dtypes: list[torch.dtype] = []  # the layer value's own dtype, set by the site
        site = _layer_site(self.layer, attribute_to_layer_input, dtypes)
        result = explain(
            self.forward_func,
            site,
            inputs,
            target,
            additional_forward_args,
            layer_mask,
            state_layer=module_named(self.forward_func, state_layer),
            attention_mask=attention_mask,
            internal_batch_size=internal_batch_size,
            options=opts,
            desc=f"{who} attribution",
        )
        return in_dtypes(result, tuple(dtypes[:1]))


def _layer_site(
    layer: nn.Module, to_input: bool, dtypes: list[torch.dtype]
) -> Callable[[tuple[Any, ...], int, Callable[..., Any]], Site]:
    """The site factory of the layer class: the noise replaces ``layer``'s output (or
    first input); the value's own dtype is appended to ``dtypes``."""

    def site(inp: tuple[Any, ...], batch: int, call_model: Callable[..., Any]) -> Site:
        value = _layer_value(layer, to_input, inp, batch, call_model)
        # a half-precision value is perturbed in float32 (replace() rounds it back
        # for the model) and the state compared in float32 (checks.working_dtype)
        dtypes.append(value.dtype)
        value = value.to(working_dtype(value.dtype))

        def run(pert: tuple[Tensor, ...], rows: Tensor, state_of: Callable[..., Tensor]) -> Tensor:
            done: list[bool] = []
            with replace(layer, pert[0], done, layer_input=to_input):
                state = state_of(lambda: call_model(index_args(inp, rows), rows))
            if not done:
                raise ValueError(
                    "the explained state was read before the perturbed layer ran: "
                    "state_layer must come after the perturbed layer"
                )
            return state.to(working_dtype(state.dtype))

        return Site(
            values=(value,),
            run=run,
            is_tuple=False,
            embedding=None if to_input else embedding_matrix(layer),
            modules=(layer,),
        )

    return site


def _layer_value(
    layer: nn.Module,
    to_input: bool,
    inp: tuple[Any, ...],
    batch: int,
    call_model: Callable[..., Any],
) -> Tensor:
    """The layer's clean value, checked: floating point, batch-first.

    Raises:
        TypeError, ValueError: naming the layer and what to choose instead.
    """
    rows_all = torch.arange(batch)
    value = captured_value(
        layer, lambda: call_model(inp, rows_all.to(_device(inp))), layer_input=to_input
    ).detach()
    if not value.is_floating_point():
        raise TypeError(
            f"the {'input' if to_input else 'output'} of {type(layer).__name__} has dtype "
            f"{value.dtype}; noise needs a floating-point layer value (e.g. the output "
            "of the embedding layer)"
        )
    if value.dim() == 0 or value.shape[0] != batch:
        raise ValueError(
            f"the layer's value has shape {tuple(value.shape)}, without the batch of "
            f"{batch} as dim 0; choose a layer whose value is batch-first"
        )
    return value


def _device(inputs: tuple[Any, ...]) -> torch.device:
    for x in inputs:
        if isinstance(x, Tensor):
            return x.device
    return torch.device("cpu")
