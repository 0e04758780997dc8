"""The one place that imports Captum's private helpers.

Captum's underscore functions may move between releases; every use in this package goes
through here, and ``tests/test_compat.py`` pins their behaviour, so an upgrade breaks in
one place.
"""

from __future__ import annotations

from typing import Any

from captum._utils.common import (
    _format_additional_forward_args as format_additional_forward_args,
)
from captum._utils.common import _format_output as format_output
from captum._utils.common import _format_tensor_into_tuples as format_tensor_into_tuples
from captum._utils.common import _is_mask_valid as is_mask_valid
from captum._utils.common import _select_targets as select_targets
from captum._utils.progress import progress
from captum.attr._core.llm_attr import DEFAULT_GEN_ARGS as DEFAULT_GEN_ARGS
from captum.attr._core.llm_attr import BaseLLMAttribution as BaseLLMAttribution
from captum.attr._core.llm_attr import (
    _convert_ids_to_pretty_tokens as convert_ids_to_pretty_tokens,
)

__all__ = [
    "DEFAULT_GEN_ARGS",
    "BaseLLMAttribution",
    "convert_ids_to_pretty_tokens",
    "format_additional_forward_args",
    "format_output",
    "format_tensor_into_tuples",
    "is_mask_valid",
    "progress",
    "select_targets",
    "target_rows",
]


def target_rows(target: Any, rows: Any) -> Any:
    """Captum's ``target`` for a stack of copies whose examples are ``rows``.

    ``None``, an int and a tuple apply to every example unchanged; a tensor or list with
    one entry per example is indexed by ``rows``.
    """
    import torch

    if target is None or isinstance(target, (int, tuple)):
        return target
    if isinstance(target, torch.Tensor):
        if target.numel() == 1:
            return target
        return target.to(rows.device)[rows]
    if isinstance(target, list):
        return [target[int(i)] for i in rows.tolist()]
    return target
