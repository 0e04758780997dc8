"""Find the modules a forward function uses and keep their state as the caller left it."""

from __future__ import annotations

import inspect
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from typing import Any

from torch import nn


def modules_of(func: Callable[..., Any], extra: Iterable[nn.Module] = ()) -> list[nn.Module]:
    """The ``nn.Module`` objects behind ``func``: itself, its ``self``, its closure and globals."""
    found: list[nn.Module] = list(extra)
    candidates: list[Any] = [func, getattr(func, "__self__", None)]
    target = getattr(func, "__func__", func)
    if inspect.isfunction(target):
        try:
            closure = inspect.getclosurevars(target)
            candidates += list(closure.nonlocals.values()) + list(closure.globals.values())
        except (TypeError, ValueError):
            pass
    for obj in candidates:
        if isinstance(obj, nn.Module) and all(obj is not m for m in found):
            found.append(obj)
    return found


@contextmanager
def evaluation_mode(modules: Iterable[nn.Module]) -> Iterator[None]:
    """Put ``modules`` in eval mode (no dropout) and restore every submodule's flag after.

    The flags are restored exactly, also when the body raises.
    """
    saved: list[tuple[nn.Module, bool]] = []
    seen: set[int] = set()
    for root in modules:
        for m in root.modules():
            if id(m) not in seen:
                seen.add(id(m))
                saved.append((m, m.training))
    try:
        for m, _ in saved:
            m.training = False
        yield
    finally:
        for m, flag in saved:
            m.training = flag
