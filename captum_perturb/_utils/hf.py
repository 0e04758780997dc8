"""Calling a Hugging Face model the way every entry point does: KV cache off."""

from __future__ import annotations

import inspect
from typing import Any

from torch import nn


def accepts(model: nn.Module, name: str) -> bool:
    """Whether ``model.forward`` takes the keyword ``name`` (or ``**kwargs``)."""
    params = inspect.signature(model.forward).parameters.values()
    return any(p.name == name or p.kind is p.VAR_KEYWORD for p in params)


def call_without_cache(model: nn.Module, **inputs: Any) -> Any:
    """``model(**inputs)`` with the KV cache off: ``use_cache=False`` where ``forward``
    takes it (by name or through ``**kwargs``); a model that still refuses the keyword
    is called without it. The cache would hold the perturbed copies' keys and values and
    change nothing we compute."""
    if accepts(model, "use_cache"):
        try:
            return model(**inputs, use_cache=False)
        except TypeError as err:  # **kwargs that end in a forward without use_cache
            if "use_cache" not in str(err):
                raise
    return model(**inputs)
