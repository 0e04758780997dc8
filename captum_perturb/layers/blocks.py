"""The transformer blocks of a Hugging Face model, and a staircase forward pass over them.

A *staircase* pass runs a batch whose rows stop at different depths: the noisy embedding
output enters the first block for every row, each block's output is read for the rows
that explain that block, and those rows are dropped from the batch before the next
block (a forward pre-hook slices every batch-shaped tensor argument of the block — the
hidden states, the attention mask, rotary position tables). So a row explaining block
``k`` costs ``k`` blocks, as if it had been run alone with an early stop, while all rows
share one forward pass.
"""

from __future__ import annotations

import functools
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import Any

import torch
from torch import Tensor, nn

from captum_perturb._utils.hooks import StopForwardError, first_tensor, with_first

_BLOCK_PATHS = (
    "encoder.layer",
    "transformer.layer",
    "transformer.h",
    "h",
    "layers",
    "model.layers",
)


def transformer_blocks(model: nn.Module) -> list[nn.Module]:
    """The blocks of a BERT-, RoBERTa-, DistilBERT-, GPT-2- or Llama-like model, bottom up.

    Raises:
        ValueError: when no ``nn.ModuleList`` of blocks is found.
    """
    prefix = getattr(model, "base_model_prefix", "")
    roots = [getattr(model, prefix, None), model] if prefix else [model]
    for root in roots:
        if root is None:
            continue
        for path in _BLOCK_PATHS:
            obj: Any = root
            for part in path.split("."):
                obj = getattr(obj, part, None)
                if obj is None:
                    break
            if isinstance(obj, nn.ModuleList) and len(obj) > 0:
                return list(obj)
    raise ValueError(
        f"cannot find the transformer blocks of {type(model).__name__} (looked for "
        f"{', '.join(_BLOCK_PATHS)}); pass a Hugging Face encoder or decoder"
    )


def _slice(value: Any, keep: Tensor, batch: int) -> Any:
    """``value`` with every tensor of batch size ``batch`` (2-D or more) cut to rows ``keep``."""
    if isinstance(value, Tensor):
        if value.dim() >= 2 and value.shape[0] == batch:
            return value.index_select(0, keep.to(value.device))
        return value
    if isinstance(value, tuple):
        return tuple(_slice(v, keep, batch) for v in value)
    if isinstance(value, list):
        return [_slice(v, keep, batch) for v in value]
    if isinstance(value, dict):
        return {k: _slice(v, keep, batch) for k, v in value.items()}
    return value


@contextmanager
def staircase(
    blocks: Sequence[nn.Module],
    noisy: Tensor,
    depth: Tensor,
    sink: dict[int, Tensor],
) -> Iterator[None]:
    """Hooks for one staircase pass; run the model inside, then read ``sink``.

    Args:
        blocks: the model's blocks (:func:`transformer_blocks`).
        noisy: ``(R, T, D)`` the values that replace the first block's hidden-state input.
        depth: ``(R,)`` the block (1-based) whose output each row explains, all ``>= 1``.
        sink: filled with ``{k: (rows with depth k, T, D)}``, those rows in their order in
            ``depth``; the pass stops (:class:`StopForwardError`) after the deepest block.
    """
    stairs = _Stairs(noisy, depth.to(noisy.device), sink)
    handles = [blocks[0].register_forward_pre_hook(stairs.enter_first, with_kwargs=True)]
    try:
        for k in range(1, stairs.deepest + 1):
            if k >= 2:
                handles.append(
                    blocks[k - 1].register_forward_pre_hook(
                        functools.partial(stairs.cut, k), with_kwargs=True
                    )
                )
            handles.append(blocks[k - 1].register_forward_hook(functools.partial(stairs.leave, k)))
        yield
    finally:
        for h in handles:
            h.remove()


class _Stairs:
    """The hooks of one staircase pass and the rows they keep track of."""

    def __init__(self, noisy: Tensor, depth: Tensor, sink: dict[int, Tensor]) -> None:
        self.noisy, self.depth, self.sink = noisy, depth, sink
        self.deepest = int(depth.max())
        self.n_rows = len(depth)
        # original row of each row of the batch entering the next block
        self.alive = torch.arange(len(depth), device=noisy.device)
        # rows of the current batch that go on, set by block k - 1 for block k's pre-hook
        self.keep_next: dict[int, Tensor] = {}

    def enter_first(self, module: nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
        """Replace the first block's hidden-state input by the noisy values."""
        if args:
            old = first_tensor(args, "the first block's input")
            return (with_first(args, self.noisy.to(old.dtype)), kwargs)
        key = "hidden_states" if "hidden_states" in kwargs else next(iter(kwargs))
        return (args, {**kwargs, key: self.noisy.to(kwargs[key].dtype)})

    def leave(self, k: int, module: nn.Module, args: Any, out: Any) -> None:
        """After block ``k``: the rows explaining it leave the batch for ``sink``; the
        pass stops after the deepest block."""
        state = first_tensor(out, f"the output of block {k}")
        rows = self.alive
        here = self.depth[rows] == k
        if bool(here.any()):
            self.sink[k] = state[here]
        if k >= self.deepest:
            raise StopForwardError
        go_on = torch.nonzero(~here).flatten()
        self.keep_next[k + 1] = go_on
        self.alive = rows[go_on]

    def cut(self, k: int, module: nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
        """Before block ``k``: its hidden-state input is block k - 1's output (the rows
        alive before the last exit): cut it to the rows going on. Every other batch-shaped
        argument was built once for the whole batch by the model (attention masks,
        position tables) and is passed again to each block: cut it to the original rows
        still alive."""
        keep = self.keep_next.pop(k, None)
        rows, n_rows = self.alive, self.n_rows
        if len(rows) == n_rows:
            return None
        in_args = bool(args)
        key = "hidden_states" if "hidden_states" in kwargs else next(iter(kwargs), "")
        hidden = first_tensor(args if in_args else (kwargs[key],), f"block {k}'s input")
        if keep is not None and hidden.shape[0] != len(rows):
            hidden = hidden.index_select(0, keep.to(hidden.device))
        if in_args:
            return ((hidden, *_slice(args[1:], rows, n_rows)), _slice(kwargs, rows, n_rows))
        rest = _slice({n: v for n, v in kwargs.items() if n != key}, rows, n_rows)
        return (args, {key: hidden, **rest})
