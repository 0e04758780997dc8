"""Seeding and side-input indexing, shared by every entry point."""

from __future__ import annotations

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
