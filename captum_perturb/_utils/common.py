"""Seeding, side-input indexing and where warnings point, shared by every entry point."""

from __future__ import annotations

import sys
from typing import Any

import torch
from torch import Tensor


def make_generator(
    seed: int | torch.Generator | None, device: torch.device
) -> torch.Generator | None:
    """A generator for all noise of one call; ``None`` uses torch's global RNG."""
    if seed is None or isinstance(seed, torch.Generator):
        if isinstance(seed, torch.Generator) and seed.device.type != device.type:
            raise ValueError(
                f"the generator is on {seed.device} but the noise is drawn on {device}; "
                f"pass torch.Generator(device={str(device)!r})"
            )
        return seed
    if isinstance(seed, bool) or not isinstance(seed, int):
        raise TypeError(
            f"seed must be an int, a torch.Generator or None, got {type(seed).__name__}"
        )
    return torch.Generator(device=device).manual_seed(seed)


def index_args(args: tuple[Any, ...] | None, rows: Tensor) -> tuple[Any, ...]:
    """Side inputs for a stack of copies: tensors with a batch dimension are indexed by rows."""
    if args is None:
        return ()
    return tuple(a[rows.to(a.device)] if isinstance(a, Tensor) and a.dim() > 0 else a for a in args)


#: packages whose frames a warning skips to reach the caller's line
_OURS = ("captum_perturb", "captum")


def user_stacklevel() -> int:
    """The ``stacklevel`` that makes a ``warnings.warn`` in the calling function point at
    the first frame outside ``captum_perturb`` and Captum (whose ``log_usage`` wraps our
    ``attribute``): the user's own line, however deep the package's call chain is."""
    frame = sys._getframe(1)  # the function about to warn: stacklevel 1
    level = 1
    while frame.f_back is not None and frame.f_globals.get("__name__", "").split(".")[0] in _OURS:
        frame = frame.f_back
        level += 1
    return level
