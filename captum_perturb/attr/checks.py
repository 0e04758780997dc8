"""Argument checks of the Captum classes that are not about the estimator itself.

Each function raises an exception that names the problem and the fix, and changes
nothing the caller owns.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import replace
from typing import Any

import torch
from torch import Tensor, nn

from captum_perturb.attr.result import PerturbationEntropyResult

#: dtypes whose values are handled in float32 inside the estimator (noise, moments and
#: the clean-state difference); the model still runs in its own dtype
LOW_PRECISION = (torch.float16, torch.bfloat16)


def working_dtype(dtype: torch.dtype) -> torch.dtype:
    """The dtype the estimator works in for values of ``dtype``: float32 for half
    precision (whose 8 or 11 significant bits cannot hold the moments), else ``dtype``."""
    return torch.float32 if dtype in LOW_PRECISION else dtype


def _devices(modules: Iterable[nn.Module]) -> set[torch.device]:
    found: set[torch.device] = set()
    for m in modules:
        for t in (*m.parameters(), *m.buffers()):
            found.add(t.device)
    return found


def check_devices(
    inputs: tuple[Any, ...], args: tuple[Any, ...] | None, modules: Iterable[nn.Module]
) -> None:
    """The inputs and tensor side inputs must be on the device of the model's parameters.

    Checked only when all parameters and buffers of ``modules`` share one device (a model
    split over devices takes its inputs wherever its first layer is). 0-dim tensors are
    skipped: torch moves them.

    Args:
        inputs: the attributed inputs, dim 0 = batch.
        args: the formatted ``additional_forward_args`` (or None).
        modules: the modules behind the forward function.

    Raises:
        ValueError: a tensor on another device, naming it and how to move it.
    """
    devices = _devices(modules)
    if len(devices) != 1:
        return
    (device,) = devices
    named = [(f"inputs[{i}]", x) for i, x in enumerate(inputs)]
    named += [(f"additional_forward_args[{i}]", a) for i, a in enumerate(args or ())]
    for name, x in named:
        if isinstance(x, Tensor) and x.dim() > 0 and x.device != device:
            raise ValueError(
                f"{name} is on {x.device} but the model's parameters are on {device}: move "
                f"the inputs and additional_forward_args to the model's device, e.g. "
                f"x.to({str(device)!r}) (or the model to theirs with model.to(...))"
            )


def _expanded(mask: Tensor, k: int) -> tuple[Tensor, Tensor]:
    """The two ways Captum expands a batch k times: interleaved (NoiseTunnel,
    sensitivity_max) and tiled (the path methods)."""
    return mask.repeat_interleave(k, dim=0), mask.repeat(k, *([1] * (mask.dim() - 1)))


def match_attention_mask(
    attention_mask: Tensor | None, batch: int, args: tuple[Any, ...] | None
) -> Tensor | None:
    """``attention_mask`` for a batch of ``batch`` rows, recognising Captum's wrappers.

    Captum's ``NoiseTunnel`` and ``sensitivity_max`` expand the inputs,
    ``additional_forward_args`` and ``target`` ``k`` times (``repeat_interleave``) but pass
    other keyword arguments, such as ``attention_mask=``, unchanged. When the mask has
    ``batch / k`` rows and one of the (expanded) side inputs equals it expanded ``k``
    times, interleaved or tiled, that expansion is unambiguous and is returned; the
    model sees the same mask as the noise.

    Args:
        attention_mask: ``(B', T)`` or None.
        batch: the inputs' batch size ``B``.
        args: the formatted ``additional_forward_args`` (or None).

    Returns:
        The mask with ``B`` rows (``attention_mask`` itself when it already has them).

    Raises:
        ValueError: a mask that is not ``(B, T)`` and cannot be matched, naming the
            wrappers and the fix.
    """
    if attention_mask is None:
        return None
    if not isinstance(attention_mask, Tensor):
        raise TypeError(
            f"attention_mask must be a (batch, tokens) tensor, got {type(attention_mask).__name__}"
        )
    shape = tuple(attention_mask.shape)
    if attention_mask.dim() == 2 and shape[0] == batch:
        return attention_mask
    rows = shape[0] if attention_mask.dim() == 2 else 0
    if rows > 0 and batch % rows == 0:
        k = batch // rows
        for candidate in _expanded(attention_mask, k):
            for a in args or ():
                if (
                    isinstance(a, Tensor)
                    and a.shape == candidate.shape
                    and torch.equal(a.to(candidate.device), candidate.to(a.dtype))
                ):
                    return candidate
        raise ValueError(
            f"attention_mask has {rows} rows but the inputs have {batch} = {k} × {rows}: a "
            "wrapper such as Captum's NoiseTunnel or sensitivity_max expanded the inputs "
            "(and additional_forward_args, target) but not the attention_mask keyword. Pass "
            "the same mask to the model through additional_forward_args as well: the "
            "wrapper expands it there and the expansion is then recognised"
        )
    raise ValueError(f"attention_mask must be (batch, tokens) = ({batch}, T), got {shape}")


def in_dtypes(
    result: PerturbationEntropyResult, dtypes: tuple[torch.dtype, ...]
) -> PerturbationEntropyResult:
    """``result`` with its per-element attributions and σ in the perturbed values' own
    dtypes (Captum's convention); ``result.estimate`` keeps the working precision."""
    if all(working_dtype(d) == d for d in dtypes):
        return result

    def cast(x: Tensor | tuple[Tensor, ...]) -> Tensor | tuple[Tensor, ...]:
        if isinstance(x, Tensor):
            return x.to(dtypes[0])
        return tuple(t.to(d) for t, d in zip(x, dtypes, strict=True))

    return replace(result, attributions=cast(result.attributions), sigma=cast(result.sigma))


__all__ = [
    "LOW_PRECISION",
    "check_devices",
    "in_dtypes",
    "match_attention_mask",
    "working_dtype",
]
