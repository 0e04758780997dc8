"""Property-based tests (hypothesis) of the index helpers and of batching.

The functional core's index helpers have algebraic properties that hold for any shapes:
:func:`~captum_perturb.functional._groups.collect` is the adjoint of
:func:`~captum_perturb.functional._groups.spread`, group sizes count the elements, and
dense relabelling keeps exactly the groups of the kept elements. On random shapes, masks
and chunkings, a call with ``internal_batch_size`` gives the unchunked call's σ bit for bit
under kernels that round each row alike (``contract.row_invariant_kernels``), and an
example explained inside a padded batch keeps its groups.
"""

from __future__ import annotations

import warnings

import torch
from contract import row_invariant_kernels
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

from captum_perturb import FixedPointConfig, PerturbationEntropyAttribution
from captum_perturb.attr.features import dense_groups
from captum_perturb.functional._groups import collect, flat_index, group_sizes, spread

SETTINGS = settings(max_examples=25, deadline=None, derandomize=True)
Grouped = tuple[tuple[torch.Tensor, ...], tuple[torch.Tensor, ...], int]


@st.composite
def grouped_inputs(draw: st.DrawFn) -> Grouped:
    """1-2 inputs of random per-example shapes, a batch of 1-4, and group ids in
    ``-1..G-1`` for every element (-1 = not perturbed)."""
    batch = draw(st.integers(1, 4))
    n_groups = draw(st.integers(1, 5))
    seed = draw(st.integers(0, 2**16))
    gen = torch.Generator().manual_seed(seed)
    inputs, groups = [], []
    for _ in range(draw(st.integers(1, 2))):
        shape = tuple(draw(st.lists(st.integers(1, 4), min_size=1, max_size=3)))
        inputs.append(torch.randn((batch, *shape), generator=gen, dtype=torch.float64))
        groups.append(torch.randint(-1, n_groups, (batch, *shape), generator=gen))
    return tuple(inputs), tuple(groups), n_groups


@SETTINGS
@given(grouped_inputs())
def test_collect_is_the_adjoint_of_spread(case: Grouped) -> None:
    """<spread(v), e> = <v, collect(e)> for every v (B, G) and e shaped like the inputs."""
    inputs, groups, n_groups = case
    flat = flat_index(groups, n_groups)
    rows = torch.arange(inputs[0].shape[0])
    shapes = tuple(x.shape[1:] for x in inputs)
    gen = torch.Generator().manual_seed(0)
    v = torch.randn(len(rows), n_groups, generator=gen, dtype=torch.float64)
    e = tuple(torch.randn(x.shape, generator=gen, dtype=torch.float64) for x in inputs)
    left = sum((s * x).sum() for s, x in zip(spread(v, flat, rows, shapes), e, strict=True))
    right = (v * collect(e, flat, rows, n_groups)).sum()
    torch.testing.assert_close(left, right, rtol=1e-12, atol=1e-12)


@SETTINGS
@given(grouped_inputs())
def test_group_sizes_count_the_elements(case: Grouped) -> None:
    inputs, groups, n_groups = case
    sizes = group_sizes(flat_index(groups, n_groups), n_groups, torch.float64)
    for b in range(inputs[0].shape[0]):
        for g in range(n_groups):
            count = sum(int((ids[b] == g).sum()) for ids in groups)
            assert float(sizes[b, g]) == count


@SETTINGS
@given(grouped_inputs())
def test_dense_groups_keep_exactly_the_kept_groups(case: Grouped) -> None:
    """Relabelled ids are 0..G_b-1 in order of the original ids, -1 where not kept, and the
    table maps each dense id back to its original id."""
    inputs, groups, _ = case
    raw = tuple(g.clamp_min(0) for g in groups)  # every element has an id
    keep = tuple(g >= 0 for g in groups)  # ... and the -1 ones are padding
    dense, table = dense_groups(raw, keep)
    for b in range(inputs[0].shape[0]):
        kept = torch.cat([r[b][k[b]] for r, k in zip(raw, keep, strict=True)])
        originals = kept.unique()  # sorted
        n = int((table[b] >= 0).sum())
        assert table[b, :n].tolist() == originals.tolist()
        for d, r, k in zip(dense, raw, keep, strict=True):
            assert bool((d[b][~k[b]] == -1).all())
            mapped = table[b][d[b][k[b]]]
            assert torch.equal(mapped, r[b][k[b]])


@settings(max_examples=12, deadline=None, derandomize=True)
@given(
    st.integers(1, 4),
    st.integers(2, 6),
    st.integers(1, 3),
    st.integers(1, 9),
    st.integers(0, 2**16),
)
def test_internal_batch_size_is_bit_identical_on_random_shapes(
    batch: int, features: int, outputs: int, size: int, seed: int
) -> None:
    """A random two-layer model, random inputs and a random feature_mask: every chunking
    gives the unchunked σ bit for bit under row-invariant kernels."""
    gen = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)
    model = nn.Sequential(nn.Linear(features, 5), nn.Tanh(), nn.Linear(5, outputs)).eval()
    x = torch.randn(batch, features, generator=gen)
    mask = torch.randint(0, 3, (1, features), generator=gen)
    pe = PerturbationEntropyAttribution(model)
    cfg = FixedPointConfig(max_iter=4, min_iter=4)
    kw = dict(feature_mask=mask, state_std=torch.ones(outputs), sigma_max=2.0, config=cfg)
    with row_invariant_kernels(), warnings.catch_warnings():
        warnings.simplefilter("ignore")  # 4 iterations do not converge: the warning says so
        ref = pe.explain(x, **kw)
        got = pe.explain(x, internal_batch_size=size, **kw)
    assert torch.equal(ref.attributions, got.attributions)
    assert torch.equal(ref.estimate.log_sigma.nan_to_num(), got.estimate.log_sigma.nan_to_num())
