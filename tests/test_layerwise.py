r"""Layer by layer: ``explain_layers``, ``layer_state_std``, ``LayerInformation`` and the
staircase forward pass of ``captum_perturb.layers.blocks``.

Closed forms (method.md, derived as in ``test_closed_form.py``). ``explain_layers`` folds
σ_S into the state, :math:`\Phi_l(x)/\sigma_{S,l}`, and hands it to the estimator with
unit σ_S, so the weight of a state element is :math:`w_j = 1/M` where ``M`` counts the
elements in the loss: the sentence's real tokens × the ``D_f`` elements with a finite
σ_S (``inf`` leaves an element out). Each perturbed token is a group of ``D`` input
elements; with ``n`` perturbed tokens its entropy coefficient is ``c = rate / n``. For a
linear state the objective separates per token into :math:`a_u\sigma_u^2 - c\log\sigma_u`
with :math:`a_u = \|J_u\|_F^2 / M` (``J_u`` = the Jacobian of the folded state with respect
to token ``u``), so :math:`\sigma_u^2 = c/(2a_u) = \text{rate}\,M / (2n\|J_u\|_F^2)`,
capped at σ_max.

(a) Layer 0, the embedding output explained by itself: :math:`J_u` has the entries
:math:`1/s_d` at token ``u``'s own elements, :math:`\|J_u\|_F^2 = \sum_d s_d^{-2}` (finite
``s_d`` only), so every perturbed token of a sentence with ``L`` real tokens has

.. math:: \sigma^2 = \frac{\text{rate}\cdot L D_f}{2 n \sum_{d} s_d^{-2}} .

With ``special_tokens="keep"`` ``n = L`` and σ does not depend on the sentence; with
``"exclude"`` the specials are not perturbed but their states still count in ``M``, so
``n = L - (#specials)`` and σ is larger, by :math:`\sqrt{L/n}`.

(b) A token-mixing linear block :math:`\Phi(x)_t = \sum_u W_{tu} x_u`: token ``u`` moves
every state row ``t`` by :math:`W_{tu}`, :math:`\|J_u\|_F^2 = \sum_t W_{tu}^2 \sum_d s_d^{-2}`,
and with ``T`` real tokens (``M = T D``, ``n = T``)

.. math:: \sigma_u^2 = \frac{\text{rate}\cdot M}{2 n \sum_t W_{tu}^2 \sum_d s_d^{-2}} .

Tolerances. Two estimator settings, as in ``test_closed_form.py``:

* ``PRECISE`` (the default algorithm, Monte Carlo, run to the stopping rule
  ``tol = 0.005`` on the RMS over tokens of the standard error of log σ): the estimate
  of token ``i`` is unbiased with the standard error ``se_i`` it reports, so
  ``|log σ_i - log σ_i*| <= SE_FACTOR · se_i + ROUND_OFF`` (``contract.SE_FACTOR = 4``:
  two-sided p ≈ 6e-5 per token). The test also requires convergence, i.e. RMS ``se_i``
  ≤ 0.005, so the bound is ≈ 2 % per token — the accuracy target of
  ``test_closed_form.py`` — and could not hide an error of a few per cent. (Measured:
  largest error 0.8 %, largest ``se_i`` 0.0052.)
* ``EXACT`` in float64: with at least as many projections as state elements the
  first-order start uses the standard basis, and for a linear state the control variate
  makes every draw exact, so σ is the closed form up to float64 round-off, amplified by
  the linearised twin (scale 1e-2) to ~1e-12 relative; ``1e-6`` is loose for round-off
  but catches any error of the bookkeeping (``M``, ``n``, σ_S, padding, the cap).

Monte-Carlo agreement (same estimate from different noise: a sentence alone vs in a
padded batch, a layer alone vs among all layers, another seed): each run reports the
standard error of every token's log σ from its own draws; independent runs differ by a
Gaussian with standard deviation ``sqrt(se₁² + se₂²)``, and ``contract.SE_FACTOR = 4`` of
them bound it with probability 1 - 6e-5 per token (``+ ROUND_OFF`` for tokens whose
standard error is ~0). The per-token form is used (not an RMS over tokens) because it
also catches one misplaced token.
"""

from __future__ import annotations

import copy
import dataclasses
import json
import math
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import torch
from contract import (
    EXACT,
    PRECISE,
    ROUND_OFF,
    SE_FACTOR,
    LayerBoomError,
    assert_no_hooks,
    failing_forward,
    one_thread,
)
from torch import Tensor, nn

import captum_perturb.layers.state_std as layer_std
import captum_perturb.layers.states as states
from captum_perturb import (
    DEFAULT,
    FixedPointConfig,
    LayerInformation,
    LayerPerturbationEntropyAttribution,
    estimate_state_std,
    explain_layers,
    layer_state_std,
)
from captum_perturb._utils.hooks import StopForwardError
from captum_perturb.layers.blocks import staircase, transformer_blocks
from captum_perturb.layers.information import COLUMNS

transformers = pytest.importorskip("transformers")

HIDDEN = 32
LENGTHS = (7, 5, 3)
RATE = 0.1
EXACT_RTOL = 1e-6  # float64 round-off (module docstring)


@pytest.fixture(autouse=True, scope="module")
def _single_thread() -> Iterator[None]:
    with one_thread():
        yield


# --- models and inputs --------------------------------------------------------------


def build(kind: str, n_layers: int = 2, vocab: int = 100, seed: int = 0) -> nn.Module:
    """A tiny random Hugging Face model (a classifier holding the encoder), in eval mode."""
    torch.manual_seed(seed)
    common = {"vocab_size": vocab, "num_labels": 3}
    if kind == "bert":
        model = transformers.BertForSequenceClassification(
            transformers.BertConfig(
                hidden_size=HIDDEN,
                num_hidden_layers=n_layers,
                num_attention_heads=2,
                intermediate_size=64,
                max_position_embeddings=32,
                **common,
            )
        )
    elif kind == "roberta":
        model = transformers.RobertaForSequenceClassification(
            transformers.RobertaConfig(
                hidden_size=HIDDEN,
                num_hidden_layers=n_layers,
                num_attention_heads=2,
                intermediate_size=64,
                max_position_embeddings=40,
                pad_token_id=1,
                **common,
            )
        )
    elif kind == "distilbert":
        model = transformers.DistilBertForSequenceClassification(
            transformers.DistilBertConfig(
                dim=HIDDEN,
                n_layers=n_layers,
                n_heads=2,
                hidden_dim=64,
                max_position_embeddings=32,
                **common,
            )
        )
    elif kind == "gpt2":
        model = transformers.GPT2ForSequenceClassification(
            transformers.GPT2Config(
                n_embd=HIDDEN,
                n_layer=n_layers,
                n_head=2,
                n_positions=32,
                pad_token_id=0,
                bos_token_id=2,
                eos_token_id=3,
                **common,
            )
        )
    else:
        raise ValueError(kind)
    return model.eval()


PAD_ID = {"bert": 0, "roberta": 1, "distilbert": 0, "gpt2": 0}


def bert_model(n_layers: int = 2, vocab: int = 100, seed: int = 0) -> nn.Module:
    """A tiny random ``BertModel`` (the encoder itself, as ``AutoModel`` gives it)."""
    torch.manual_seed(seed)
    cfg = transformers.BertConfig(
        vocab_size=vocab,
        hidden_size=HIDDEN,
        num_hidden_layers=n_layers,
        num_attention_heads=2,
        intermediate_size=64,
        max_position_embeddings=32,
    )
    return transformers.BertModel(cfg).eval()


def padded_batch(
    pad_id: int = 0, lengths: tuple[int, ...] = LENGTHS, seed: int = 1
) -> tuple[Tensor, Tensor]:
    """Ids ``(len(lengths), max(lengths))`` with words in 5..99 between a [CLS]-like 2 and a
    [SEP]-like 3, padding at the end; and the attention mask."""
    gen = torch.Generator().manual_seed(seed)
    n, t = len(lengths), max(lengths)
    ids = torch.randint(5, 100, (n, t), generator=gen)
    for i, length in enumerate(lengths):
        ids[i, 0], ids[i, length - 1] = 2, 3
    mask = (torch.arange(t)[None] < torch.tensor(lengths)[:, None]).long()
    return torch.where(mask.bool(), ids, torch.full_like(ids, pad_id)), mask


def corpus_std(model: nn.Module, pad_id: int = 0) -> dict[int, Tensor]:
    """σ_S of every layer over 24 random padded sentences."""
    lengths = tuple(3 + (i % 5) for i in range(24))
    ids, mask = padded_batch(pad_id, lengths, seed=2)
    return layer_state_std(model, {"input_ids": ids, "attention_mask": mask})


def log_uniform(n: int, low: float, high: float, seed: int) -> Tensor:
    gen = torch.Generator().manual_seed(seed)
    return torch.exp(torch.empty(n).uniform_(math.log(low), math.log(high), generator=gen))


# --- assertions ---------------------------------------------------------------------


def assert_agree(a: LayerInformation, i: int, b: LayerInformation, k: int, n: int) -> None:
    """log σ of sentence ``i`` of ``a`` and sentence ``k`` of ``b`` agree on their first ``n``
    positions, layer by layer (``b``'s layers a subset of ``a``'s), within the bound of
    the module docstring."""
    for jb, layer in enumerate(b.layers):
        ja = a.layers.index(layer)
        ls_a, ls_b = a.sigma[i, ja, :n].log(), b.sigma[k, jb, :n].log()
        assert torch.equal(ls_a.isnan(), ls_b.isnan()), f"layer {layer}: different tokens"
        real = ~ls_a.isnan()
        ls_a, ls_b = ls_a[real], ls_b[real]
        se_a, se_b = a.std_error[i, ja, :n][real], b.std_error[k, jb, :n][real]
        assert bool(torch.isfinite(se_a).all() and torch.isfinite(se_b).all())
        tol = SE_FACTOR * (se_a.square() + se_b.square()).sqrt() + ROUND_OFF
        diff = (ls_a - ls_b).abs()
        w = int((diff - tol).argmax())
        assert bool((diff <= tol).all()), (
            f"layer {layer}, token {w}: |Δ log σ| = {diff[w]:.3g} > {tol[w]:.3g}\n{ls_a}\n{ls_b}"
        )


def assert_identical(a: LayerInformation, b: LayerInformation) -> None:
    assert a.layers == b.layers and a.tokens == b.tokens
    for name in ("sigma", "entropy", "nats_kept", "std_error"):
        torch.testing.assert_close(
            getattr(a, name), getattr(b, name), rtol=0, atol=0, equal_nan=True, msg=name
        )
    for name in ("converged", "mask", "special"):
        assert torch.equal(getattr(a, name), getattr(b, name)), name
    assert (a.sigma_max, a.sigma_max_source, a.rate, a.dim) == (
        b.sigma_max,
        b.sigma_max_source,
        b.rate,
        b.dim,
    )
    assert a.normaliser == b.normaliser and a.meta == b.meta
    assert (a.evaluations is None) == (b.evaluations is None)
    if a.evaluations is not None and b.evaluations is not None:
        assert torch.equal(a.evaluations, b.evaluations)


def assert_closed_form(info: LayerInformation, j: int, closed: Tensor, config: str) -> None:
    """Layer column ``j`` of ``info`` against ``closed`` (same shape, NaN where unperturbed)."""
    got = info.sigma[:, j]
    assert torch.equal(got.isnan(), closed.isnan())
    assert bool(info.converged[:, j].all())
    free = ~closed.isnan()
    if config == "precise":  # the bound of the module docstring, per token
        se = info.std_error[:, j][free].double()
        rms = float(se.square().mean().sqrt())
        assert rms <= PRECISE.tol * (1 + 1e-6), f"RMS standard error {rms:.4f}"
        diff = (got[free].double().log() - closed[free].double().log()).abs()
        tol = SE_FACTOR * se + ROUND_OFF
        w = int((diff - tol).argmax())
        assert bool((diff <= tol).all()), (
            f"token {w}: |log σ - log σ*| = {diff[w]:.4f} > {tol[w]:.4f}\n{got}\n{closed}"
        )
    else:
        torch.testing.assert_close(
            got[free].double(), closed[free].double(), rtol=EXACT_RTOL, atol=0.0
        )


def config_of(name: str) -> FixedPointConfig:
    return PRECISE if name == "precise" else EXACT


def prepare(model: nn.Module, name: str) -> nn.Module:
    """float64 for the exact estimator (its tolerance is float64 round-off)."""
    return model.double() if name == "exact" else model


# --- (1a) closed form: layer 0 -----------------------------------------------------


@pytest.mark.parametrize("config", ["precise", "exact"])
@pytest.mark.parametrize("special_tokens", ["keep", "exclude"])
def test_layer_zero_closed_form(config: str, special_tokens: str) -> None:
    model = prepare(bert_model(), config)
    ids, mask = padded_batch()
    special = (ids == 2) | (ids == 3)  # 2 specials per sentence
    s = log_uniform(HIDDEN, 0.3, 3.0, seed=5).double()
    s[7] = math.inf  # left out of the loss and of M
    finite = s.isfinite()
    sum_inv = s[finite].pow(-2).sum()
    d_f = int(finite.sum())
    enc = {"input_ids": ids, "attention_mask": mask, "special_tokens_mask": special.long()}
    info = explain_layers(
        model,
        enc,
        layers=[0],
        state_std={0: s},
        special_tokens=special_tokens,
        rate=RATE,
        sigma_max=10.0,
        config=config_of(config),
        seed=0,
    )
    assert info.normaliser == {"0": "state_std"}
    lengths = mask.sum(1).double()
    n = lengths - 2 if special_tokens == "exclude" else lengths
    sigma = (RATE * lengths * d_f / (2 * n * sum_inv)).sqrt()  # (a), one per sentence
    perturbed = mask.bool() & ~special if special_tokens == "exclude" else mask.bool()
    closed = torch.where(perturbed, sigma[:, None], torch.full_like(sigma[:, None], math.nan))
    assert_closed_form(info, 0, closed, config)
    if special_tokens == "keep":  # σ does not depend on the sentence's length
        assert float(sigma.max() - sigma.min()) < 1e-12
    else:  # excluding 2 specials from L tokens: σ larger by sqrt(L / (L - 2))
        assert bool((sigma[1:] > sigma[:-1]).all())


def test_layer_zero_capped_at_sigma_max() -> None:
    model = bert_model()
    ids, mask = padded_batch()
    s = log_uniform(HIDDEN, 0.3, 3.0, seed=6)
    free = math.sqrt(RATE * HIDDEN / (2 * float(s.double().pow(-2).sum())))  # (a), "keep"
    cap = 0.5 * free
    info = explain_layers(
        model,
        {"input_ids": ids, "attention_mask": mask},
        layers=[0],
        state_std={0: s},
        sigma_max=cap,
        seed=0,
    )
    real = mask.bool()
    assert info.sigma_max == cap and info.sigma_max_source == "given"
    torch.testing.assert_close(info.sigma[:, 0][real], torch.full((int(real.sum()),), cap))
    assert bool((info.nats_kept[:, 0][real] == 0).all())
    assert bool(info.converged.all())


# --- (1b) closed form: a token-mixing linear block -----------------------------------


class TokenMix(nn.Module):
    """Φ(x)_t = Σ_u W_tu x_u, returned as an HF block does, ``(hidden,)``."""

    def __init__(self, W: Tensor) -> None:
        super().__init__()
        self.register_buffer("W", W)

    def forward(self, hidden_states: Tensor, attention_mask: Tensor | None = None) -> Any:
        return (torch.einsum("tu,bud->btd", self.W.to(hidden_states.dtype), hidden_states),)


class Squash(nn.Module):
    """A nonlinear block, so the toy has a block above the linear one."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.dense = nn.Linear(dim, dim)

    def forward(self, hidden_states: Tensor, attention_mask: Tensor | None = None) -> Any:
        return (torch.tanh(self.dense(hidden_states)),)


class ToyEncoder(nn.Module):
    """Just enough of a Hugging Face encoder: ``base_model_prefix``, ``encoder.layer``,
    ``get_input_embeddings`` and ``forward(input_ids, attention_mask=None, **kw)``."""

    base_model_prefix = ""

    def __init__(self, W: Tensor, vocab: int = 20, dim: int = 8) -> None:
        super().__init__()
        self.embeddings = nn.Embedding(vocab, dim)
        self.encoder = nn.Module()
        self.encoder.layer = nn.ModuleList([TokenMix(W), Squash(dim)])

    def get_input_embeddings(self) -> nn.Module:
        return self.embeddings

    def forward(self, input_ids: Tensor, attention_mask: Tensor | None = None, **kw: Any) -> Tensor:
        hidden = self.embeddings(input_ids)
        for block in self.encoder.layer:
            hidden = block(hidden, attention_mask)[0]
        return hidden


def token_mix_problem(seed: int = 0) -> tuple[ToyEncoder, Tensor, Tensor, Tensor]:
    """The toy (T = 5 tokens, D = 8), its ids, W (column norms 0.5, 1, 2, 4, 8) and σ_S."""
    T, D = 5, 8
    gen = torch.Generator().manual_seed(seed)
    W = torch.randn(T, T, generator=gen, dtype=torch.float64)
    W = W / W.norm(dim=0) * torch.tensor([0.5, 1.0, 2.0, 4.0, 8.0], dtype=torch.float64)
    torch.manual_seed(seed)
    model = ToyEncoder(W, dim=D).eval()
    ids = torch.randint(0, 20, (1, T), generator=gen)
    s = log_uniform(D, 0.5, 2.0, seed=seed + 1).double()
    return model, ids, W, s


@pytest.mark.parametrize("config", ["precise", "exact"])
@pytest.mark.parametrize("layers", [[1], [0, 1]])
def test_token_mixing_block_closed_form(config: str, layers: list[int]) -> None:
    model, ids, W, s = token_mix_problem()
    model = prepare(model, config)
    T, D = W.shape[0], s.numel()
    calls: list[int] = []
    handle = model.encoder.layer[1].register_forward_pre_hook(lambda m, a: calls.append(1))
    try:
        info = explain_layers(
            model,
            {"input_ids": ids},
            layers=layers,
            state_std={0: s, 1: s},
            rate=RATE,
            sigma_max=100.0,
            config=config_of(config),
            seed=3,
        )
    finally:
        handle.remove()
    assert not calls, "block 2 ran although no layer above 1 was asked for"
    M, n = T * D, T
    sum_inv = s.pow(-2).sum()
    closed = (RATE * M / (2 * n * W.square().sum(0) * sum_inv)).sqrt()  # (b)
    assert_closed_form(info, info.layers.index(1), closed[None], config)
    if 0 in layers:  # (a) in the same call: the rows of the batch leave at different depths
        layer0 = (RATE * D / (2 * sum_inv)).sqrt().expand(1, T)
        assert_closed_form(info, info.layers.index(0), layer0, config)
    assert_no_hooks(model)


# --- (2) staircase ------------------------------------------------------------------

KINDS = ("bert", "roberta", "distilbert", "gpt2")
# 7 rows (= the 7 positions, so that a tensor whose first dimension is the sequence length
# would be sliced by mistake) of 3 sentences, at depths 1, 2, 3 in mixed order; and with
# no row leaving after block 2 (the side inputs must still be cut for block 3)
ROW_SENTENCE = torch.tensor([0, 1, 2, 0, 1, 2, 1])
ROW_DEPTH = torch.tensor([3, 1, 2, 1, 3, 2, 2])
DEPTHS = {"mixed": ROW_DEPTH, "gap": torch.tensor([3, 1, 3, 1, 3, 1, 3])}


@pytest.mark.parametrize("depths", list(DEPTHS))
@pytest.mark.parametrize("kind", KINDS)
def test_staircase_equals_hidden_states(kind: str, depths: str) -> None:
    model = build(kind, n_layers=3)
    ids, mask = padded_batch(PAD_ID[kind])
    reference = copy.deepcopy(model)  # output_hidden_states installs transformers' own hooks
    with torch.no_grad():
        hidden = reference(input_ids=ids, attention_mask=mask, output_hidden_states=True)
    hidden_states = hidden.hidden_states
    assert len(hidden_states) == 4
    blocks = transformer_blocks(model)
    assert len(blocks) == 3
    sink: dict[int, Tensor] = {}
    sent, depth = ROW_SENTENCE, DEPTHS[depths]
    noisy = hidden_states[0][sent]  # the clean embedding output of each row's sentence
    with (
        torch.no_grad(),
        staircase(blocks, noisy, depth, sink),
        pytest.raises(StopForwardError),
    ):
        states.call_model(model, ids[sent], mask[sent], {})
    assert_no_hooks(model)
    assert sorted(sink) == sorted(set(depth.tolist()))
    for k in sink:
        rows = sent[depth == k]  # in their order in depth
        got = sink[k]
        if kind == "gpt2" and k == 3:
            got = model.transformer.ln_f(got)  # GPT-2's last hidden state is after ln_f
        expected = hidden_states[k][rows]
        real = mask[rows].bool()
        torch.testing.assert_close(got[real], expected[real], rtol=0.0, atol=1e-5)


@pytest.mark.parametrize("kind", KINDS)
def test_staircase_stops_after_the_deepest_block_and_cleans_up(kind: str) -> None:
    model = build(kind, n_layers=3)
    ids, mask = padded_batch(PAD_ID[kind])
    blocks = transformer_blocks(model)
    sent, depth = ROW_SENTENCE, ROW_DEPTH.clamp(max=2)
    x0 = torch.zeros(len(sent), ids.shape[1], HIDDEN)
    # block 3 is never called: it would raise LayerBoomError
    sink: dict[int, Tensor] = {}
    with (
        failing_forward(blocks[2], 1),
        torch.no_grad(),
        staircase(blocks, x0, depth, sink),
        pytest.raises(StopForwardError),
    ):
        states.call_model(model, ids[sent], mask[sent], {})
    assert sorted(sink) == [1, 2]
    assert [len(sink[k]) for k in (1, 2)] == [int((depth == k).sum()) for k in (1, 2)]
    assert_no_hooks(model)
    # a forward that raises inside the staircase leaves no hook either
    for fail in (0, 1):
        with (
            failing_forward(blocks[fail], 1),
            torch.no_grad(),
            pytest.raises(LayerBoomError),
            staircase(blocks, x0, ROW_DEPTH, {}),
        ):
            states.call_model(model, ids[sent], mask[sent], {})
        assert_no_hooks(model)
        for block in blocks:
            assert not block._forward_pre_hooks and not block._forward_hooks


# --- (3) agreement and determinism --------------------------------------------------


@pytest.fixture(scope="module")
def bert_setup() -> tuple[nn.Module, dict[int, Tensor], Tensor, Tensor]:
    # 3 blocks: copies leave the staircase at two depths before the deepest one
    model = bert_model(n_layers=3)
    ids, mask = padded_batch()
    return model, corpus_std(model), ids, mask


def test_sentence_alone_agrees_with_padded_batch(bert_setup: Any) -> None:
    model, std, ids, mask = bert_setup
    batch = explain_layers(model, {"input_ids": ids, "attention_mask": mask}, state_std=std)
    assert batch.layers == [0, 1, 2, 3]
    for i, n in enumerate(LENGTHS):
        alone = explain_layers(model, {"input_ids": ids[i : i + 1, :n]}, state_std=std, seed=10 + i)
        assert_agree(batch, i, alone, 0, n)
        assert bool(batch.sigma[i, :, n:].isnan().all())


def test_layer_alone_agrees_with_all_layers(bert_setup: Any) -> None:
    model, std, ids, mask = bert_setup
    enc = {"input_ids": ids, "attention_mask": mask}
    every = explain_layers(model, enc, state_std=std, seed=0)
    # per sentence × layer: the clean pass, 8 projections, 16 draws per iteration and,
    # after the burn-in iteration, 2 re-evaluations (the curvature's slope): at least
    # min_iter = 2 iterations
    assert every.evaluations is not None and every.evaluations.shape == (len(LENGTHS), 4)
    assert bool(((every.evaluations - 9 - 16) % 18 == 0).all())
    assert bool((every.evaluations >= 9 + 16 + 18).all())
    for k in (0, 1, 2, 3):
        alone = explain_layers(model, enc, layers=[k], state_std=std, seed=20 + k)
        assert alone.layers == [k]
        assert alone.evaluations is not None and alone.evaluations.shape == (len(LENGTHS), 1)
        for i, n in enumerate(LENGTHS):
            assert_agree(every, i, alone, i, n)
    # negative layers count from the last
    last = explain_layers(model, enc, layers=[-1], state_std=std, seed=30)
    assert last.layers == [3]


def test_same_seed_same_result(bert_setup: Any) -> None:
    model, std, ids, mask = bert_setup
    enc = {"input_ids": ids, "attention_mask": mask}
    a = explain_layers(model, enc, layers=[2, 0], state_std=std, seed=7)
    b = explain_layers(model, enc, layers=[0, 2], state_std=std, seed=7)
    c = explain_layers(
        model, enc, layers=[0, 2], state_std=std, seed=torch.Generator().manual_seed(7)
    )
    assert a.layers == [0, 2]
    assert_identical(a, b)
    assert_identical(a, c)
    # chunking the perturbed copies changes speed, not the noise: only float summation order
    d = explain_layers(model, enc, layers=[0, 2], state_std=std, seed=7, internal_batch_size=5)
    torch.testing.assert_close(d.sigma, a.sigma, rtol=1e-3, atol=0.0, equal_nan=True)


def test_fallback_normaliser_warns_and_is_labelled(bert_setup: Any) -> None:
    model, std, ids, mask = bert_setup
    enc = {"input_ids": ids, "attention_mask": mask}
    with pytest.warns(UserWarning, match=r"no state_std for layers \[2\]"):
        info = explain_layers(model, enc, layers=[0, 2], state_std={0: std[0]})
    assert info.normaliser == {"0": "state_std", "2": "mean square fallback"}
    assert bool(torch.isfinite(info.sigma[:, 1][mask.bool()]).all())


# --- (4) special tokens and padding -------------------------------------------------

WORDS = "rare bird has more than enough charm to make it memorable the is ."
VOCAB = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *WORDS.split(" ")]
SENTENCES = ["rare bird has more than enough charm .", "the bird is rare ."]


@pytest.fixture(scope="module")
def tokenizer(tmp_path_factory: pytest.TempPathFactory) -> Any:
    folder = tmp_path_factory.mktemp("vocab")
    (folder / "vocab.txt").write_text("\n".join(VOCAB) + "\n", encoding="utf-8")
    return transformers.BertTokenizer.from_pretrained(folder)


@pytest.fixture(scope="module")
def words_setup(tokenizer: Any) -> tuple[nn.Module, dict[int, Tensor], Any]:
    model = bert_model(vocab=len(VOCAB))
    enc = tokenizer(SENTENCES, return_tensors="pt", padding=True, return_special_tokens_mask=True)
    return model, corpus_std_words(model, tokenizer), enc


def corpus_std_words(model: nn.Module, tokenizer: Any) -> dict[int, Tensor]:
    words = VOCAB[5:]
    gen = torch.Generator().manual_seed(4)
    corpus = [
        " ".join(words[int(j)] for j in torch.randint(0, len(words), (3 + i % 5,), generator=gen))
        for i in range(20)
    ]
    return layer_state_std(model, tokenizer(corpus, return_tensors="pt", padding=True))


def test_keep_perturbs_and_labels_special_tokens(words_setup: Any, tokenizer: Any) -> None:
    model, std, enc = words_setup
    ids, mask = enc["input_ids"], enc["attention_mask"].bool()
    assert bool((~mask).any()), "the batch is padded"
    info = explain_layers(model, enc, state_std=std, tokenizer=tokenizer)
    expected_tokens = [tokenizer.convert_ids_to_tokens(row) for row in ids.tolist()]
    assert info.tokens == expected_tokens
    assert info.tokens[1][:6] == ["[CLS]", "the", "bird", "is", "rare", "."]
    assert all(tok in VOCAB for row in info.tokens for tok in row)
    special = torch.isin(ids, torch.tensor([2, 3]))
    assert torch.equal(info.special & mask, special)
    sigma = info.sigma.permute(0, 2, 1)  # (N, T, layers)
    assert bool(torch.isfinite(sigma[mask]).all()), "keep: specials get a finite σ"
    assert bool(sigma[~mask].isnan().all()), "padding gets NaN"
    rows = info.to_rows()
    assert len(rows) == int(mask.sum()) * len(info.layers)
    assert {(r["sentence"], r["position"]) for r in rows} == {
        (int(n), int(t)) for n, t in mask.nonzero()
    }
    assert {r["token"] for r in rows if r["special"]} == {"[CLS]", "[SEP]"}
    words = info.to_rows(include_special=False)
    assert len(words) == int((mask & ~special).sum()) * len(info.layers)


@pytest.mark.parametrize("source", ["tokenizer", "special_tokens_mask"])
def test_exclude_leaves_special_tokens_unperturbed(
    words_setup: Any, tokenizer: Any, source: str
) -> None:
    model, std, enc = words_setup
    ids, mask = enc["input_ids"], enc["attention_mask"].bool()
    special = torch.isin(ids, torch.tensor([2, 3]))
    if source == "tokenizer":
        given = {k: v for k, v in enc.items() if k != "special_tokens_mask"}
        info = explain_layers(
            model, given, state_std=std, special_tokens="exclude", tokenizer=tokenizer
        )
        assert info.tokens[0][0] == "[CLS]"
    else:
        info = explain_layers(model, enc, state_std=std, special_tokens="exclude")
        assert info.tokens == [[str(i) for i in row] for row in ids.tolist()]
    assert torch.equal(info.special & mask, special)
    sigma = info.sigma.permute(0, 2, 1)
    assert bool(sigma[special].isnan().all()), "exclude: specials get NaN"
    assert bool(sigma[~mask].isnan().all())
    assert bool(torch.isfinite(sigma[mask & ~special]).all())
    assert len(info.to_rows()) == int(mask.sum()) * len(info.layers)


def test_exclude_needs_to_know_the_special_tokens(words_setup: Any) -> None:
    model, std, enc = words_setup
    given = {k: v for k, v in enc.items() if k != "special_tokens_mask"}
    with pytest.raises(ValueError, match=r"tokenizer=.*return_special_tokens_mask"):
        explain_layers(model, given, state_std=std, special_tokens="exclude")
    with pytest.raises(ValueError, match="'keep' or 'exclude'"):
        explain_layers(model, given, state_std=std, special_tokens="drop")  # type: ignore[arg-type]
    assert_no_hooks(model)


# --- (5) bad inputs and model state ------------------------------------------------


def test_bad_inputs_raise_clear_errors(bert_setup: Any) -> None:
    model, std, ids, mask = bert_setup
    enc = {"input_ids": ids, "attention_mask": mask}
    with pytest.raises(ValueError, match=r"layer 99 does not exist.*0 \(embedding output\) to 3"):
        explain_layers(model, enc, layers=[99], state_std=std)
    with pytest.raises(ValueError, match="layer -5 does not exist"):
        explain_layers(model, enc, layers=[-5], state_std=std)
    with pytest.raises(ValueError, match="twice"):
        explain_layers(model, enc, layers=[1, 1], state_std=std)
    with pytest.raises(ValueError, match="twice"):
        explain_layers(model, enc, layers=[3, -1], state_std=std)  # -1 is layer 3
    with pytest.raises(TypeError, match="ints"):
        explain_layers(model, enc, layers=["1"], state_std=std)  # type: ignore[list-item]
    with pytest.raises(ValueError, match="needs 'input_ids'"):
        explain_layers(model, {"attention_mask": mask}, state_std=std)
    with pytest.raises(ValueError, match=r"state_std\[1\] has 31 elements.*have 32"):
        explain_layers(model, enc, state_std={**std, 1: std[1][:-1]})
    with pytest.raises(ValueError, match="layer 99 does not exist"):
        layer_state_std(model, enc, layers=[99])
    with pytest.raises(ValueError, match="cannot find the transformer blocks"):
        explain_layers(nn.Linear(3, 3), enc)
    assert_no_hooks(model)
    assert not model.training


def test_model_state_is_restored(bert_setup: Any) -> None:
    model, std, ids, mask = bert_setup
    model = copy.deepcopy(model)
    enc = {"input_ids": ids, "attention_mask": mask}
    expected = explain_layers(model, enc, state_std=std, seed=3)
    params = dict(model.named_parameters())
    next(iter(params.values())).requires_grad_(False)
    before = {n: (p.detach().clone(), p.requires_grad) for n, p in params.items()}
    model.train()
    got = explain_layers(model, enc, state_std=std, seed=3)
    assert_identical(got, expected)  # dropout was off during the call
    assert all(m.training for m in model.modules()), "train mode must be restored"
    for n, p in model.named_parameters():
        value, requires_grad = before[n]
        assert torch.equal(p.detach(), value) and p.requires_grad == requires_grad, n
        assert p.grad is None, f"{n}.grad"
    assert_no_hooks(model)
    # also when the call fails half-way (the state_std check runs inside eval mode)
    with pytest.raises(ValueError, match="elements"):
        explain_layers(model, enc, state_std={0: torch.ones(3)})
    assert all(m.training for m in model.modules())
    assert_no_hooks(model)


# --- (6) LayerInformation -----------------------------------------------------------


def synthetic_info() -> LayerInformation:
    """Two sentences (4 and 3 real tokens of 5), layers 0 and 3, D = 4."""
    tokens = [["[CLS]", "a", "b", "a", "[PAD]"], ["[CLS]", "b", "[SEP]", "[PAD]", "[PAD]"]]
    mask = torch.tensor([[1, 1, 1, 1, 0], [1, 1, 1, 0, 0]], dtype=torch.bool)
    special = torch.tensor([[1, 0, 0, 0, 1], [1, 0, 1, 1, 1]], dtype=torch.bool)
    nats = torch.tensor(
        [
            [[1.0, 2.0, 3.0, 4.0, 0.0], [0.5, 1.5, 2.5, 3.5, 0.0]],
            [[7.0, 8.0, 9.0, 0.0, 0.0], [6.0, 7.5, 8.5, 0.0, 0.0]],
        ]
    )
    pad = ~mask[:, None, :].expand_as(nats)
    nan = torch.full_like(nats, math.nan)
    nats = torch.where(pad, nan, nats)
    sigma = torch.where(pad, nan, 2.0 * torch.exp(-nats / 4))
    return LayerInformation(
        layers=[0, 3],
        tokens=tokens,
        sigma=sigma,
        entropy=torch.where(pad, nan, 4 * (0.5 * math.log(2 * math.pi * math.e) + sigma.log())),
        nats_kept=nats,
        std_error=torch.where(pad, nan, torch.full_like(nats, 0.01)),
        converged=torch.tensor([[True, False], [True, True]]),
        mask=mask,
        special=special,
        sigma_max=2.0,
        sigma_max_source="given",
        rate=0.1,
        normaliser={"0": "state_std", "3": "mean square fallback"},
        dim=4,
        meta={"model": "toy", "sentences": ["a b a", "b"]},
        evaluations=torch.tensor([[41, 57], [41, 89]]),
    )


def test_to_rows_columns_and_count() -> None:
    info = synthetic_info()
    rows = info.to_rows()
    assert len(rows) == (4 + 3) * 2  # real tokens × layers
    assert all(tuple(r) == COLUMNS for r in rows)
    row = next(r for r in rows if (r["sentence"], r["position"], r["layer"]) == (1, 2, 3))
    assert row == {
        "sentence": 1,
        "position": 2,
        "token": "[SEP]",
        "special": True,
        "layer": 3,
        "sigma": float(info.sigma[1, 1, 2]),
        "entropy": float(info.entropy[1, 1, 2]),
        "nats_kept": 8.5,
        "std_error": pytest.approx(0.01),
        "converged": True,
    }
    assert len(info.to_rows(include_special=False)) == (3 + 1) * 2
    assert info.layer_names() == ["embeddings", "layer 3"]


def test_mean_by_layer_by_hand() -> None:
    info = synthetic_info()
    groups = {"a": lambda t: t == "a", "b": lambda t: t == "b", "none": lambda t: False}
    got = info.mean_by_layer(groups)
    # non-special real tokens: sentence 0 "a"(1) "b"(2) "a"(3), sentence 1 "b"(1)
    assert got["a"] == pytest.approx([(2.0 + 4.0) / 2, (1.5 + 3.5) / 2])
    assert got["b"] == pytest.approx([(3.0 + 8.0) / 2, (2.5 + 7.5) / 2])
    assert all(math.isnan(v) for v in got["none"])
    words = [2.0, 3.0, 4.0, 8.0]
    assert info.mean_by_layer()["all"] == pytest.approx(
        [sum(words) / 4, (1.5 + 2.5 + 3.5 + 7.5) / 4]
    )
    with_special = info.mean_by_layer(include_special=True)["all"]
    assert with_special[0] == pytest.approx((1 + 2 + 3 + 4 + 7 + 8 + 9) / 7)
    per_dim = info.mean_by_layer(per_dimension=True)["all"]
    assert per_dim[0] == pytest.approx(sum(words) / 4 / info.dim)


@pytest.mark.parametrize("suffix", [".json", ".csv"])
def test_save_load_round_trip(tmp_path: Path, suffix: str) -> None:
    info = synthetic_info()
    path = info.save(tmp_path / f"result{suffix}")
    assert path == tmp_path / f"result{suffix}" and path.is_file()
    if suffix == ".csv":
        assert (tmp_path / "result.meta.json").is_file()
        header = path.read_text(encoding="utf-8").splitlines()[0]
        assert header.split(",") == list(COLUMNS)
    else:
        json.loads(path.read_text(encoding="utf-8"))  # readable by Python's json
    assert_identical(LayerInformation.load(path), info)
    # files written before evaluations were recorded still load
    meta = path if suffix == ".json" else tmp_path / "result.meta.json"
    data = json.loads(meta.read_text(encoding="utf-8"))
    del data["evaluations"]
    meta.write_text(json.dumps(data), encoding="utf-8")
    assert LayerInformation.load(path).evaluations is None


def test_save_load_reject_other_suffixes(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match=r"\.json or \.csv"):
        synthetic_info().save(tmp_path / "result.txt")
    with pytest.raises(ValueError, match=r"\.json or \.csv"):
        LayerInformation.load(tmp_path / "result.txt")


def test_select_sentences() -> None:
    info = synthetic_info()
    one = info.select([1])
    assert one.tokens == [info.tokens[1]] and one.layers == info.layers
    for name in (
        "sigma",
        "entropy",
        "nats_kept",
        "std_error",
        "converged",
        "mask",
        "special",
        "evaluations",
    ):
        torch.testing.assert_close(
            getattr(one, name), getattr(info, name)[1:2], rtol=0, atol=0, equal_nan=True
        )
    assert_identical(info.select([0, 1]), info)
    swapped = info.select([1, 0])
    assert swapped.tokens == info.tokens[::-1]
    assert len(swapped.to_rows()) == len(info.to_rows())


# --- (7) layer_state_std ------------------------------------------------------------


def test_layer_state_std_equals_estimate_state_std() -> None:
    model = bert_model(n_layers=2)
    lengths = tuple(2 + (i % 6) for i in range(13))
    ids, mask = padded_batch(0, lengths, seed=8)
    corpus = {"input_ids": ids, "attention_mask": mask}

    def forward(ids: Tensor, mask: Tensor) -> Any:
        return model(input_ids=ids, attention_mask=mask)

    for reduction in ("mean", "pool"):
        got = layer_state_std(model, corpus, token_reduction=reduction, batch_size=4)
        assert sorted(got) == [0, 1, 2]
        for k, module in enumerate([model.embeddings, *model.encoder.layer]):
            expected = estimate_state_std(
                forward,
                ids,
                (mask,),
                state_layer=module,
                attention_mask=mask,
                token_reduction=reduction,
            )
            assert got[k].shape == (HIDDEN,) and got[k].dtype == torch.float32
            # the same float64 moment sums; only batching (summation order) differs
            torch.testing.assert_close(got[k], expected, rtol=1e-5, atol=0.0, msg=f"layer {k}")
    some = layer_state_std(model, corpus, layers=[2, 0])
    assert sorted(some) == [0, 2]
    assert_no_hooks(model)


def test_layer_state_std_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    model = bert_model(n_layers=2)
    ids, mask = padded_batch(0, (3, 5, 4, 6), seed=9)
    corpus = {"input_ids": ids, "attention_mask": mask}
    first = layer_state_std(model, corpus, cache_dir=tmp_path)
    files = list(tmp_path.iterdir())
    assert len(files) == 1

    def no_forward(*args: Any, **kwargs: Any) -> Any:
        raise AssertionError("the cached σ_S must be loaded, not recomputed")

    with monkeypatch.context() as patch:
        patch.setattr(layer_std, "layer_states", no_forward)
        again = layer_state_std(model, corpus, cache_dir=tmp_path)
    assert sorted(again) == sorted(first)
    for k in first:
        assert torch.equal(again[k], first[k])
    # another weight, another key (and the old file is not used)
    with torch.no_grad():
        model.encoder.layer[1].output.dense.weight.mul_(2.0)
    changed = layer_state_std(model, corpus, cache_dir=tmp_path)
    assert len(list(tmp_path.iterdir())) == 2
    assert torch.equal(changed[1], first[1]) and not torch.equal(changed[2], first[2])


def test_layer_state_std_cache_key_covers_the_whole_corpus(tmp_path: Path) -> None:
    # segment ids change the states, so they must change the key; and the key must not
    # depend on numpy knowing the weights' dtype (no bfloat16 there)
    model = bert_model(n_layers=2)
    ids, mask = padded_batch(0, (3, 5, 4, 6), seed=9)
    zeros = {"input_ids": ids, "attention_mask": mask, "token_type_ids": torch.zeros_like(ids)}
    ones = {**zeros, "token_type_ids": torch.ones_like(ids)}
    layer_state_std(model, zeros, cache_dir=tmp_path)
    cached = layer_state_std(model, ones, cache_dir=tmp_path)
    fresh = layer_state_std(model, ones)
    for k in fresh:
        assert torch.equal(cached[k], fresh[k]), f"layer {k}: σ_S of another corpus was loaded"
    half = copy.deepcopy(model).to(torch.bfloat16)
    std = layer_state_std(half, zeros, cache_dir=tmp_path)
    assert sorted(std) == [0, 1, 2]


# --- (8) the real MiniLM ------------------------------------------------------------

SENTENCE = "rare bird has more than enough charm to make it memorable ."
N_CORPUS = 100


@pytest.mark.slow
def test_minilm_information_per_layer(minilm_dir: Path, sst2_dev_path: Path) -> None:
    from comparisons.models.resources import read_sentences

    tokenizer = transformers.AutoTokenizer.from_pretrained(minilm_dir)
    model = transformers.AutoModel.from_pretrained(minilm_dir).eval()
    sentences = [s for s, _ in read_sentences(sst2_dev_path, N_CORPUS)]
    assert len(sentences) == N_CORPUS
    corpus = tokenizer(sentences, return_tensors="pt", padding=True)
    with pytest.warns(UserWarning, match="3 of 384 elements of the state are constant"):
        std = layer_state_std(model, corpus)
    assert sorted(std) == list(range(7))
    # MiniLM's last layer has three constant elements: left out of the loss
    assert [int(std[k].isinf().sum()) for k in range(7)] == [0] * 6 + [3]
    enc = tokenizer(SENTENCE, return_tensors="pt")
    info = explain_layers(model, enc, state_std=std, tokenizer=tokenizer)
    assert info.layers == list(range(7)) and info.sigma_max_source == "word embeddings"
    # every layer converged, or its RMS standard error is within twice the tolerance
    tol = DEFAULT.tol
    rms = info.std_error[0].nan_to_num().square().mean(1).sqrt()
    assert bool((info.converged[0] | (rms <= 2 * tol)).all()), (info.converged, rms)
    # the paper's finding: the deeper the layer, the less of the words it keeps. Measured
    # here (nats per word): 1224, 1028, 925, 807, 731, 675, 591, steps of ≥ 56 nats, while
    # a word's nats kept (384 · log(σ_max/σ)) has a Monte-Carlo error of about
    # 384 · 0.02 ≈ 8 nats, ≈ 2.3 for the mean over its 12 words: strictly decreasing.
    kept = info.mean_by_layer()["all"]
    assert kept[0] > kept[-1], kept
    assert all(kept[j] > kept[j + 1] for j in range(len(kept) - 1)), kept

    # layer 3 agrees with the single-layer attribution (another seed)
    def forward(ids: Tensor, mask: Tensor) -> Tensor:
        return model(input_ids=ids, attention_mask=mask).last_hidden_state

    lpe = LayerPerturbationEntropyAttribution(forward, model.embeddings)
    res = lpe.explain(
        enc["input_ids"],
        None,
        (enc["attention_mask"],),
        state_layer=model.encoder.layer[2],
        attention_mask=enc["attention_mask"],
        state_std=std[3],
        seed=1,
    )
    torch.testing.assert_close(res.estimate.sigma_max[0].item(), info.sigma_max)
    n = enc["input_ids"].shape[1]
    ls_a, ls_b = info.sigma[0, 3, :n].log(), res.estimate.log_sigma[0, :n]
    se_a, se_b = info.std_error[0, 3, :n], res.estimate.std_error[0, :n]
    bound = SE_FACTOR * (se_a.square() + se_b.square()).sqrt() + ROUND_OFF
    assert bool(((ls_a - ls_b).abs() <= bound).all()), (ls_a - ls_b).abs() / bound
    assert_no_hooks(model)


# --- (9) the σ_S shipped with the package -------------------------------------------
#
# The packaged MiniLM's σ_S over 5,000 SST-2 train sentences ships as
# captum_perturb/data/all-MiniLM-L6-v2.state_std.npz (python -m comparisons.models.packaged_std);
# explain_layers uses a shipped file whenever the model's weights hash matches.

SHIPPED_LAYERS = list(range(7))
SHIPPED_DIM = 384

# Tolerance of the recompute (test_shipped_state_std_recomputes_from_sst2_train). The
# recompute is deterministic: the same code, weights, rows and thread count give the
# same bits (measured here: identical). Another machine or BLAS may sum in another order.
# (1) σ_S is a seminorm of the centred states, so for states perturbed by δ,
#     |σ_S(s + δ) − σ_S(s)| ≤ rms(δ) (triangle inequality); the mean moves by at most
#     mean|δ| ≤ rms(δ). (2) A float32 dot product of length K summed in another order
#     differs by about √K·u relative (u = 2⁻²⁴ ≈ 6e-8; Higham & Mary's probabilistic
#     bound), ≤ √1536·u ≈ 2.4e-6 for MiniLM's widest reduction (the FFN's 1,536). Each
#     of the 6 blocks chains about 6 such reductions (QKᵀ, softmax·V, output projection,
#     two FFN matmuls, LayerNorm), 36 in all; adding their bounds gives a relative error
#     of the token states — and of their mean over tokens — of at most ≈ 8.6e-5, so
#     ε = 1e-4 of each element's rms = sqrt(σ_S² + mean²) (which bounds |s|'s scale),
#     plus u·σ_S for the final float32 rounding. (Measured with batches of 7 instead of
#     32, i.e. other matmul shapes: at most 1.2e-7 of the rms.)
RECOMPUTE_EPS = 1e-4
FLOAT32_U = 2.0**-24


def _shipped() -> Any:
    from captum_perturb.layers.packaged_std import load_packaged, packaged_files

    files = packaged_files()
    assert [f.name for f in files] == ["all-MiniLM-L6-v2.state_std.npz"]
    return load_packaged(files[0])


def test_shipped_state_std_file() -> None:
    from comparisons.models import packaged_std as recipe

    shipped = _shipped()
    assert sorted(shipped.std) == SHIPPED_LAYERS == sorted(shipped.mean)
    assert shipped.meta["layers"] == SHIPPED_LAYERS and shipped.meta["dim"] == SHIPPED_DIM
    for k in SHIPPED_LAYERS:
        std, mean = shipped.std[k], shipped.mean[k]
        assert std.shape == mean.shape == (SHIPPED_DIM,)
        assert std.dtype == mean.dtype == torch.float32
        assert bool(torch.isfinite(mean).all())
        assert bool((std > 0).all()), f"layer {k}: σ_S must be positive (or inf)"
    # MiniLM's last layer has three constant elements (as over SST-2 dev, section 8)
    assert [int(shipped.std[k].isinf().sum()) for k in SHIPPED_LAYERS] == [0] * 6 + [3]
    meta = shipped.meta
    assert len(meta["weights_sha256"]) == 64 and meta["model_type"] == "BertModel"
    r = meta["recipe"]
    assert (r["file"], r["rows"], r["seed"], r["token_reduction"]) == (
        "sst2/train.tsv",
        recipe.ROWS,
        recipe.SEED,
        "mean",
    )
    assert r["batch_size"] == recipe.BATCH_SIZE and r["constant_rtol"] == recipe.CONSTANT_RTOL


@pytest.mark.slow
def test_shipped_state_std_belongs_to_the_packaged_minilm(minilm_dir: Path) -> None:
    from captum_perturb.layers.packaged_std import packaged_state_std, state_numel, weights_hash

    model = transformers.AutoModel.from_pretrained(minilm_dir).eval()
    meta = _shipped().meta
    assert state_numel(model) == meta["state_numel"]
    assert weights_hash(model) == meta["weights_sha256"], (
        "the packaged MiniLM's weights changed: regenerate the file with "
        "python -m comparisons.models.packaged_std"
    )
    found = packaged_state_std(model)
    assert found is not None and found.path.name == "all-MiniLM-L6-v2.state_std.npz"


@pytest.mark.slow
def test_shipped_state_std_recomputes_from_sst2_train(
    minilm_dir: Path, sst2_train_path: Path
) -> None:
    """The shipped file is what its recipe computes (about a minute on one core)."""
    import warnings

    from comparisons.models import packaged_std as recipe

    shipped = _shipped()
    sentences = recipe.corpus_rows(sst2_train_path)
    assert recipe.corpus_sha256(sentences) == shipped.meta["recipe"]["corpus_sha256"]
    model = transformers.AutoModel.from_pretrained(minilm_dir).eval()
    tokenizer = transformers.AutoTokenizer.from_pretrained(minilm_dir)
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", "3 of 384 elements", UserWarning)
        std, mean, layers = recipe.compute(model, tokenizer, sentences)
    assert layers == SHIPPED_LAYERS
    for k in layers:
        s0, m0 = shipped.std[k].double(), shipped.mean[k].double()
        s1, m1 = torch.from_numpy(std[k]).double(), torch.from_numpy(mean[k]).double()
        finite = torch.isfinite(s0)
        assert torch.equal(torch.isfinite(s1), finite), f"layer {k}: other constant elements"
        rms = (s0[finite].square() + m0[finite].square()).sqrt()
        bound = RECOMPUTE_EPS * rms + FLOAT32_U * s0[finite]
        err = (s1[finite] - s0[finite]).abs()
        assert bool((err <= bound).all()), f"layer {k}: σ_S off by {(err / bound).max():.3g} bounds"
        assert bool(((m1 - m0)[finite].abs() <= bound).all()), f"layer {k}: mean"


def _fake_shipped(model: nn.Module, std: dict[int, Tensor], folder: Path) -> Path:
    """Write a shipped-σ_S file for ``model`` into ``folder`` (the real format)."""
    import numpy as np

    from captum_perturb.layers.packaged_std import SUFFIX, state_numel, weights_hash

    layers = sorted(std)
    meta = {
        "model_type": type(model).__name__,
        "weights_sha256": weights_hash(model),
        "state_numel": state_numel(model),
        "layers": layers,
        "dim": int(std[layers[0]].numel()),
        "recipe": {"file": "test corpus", "rows": 3, "seed": 0},
    }
    stacked = torch.stack([std[k] for k in layers]).numpy()
    path = folder / f"tiny{SUFFIX}"
    np.savez(path, std=stacked, mean=np.zeros_like(stacked), meta=np.array(json.dumps(meta)))
    return path


def test_shipped_std_is_used_for_matching_weights_only(
    bert_setup: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import warnings

    import captum_perturb.layers.packaged_std as packaged_std
    from captum_perturb.functional import embedding_sigma_max

    model, std, ids, mask = bert_setup
    model = copy.deepcopy(model)  # its weights are changed below
    enc = {"input_ids": ids, "attention_mask": mask}
    monkeypatch.setattr(packaged_std, "DATA_DIR", tmp_path)
    monkeypatch.setattr(packaged_std, "_LOADED", {})
    _fake_shipped(model, std, tmp_path)
    with warnings.catch_warnings():
        warnings.simplefilter("error", UserWarning)  # no fallback warning
        auto = explain_layers(model, enc, layers=[0, 2], seed=3)
    assert auto.normaliser == {"0": "packaged state_std", "2": "packaged state_std"}
    given = explain_layers(model, enc, layers=[0, 2], state_std=std, seed=3)
    assert given.normaliser == {"0": "state_std", "2": "state_std"}
    # the same σ_S, the same noise: the same bits (only the label differs)
    assert_identical(dataclasses.replace(auto, normaliser=given.normaliser), given)
    assert auto.sigma_max == embedding_sigma_max(model.get_input_embeddings().weight)
    # a weight changed in place: another model, the shipped σ_S no longer applies
    with torch.no_grad():
        model.encoder.layer[1].output.dense.weight.mul_(2.0)
    with pytest.warns(UserWarning, match="not comparable across layers, sentences or models"):
        changed = explain_layers(model, enc, layers=[0, 2], seed=3)
    assert changed.normaliser == {"0": "mean square fallback", "2": "mean square fallback"}


def test_batches_group_by_length_and_trim_right_padding() -> None:
    mask = torch.tensor([[1, 1, 1, 0], [1, 0, 0, 0], [1, 1, 1, 1], [1, 1, 0, 0]])
    got = layer_std._batches(mask, 2)
    assert [(r.tolist(), w) for r, w in got] == [([1, 3], 2), ([0, 2], 4)]
    left = mask.flip(1)  # left padding: trailing columns are not padding, nothing trimmed
    assert [w for _, w in layer_std._batches(left, 2)] == [4, 4]


@pytest.mark.slow
def test_packaged_minilm_needs_no_data(
    minilm_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Without ../shared the packaged MiniLM is explained with the shipped σ_S: the same
    bits as passing it explicitly, no fallback, no warning."""
    import warnings

    monkeypatch.setenv("CAPTUM_PERTURB_DATA", str(tmp_path))  # an empty folder: no SST-2
    tokenizer = transformers.AutoTokenizer.from_pretrained(minilm_dir)
    model = transformers.AutoModel.from_pretrained(minilm_dir).eval()
    enc = tokenizer([SENTENCE], return_tensors="pt")
    with warnings.catch_warnings():
        warnings.simplefilter("error", UserWarning)
        auto = explain_layers(model, enc, layers=[0, 1], tokenizer=tokenizer)
    assert auto.normaliser == {"0": "packaged state_std", "1": "packaged state_std"}
    given = explain_layers(model, enc, layers=[0, 1], state_std=_shipped().std, tokenizer=tokenizer)
    assert_identical(dataclasses.replace(auto, normaliser=given.normaliser), given)
