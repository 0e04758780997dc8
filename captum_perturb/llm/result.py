"""Captum's ``LLMAttributionResult`` with what our estimate knows besides the scores."""

from __future__ import annotations

from typing import Any

import torch
from captum.attr import LLMAttributionResult
from torch import Tensor

from captum_perturb.functional.estimate import SigmaEstimate


class LLMPerturbationEntropyResult(LLMAttributionResult):
    r"""What :class:`~captum_perturb.LLMPerturbationEntropyAttribution` returns.

    Everything of Captum's :class:`~captum.attr.LLMAttributionResult` (``seq_attr``,
    ``token_attr``, ``input_tokens``, ``output_tokens``, ``output_probs``,
    ``plot_seq_attr``, ``plot_token_attr``, ``seq_attr_dict``), plus the estimate behind
    the numbers.

    Attributes:
        seq_std_error: ``(n_features,)`` standard error of ``seq_attr`` (nats).
        token_std_error: ``(T, n_features)`` standard error of ``token_attr``, or None.
        converged: ``(1 + T,)`` (or ``(1,)``) whether the estimate of ``seq_attr`` (entry
            0) and of each row of ``token_attr`` met the stopping rule.
        saturated: ``(1 + T, n_features)`` features whose σ sits at σ_max.
        estimate: the :class:`~captum_perturb.functional.SigmaEstimate` of all rows (row 0
            = ``seq_attr``; its groups are the features present in the prompt).
        normaliser: ``"state_std"`` or ``"mean square fallback"`` (no corpus σ_S).
        score: ``"channel"`` or ``"paper"``.
    """

    def __init__(
        self,
        *,
        std_error: Tensor,
        saturated: Tensor,
        estimate: SigmaEstimate,
        normaliser: str,
        score: str,
        **captum: Any,
    ) -> None:
        super().__init__(**captum)
        self.seq_std_error = std_error[0]
        self.token_std_error = std_error[1:] if self.token_attr is not None else None
        self.converged = estimate.converged.cpu()
        self.saturated = saturated
        self.estimate = estimate
        self.normaliser = normaliser
        self.score = score

    @property
    def diagnostics(self) -> dict[str, Any]:
        """``converged`` (all rows), ``max_std_error`` (nats, over every entry),
        ``saturated_fraction`` (of ``seq_attr``'s features), ``evaluations`` (copies
        pushed through the model) and ``normaliser``."""
        rows = [
            self.seq_std_error,
            *([] if self.token_std_error is None else [self.token_std_error]),
        ]
        se = torch.cat([r.reshape(-1) for r in rows])
        return {
            "converged": bool(self.converged.all()),
            "max_std_error": float(se.nan_to_num(0.0).max()) if se.numel() else 0.0,
            "saturated_fraction": float(self.saturated[0].float().mean()),
            "evaluations": int(self.estimate.n_evaluations),
            "normaliser": self.normaliser,
        }
