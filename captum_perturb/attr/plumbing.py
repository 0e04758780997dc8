"""Captum plumbing shared by the input-level and the layer class.

A *site* says where noise goes (the inputs, or a layer's value); everything else —
targets, side inputs, padding, groups, σ_max, the state explained, model state and hooks —
is the same for both classes and lives here.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn

from captum_perturb._utils.common import index_args, make_generator
from captum_perturb._utils.compat import (
    format_additional_forward_args,
    format_output,
    select_targets,
    target_rows,
)
from captum_perturb._utils.hooks import NOT_CALLED, captured_value
from captum_perturb._utils.model_state import evaluation_mode, modules_of
from captum_perturb.attr.checks import check_devices, match_attention_mask
from captum_perturb.attr.features import FeatureMask, dense_groups, raw_feature_ids
from captum_perturb.attr.result import PerturbationEntropyResult
from captum_perturb.config import DEFAULT
from captum_perturb.functional._groups import flat_index, spread
from captum_perturb.functional.diagnostics import score_of, warn_if_needed
from captum_perturb.functional.estimate import (
    SigmaEstimate,
    StateFn,
    check_finite,
    estimate_sigma,
)
from captum_perturb.functional.moments import FALLBACK_LABEL, embedding_sigma_max
from captum_perturb.options import EstimatorOptions

#: A state function for the site: (perturbed values, rows, explained-state reader) -> state
SiteRun = Callable[[tuple[Tensor, ...], Tensor, Callable[[Callable[[], Any]], Tensor]], Tensor]


class EntropyFlags:
    """Captum's declarative flags, true for both classes: the scores are log noise ratios
    (not multiplied by the inputs) with no completeness delta (see ``result.converged``)."""

    @property
    def multiplies_by_inputs(self) -> bool:
        """False: the scores are log(σ_max/σ), not multiplied by the inputs."""
        return False

    def has_convergence_delta(self) -> bool:
        """False: there is no completeness delta (see ``result.converged`` instead)."""
        return False


@dataclass
class Site:
    """Where the noise goes.

    Attributes:
        values: the clean values noise is added to, ``(B, ...)`` each.
        run: ``run(perturbed, rows, state_of)`` evaluates the explained state for copies.
        is_tuple: whether attributions are returned as a tuple.
        embedding: a word-embedding matrix whose std sets the default σ_max, if any.
        modules: modules whose train/eval flags the call guards in addition.
    """

    values: tuple[Tensor, ...]
    run: SiteRun
    is_tuple: bool
    embedding: Tensor | None = None
    modules: tuple[nn.Module, ...] = ()


def check_batch(inputs: tuple[Any, ...], args: tuple[Any, ...] | None) -> int:
    """The common batch size of the inputs and the tensor side inputs.

    Raises:
        ValueError: when they differ, or when the batch is empty.
    """
    sizes = [x.shape[0] for x in inputs if isinstance(x, Tensor) and x.dim() > 0]
    if not sizes:
        raise ValueError("inputs must hold at least one tensor with a batch dimension (dim 0)")
    batch = sizes[0]
    if batch == 0:
        raise ValueError(
            "the batch is empty: the inputs have 0 examples along dim 0 (the batch "
            "dimension); pass at least one example"
        )
    for i, x in enumerate(inputs):
        if isinstance(x, Tensor) and (x.dim() == 0 or x.shape[0] != batch):
            raise ValueError(
                f"inputs[{i}] has shape {tuple(x.shape)} but inputs[0] has batch size {batch}: "
                "every input needs the same first (batch) dimension"
            )
    for i, a in enumerate(args or ()):
        if isinstance(a, Tensor) and a.dim() > 0 and a.shape[0] != batch:
            raise ValueError(
                f"additional_forward_args[{i}] has batch size {a.shape[0]} but the inputs have "
                f"{batch}: side inputs such as attention masks need one row per example "
                "(fold constants into forward_func instead)"
            )
    return batch


def padding_keep(
    values: tuple[Tensor, ...], attention_mask: Tensor | None
) -> tuple[Tensor | None, ...]:
    """Per value, a bool mask broadcastable to it: False at padded positions (dim 1)."""
    if attention_mask is None:
        return tuple(None for _ in values)
    keep: list[Tensor | None] = []
    for v in values:
        if v.dim() >= 2 and v.shape[:2] == attention_mask.shape:
            m = attention_mask.to(device=v.device).bool()
            keep.append(m.reshape(*m.shape, *([1] * (v.dim() - 2))))
        else:
            keep.append(None)
    return tuple(keep)


def default_sigma_max(site: Site, keep: tuple[Tensor | None, ...]) -> tuple[Tensor, str]:
    """10 × the std of the word embeddings when noise goes on an embedding layer (the
    authors' recommendation, :func:`embedding_sigma_max`), else 10 × the std of each
    example's perturbed values."""
    ref = site.values[0]
    batch = ref.shape[0]
    if site.embedding is not None:
        value = torch.tensor(embedding_sigma_max(site.embedding), dtype=ref.dtype)
        return value.to(ref.device).expand(batch).clone(), "word embeddings"
    total = torch.zeros(batch, dtype=ref.dtype, device=ref.device)
    total_sq = torch.zeros_like(total)
    count = torch.zeros_like(total)
    for v, k in zip(site.values, keep, strict=True):
        m = torch.ones_like(v) if k is None else torch.broadcast_to(k, v.shape).to(v.dtype)
        total += (m * v).reshape(batch, -1).sum(1)
        total_sq += (m * v.square()).reshape(batch, -1).sum(1)
        count += m.reshape(batch, -1).sum(1)
    mean = total / count.clamp_min(1)
    var = (total_sq / count.clamp_min(1) - mean.square()).clamp_min(0)
    smax = 10.0 * var.sqrt()
    if bool((smax <= 0).any()):
        raise ValueError(
            "the perturbed values of some example are constant, so the default "
            "sigma_max = 10 × their std is 0; pass sigma_max explicitly"
        )
    return smax, "inputs"


def explain(
    forward_func: Callable[..., Any],
    site_factory: Callable[[tuple[Any, ...], int, Callable[..., Any]], Site],
    inputs: Any,
    target: Any,
    additional_forward_args: Any,
    feature_mask: FeatureMask,
    *,
    state_layer: nn.Module | None,
    attention_mask: Tensor | None,
    internal_batch_size: int | None,
    options: EstimatorOptions,
    desc: str,
) -> PerturbationEntropyResult:
    """The shared body of ``explain``/``attribute`` for both classes: check the call, find
    the perturbed values (``site_factory``), run the estimator on the explained state, and
    put its scores back on the inputs' elements."""
    tuple_inputs = inputs if isinstance(inputs, tuple) else (inputs,)
    args = format_additional_forward_args(additional_forward_args)
    modules = modules_of(forward_func, extra=() if state_layer is None else (state_layer,))
    batch, attention_mask = check_call(
        tuple_inputs, args, modules, target, attention_mask, internal_batch_size
    )
    state_std = _tensor_state_std(options)

    def call_model(model_inputs: tuple[Any, ...], rows: Tensor) -> Any:
        return forward_func(*model_inputs, *index_args(args, rows))

    state_of = target_state(state_layer, target)
    with evaluation_mode(modules), torch.no_grad():
        site = site_factory(tuple_inputs, batch, call_model)
    with evaluation_mode([*modules, *site.modules]):
        groups, table, keep = site_groups(site, feature_mask, attention_mask, batch)
        if options.sigma_max is None:
            smax, source = default_sigma_max(site, keep)
        else:
            smax, source = torch.as_tensor(options.sigma_max).to(site.values[0]), "given"

        def state_fn(perturbed: tuple[Tensor, ...], rows: Tensor) -> Tensor:
            return site.run(perturbed, rows, lambda run: state_of(run, rows))

        fn: StateFn = state_fn
        est = estimate_sigma(
            fn,
            site.values,
            groups,
            sigma_max=smax,
            rate=options.rate,
            state_std=state_std,
            output_mask=padding_output_mask(attention_mask),
            config=options.config or DEFAULT,
            generator=make_generator(options.seed, site.values[0].device),
            batch_size=internal_batch_size,
            show_progress=options.show_progress,
            progress_desc=desc,
        )
    # positions without effect look like padding only when the groups are positions
    by_token = isinstance(feature_mask, str) and feature_mask == "token"
    masked = attention_mask is not None or not by_token
    return _result(est, site, groups, table, source, options, masked, internal_batch_size, desc)


def _tensor_state_std(options: EstimatorOptions) -> Tensor | None:
    """The options' σ_S, which the Captum classes take as a tensor.

    Raises:
        TypeError: a ``{layer: σ_S}`` mapping or anything else that is not a tensor.
    """
    state_std = options.state_std
    if state_std is not None and not isinstance(state_std, Tensor):
        raise TypeError(
            f"state_std must be a tensor broadcastable to one example's state, got "
            f"{type(state_std).__name__} (a {{layer: σ_S}} mapping is for explain_layers)"
        )
    return state_std


def _result(
    est: SigmaEstimate,
    site: Site,
    groups: tuple[Tensor, ...],
    table: Tensor,
    source: str,
    options: EstimatorOptions,
    masked: bool,
    internal_batch_size: int | None,
    desc: str,
) -> PerturbationEntropyResult:
    """The estimate's scores put back on the inputs' elements, after its one warning."""
    score = options.score or "channel"
    scores = score_of(est, score)
    warn_if_needed(
        est,
        options.config or DEFAULT,
        masked=masked,
        score=score,
        who=desc.removesuffix(" attribution"),
        internal_batch_size=internal_batch_size,
    )
    attributions, sigma = per_element(est, scores, site, groups, table.shape[1])
    return PerturbationEntropyResult(
        attributions=format_output(site.is_tuple, attributions),
        sigma=format_output(site.is_tuple, sigma),
        estimate=est,
        group_ids=table,
        sigma_max_source=source,
        normaliser=FALLBACK_LABEL if options.state_std is None else "state_std",
        score=score,
    )


def check_call(
    inputs: tuple[Any, ...],
    args: tuple[Any, ...] | None,
    modules: Sequence[nn.Module],
    target: Any,
    attention_mask: Tensor | None,
    internal_batch_size: int | None,
) -> tuple[int, Tensor | None]:
    """Check the arguments of a call before any work: the batch size, and the attention
    mask matched to it (under NoiseTunnel / sensitivity_max it may come un-expanded).

    Raises:
        ValueError: an inconsistent batch, target length or batch size.
    """
    batch = check_batch(inputs, args)
    check_devices(inputs, args, modules)
    attention_mask = match_attention_mask(attention_mask, batch, args)
    if (
        isinstance(target, (list, Tensor))
        and not (isinstance(target, Tensor) and target.numel() == 1)
        and len(target) != batch
    ):
        raise ValueError(
            f"target has {len(target)} entries for a batch of {batch}: give one target per "
            "example, or an int / tuple that applies to all"
        )
    if internal_batch_size is not None and internal_batch_size < 1:
        raise ValueError(
            f"internal_batch_size must be a positive int or None, got {internal_batch_size}"
        )
    return batch, attention_mask


def target_state(
    state_layer: nn.Module | None, target: Any
) -> Callable[[Callable[[], Any], Tensor], Tensor]:
    """``state_of(run, rows)``: the explained state of one forward pass ``run`` — its output,
    or ``state_layer``'s output (the pass cut short there) — with ``target`` selected for
    the examples ``rows``."""

    def state_of(run: Callable[[], Any], rows: Tensor) -> Tensor:
        if state_layer is None:
            out = run()
            if not isinstance(out, Tensor):
                raise TypeError(
                    f"forward_func returned a {type(out).__name__}; it must return a tensor "
                    "(e.g. lambda ids, mask: model(ids, attention_mask=mask).logits), or "
                    "pass the module to explain"
                )
        else:
            out = captured_value(
                state_layer,
                run,
                what="the explained layer",
                fix=NOT_CALLED + " (a deep copy of it, as captum.metrics.sensitivity_max makes "
                "of its keyword arguments, never runs: pass state_layer by name there, "
                "e.g. state_layer='encoder.layer.2')",
            )
        if callable(target):
            return select_callable(target, out)
        try:
            return select_targets(out, target_rows(target, rows))
        except (IndexError, RuntimeError, AssertionError, ValueError) as err:
            raise ValueError(
                f"target {target!r} does not select from the explained state of shape "
                f"{tuple(out.shape)}: {err}. Use None (the whole state), an int or tuple "
                "index valid for every example, or one per example (list or 1-D tensor)"
            ) from err

    return state_of


def padding_output_mask(
    attention_mask: Tensor | None,
) -> Callable[[Tensor], Tensor | None]:
    """The estimator's ``output_mask``: padded positions of a ``(B, T, ...)`` state are not
    counted in the loss (None for other states, or without a mask)."""

    def output_mask(state: Tensor) -> Tensor | None:
        if attention_mask is None or state.dim() < 2 or state.shape[:2] != attention_mask.shape:
            return None
        m = attention_mask.to(state.device).bool()
        return m.reshape(*m.shape, *([1] * (state.dim() - 2)))

    return output_mask


def site_groups(
    site: Site, feature_mask: FeatureMask, attention_mask: Tensor | None, batch: int
) -> tuple[tuple[Tensor, ...], Tensor, tuple[Tensor | None, ...]]:
    """Validate the perturbed values and give their dense groups, the group table and the
    padding masks (see :func:`dense_groups`, :func:`padding_keep`)."""
    values = site.values
    for v in values:
        check_finite(v, "The inputs (or the perturbed layer's value)")
        if v.dim() >= 2 and v.shape[1] == 0:
            raise ValueError(
                f"a perturbed tensor of shape {tuple(v.shape)} has zero length along dim 1 "
                "(an empty sequence); drop empty examples before explaining"
            )
    keep = padding_keep(values, attention_mask)
    if attention_mask is not None and all(k is None for k in keep):
        raise ValueError(
            f"attention_mask must be (batch, tokens) matching dims 0-1 of the perturbed "
            f"values {[tuple(v.shape) for v in values]}; got {tuple(attention_mask.shape)}"
        )
    groups, table = dense_groups(raw_feature_ids(values, feature_mask), keep)
    empty = (table < 0).all(1) if table.numel() else torch.ones(batch, dtype=torch.bool)
    if bool(empty.any()):
        raise ValueError(
            f"examples {empty.nonzero().flatten().tolist()} have no element to perturb (all "
            "positions padded, or an empty sequence); drop them or fix attention_mask"
        )
    return groups, table, keep


def per_element(
    est: SigmaEstimate, scores: Tensor, site: Site, groups: tuple[Tensor, ...], n_groups: int
) -> tuple[tuple[Tensor, ...], tuple[Tensor, ...]]:
    """Give every element its group's score (``(B, G)``; 0 if unperturbed) and σ (NaN)."""
    values = site.values
    rows = torch.arange(values[0].shape[0], device=values[0].device)
    shapes = tuple(v.shape[1:] for v in values)
    flat = flat_index(groups, n_groups)
    attributions = spread(scores.nan_to_num(0.0), flat, rows, shapes)
    sigma = spread(est.sigma.nan_to_num(0.0), flat, rows, shapes)
    nan = est.sigma.new_full((), float("nan"))
    sigma = tuple(torch.where(g >= 0, s, nan) for s, g in zip(sigma, groups, strict=True))
    return attributions, sigma


def select_callable(target: Callable[[Tensor], Any], out: Tensor) -> Tensor:
    """A callable target (Captum's ``neuron_selector`` function) applied to a stack of
    states, checked to give one row per copy."""
    picked = target(out)
    if not isinstance(picked, Tensor) or picked.dim() == 0 or picked.shape[0] != out.shape[0]:
        got = tuple(picked.shape) if isinstance(picked, Tensor) else type(picked).__name__
        raise ValueError(
            f"a callable target must map the explained state of shape {tuple(out.shape)} to "
            f"a tensor with one row per copy (dim 0 = {out.shape[0]}); it gave {got}. It is "
            "applied to stacks of perturbed copies, so it must treat rows independently "
            "(e.g. lambda s: s[:, 1:3].sum(1))"
        )
    return picked


def module_named(forward_func: Any, layer: nn.Module | str | None) -> nn.Module | None:
    """The module ``layer`` (the caller's ``state_layer=``) names in ``forward_func``
    (itself if already a module)."""
    if layer is None or isinstance(layer, nn.Module):
        return layer
    if not isinstance(layer, str):
        raise TypeError(
            f"state_layer must be an nn.Module, its name or None, got {type(layer).__name__}"
        )
    if not isinstance(forward_func, nn.Module):
        raise TypeError(
            f"state_layer={layer!r} names a module, but forward_func is a "
            f"{type(forward_func).__name__}, not an nn.Module: pass the module itself"
        )
    try:
        return forward_func.get_submodule(layer)
    except AttributeError as err:
        names = [n for n, _ in forward_func.named_modules() if n][:8]
        raise ValueError(
            f"forward_func has no module named {layer!r} ({err}); names look like {names}"
        ) from err


def embedding_matrix(module: nn.Module) -> Tensor | None:
    """The word-embedding matrix of an embedding layer (or of an ``nn.Embedding``), if any."""
    if isinstance(module, nn.Embedding):
        return module.weight
    embeddings = [(name, m) for name, m in module.named_modules() if isinstance(m, nn.Embedding)]
    for name, m in embeddings:
        if any(key in name.lower() for key in ("word", "wte", "tok")):
            return m.weight
    return embeddings[0][1].weight if len(embeddings) == 1 else None


__all__ = ["EntropyFlags", "Site", "embedding_matrix", "explain", "module_named"]
