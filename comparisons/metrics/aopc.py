"""ERASER / ferret AOPC comprehensiveness and sufficiency (:func:`aopc`).

:data:`BINS` holds the rationale-size fractions of the two variants and
:func:`rationale_sizes` turns them into token counts.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from fractions import Fraction
from types import MappingProxyType

from torch import Tensor

from ._common import ProbFn, _check_sequence, _mask_of, _target_probs
from .removal import N_TIE_ORDERS, Remover, tie_orders

BINS: Mapping[str, tuple[float, ...]] = MappingProxyType(
    {
        # ERASER's default --aopc_thresholds (rationale_benchmark/metrics.py).
        "eraser": (0.01, 0.05, 0.10, 0.20, 0.50),
        # ferret's default removal_args["thresholds"] = np.arange(0.1, 1.1, 0.1).
        "ferret": (0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 1.0),
    }
)
"""Rationale-size fractions of the two AOPC variants, by name."""


def rationale_sizes(n_tokens: int, bins: str) -> tuple[int, ...]:
    r"""Rationale size ``k`` for each fraction ``f`` of :data:`BINS` ``[bins]``.

    * ``"eraser"``: :math:`k = \min(n, \max(1, \lceil f n \rceil))`. ERASER's scorer
      (``rationale_benchmark/metrics.py``, ``_instances_aopc``) only averages the
      per-threshold scores a submission supplies and does not fix the rounding; we take
      the ceiling so that a bin holds at least the fraction ``f`` of the tokens, and at
      least one token.
    * ``"ferret"``: :math:`k = \lfloor f n \rfloor`, ferret's ``int(percentage * n)``
      (``ferret/evaluators/utils_from_soft_to_discrete.py``,
      ``_get_id_tokens_percentage``); a size of 0 means that ferret skips the bin.

    ``f n`` is computed exactly (``Fraction``), so no float round-off moves a size; for
    ferret's float thresholds this agrees with ``int(f * n)`` for every ``n`` up to
    100,000 (checked).

    Args:
        n_tokens: Number of non-special tokens ``n`` (>= 0).
        bins: ``"eraser"`` or ``"ferret"``.

    Returns:
        One size per fraction, in the order of ``BINS[bins]``.

    Example:
        >>> rationale_sizes(30, "eraser")
        (1, 2, 3, 6, 15)
        >>> rationale_sizes(5, "ferret")
        (0, 1, 1, 2, 2, 3, 3, 4, 4, 5)
    """
    if bins not in BINS:
        raise ValueError(f"unknown bins {bins!r}; valid: {sorted(BINS)}")
    if n_tokens < 0:
        raise ValueError(f"n_tokens must be >= 0, got {n_tokens}")
    sizes = []
    for f in BINS[bins]:
        exact = Fraction(str(f)) * n_tokens
        ceil = min(n_tokens, max(1, math.ceil(exact)))
        sizes.append(ceil if bins == "eraser" else math.floor(exact))
    return tuple(sizes)


@dataclass(frozen=True)
class AOPCResult:
    """AOPC comprehensiveness and sufficiency of one example.

    Attributes:
        comprehensiveness: Mean of ``per_bin_comprehensiveness`` (higher is better);
            0 when no token was eligible (ferret), NaN without non-special tokens.
        sufficiency: Mean of ``per_bin_sufficiency`` (lower is better); 1 when no
            token was eligible (ferret), NaN without non-special tokens.
        per_bin_comprehensiveness: :math:`p(x)_t - p(x \\setminus r_k)_t` per used bin.
        per_bin_sufficiency: :math:`p(x)_t - p(r_k)_t` per used bin.
        sizes: Rationale size ``|r_k|`` of each used bin.
        fractions: The fraction of :data:`BINS` behind each used bin.
    """

    comprehensiveness: float
    sufficiency: float
    per_bin_comprehensiveness: tuple[float, ...]
    per_bin_sufficiency: tuple[float, ...]
    sizes: tuple[int, ...]
    fractions: tuple[float, ...] = ()


def _used_bins(
    scores: Tensor, special: Tensor, n_tokens: int, bins: str, signed: bool
) -> list[tuple[float, int]]:
    """``(fraction, size)`` of the bins used (ferret: only eligible tokens, no repeats)."""
    sizes = rationale_sizes(n_tokens, bins)
    if bins != "ferret":
        return [(f, k) for f, k in zip(BINS[bins], sizes, strict=True) if k > 0]
    key = scores.detach()[~special].double()
    n_eligible = int(((key if signed else key.abs()) > 0).sum())  # a prefix of every order
    used: list[tuple[float, int]] = []
    last = 0
    for f, k in zip(BINS[bins], sizes, strict=True):
        size = min(k, n_eligible)
        # Rationales are prefixes of one ranking: equal size <=> equal set.
        if size > 0 and size != last:
            used.append((f, size))
            last = size
    return used


def aopc(
    prob_fn: ProbFn,
    ids: Tensor,
    special: Tensor,
    scores: Tensor,
    remover: Remover,
    *,
    target: int,
    bins: str = "eraser",
    signed: bool = True,
    n_orders: int = N_TIE_ORDERS,
    seed: int = 0,
) -> AOPCResult:
    r"""AOPC comprehensiveness and sufficiency (DeYoung et al. 2020) of one example.

    With :math:`r_k` the top-``k`` tokens of a ranking and :math:`t` the target
    (usually the predicted class):

    .. math::

        \mathrm{comp}(k) = p(x)_t - p(x \setminus r_k)_t, \qquad
        \mathrm{suff}(k) = p(x)_t - p(r_k)_t,

    where :math:`r_k` alone keeps its tokens in their original order, specials
    included. AOPC is the mean over the bins used. Tied scores are never broken in
    reading order: the scores are averaged over the orders of :func:`tie_orders`
    (one order without ties; ``n_orders`` seeded random orders of the ties otherwise),
    which estimates the expected AOPC over the orders of the ties — for an explanation
    that ties every token (an abstention), the expected AOPC of a random ranking.

    * ``bins="eraser"``: sizes of :func:`rationale_sizes` (1, 5, 10, 20, 50 %, at least
      one token); every non-special token may enter a rationale; all five bins are
      averaged, even when two have the same size (ERASER averages every threshold).
    * ``bins="ferret"``: sizes :math:`\lfloor f n \rfloor` for f = 0.1, ..., 1.0; only
      tokens with ``score > 0`` (``signed=True``) or ``|score| > 0`` (``signed=False``)
      may enter; a bin of size 0, or whose rationale equals the previous used bin's,
      is skipped. With no eligible token ferret's own values are returned:
      comprehensiveness 0 and sufficiency 1 (ferret 0.5's ``aopc_compr``/``aopc_suff``),
      so the example is kept and scored, not dropped. ferret has no unsigned mode (its
      ``only_pos=False`` still ranks by the signed score and admits every token).

    With no non-special token (``n = 0``) there is nothing to explain: both are NaN.
    All perturbed inputs of the example go to ``prob_fn`` in a single call.

    Args:
        prob_fn: See :data:`ProbFn`.
        ids: ``(T,)`` token ids, specials included.
        special: ``(T,)`` bool, True at special tokens.
        scores: ``(T,)`` attributions (values at specials are ignored).
        remover: How tokens are removed (:class:`MaskRemover`, :class:`DeleteRemover`).
        target: Class whose probability is tracked.
        bins: ``"eraser"`` or ``"ferret"``.
        signed: Rank by signed score (True) or by ``|score|`` (False).
        n_orders: Orders of the ties averaged over (see :func:`tie_orders`).
        seed: Seeds the orders of the ties.

    Returns:
        The :class:`AOPCResult` (per-bin values averaged over the orders).
    """
    _check_sequence(ids, special)
    orders = tie_orders(scores, special, signed, n_orders, seed)
    n_tokens = orders[0].numel()
    used = _used_bins(scores, special, n_tokens, bins, signed)
    if not used:
        if n_tokens == 0:
            return AOPCResult(math.nan, math.nan, (), (), (), ())
        return AOPCResult(0.0, 1.0, (), (), (), ())  # ferret: no eligible token
    comp_inputs, suff_inputs = [], []
    for order in orders:
        for _, size in used:
            rationale = _mask_of(order[:size], ids.numel(), ids.device)
            comp_inputs.append(remover.apply(ids, special, rationale))
            suff_inputs.append(remover.apply(ids, special, ~special & ~rationale))
    probs = _target_probs(prob_fn, [ids, *comp_inputs, *suff_inputs], target)
    m = len(used) * len(orders)
    comp = (probs[0] - probs[1 : 1 + m]).view(len(orders), len(used)).mean(0)
    suff = (probs[0] - probs[1 + m :]).view(len(orders), len(used)).mean(0)
    return AOPCResult(
        comprehensiveness=float(comp.mean()),
        sufficiency=float(suff.mean()),
        per_bin_comprehensiveness=tuple(comp.tolist()),
        per_bin_sufficiency=tuple(suff.tolist()),
        sizes=tuple(size for _, size in used),
        fractions=tuple(f for f, _ in used),
    )
