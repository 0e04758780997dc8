r"""PerturbationEntropyAttribution: Guan et al. (ICML 2019) as a Captum attribution."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from captum.attr import PerturbationAttribution
from captum.log import log_usage
from torch import Tensor, nn
from typing_extensions import Unpack

from captum_perturb.attr.checks import in_dtypes, working_dtype
from captum_perturb.attr.features import FeatureMask
from captum_perturb.attr.plumbing import EntropyFlags, Site, explain, module_named
from captum_perturb.attr.result import PerturbationEntropyResult
from captum_perturb.options import EstimatorOptions, EstimatorSettings, renamed, resolve_options


class PerturbationEntropyAttribution(EntropyFlags, PerturbationAttribution):
    r"""How much of each input feature's information a model's state keeps.

    Every group ``g`` of input elements (``feature_mask``) gets isotropic Gaussian noise
    of its own scale :math:`\sigma_g`; the method learns the largest noise that leaves the
    explained state :math:`s = \Phi(x)` unchanged, by minimising (Guan et al., ICML 2019,
    Eq. 7, in the reference code's units)

    .. math::

        L(\sigma) = \mathbb{E}_\varepsilon\,\frac1M\sum_j
        \frac{(\Phi(x + \sigma\odot\varepsilon)_j - s_j)^2}{\sigma_{S,j}^2}
        \;-\; \frac{rate}{N}\sum_g m_g \log\frac{\sigma_g}{\sigma_{max}},
        \qquad 0 < \sigma_g \le \sigma_{max},

    with σ_S the state's spread over a corpus, ``M`` state elements, :math:`m_g`
    elements in group ``g`` and ``N`` in all. The paper's λ is
    :math:`rate \cdot M / N` (for ``n`` words of ``K`` dimensions, ``rate·M/(nK)``).

    The attribution of every element of group ``g`` is
    :math:`\log(\sigma_{max}/\sigma_g) \ge 0`, in nats per dimension: summed over a
    word's ``K`` dimensions it is :math:`H_{max} - H_g`, the information of the word the
    state keeps. Higher is more important; 0 means the state ignores the feature. The
    scores are unsigned (like Saliency) and are not multiplied by the inputs.

    ``target=None`` explains the whole output — a vector or a ``[tokens × dims]`` hidden
    state — which no other Captum method does; ``state_layer=module`` explains that module's
    output instead (for Hugging Face blocks returning tuples, ``out[0]``), stopping the
    forward pass there. Noise goes on the inputs, which must be floating point (e.g.
    ``inputs_embeds``); to explain token ids use
    :class:`~captum_perturb.LayerPerturbationEntropyAttribution`.

    Args:
        forward_func: the model or any function of the inputs (then of
            ``additional_forward_args``) returning a tensor whose dim 0 is the batch.

    Example:
        The state of a linear model keeps most of the feature with the largest weight:

        >>> import torch
        >>> from captum_perturb import PerturbationEntropyAttribution
        >>> model = torch.nn.Linear(4, 3, bias=False)
        >>> with torch.no_grad():
        ...     _ = model.weight.copy_(torch.tensor([[4.0, 1, 0, 0]]).expand(3, 4))
        >>> pe = PerturbationEntropyAttribution(model)
        >>> attr = pe.attribute(torch.randn(2, 4), sigma_max=10.0, state_std=torch.ones(3))
        >>> attr.shape
        torch.Size([2, 4])
        >>> [int(i) for i in attr[0].argsort(descending=True)[:2]]
        [0, 1]
        >>> float(attr[0, 2])  # a feature the state ignores keeps 0 nats
        0.0
    """

    def __init__(self, forward_func: Callable[..., Any]) -> None:
        super().__init__(forward_func)

    @log_usage(part_of_slo=False)
    def attribute(
        self,
        inputs: Tensor | tuple[Tensor, ...],
        target: Any = None,
        additional_forward_args: Any = None,
        feature_mask: FeatureMask = None,
        *,
        state_layer: nn.Module | str | None = None,
        attention_mask: Tensor | None = None,
        internal_batch_size: int | None = None,
        options: EstimatorOptions | None = None,
        layer: nn.Module | str | None = None,
        **settings: Unpack[EstimatorSettings],
    ) -> Tensor | tuple[Tensor, ...]:
        r"""Attribute the explained state to the inputs.

        Args:
            inputs: ``(B, ...)`` floating-point tensor or tuple of tensors to perturb.
            target: Captum's target: ``None`` = the whole state; an int / tuple indexes
                every example's state; a list or 1-D tensor gives one index per example; a
                callable (Captum's ``neuron_selector`` function) maps the state to the
                value explained, row by row (it is applied to stacks of copies).
            additional_forward_args: side inputs passed after ``inputs`` (attention masks,
                token type ids); tensors need the batch as dim 0.
            feature_mask: integer group ids broadcastable to each input (dim 0 of 1 or
                ``B``); elements with one id share one σ. ``None``: every scalar is its
                own group (Captum's default); ``"token"``: one group per position of
                ``(B, T, D)`` inputs. Captum's ``NoiseTunnel`` accepts only tensor masks:
                there pass the same groups as ``torch.arange(T).reshape(1, T, 1)``.
            state_layer: explain this module's output instead of the model output: the
                module, or its name in ``forward_func`` (an ``nn.Module``), e.g.
                ``"encoder.layer.2"``. Pass the name where Captum deep-copies the keyword
                arguments (``captum.metrics.sensitivity_max``): a copied module is not
                the one the model runs.
            attention_mask: ``(B, T)`` 1 for tokens, 0 for padding: padded positions are
                neither perturbed nor counted in the loss (give the same mask to the
                model through ``additional_forward_args``; under Captum's ``NoiseTunnel``
                or ``sensitivity_max``, which expand only the latter, the expanded copy
                there is recognised and used).
            internal_batch_size: perturbed copies per forward pass (speed and memory): the
                noise and the estimator's steps are the same for any value, so σ is
                bit-identical where the model rounds each row alike in any batch; where its
                kernels round by the batch's shape, ``estimate.batch_dependent`` says so and
                a warning names the value (see ``docs/method.rst``).
            options: the estimator's settings, :class:`~captum_perturb.EstimatorOptions`.
            layer: the former name of ``state_layer`` (deprecated).
            **settings: any of :class:`~captum_perturb.EstimatorOptions`' fields by
                keyword (``rate``, ``sigma_max``, ``state_std``, ``config``, ``seed``,
                ``score``, ``show_progress``), over ``options``.

        Returns:
            Attributions shaped and structured like ``inputs``, in their dtype (float16
            and bfloat16 inputs are perturbed and compared in float32; ``explain()``'s
            ``estimate`` keeps that precision).
        """
        return self.explain(
            inputs,
            target,
            additional_forward_args,
            feature_mask,
            state_layer=state_layer,
            attention_mask=attention_mask,
            internal_batch_size=internal_batch_size,
            options=options,
            layer=layer,
            **settings,
        ).attributions

    def explain(
        self,
        inputs: Tensor | tuple[Tensor, ...],
        target: Any = None,
        additional_forward_args: Any = None,
        feature_mask: FeatureMask = None,
        *,
        state_layer: nn.Module | str | None = None,
        attention_mask: Tensor | None = None,
        internal_batch_size: int | None = None,
        options: EstimatorOptions | None = None,
        layer: nn.Module | str | None = None,
        **settings: Unpack[EstimatorSettings],
    ) -> PerturbationEntropyResult:
        """Like :meth:`attribute`, returning σ, entropies and diagnostics too."""
        who = self.get_name()
        opts = resolve_options(options, settings, who)
        state_layer = renamed(layer, state_layer, old="layer", new="state_layer", who=who)
        is_tuple = isinstance(inputs, tuple)
        for i, x in enumerate(inputs if isinstance(inputs, tuple) else (inputs,)):
            if not isinstance(x, Tensor):
                raise TypeError(f"inputs[{i}] is a {type(x).__name__}, not a tensor")
            if not x.is_floating_point():
                raise TypeError(
                    f"inputs[{i}] has dtype {x.dtype}: noise can only be added to floating-point "
                    "inputs. To explain token ids, put the noise on the embedding layer: "
                    "LayerPerturbationEntropyAttribution(forward_func, model.embeddings)"
                )

        dtypes = tuple(x.dtype for x in (inputs if isinstance(inputs, tuple) else (inputs,)))

        def site(inp: tuple[Any, ...], batch: int, call_model: Callable[..., Any]) -> Site:
            # half-precision values are perturbed in float32 and rounded back for the
            # model; the state is compared in float32 (see _checks.working_dtype)
            def run(
                pert: tuple[Tensor, ...], rows: Tensor, state_of: Callable[..., Tensor]
            ) -> Tensor:
                model_in = tuple(p.to(d) for p, d in zip(pert, dtypes, strict=True))
                state = state_of(lambda: call_model(model_in, rows))
                return state.to(working_dtype(state.dtype))

            values = tuple(x.detach().to(working_dtype(x.dtype)) for x in inp)
            return Site(values=values, run=run, is_tuple=is_tuple)

        result = explain(
            self.forward_func,
            site,
            inputs,
            target,
            additional_forward_args,
            feature_mask,
            state_layer=module_named(self.forward_func, state_layer),
            attention_mask=attention_mask,
            internal_batch_size=internal_batch_size,
            options=opts,
            desc=f"{who} attribution",
        )
        return in_dtypes(result, dtypes)
