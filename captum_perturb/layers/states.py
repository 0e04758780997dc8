"""The clean hidden states of a transformer's layers, read in one forward pass.

Shared by :mod:`~captum_perturb.layers.explain` (the states explained) and
:mod:`~captum_perturb.layers.state_std` (their spread over a corpus).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import torch
from torch import Tensor, nn

from captum_perturb._utils.hf import call_without_cache
from captum_perturb._utils.hooks import StopForwardError, first_tensor, run_until_captured

SIDE_INPUTS = ("token_type_ids", "position_ids")


def unpack_encoding(encoding: Mapping[str, Any]) -> tuple[Tensor, Tensor, dict[str, Tensor]]:
    """A tokenizer's output as ``(input_ids, attention_mask, side inputs)``, checked."""
    if "input_ids" not in encoding:
        raise ValueError(
            "encoding needs 'input_ids': pass the tokenizer's output, e.g. "
            "tokenizer(sentences, return_tensors='pt', padding=True)"
        )
    ids = encoding["input_ids"]
    if not isinstance(ids, Tensor) or ids.dim() != 2:
        raise ValueError("input_ids must be a (sentences, tokens) tensor: use return_tensors='pt'")
    mask = encoding.get("attention_mask")
    mask = torch.ones_like(ids) if mask is None else mask
    side = {k: encoding[k] for k in SIDE_INPUTS if isinstance(encoding.get(k), Tensor)}
    return ids, mask, side


def call_model(model: nn.Module, ids: Tensor, mask: Tensor, side: Mapping[str, Tensor]) -> Any:
    """One forward pass of a Hugging Face model on an encoding, without its KV cache."""
    return call_without_cache(model, input_ids=ids, attention_mask=mask, **side)


def layer_states(
    model: nn.Module,
    blocks: Sequence[nn.Module],
    layers: Sequence[int],
    ids: Tensor,
    mask: Tensor,
    side: Mapping[str, Tensor],
) -> dict[int, Tensor]:
    """Clean states of the requested layers (0 = the first block's input), one pass."""
    deepest = max(layers)
    states: dict[int, Tensor] = {}
    handles = []

    def grab_input(module: nn.Module, args: Any, kwargs: Any) -> None:
        key = "hidden_states" if "hidden_states" in kwargs else next(iter(kwargs), None)
        values = args if args else (kwargs[key],) if key is not None else ()
        states[0] = first_tensor(values, "block 1's input")
        if deepest == 0:
            raise StopForwardError

    def grab(k: int) -> Any:
        def hook(module: nn.Module, args: Any, out: Any) -> None:
            states[k] = first_tensor(out, f"the output of block {k}")
            if k == deepest:
                raise StopForwardError

        return hook

    handles.append(blocks[0].register_forward_pre_hook(grab_input, with_kwargs=True))
    for k in range(1, deepest + 1):
        handles.append(blocks[k - 1].register_forward_hook(grab(k)))
    try:
        run_until_captured(lambda: call_model(model, ids, mask, side))
    finally:
        for h in handles:
            h.remove()
    return {k: states[k] for k in layers}


def chosen_layers(layers: Sequence[int] | None, n_blocks: int) -> list[int]:
    """The layers asked for (``None``: all, ``0 … n_blocks``), checked and sorted; negative
    numbers count from the last."""
    if layers is None:
        return list(range(n_blocks + 1))
    out = []
    for k in layers:
        if isinstance(k, bool) or not isinstance(k, int):
            raise TypeError(f"layers must be ints (0 = embedding output), got {k!r}")
        j = k + n_blocks + 1 if k < 0 else k
        if not 0 <= j <= n_blocks:
            raise ValueError(
                f"layer {k} does not exist: this model has layers 0 (embedding output) to "
                f"{n_blocks}; negative numbers count from the last"
            )
        out.append(j)
    if len(set(out)) != len(out):
        raise ValueError(f"layers {list(layers)} name a layer twice")
    return sorted(out)
