"""The LLM study's metrics: how much the answer loses when the ranked prompt tokens go.

Owns what is measured on one explanation: the target's total log-probability under
teacher forcing (:func:`target_log_prob_fn`), the rationale sizes (:func:`rationale_ks`),
the deletion metrics ``drop_top_k`` and ``drop_keep_bottom_k`` (:func:`faithfulness`,
ties scored over :data:`~comparisons.metrics.N_TIE_ORDERS` seeded random orders), and
the description of every metric the study stores (:data:`METRICS`).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import torch
from torch import Tensor, nn

from comparisons.metrics import N_TIE_ORDERS, tie_orders

MAX_K = 3

METRICS = {
    "drop_top_k": {
        "better": "higher",
        "description": "drop of the target's total log-prob (teacher forcing) when the top-k "
        f"prompt tokens are deleted, mean over k = 1..min({MAX_K}, n-1); ties: mean over "
        f"{N_TIE_ORDERS} seeded random orders",
    },
    "drop_keep_bottom_k": {
        "better": "higher",
        "description": "drop of the target's total log-prob when the prompt is reduced to its "
        f"k least important tokens (BOS kept), mean over k = 1..min({MAX_K}, n-1); ties as "
        "above",
    },
    "abstained": {
        "better": "lower",
        "description": "1 when the explanation ranks nothing (it is constant), else 0",
    },
    "converged": {"better": "higher", "description": "ours: the estimate met its stopping rule"},
    "seconds": {"better": "lower", "description": "wall time of the explanation (s)"},
}

LogProbFn = Callable[[Sequence[Tensor]], Tensor]
"""Prompts (1-D ids each, BOS included) -> ``(N,)`` the target's total log-probability."""


def _answer_log_prob(model: nn.Module, ids: Tensor, n_prompt: int, target: Tensor) -> Tensor:
    """``(n,)`` float64 total log-probability of ``target`` after each prompt of
    ``n_prompt`` tokens (teacher forcing, KV cache off), from the model's logits alone: the
    metric does not run through the package it scores."""
    with torch.no_grad():
        out = model(input_ids=ids, attention_mask=torch.ones_like(ids), use_cache=False)
    at = out.logits[:, n_prompt - 1 : n_prompt - 1 + len(target)].to(torch.float64)
    lp = torch.log_softmax(at, dim=-1)
    picked = lp.gather(2, target.to(lp.device).view(1, -1, 1).expand(lp.shape[0], -1, 1))
    return picked[..., 0].sum(1)


def target_log_prob_fn(model: nn.Module, target: Tensor, batch_size: int = 64) -> LogProbFn:
    """:data:`LogProbFn` of ``model`` for the answer ``target`` (teacher forcing, no KV
    cache); prompts of equal length share a batch, so no padding is needed."""

    def log_prob(prompts: Sequence[Tensor]) -> Tensor:
        out = torch.empty(len(prompts), dtype=torch.float64)
        by_length: dict[int, list[int]] = {}
        for i, p in enumerate(prompts):
            by_length.setdefault(len(p), []).append(i)
        for length, rows in by_length.items():
            for start in range(0, len(rows), batch_size):
                chunk = rows[start : start + batch_size]
                ids = torch.stack([torch.cat([prompts[i], target]) for i in chunk])
                out[chunk] = _answer_log_prob(model, ids, length, target).cpu()
        return out

    return log_prob


def rationale_ks(n: int, max_k: int = MAX_K) -> range:
    """The sizes ``k`` the metrics average over: ``1 … min(max_k, n − 1)``."""
    if n < 2:
        raise ValueError(f"a prompt of {n} explained token(s) has no k to score (need 2)")
    return range(1, min(max_k, n - 1) + 1)


def _deletion_plan(
    scores: Tensor, prompt_ids: Tensor, features: Tensor, ks: range, n_orders: int, seed: int
) -> tuple[dict[tuple[int, ...], int], int, list[tuple[int, int]]]:
    """The distinct prompts :func:`faithfulness` scores and where each drop reads them.

    Returns:
        The distinct prompts (ids -> row), the full prompt's row, and for each tie order
        and each ``k`` the rows of the prompt without the top-k features and of the prompt
        with only the k last-ranked features.
    """
    n = len(features)
    prompts: dict[tuple[int, ...], int] = {}

    def row(drop: Tensor) -> int:
        keep = torch.ones(len(prompt_ids), dtype=torch.bool)
        keep[drop] = False
        return prompts.setdefault(tuple(prompt_ids[keep].tolist()), len(prompts))

    full = row(features[:0])
    plan = [
        (row(features[order[:k]]), row(features[order[: n - k]]))
        for order in tie_orders(
            scores, torch.zeros_like(scores, dtype=torch.bool), True, n_orders, seed
        )
        for k in ks
    ]
    return prompts, full, plan


def faithfulness(
    scores: Tensor,
    prompt_ids: Tensor,
    features: Tensor,
    log_prob: LogProbFn,
    *,
    seed: int = 0,
    n_orders: int = N_TIE_ORDERS,
    max_k: int = MAX_K,
) -> dict[str, float]:
    """``drop_top_k`` and ``drop_keep_bottom_k`` of one explanation (higher is better).

    For each order of :func:`tie_orders` and each ``k`` of :func:`rationale_ks`: the drop
    ``log p(target | prompt) − log p(target | prompt')`` with ``prompt'`` the prompt
    without its top-k features (``drop_top_k``), or with only its k last-ranked features
    and the tokens that are not features, BOS among them (``drop_keep_bottom_k``). Each
    is averaged over the ks, then over the orders. Every distinct prompt is scored once,
    in one call of ``log_prob``.

    Args:
        scores: ``(n,)`` one score per feature (higher: more important).
        prompt_ids: ``(P,)`` the prompt's ids.
        features: ``(n,)`` the features' positions in ``prompt_ids``.
        log_prob: the target's total log-probability given prompts.
        seed: seeds the tie orders.
        n_orders: tie orders drawn when there are ties.
        max_k: the largest rationale.

    Returns:
        ``{"drop_top_k": …, "drop_keep_bottom_k": …}``.
    """
    n = len(features)
    if scores.shape != (n,):
        raise ValueError(f"{tuple(scores.shape)} scores for {n} features")
    ks = rationale_ks(n, max_k)
    prompts, full, plan = _deletion_plan(scores, prompt_ids, features, ks, n_orders, seed)
    lp = log_prob([torch.tensor(p, dtype=prompt_ids.dtype) for p in prompts])
    drops = (lp[full] - lp).tolist()
    return {
        "drop_top_k": math.fsum(drops[a] for a, _ in plan) / len(plan),
        "drop_keep_bottom_k": math.fsum(drops[b] for _, b in plan) / len(plan),
    }
