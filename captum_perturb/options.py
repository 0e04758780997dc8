r"""The estimator's settings, named and documented once for every entry point.

``attribute``/``explain`` of :class:`~captum_perturb.PerturbationEntropyAttribution` and
:class:`~captum_perturb.LayerPerturbationEntropyAttribution`,
:meth:`LLMPerturbationEntropyAttribution.attribute
<captum_perturb.LLMPerturbationEntropyAttribution.attribute>`,
:func:`~captum_perturb.explain_layers` and :func:`~captum_perturb.explain_corpus` take the
same settings, either as one :class:`EstimatorOptions` (``options=``) or by keyword (the
fields of :class:`EstimatorSettings`); a keyword overrides the same field of ``options``,
as ``generate(generation_config=..., **kwargs)`` does in Hugging Face ``transformers``.
Captum's own keywords (``inputs``, ``target``, ``additional_forward_args``,
``feature_mask``/``layer_mask``, ``internal_batch_size``) keep Captum's names and stay in
each signature.
"""

from __future__ import annotations

import warnings
from collections.abc import Mapping
from dataclasses import dataclass, fields, replace
from typing import Any, Literal, TypedDict

import torch
from torch import Tensor

from captum_perturb._utils.common import user_stacklevel
from captum_perturb.config import EstimatorConfig
from captum_perturb.functional.diagnostics import check_score
from captum_perturb.functional.estimate import check_rate


@dataclass(frozen=True, eq=False)
class EstimatorOptions:
    r"""How σ is estimated: the settings every entry point shares.

    Args:
        rate: weight of the entropy term (the reference code's ``rate``); the paper's λ
            is :math:`rate \cdot M / N` for ``M`` state and ``N`` perturbed elements.
        sigma_max: the upper bound of σ (the reference code's ``scale``). ``None``: 10 ×
            the std of the perturbed values — each example's unpadded inputs for
            :class:`~captum_perturb.PerturbationEntropyAttribution`, the word-embedding
            matrix where noise goes on token embeddings (the layer class on an embedding
            layer, the LLM class, :func:`~captum_perturb.explain_layers`);
            ``result.sigma_max_source`` says which.
        state_std: σ_S, the explained state's spread over a corpus
            (:func:`~captum_perturb.estimate_state_std`,
            :func:`~captum_perturb.next_token_state_std`), broadcastable to one example's
            state; for :func:`~captum_perturb.explain_layers` a ``{layer: σ_S}`` mapping
            (:func:`~captum_perturb.layer_state_std`). ``None``: the reference code's
            fallback, dividing by mean(Φ(x)²) per example, with a warning (the packaged
            statistics where the layer-by-layer analysis knows the model); the result's
            ``normaliser`` says which was used.
        config: the optimiser's settings, :data:`~captum_perturb.DEFAULT` when ``None``
            (:data:`~captum_perturb.LAYERWISE` for the layer-by-layer analysis, the same
            values); :data:`~captum_perturb.REFERENCE` reproduces the authors' algorithm.
        seed: seeds all noise: an int, a ``torch.Generator``, or ``None`` for torch's
            global RNG. The same seed gives the same σ for any ``internal_batch_size``
            (up to the model's round-off, which the result reports).
        score: ``"channel"`` (``None``: the default of the Captum and LLM classes) attributes
            :math:`\tfrac12\log(1 + \sigma_{max}^2/\sigma_g^{*2})` nats per dimension,
            which keeps ranking groups whose σ sits at σ_max by how hard the state pushes
            back there (0 only for groups without effect); ``"paper"`` the paper's
            :math:`\log(\sigma_{max}/\sigma_g)`, 0 at the bound. Both agree within
            :math:`\tfrac12\log 2` inside the bound and rank it alike
            (``docs/method.rst``). :func:`~captum_perturb.explain_layers` reports the
            paper's information (nats kept) and takes ``"paper"`` or ``None`` only.
        show_progress: a progress bar over the estimator's iterations (needs tqdm).

    Raises:
        ValueError: a ``rate`` that is not a finite positive number, or an unknown
            ``score``.

    Example:
        >>> from captum_perturb import HIGH_PRECISION, EstimatorOptions
        >>> careful = EstimatorOptions(config=HIGH_PRECISION, seed=1)
        >>> careful.rate, careful.seed
        (0.1, 1)
        >>> EstimatorOptions(rate=-1.0)  # doctest: +ELLIPSIS
        Traceback (most recent call last):
        ...
        ValueError: rate must be a positive finite number, got -1.0: ...
    """

    rate: float = 0.1
    sigma_max: float | Tensor | None = None
    state_std: Tensor | Mapping[int, Tensor] | None = None
    config: EstimatorConfig | None = None
    seed: int | torch.Generator | None = 0
    score: Literal["channel", "paper"] | None = None
    show_progress: bool = False

    def __post_init__(self) -> None:
        check_rate(self.rate)
        if self.score is not None:
            check_score(self.score)


class EstimatorSettings(TypedDict, total=False):
    """:class:`EstimatorOptions`' fields as keyword arguments (``**settings``), for type
    checkers and editors; their meaning and defaults are :class:`EstimatorOptions`'."""

    rate: float
    sigma_max: float | Tensor | None
    state_std: Tensor | Mapping[int, Tensor] | None
    config: EstimatorConfig | None
    seed: int | torch.Generator | None
    score: Literal["channel", "paper"] | None
    show_progress: bool


#: the settings' names, in :class:`EstimatorOptions`' order
SETTINGS = tuple(f.name for f in fields(EstimatorOptions))


def resolve_options(
    options: EstimatorOptions | None, settings: Mapping[str, Any], who: str
) -> EstimatorOptions:
    """``options`` (default :class:`EstimatorOptions`\\ ()) with the keyword ``settings``
    put over it.

    Raises:
        TypeError: ``options`` is not an :class:`EstimatorOptions`, or a keyword is not
            a setting.
        ValueError: a setting's value is invalid (see :class:`EstimatorOptions`).
    """
    if options is None:
        options = EstimatorOptions()
    elif not isinstance(options, EstimatorOptions):
        raise TypeError(
            f"{who}: options must be a captum_perturb.EstimatorOptions, got "
            f"{type(options).__name__}; pass settings by keyword or as "
            "EstimatorOptions(rate=..., seed=...)"
        )
    unknown = sorted(set(settings) - set(SETTINGS))
    if unknown:
        raise TypeError(
            f"{who} got unexpected keyword argument(s) {unknown}; the estimator's settings "
            f"are {list(SETTINGS)} (captum_perturb.EstimatorOptions)"
        )
    return replace(options, **settings) if settings else options


def renamed(old_value: Any, value: Any, *, old: str, new: str, who: str) -> Any:
    """The value of a keyword that was renamed ``old`` → ``new``: ``old`` still works,
    with a ``FutureWarning``; both at once is an error.

    Raises:
        TypeError: both ``old`` and ``new`` were given.
    """
    if old_value is None:
        return value
    if value is not None:
        raise TypeError(f"{who}: pass {new}= only ({old}= is its former name)")
    warnings.warn(
        f"{who}: {old}= is now called {new}=; the old name will be removed",
        FutureWarning,
        stacklevel=user_stacklevel(),
    )
    return old_value
