"""Forward hooks that read or replace a layer's value; always removed on exit."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

from torch import Tensor, nn


class StopForwardError(Exception):
    """Raised inside a hook once the explained state is captured: the rest is not needed."""


def first_tensor(value: Any, where: str) -> Tensor:
    """The hidden state inside a layer's value: itself, ``out[0]`` of a tuple or ModelOutput."""
    if isinstance(value, Tensor):
        return value
    if isinstance(value, (tuple, list)) and value and isinstance(value[0], Tensor):
        return value[0]
    to_tuple = getattr(value, "to_tuple", None)
    if callable(to_tuple):
        items = to_tuple()
        if items and isinstance(items[0], Tensor):
            return items[0]
    raise TypeError(
        f"{where} is a {type(value).__name__} with no tensor first; only a tensor, or a "
        "tuple / ModelOutput whose first item is the hidden state, can be used"
    )


def with_first(value: Any, new: Tensor) -> Any:
    """``value`` with its hidden state (see :func:`first_tensor`) replaced by ``new``."""
    if isinstance(value, Tensor):
        return new
    if isinstance(value, tuple):
        return (new, *value[1:])
    if isinstance(value, list):
        return [new, *value[1:]]
    key = next(iter(value.keys()))
    value[key] = new
    return value


@contextmanager
def capture(
    module: nn.Module, sink: list[Tensor], *, layer_input: bool = False, stop: bool = True
) -> Iterator[None]:
    """Append the module's (first) output — or input — tensor to ``sink`` on its first call.

    With ``stop`` the forward pass is cut short by :class:`StopForwardError` right after.
    """

    def grab(value: Any) -> None:
        if not sink:
            sink.append(
                first_tensor(
                    value, f"the {'input' if layer_input else 'output'} of {type(module).__name__}"
                )
            )
            if stop:
                raise StopForwardError

    handle = (
        module.register_forward_pre_hook(lambda m, args: grab(args))
        if layer_input
        else module.register_forward_hook(lambda m, args, out: grab(out))
    )
    try:
        yield
    finally:
        handle.remove()


@contextmanager
def replace(
    module: nn.Module, new: Tensor, done: list[bool], *, layer_input: bool = False
) -> Iterator[None]:
    """Make the module's (first) output — or input — ``new`` on its first call."""

    def swap(value: Any) -> Any:
        if done:
            return None
        old = first_tensor(
            value, f"the {'input' if layer_input else 'output'} of {type(module).__name__}"
        )
        if old.shape != new.shape:
            raise RuntimeError(
                f"perturbed value of shape {tuple(new.shape)} cannot replace the layer's value "
                f"of shape {tuple(old.shape)}"
            )
        done.append(True)
        return with_first(value, new.to(old.dtype))

    if layer_input:
        handle = module.register_forward_pre_hook(lambda m, args: swap(args))
    else:
        handle = module.register_forward_hook(lambda m, args, out: swap(out))
    try:
        yield
    finally:
        handle.remove()


def run_until_captured(run: Callable[[], Any]) -> Any:
    """Call ``run``; a :class:`StopForwardError` from a capture hook ends it early (-> None)."""
    try:
        return run()
    except StopForwardError:
        return None


#: what to do when a captured layer never runs
NOT_CALLED = "pass a module of the model that forward_func calls"


def captured_value(
    layer: nn.Module,
    run: Callable[[], Any],
    *,
    layer_input: bool = False,
    what: str = "the layer",
    fix: str = NOT_CALLED,
) -> Tensor:
    """The layer's (first) output — or input — on the first call of ``run`` (cut short
    there).

    Raises:
        RuntimeError: the layer never ran; the message names it and ``fix``.
    """
    sink: list[Tensor] = []
    with capture(layer, sink, layer_input=layer_input):
        run_until_captured(run)
    if not sink:
        raise RuntimeError(
            f"{what} {type(layer).__name__} never ran during the forward pass; {fix}"
        )
    return sink[0]
