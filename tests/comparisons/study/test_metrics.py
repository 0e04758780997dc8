"""Closed-form tests of ``comparisons.metrics`` on hand-weighted toy models.

The toy classifier is a bag of words whose class-1 probability is *linear* in the token
counts: p_1(x) = 0.5 + sum_t w[id_t], with [CLS] = 0, [SEP] = 1 and [MASK] = 2 weighing
0. Removing a token (masking or deleting it) therefore lowers p_1 by exactly its weight,
so comprehensiveness, sufficiency, leave-one-out and the curves are sums of weights that
are worked out by hand below.

The example (positions 0..6): ids [CLS] 3 4 5 7 6 [SEP], weights at positions 1..5
= 0.2, 0.1, -0.05, 0.15, 0.0, so p_1(x) = 0.9; attribution scores 0.5, 0.2, -0.3,
0.4, 0.0 (9.0 on the specials, which must be ignored).
"""

from __future__ import annotations

import itertools
import math
import statistics
from pathlib import Path

import pytest
import torch
from torch import Tensor, nn
from torch.testing import assert_close

from comparisons.metrics import (
    BINS,
    DeleteRemover,
    MaskRemover,
    ModelRandomization,
    Remover,
    abstains,
    aopc,
    curve_area,
    deletion_curve,
    infidelity_score,
    insertion_curve,
    kendall_tau_b,
    leave_one_out,
    rationale_sizes,
    sensitivity_score,
    spearman,
    state_shift,
    tie_orders,
)

MASK_ID = 2
WEIGHTS = torch.tensor([0.0, 0.0, 0.0, 0.2, 0.1, -0.05, 0.0, 0.15], dtype=torch.float64)
IDS = torch.tensor([0, 3, 4, 5, 7, 6, 1])
SPECIAL = torch.tensor([True, False, False, False, False, False, True])
SCORES = torch.tensor([9.0, 0.5, 0.2, -0.3, 0.4, 0.0, 9.0])
TARGET = 1
# Ranking of SCORES: signed 0.5 > 0.4 > 0.2 > 0.0 > -0.3; unsigned 0.5 > 0.4 > 0.3 > 0.2 > 0.
SIGNED_ORDER = [1, 4, 2, 5, 3]
UNSIGNED_ORDER = [1, 4, 3, 2, 5]


class LinearBagOfWords:
    """p_1 = 0.5 + sum of token weights, p_0 = 1 - p_1; records each call's batch size."""

    def __init__(self) -> None:
        self.batch_sizes: list[int] = []

    def __call__(self, seqs: list[Tensor]) -> Tensor:
        self.batch_sizes.append(len(seqs))
        p1 = torch.stack([0.5 + WEIGHTS[s].sum() for s in seqs])
        return torch.stack([1.0 - p1, p1], dim=1)


def removers() -> list[Remover]:
    return [MaskRemover(MASK_ID), DeleteRemover()]


def remover_ids(remover: Remover) -> str:
    return remover.name


# ----------------------------------------------------------------------------- ranking


def test_tie_orders_without_ties_is_one_order_signed_or_unsigned() -> None:
    assert [o.tolist() for o in tie_orders(SCORES, SPECIAL, signed=True)] == [SIGNED_ORDER]
    assert [o.tolist() for o in tie_orders(SCORES, SPECIAL, signed=False)] == [UNSIGNED_ORDER]


def test_tied_tokens_come_in_random_orders_never_fixed_reading_order() -> None:
    scores = torch.tensor([5.0, 1.0, 1.0, -1.0, 1.0, 5.0])
    special = torch.tensor([True, False, False, False, False, True])
    orders = tie_orders(scores, special, signed=True, n_orders=64, seed=3)
    assert len(orders) == 64
    for order in orders:  # the tied 1.0s first, in some order; specials never ranked
        assert set(order[:3].tolist()) == {1, 2, 4} and order[3].item() == 3
    firsts = [o[0].item() for o in orders]
    assert {1, 2, 4} == set(firsts)  # each tied token comes first in some order
    again = tie_orders(scores, special, signed=True, n_orders=64, seed=3)
    assert all(torch.equal(a, b) for a, b in zip(orders, again, strict=True))  # seeded
    unsigned = tie_orders(scores, special, signed=False, n_orders=8, seed=0)
    assert all(set(o.tolist()) == {1, 2, 3, 4} for o in unsigned)  # |−1| ties with the 1s


def test_tie_orders_reject_nan_outside_specials_only() -> None:
    scores = SCORES.clone()
    scores[0] = math.nan
    assert tie_orders(scores, SPECIAL, signed=True)[0].tolist() == SIGNED_ORDER
    scores[2] = math.nan
    with pytest.raises(ValueError, match="NaN"):
        tie_orders(scores, SPECIAL, signed=True)


def test_abstains_when_every_non_special_token_ties() -> None:
    assert abstains(torch.tensor([9.0, 0, 0, 0, 0, 0, 9]), SPECIAL, signed=True)
    assert not abstains(SCORES, SPECIAL, signed=True)
    signs = torch.tensor([0.0, 1, -1, 1, -1, 1, 0])
    assert abstains(signs, SPECIAL, signed=False) and not abstains(signs, SPECIAL, signed=True)
    one = torch.tensor([True, False, True])
    assert not abstains(torch.zeros(3), one, signed=True)  # one token: nothing to tie


def _exact_over_orders() -> tuple[float, float]:
    """Mean and variance of the ERASER comprehensiveness of a uniformly random order of
    the 5 tokens, over all 5! orders (the linear model: comp(k) = removed weights)."""
    sizes = rationale_sizes(5, "eraser")
    values = [
        sum(float(WEIGHTS[IDS[list(order[:k])]].sum()) for k in sizes) / len(sizes)
        for order in itertools.permutations([1, 2, 3, 4, 5])
    ]
    return statistics.fmean(values), statistics.pvariance(values)


def test_an_abstention_is_scored_as_the_expected_random_ranking() -> None:
    """All-tied scores: AOPC is the mean over the drawn orders of the ties — exactly —
    and lies within 4 standard errors of the exact expectation over all 5! orders (the
    standard error from the exact variance over the orders, 16 orders averaged)."""
    model = LinearBagOfWords()
    zeros = torch.zeros(7)
    got = aopc(model, IDS, SPECIAL, zeros, MaskRemover(MASK_ID), target=TARGET, n_orders=16)
    sizes = rationale_sizes(5, "eraser")
    drawn = [
        sum(float(WEIGHTS[IDS[o[:k]]].sum()) for k in sizes) / len(sizes)
        for o in tie_orders(zeros, SPECIAL, signed=True, n_orders=16, seed=0)
    ]
    assert got.comprehensiveness == pytest.approx(statistics.fmean(drawn), abs=1e-12)
    mean, var = _exact_over_orders()
    assert abs(got.comprehensiveness - mean) <= 4 * math.sqrt(var / 16)
    reading = sum(float(WEIGHTS[IDS[1 : 1 + k]].sum()) for k in sizes) / len(sizes)
    assert got.comprehensiveness != pytest.approx(reading, abs=1e-9)  # not reading order
    assert model.batch_sizes == [1 + 2 * 16 * len(sizes)]  # one call for all orders


# ----------------------------------------------------------------------------- removers


def test_mask_remover_keeps_the_length() -> None:
    drop = torch.tensor([False, True, False, False, True, False, False])
    out = MaskRemover(MASK_ID).apply(IDS, SPECIAL, drop)
    assert out.tolist() == [0, 2, 4, 5, 2, 6, 1]
    assert IDS.tolist() == [0, 3, 4, 5, 7, 6, 1]  # input untouched


@pytest.mark.parametrize("remover", removers(), ids=remover_ids)
def test_removers_refuse_to_drop_a_special_token(remover: Remover) -> None:
    drop = torch.zeros(7, dtype=torch.bool)
    drop[0] = True
    with pytest.raises(ValueError, match="special"):
        remover.apply(IDS, SPECIAL, drop)


def test_delete_remover_without_tokenizer_drops_ids() -> None:
    drop = torch.tensor([False, True, False, False, True, False, False])
    assert DeleteRemover().apply(IDS, SPECIAL, drop).tolist() == [0, 4, 5, 6, 1]


def test_delete_remover_retokenises_like_ferret(tmp_path: Path) -> None:
    transformers = pytest.importorskip("transformers")
    vocab = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "the", "movie", "was"]
    vocab += ["un", "##believ", "##able", "!"]
    (tmp_path / "vocab.txt").write_text("\n".join(vocab) + "\n")
    tokenizer = transformers.BertTokenizer(str(tmp_path / "vocab.txt"))
    ids = torch.tensor(tokenizer("the movie was unbelievable !")["input_ids"])
    assert ids.tolist() == [2, 5, 6, 7, 8, 9, 10, 11, 3]
    special = torch.tensor([True] + [False] * 7 + [True])
    remover = DeleteRemover(tokenizer)

    def drop(*positions: int) -> Tensor:
        mask = torch.zeros(9, dtype=torch.bool)
        mask[list(positions)] = True
        return mask

    # "movie" deleted: the text "the was unbelievable !" is tokenised again.
    assert remover.apply(ids, special, drop(2)).tolist() == [2, 5, 7, 8, 9, 10, 11, 3]
    # "##believ" deleted: the pieces re-merge into "unable" = un ##able.
    assert remover.apply(ids, special, drop(5, 7)).tolist() == [2, 5, 6, 7, 8, 10, 3]
    # Everything deleted: the empty text gives [CLS] [SEP].
    assert remover.apply(ids, special, ~special).tolist() == [2, 3]


# ----------------------------------------------------------------------------- bins


def test_eraser_sizes_round_up_with_at_least_one_token() -> None:
    assert rationale_sizes(1, "eraser") == (1, 1, 1, 1, 1)
    assert rationale_sizes(5, "eraser") == (1, 1, 1, 1, 3)
    assert rationale_sizes(30, "eraser") == (1, 2, 3, 6, 15)
    assert rationale_sizes(100, "eraser") == (1, 5, 10, 20, 50)
    assert rationale_sizes(0, "eraser") == (0, 0, 0, 0, 0)


def test_ferret_sizes_round_down() -> None:
    assert BINS["ferret"] == (0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 1.0)
    assert rationale_sizes(3, "ferret") == (0, 0, 0, 1, 1, 1, 2, 2, 2, 3)
    assert rationale_sizes(5, "ferret") == (0, 1, 1, 2, 2, 3, 3, 4, 4, 5)
    assert rationale_sizes(12, "ferret") == (1, 2, 3, 4, 6, 7, 8, 9, 10, 12)


def test_unknown_bins_list_the_valid_names() -> None:
    with pytest.raises(ValueError, match="eraser"):
        rationale_sizes(5, "percent")


# ----------------------------------------------------------------------------- AOPC


@pytest.mark.parametrize("remover", removers(), ids=remover_ids)
def test_aopc_eraser_signed(remover: Remover) -> None:
    model = LinearBagOfWords()
    result = aopc(model, IDS, SPECIAL, SCORES, remover, target=TARGET, bins="eraser")
    # Sizes (1, 1, 1, 1, 3); r_1 = {pos 1} weighs 0.2, r_3 = {1, 4, 2} weighs 0.45; the
    # non-special tokens weigh 0.4 in all.
    assert result.sizes == (1, 1, 1, 1, 3)
    assert result.fractions == BINS["eraser"]
    assert_close(torch.tensor(result.per_bin_comprehensiveness), torch.tensor([0.2] * 4 + [0.45]))
    assert_close(torch.tensor(result.per_bin_sufficiency), torch.tensor([0.2] * 4 + [-0.05]))
    assert result.comprehensiveness == pytest.approx(1.25 / 5, abs=1e-12)
    assert result.sufficiency == pytest.approx(0.75 / 5, abs=1e-12)
    assert model.batch_sizes == [11]  # one call: x, five comprehensiveness, five sufficiency


def test_aopc_eraser_unsigned() -> None:
    result = aopc(
        LinearBagOfWords(),
        IDS,
        SPECIAL,
        SCORES,
        MaskRemover(MASK_ID),
        target=TARGET,
        signed=False,
    )
    # Unsigned r_3 = {1, 4, 3} weighs 0.2 + 0.15 - 0.05 = 0.3.
    assert result.comprehensiveness == pytest.approx((4 * 0.2 + 0.3) / 5, abs=1e-12)
    assert result.sufficiency == pytest.approx((4 * 0.2 + 0.1) / 5, abs=1e-12)


@pytest.mark.parametrize("remover", removers(), ids=remover_ids)
def test_aopc_ferret_signed_uses_positive_tokens_and_skips_repeats(remover: Remover) -> None:
    model = LinearBagOfWords()
    result = aopc(model, IDS, SPECIAL, SCORES, remover, target=TARGET, bins="ferret")
    # Raw sizes (0, 1, 1, 2, 2, 3, 3, 4, 4, 5); only 3 tokens score > 0, so the sizes
    # 1, 2, 3 are used once each (at 20, 40 and 60 %) and the rest repeat a set.
    assert result.sizes == (1, 2, 3)
    assert result.fractions == (0.2, 0.4, 0.6)
    assert_close(torch.tensor(result.per_bin_comprehensiveness), torch.tensor([0.2, 0.35, 0.45]))
    assert_close(torch.tensor(result.per_bin_sufficiency), torch.tensor([0.2, 0.05, -0.05]))
    assert result.comprehensiveness == pytest.approx(1.0 / 3, abs=1e-12)
    assert result.sufficiency == pytest.approx(0.2 / 3, abs=1e-12)
    assert model.batch_sizes == [7]


def test_aopc_ferret_unsigned_requires_a_nonzero_score() -> None:
    result = aopc(
        LinearBagOfWords(),
        IDS,
        SPECIAL,
        SCORES,
        MaskRemover(MASK_ID),
        target=TARGET,
        bins="ferret",
        signed=False,
    )
    # |score| > 0 at 4 tokens: sizes 1, 2, 3, 4 over the order 1, 4, 3, 2.
    assert result.sizes == (1, 2, 3, 4)
    assert result.fractions == (0.2, 0.4, 0.6, 0.8)
    assert_close(
        torch.tensor(result.per_bin_comprehensiveness), torch.tensor([0.2, 0.35, 0.3, 0.4])
    )
    assert result.comprehensiveness == pytest.approx(1.25 / 4, abs=1e-12)
    assert result.sufficiency == pytest.approx(0.35 / 4, abs=1e-12)


def test_aopc_ferret_one_token_sentence_uses_only_the_full_bin() -> None:
    ids = torch.tensor([0, 3, 1])
    special = torch.tensor([True, False, True])
    result = aopc(
        LinearBagOfWords(),
        ids,
        special,
        torch.tensor([0.0, 0.7, 0.0]),
        MaskRemover(MASK_ID),
        target=TARGET,
        bins="ferret",
    )
    assert result.sizes == (1,)
    assert result.fractions == (1.0,)
    assert result.comprehensiveness == pytest.approx(0.2, abs=1e-12)
    assert result.sufficiency == pytest.approx(0.0, abs=1e-12)


def test_aopc_ferret_without_eligible_tokens_scores_as_ferret_and_calls_nothing() -> None:
    """No positive token: ferret's own values (comprehensiveness 0, sufficiency 1), so
    the example is kept, not dropped; the same for an all-zero explanation."""
    model = LinearBagOfWords()
    for scores in (torch.tensor([9.0, -0.5, -0.2, -0.3, -0.4, 0.0, 9.0]), torch.zeros(7)):
        result = aopc(
            model, IDS, SPECIAL, scores, MaskRemover(MASK_ID), target=TARGET, bins="ferret"
        )
        assert (result.comprehensiveness, result.sufficiency) == (0.0, 1.0)
        assert result.sizes == ()
    assert model.batch_sizes == []
    only_specials = torch.tensor([True, True])
    empty = aopc(model, IDS[[0, 6]], only_specials, torch.zeros(2), MaskRemover(MASK_ID), target=1)
    assert math.isnan(empty.comprehensiveness)  # nothing to explain


# ----------------------------------------------------------------------------- curves, LOO


@pytest.mark.parametrize("remover", removers(), ids=remover_ids)
def test_deletion_and_insertion_curves(remover: Remover) -> None:
    model = LinearBagOfWords()
    order = torch.tensor(SIGNED_ORDER)
    deletion = deletion_curve(model, IDS, SPECIAL, order, remover, target=TARGET)
    insertion = insertion_curve(model, IDS, SPECIAL, order, remover, target=TARGET)
    # Deletion removes weights 0.2, 0.15, 0.1, 0.0, -0.05 from 0.9; insertion adds them to 0.5.
    expected_deletion = torch.tensor([0.9, 0.7, 0.55, 0.45, 0.45, 0.5], dtype=torch.float64)
    expected_insertion = torch.tensor([0.5, 0.7, 0.85, 0.95, 0.95, 0.9], dtype=torch.float64)
    assert_close(deletion, expected_deletion)
    assert_close(insertion, expected_insertion)
    assert model.batch_sizes == [6, 6]
    # Trapezoids with dx = 0.2: 0.2 * (0.7 + 2.15) and 0.2 * (0.7 + 3.45).
    assert curve_area(deletion) == pytest.approx(0.57, abs=1e-12)
    assert curve_area(insertion) == pytest.approx(0.83, abs=1e-12)


def test_curves_for_a_partial_order() -> None:
    model = LinearBagOfWords()
    order = torch.tensor([4])
    remover = MaskRemover(MASK_ID)
    assert_close(
        deletion_curve(model, IDS, SPECIAL, order, remover, target=TARGET),
        torch.tensor([0.9, 0.75], dtype=torch.float64),
    )
    assert_close(
        insertion_curve(model, IDS, SPECIAL, order, remover, target=TARGET),
        torch.tensor([0.5, 0.65], dtype=torch.float64),
    )
    assert_close(
        deletion_curve(model, IDS, SPECIAL, order, remover, target=0),
        torch.tensor([0.1, 0.25], dtype=torch.float64),
    )


@pytest.mark.parametrize("order", [[0, 1], [1, 1], [1, 9]])
def test_curves_reject_bad_orders(order: list[int]) -> None:
    with pytest.raises(ValueError, match="order"):
        deletion_curve(
            LinearBagOfWords(), IDS, SPECIAL, torch.tensor(order), MaskRemover(MASK_ID), target=1
        )


def test_curve_area_closed_forms() -> None:
    assert curve_area(torch.tensor([1.0, 0.0])) == pytest.approx(0.5)
    assert curve_area(torch.tensor([0.0, 1.0, 0.0])) == pytest.approx(0.5)
    assert curve_area(torch.tensor([0.2, 0.2, 0.2, 0.2])) == pytest.approx(0.2)
    with pytest.raises(ValueError):
        curve_area(torch.tensor([0.3]))


@pytest.mark.parametrize("remover", removers(), ids=remover_ids)
def test_leave_one_out_is_each_weight(remover: Remover) -> None:
    model = LinearBagOfWords()
    loo = leave_one_out(model, IDS, SPECIAL, remover, target=TARGET)
    expected = torch.tensor([math.nan, 0.2, 0.1, -0.05, 0.15, 0.0, math.nan], dtype=torch.float64)
    assert_close(loo, expected, equal_nan=True)
    assert model.batch_sizes == [6]
    # The scores rank the tokens exactly as their weights do; NaN at specials is dropped.
    assert kendall_tau_b(SCORES, loo) == pytest.approx(1.0)


# ----------------------------------------------------------------------------- correlations


def test_kendall_tau_b_hand_values() -> None:
    t = torch.tensor
    # One discordant pair out of six: (5 - 1) / 6.
    assert kendall_tau_b(t([1.0, 2, 3, 4]), t([1.0, 3, 2, 4])) == pytest.approx(2 / 3)
    assert kendall_tau_b(t([1.0, 2, 3, 4]), t([4.0, 3, 2, 1])) == pytest.approx(-1.0)
    # One pair tied in a, one in b, four concordant: 4 / sqrt(5 * 5).
    assert kendall_tau_b(t([1.0, 1, 2, 3]), t([1.0, 2, 2, 3])) == pytest.approx(0.8)
    # NaN drops its pair; what is left is the first case.
    a = t([1.0, math.nan, 2, 3, 4])
    assert kendall_tau_b(a, t([1.0, 5, 3, 2, 4])) == pytest.approx(2 / 3)
    # A constant side: the mean of τ over the orders of its ties, 0.
    assert kendall_tau_b(t([1.0, 1, 1]), t([1.0, 2, 3])) == 0.0
    assert kendall_tau_b(t([1.0, 2, 3]), t([0.0, 0, 0])) == 0.0
    assert math.isnan(kendall_tau_b(t([1.0, math.nan]), t([1.0, 2])))


def test_spearman_hand_values() -> None:
    t = torch.tensor
    # 1 - 6 * 2 / (4 * 15).
    assert spearman(t([1.0, 2, 3, 4]), t([1.0, 3, 2, 4])) == pytest.approx(0.8)
    # Ranks (1.5, 1.5, 3, 4) against (1, 2, 3, 4): 4.5 / sqrt(4.5 * 5) = 3 / sqrt(10).
    assert spearman(t([1.0, 1, 2, 3]), t([10.0, 20, 30, 40])) == pytest.approx(3 / math.sqrt(10))
    assert spearman(t([1.0, math.nan, 2, 3, 4]), t([1.0, 0, 3, 2, 4])) == pytest.approx(0.8)
    assert spearman(t([3.0, 1, 2]), t([30.0, 10, 20])) == pytest.approx(1.0)
    assert spearman(t([1.0, 2, 3]), t([5.0, 5, 5])) == 0.0  # constant: 0, as for τ
    assert math.isnan(spearman(t([1.0]), t([2.0])))


def test_a_constant_ranking_has_expected_tau_zero_over_its_tie_orders() -> None:
    """The convention is the expectation: τ-b of a uniformly random order of the ties
    against a fixed ranking, averaged over all 4! orders, is 0."""
    ref = torch.tensor([1.0, 3.0, 2.0, 4.0])
    taus = []
    for perm in itertools.permutations(range(4)):
        taus.append(kendall_tau_b(torch.tensor(perm, dtype=torch.float64), ref))
    assert statistics.fmean(taus) == pytest.approx(0.0, abs=1e-12)
    assert kendall_tau_b(torch.zeros(4), ref) == 0.0


def test_correlations_match_scipy_with_ties() -> None:
    stats = pytest.importorskip("scipy.stats")
    generator = torch.Generator().manual_seed(0)
    a = torch.randint(0, 5, (40,), generator=generator).double()
    b = (a + torch.randint(0, 4, (40,), generator=generator)).double()
    assert kendall_tau_b(a, b) == pytest.approx(stats.kendalltau(a.numpy(), b.numpy())[0])
    assert spearman(a, b) == pytest.approx(stats.spearmanr(a.numpy(), b.numpy())[0])


# ----------------------------------------------------------------------------- hidden states

# Per-token "hidden states" without context: row id of EMBED.
EMBED = torch.tensor(
    [[0, 0], [0, 0], [0, 0], [1, 0], [0, 2], [1, 1], [0, 0], [3, 0]], dtype=torch.float64
)


def token_states(seqs: list[Tensor]) -> list[Tensor]:
    return [EMBED[s] for s in seqs]


def pooled_states(seqs: list[Tensor]) -> list[Tensor]:
    return [EMBED[s].sum(0) for s in seqs]


def test_state_shift_token_states() -> None:
    order = torch.tensor(SIGNED_ORDER)

    def shift(std: Tensor | None) -> list[float]:
        return state_shift(
            token_states,
            IDS,
            SPECIAL,
            order,
            MaskRemover(MASK_ID),
            ks=[0, 1, 2, 3],
            reference=EMBED[IDS],
            std=std,
            pooled=False,
        )

    # Masking pos 1 (1, 0), then pos 4 (3, 0), then pos 2 (0, 2); mean over 7 x 2 elements.
    assert shift(None) == pytest.approx([0.0, 1 / 14, 10 / 14, 14 / 14])
    std = torch.tensor([1.0, 2.0], dtype=torch.float64)
    assert shift(std) == pytest.approx([0.0, 1 / 14, 10 / 14, 11 / 14])


def test_state_shift_token_states_refuse_a_length_changing_remover() -> None:
    with pytest.raises(ValueError, match="length-preserving"):
        state_shift(
            token_states,
            IDS,
            SPECIAL,
            torch.tensor(SIGNED_ORDER),
            DeleteRemover(),
            ks=[1],
            reference=EMBED[IDS],
            std=None,
            pooled=False,
        )
    with pytest.raises(ValueError, match="out of range"):
        state_shift(
            token_states,
            IDS,
            SPECIAL,
            torch.tensor(SIGNED_ORDER),
            MaskRemover(MASK_ID),
            ks=[6],
            reference=EMBED[IDS],
            std=None,
            pooled=False,
        )


@pytest.mark.parametrize("remover", removers(), ids=remover_ids)
def test_state_shift_pooled_is_one_minus_cosine(remover: Remover) -> None:
    calls: list[int] = []

    def state_fn(seqs: list[Tensor]) -> list[Tensor]:
        calls.append(len(seqs))
        return pooled_states(seqs)

    reference = EMBED[IDS].sum(0)  # (5, 3)
    out = state_shift(
        state_fn,
        IDS,
        SPECIAL,
        torch.tensor(SIGNED_ORDER),
        remover,
        ks=[0, 2],
        reference=reference,
        std=None,
        pooled=True,
    )
    # Removing (1, 0) and (3, 0) leaves (1, 3): cos = 14 / sqrt(34 * 10).
    assert out == pytest.approx([0.0, 1 - 14 / math.sqrt(340)], abs=1e-12)
    assert calls == [2]


# ----------------------------------------------------------------------------- Captum metrics


def _linear_setup() -> tuple[Tensor, Tensor, Tensor]:
    generator = torch.Generator().manual_seed(0)
    weight = torch.randn(1, 4, 3, generator=generator, dtype=torch.float64)
    embeds = torch.randn(1, 4, 3, generator=generator, dtype=torch.float64)
    special = torch.tensor([True, False, False, True])
    return weight, embeds, special


def test_infidelity_is_zero_for_exact_linear_attributions() -> None:
    weight, embeds, special = _linear_setup()

    def forward(e: Tensor, scale: float) -> Tensor:
        out = scale * (e * weight).sum(dim=(1, 2))
        return torch.stack([out, -out], dim=1)

    def score(attributions: Tensor, seed: int = 0) -> float:
        return infidelity_score(
            forward,
            embeds,
            2.0,
            attributions,
            target=0,
            noise_std=0.1,
            special=special,
            seed=seed,
        )

    # f(x) - f(x - I) = 2 w . I exactly; normalize=True also absorbs the factor 2.
    assert score(2 * weight) == pytest.approx(0.0, abs=1e-12)
    assert score(weight) == pytest.approx(0.0, abs=1e-12)
    # Wrong at a special position only: the noise never touches specials.
    wrong_special = 2 * weight
    wrong_special[0, 0] += 100.0
    assert score(wrong_special) == pytest.approx(0.0, abs=1e-12)
    # Wrong at a real token: infidelity is positive, and reproducible by seed.
    wrong = 2 * weight
    wrong[0, 1, 0] = -wrong[0, 1, 0] + 1.0
    state = torch.get_rng_state()
    assert score(wrong) > 1e-4
    assert score(wrong, seed=3) == score(wrong, seed=3)
    assert score(wrong, seed=3) != score(wrong, seed=4)
    assert torch.equal(torch.get_rng_state(), state)


def test_sensitivity_is_zero_for_constant_explanations() -> None:
    _, embeds, _ = _linear_setup()
    seen: list[object] = []

    def constant(
        e: Tensor, additional_forward_args: object = None, target: object = None
    ) -> Tensor:
        seen.append(target)
        return torch.ones_like(e)

    value = sensitivity_score(constant, embeds, None, target=1, perturb_radius=0.1, seed=0)
    assert value == 0.0
    assert seen and all(t is not None for t in seen)


def test_sensitivity_of_identity_is_bounded_seeded_and_restores_the_rng() -> None:
    _, embeds, _ = _linear_setup()

    def identity(
        e: Tensor, additional_forward_args: object = None, target: object = None
    ) -> Tensor:
        return e.clone()

    radius = 0.05
    state = torch.get_rng_state()
    first = sensitivity_score(identity, embeds, None, target=0, perturb_radius=radius, seed=7)
    assert torch.equal(torch.get_rng_state(), state)
    # ||delta||_F / ||x||_F with |delta| <= r in each of the 12 entries.
    assert 0.0 < first <= radius * math.sqrt(12) / float(embeds.norm()) + 1e-9
    again = sensitivity_score(identity, embeds, None, target=0, perturb_radius=radius, seed=7)
    other = sensitivity_score(identity, embeds, None, target=0, perturb_radius=radius, seed=8)
    assert first == again
    assert first != other


# ----------------------------------------------------------------------------- randomisation


class RawScale(nn.Module):
    """A module without ``reset_parameters``: gets normal(0, 0.02)."""

    def __init__(self) -> None:
        super().__init__()
        self.scale = nn.Parameter(torch.ones(4))

    def forward(self, x: Tensor) -> Tensor:
        return x * self.scale


class Exploding(nn.Linear):
    """A module whose re-initialisation fails once ``armed``."""

    armed = False

    def reset_parameters(self) -> None:
        if self.armed:
            raise RuntimeError("boom")
        super().reset_parameters()


def _model() -> nn.Sequential:
    torch.manual_seed(123)
    return nn.Sequential(nn.Linear(3, 4), RawScale(), nn.Linear(4, 4), nn.Linear(4, 2))


def _stages(model: nn.Sequential) -> list[tuple[str, list[nn.Module]]]:
    return [("head", [model[3]]), ("middle", [model[2], model[1]]), ("bottom", [model[0]])]


def _snapshot(model: nn.Module) -> dict[str, Tensor]:
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def test_model_randomization_cascades_and_restores() -> None:
    model = _model()
    original = _snapshot(model)
    params = [id(p) for p in model.parameters()]
    randomization = ModelRandomization(model, _stages(model), seed=0)
    assert len(randomization) == 3
    seen: list[tuple[str, int]] = []
    stage_weights: list[dict[str, Tensor]] = []
    rng = torch.get_rng_state()
    for name, index in randomization:
        seen.append((name, index))
        now = _snapshot(model)
        stage_weights.append(now)
        changed = {k for k in now if not torch.equal(now[k], original[k])}
        expected_prefixes = {0: ("3.",), 1: ("3.", "2.", "1."), 2: ("3.", "2.", "1.", "0.")}
        assert changed == {k for k in now if k.startswith(expected_prefixes[index])}
    assert seen == [("head", 0), ("middle", 1), ("bottom", 2)]
    # Cascading: the head keeps the weights drawn at stage 0; the raw parameter got N(0, 0.02).
    assert torch.equal(stage_weights[2]["3.weight"], stage_weights[0]["3.weight"])
    assert float(stage_weights[1]["1.scale"].abs().max()) < 0.2
    # Restored in place, and the caller's RNG is untouched.
    after = _snapshot(model)
    assert all(torch.equal(after[k], original[k]) for k in original)
    assert [id(p) for p in model.parameters()] == params
    assert torch.equal(torch.get_rng_state(), rng)
    # Seeded: a second pass draws the same weights.
    again = [_snapshot(model) for _ in ModelRandomization(model, _stages(model), seed=0)]
    assert all(torch.equal(again[2][k], stage_weights[2][k]) for k in original)
    other = [_snapshot(model) for _ in ModelRandomization(model, _stages(model), seed=1)]
    assert not torch.equal(other[0]["3.weight"], stage_weights[0]["3.weight"])


def test_model_randomization_restores_after_break_and_exceptions() -> None:
    model = _model()
    original = _snapshot(model)

    def restored() -> bool:
        now = _snapshot(model)
        return all(torch.equal(now[k], original[k]) for k in original)

    for _, index in ModelRandomization(model, _stages(model), seed=0):
        if index == 1:
            break
    assert restored()

    with pytest.raises(KeyError):
        for _ in ModelRandomization(model, _stages(model), seed=0):
            raise KeyError("explainer failed")
    assert restored()

    # A re-initialisation that raises at stage 1 undoes stage 0 too.
    model.append(Exploding(2, 2))
    original = _snapshot(model)
    exploding = model[4]
    assert isinstance(exploding, Exploding)
    exploding.armed = True
    stages: list[tuple[str, list[nn.Module]]] = [("head", [model[3]]), ("broken", [exploding])]
    with pytest.raises(RuntimeError, match="boom"):
        for _ in ModelRandomization(model, stages, seed=0):
            pass
    assert restored()


def test_model_randomization_rejects_foreign_modules() -> None:
    with pytest.raises(ValueError, match="not in the model"):
        ModelRandomization(_model(), [("head", [nn.Linear(2, 2)])], seed=0)
