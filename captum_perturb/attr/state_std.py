"""σ_S: the spread of an explained state over a corpus (the paper's normaliser)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Literal

import torch
from torch import Tensor, nn

from captum_perturb._utils.common import index_args
from captum_perturb._utils.compat import format_additional_forward_args, select_targets, target_rows
from captum_perturb._utils.hooks import captured_value, first_tensor
from captum_perturb._utils.model_state import evaluation_mode, modules_of
from captum_perturb.functional.moments import state_moments, std_from_moments
from captum_perturb.options import renamed


def estimate_state_std(
    forward_func: Callable[..., Any],
    inputs: Tensor | tuple[Any, ...],
    additional_forward_args: Any = None,
    *,
    target: Any = None,
    state_layer: nn.Module | None = None,
    attention_mask: Tensor | None = None,
    token_reduction: Literal["mean", "pool", "none"] = "mean",
    batch_size: int = 32,
    constant_rtol: float = 1e-6,
    layer: nn.Module | None = None,
) -> Tensor:
    r"""Element-wise population std of the explained state over a corpus.

    The state is what :class:`~captum_perturb.PerturbationEntropyAttribution` explains for
    the same ``forward_func``, ``target`` and ``state_layer``: the model output, or
    ``state_layer``'s
    output (``out[0]`` of a tuple). The corpus is processed in batches under
    ``torch.no_grad()``, with the model in eval mode (restored after).

    A ``(B, T, ...)`` state (``T`` tokens, dim 1) is reduced over its tokens, skipping
    padded positions where ``attention_mask`` is 0, so that σ_S fits sentences of any
    length:

    * ``"mean"`` (default, the reference code's ``calculate_regularization`` with the
      token axis in ``reduced_axes``, and what the paper's numbers use): average each
      example's state over its tokens, then take the std across examples;
    * ``"pool"``: the std over all tokens of all examples (the spread of one token's state,
      larger than the spread of a sentence mean, so σ comes out larger);
    * ``"none"``: the std across examples of every element (equal lengths, no reduction).

    A state without a token axis (fewer than 3 dimensions) gives one σ_S per element.

    Args:
        forward_func: the model or function to explain.
        inputs: the corpus, dim 0 = examples (tensor or tuple of tensors).
        additional_forward_args: side inputs with one row per example.
        target: Captum's target, as for ``attribute``.
        state_layer: read this module's output as the state instead of the model output.
        attention_mask: ``(N, T)`` 0 at padding (pass it to the model through
            ``additional_forward_args`` as well).
        token_reduction: ``"mean"``, ``"pool"`` or ``"none"`` (see above).
        batch_size: examples per forward pass.
        constant_rtol: elements whose std is at most this fraction of the largest are
            constant over the corpus (e.g. a dead dimension of the last layer of MiniLM,
            std 1e-32); they get σ_S = +inf, which leaves them out of the loss, with a
            warning. Dividing by their std would blow the loss up.
        layer: the former name of ``state_layer`` (deprecated).

    Returns:
        σ_S, broadcastable to one example's state.

    Example:
        >>> import torch
        >>> from captum_perturb import estimate_state_std
        >>> corpus = torch.randn(1000, 5)
        >>> std = estimate_state_std(lambda x: 3 * x, corpus)
        >>> std.shape, bool(torch.allclose(std, torch.full((5,), 3.0), rtol=0.15))
        (torch.Size([5]), True)
    """

    layer = renamed(layer, state_layer, old="layer", new="state_layer", who="estimate_state_std")
    tuple_inputs = inputs if isinstance(inputs, tuple) else (inputs,)
    args = format_additional_forward_args(additional_forward_args)
    n = tuple_inputs[0].shape[0]
    if batch_size < 1:
        raise ValueError("batch_size must be at least 1")
    if token_reduction not in ("mean", "pool", "none"):
        raise ValueError(
            f"token_reduction must be 'mean', 'pool' or 'none', got {token_reduction!r}"
        )
    total: Tensor | None = None
    total_sq: Tensor | None = None
    count: Tensor | None = None
    device = tuple_inputs[0].device
    modules = modules_of(forward_func, extra=() if layer is None else (layer,))
    with evaluation_mode(modules), torch.no_grad():
        for start in range(0, n, batch_size):
            rows = torch.arange(start, min(start + batch_size, n), device=device)
            part = index_args(tuple_inputs, rows)
            part_args = index_args(args, rows)
            if layer is None:
                state = first_tensor(forward_func(*part, *part_args), "the model output")
            else:
                state = captured_value(layer, lambda: forward_func(*part, *part_args))  # noqa: B023
            state = select_targets(state, target_rows(target, rows)).double()
            m = None
            if attention_mask is not None:
                m = attention_mask[rows.to(attention_mask.device)]
            s1, s2, c = state_moments(state, m, token_reduction)
            total = s1 if total is None else total + s1
            total_sq = s2 if total_sq is None else total_sq + s2
            count = c if count is None else count + c
    assert total is not None and total_sq is not None and count is not None
    std = std_from_moments(total, total_sq, count, constant_rtol)
    dtype = tuple_inputs[0].dtype if tuple_inputs[0].is_floating_point() else torch.float32
    return std.to(dtype)
