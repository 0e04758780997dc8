r"""Layer by layer: how much of each token every layer of a transformer keeps.

The paper's analysis (Guan et al. 2019, Figs. 3 to 5): the noise goes on the embedding
output :math:`x` — the hidden states entering the first block, word + position (+
segment) embeddings, as in :doc:`layers` — and, for every explained layer :math:`l`, a
separate :math:`\sigma^{(l)}` is learned for the state :math:`\Phi_l(x)` (layer
:math:`l`'s token states; :math:`l = 0` is the embedding output itself):

.. math::
    \min_{\sigma^{(l)}}\; \mathbb{E}_\varepsilon \frac{1}{M}\sum_j
    \Big(\frac{\Phi_l(\tilde x)_j - \Phi_l(x)_j}{\sigma_{S,l,j}}\Big)^2
    - \text{rate}\cdot\operatorname{mean}_i \log\frac{\sigma^{(l)}_i}{\sigma_{max}},
    \qquad \tilde x_i = x_i + \sigma^{(l)}_i \varepsilon_i .

σ_S of every layer comes from one corpus (:func:`layer_state_std`), which puts layers
and models on one scale; under ``torchrun`` its forward passes are shared out over the
processes and the moments all-reduced, and a corpus can stream in as batches. The
information layer :math:`l` keeps of token :math:`i` is
:math:`H_{max} - H_i^{(l)} = D \log(\sigma_{max}/\sigma^{(l)}_i)` nats.

All layers are optimised in one call of the estimator: the batch holds one copy of each
sentence per layer, every copy converges on its own, and the perturbed copies of all
layers share one *staircase* forward pass (``captum_perturb.layers.blocks``): a copy explaining
layer :math:`l` leaves the batch after block :math:`l`, so it costs :math:`l` blocks.
"""

from __future__ import annotations

import warnings
from collections.abc import Mapping, Sequence
from typing import Any, Literal, NamedTuple

import torch
from torch import Tensor, nn
from typing_extensions import Unpack

from captum_perturb._utils.common import make_generator, user_stacklevel
from captum_perturb._utils.hooks import run_until_captured
from captum_perturb._utils.model_state import evaluation_mode
from captum_perturb.config import LAYERWISE
from captum_perturb.functional.diagnostics import warn_if_needed
from captum_perturb.functional.estimate import SigmaEstimate, StateFn, estimate_sigma
from captum_perturb.functional.moments import (
    FALLBACK_LABEL,
    embedding_sigma_max,
    fallback_mean_square,
)
from captum_perturb.layers.blocks import staircase, transformer_blocks
from captum_perturb.layers.information import LayerInformation
from captum_perturb.layers.packaged_std import LABEL as PACKAGED_LABEL
from captum_perturb.layers.packaged_std import packaged_state_std
from captum_perturb.layers.states import call_model, chosen_layers, layer_states, unpack_encoding
from captum_perturb.options import EstimatorOptions, EstimatorSettings, renamed, resolve_options


def explain_layers(
    model: nn.Module,
    encoding: Mapping[str, Any],
    layers: Sequence[int] | None = None,
    *,
    special_tokens: Literal["keep", "exclude"] = "keep",
    tokenizer: Any = None,
    state_positions: Tensor | None = None,
    internal_batch_size: int | None = None,
    options: EstimatorOptions | None = None,
    batch_size: int | None = None,
    **settings: Unpack[EstimatorSettings],
) -> LayerInformation:
    r"""The information each layer keeps about each token, for one or many sentences.

    Args:
        model: a Hugging Face encoder or decoder (``AutoModel``), or a model holding one
            (``...ForSequenceClassification``); it is put in eval mode for the call and
            restored.
        encoding: the tokenizer's output, ``(N, T)`` tensors (``input_ids``,
            ``attention_mask``; ``token_type_ids`` and ``special_tokens_mask`` are used
            when present). Padding is never perturbed nor counted.
        layers: which layers, ``0`` = the embedding output (explained by itself: the
            closed form :math:`\sigma_i^2 = \text{rate}\cdot M/(2 n \sum_d \sigma_{S,d}^{-2})`
            for :math:`M` counted elements and :math:`n` perturbed tokens), ``k`` = block
            ``k``'s output, negatives from the last;
            default all, ``0 … L``.
        special_tokens: ``"keep"`` perturbs [CLS]/[SEP]-like tokens like words (and
            labels them); ``"exclude"`` leaves them noise-free (σ = NaN) — their states
            still count in the loss. Special tokens are known from
            ``special_tokens_mask`` in ``encoding`` or from ``tokenizer``.
        tokenizer: turns ids into token strings for the result, and finds special tokens.
        state_positions: ``(N, T)`` bool, the positions whose states :math:`\Phi_l` is
            made of (default: every real token). For a decoder, the answer position: the
            last prompt token, whose state the next token is read from (as
            :meth:`LLMPerturbationEntropyAttribution.explain_layers
            <captum_perturb.LLMPerturbationEntropyAttribution.explain_layers>` does).
        internal_batch_size: perturbed copies per forward pass (speed and memory; the
            same noise for any value, see ``SigmaEstimate.batch_dependent``).
        options: the estimator's settings, :class:`~captum_perturb.EstimatorOptions`.
            Here ``state_std`` is ``{layer: σ_S}`` from :func:`layer_state_std`
            (recommended: it puts all layers on one scale). ``None``: the σ_S that ships
            with the package when the model's weights are known (the packaged
            all-MiniLM-L6-v2: :mod:`captum_perturb.layers.packaged_std`, SST-2 train),
            else — and for layers missing from a given ``state_std`` — the reference
            code's fallback :math:`\sigma_S^2 = \text{mean}(\Phi_l(x)^2)` per sentence,
            with a warning (each sentence and layer is then on its own scale);
            ``result.normaliser`` says which layer used which. ``config`` defaults to
            :data:`~captum_perturb.LAYERWISE`, σ_max to 10 × the std of the word-embedding
            matrix; the scores are the paper's information (nats kept), so ``score`` may
            only be ``"paper"``.
        batch_size: the former name of ``internal_batch_size`` (deprecated).
        **settings: any of :class:`~captum_perturb.EstimatorOptions`' fields by keyword
            (``rate``, ``sigma_max``, ``state_std``, ``config``, ``seed``, ``score``,
            ``show_progress``), over ``options``.

    Returns:
        A :class:`~captum_perturb.LayerInformation`: σ, entropies, nats kept and
        standard errors per sentence × layer × token, as arrays and as tidy rows.

    Raises:
        ValueError: unknown layers, a missing ``input_ids``, ``special_tokens="exclude"``
            without a way to find special tokens.

    Example:
        >>> import torch
        >>> from transformers import BertConfig, BertModel
        >>> from captum_perturb import explain_layers
        >>> _ = torch.manual_seed(0)
        >>> model = BertModel(
        ...     BertConfig(
        ...         vocab_size=50,
        ...         hidden_size=16,
        ...         num_hidden_layers=2,
        ...         num_attention_heads=2,
        ...         intermediate_size=32,
        ...     )
        ... )
        >>> enc = {"input_ids": torch.tensor([[2, 7, 9, 3]])}
        >>> info = explain_layers(model, enc)
        >>> info.nats_kept.shape  # sentences × layers (embedding output, 1, 2) × tokens
        torch.Size([1, 3, 4])
    """
    opts, state_std = _layer_options(options, settings)
    internal_batch_size = renamed(
        batch_size, internal_batch_size, old="batch_size", new="internal_batch_size",
        who="explain_layers",
    )  # fmt: skip
    config = opts.config or LAYERWISE
    if special_tokens not in ("keep", "exclude"):
        raise ValueError(f"special_tokens must be 'keep' or 'exclude', got {special_tokens!r}")
    blocks = transformer_blocks(model)
    chosen = chosen_layers(layers, len(blocks))
    ids, mask, side = unpack_encoding(encoding)
    special = _special_tokens(encoding, tokenizer, ids, special_tokens)
    state_std, given = _given_or_packaged(model, state_std)
    with evaluation_mode([model]):
        with torch.no_grad():
            # the embedding output (where the noise goes) comes with every pass
            clean = layer_states(model, blocks, sorted({0, *chosen}), ids, mask, side)
        x0 = clean[0]
        copies = _copies(chosen, mask, special, special_tokens, state_positions, ids, x0.shape[-1])
        inv, std_mask, normaliser = _layer_scales(
            chosen, state_std, given, clean, copies.counted, copies.layer
        )
        smax, source = _default_sigma_max(model, opts.sigma_max)
        estimate = estimate_sigma(
            _staircase_state(model, blocks, ids, mask, side, copies.sentence, copies.layer, inv),
            (x0[copies.sentence].detach(),),
            (copies.groups,),
            sigma_max=smax,
            rate=opts.rate,
            state_std=torch.ones(x0.shape[-1], dtype=x0.dtype, device=ids.device),
            output_mask=copies.output_mask(x0.dtype) * std_mask,
            config=config,
            generator=make_generator(opts.seed, ids.device),
            batch_size=internal_batch_size,
            show_progress=opts.show_progress,
            progress_desc="information per layer",
        )
    # one warning per call (the sentence × layer estimates are the examples here)
    warn_if_needed(
        estimate,
        config,
        masked=True,
        score="paper",
        who="explain_layers",
        internal_batch_size=internal_batch_size,
    )
    return _information(
        estimate, chosen, ids, tokenizer, mask, special, (smax, source), opts.rate, normaliser,
        x0.shape[-1],
    )  # fmt: skip


class _Copies(NamedTuple):
    """The estimator's examples: one copy of each sentence per explained layer."""

    sentence: Tensor  # (E,) the sentence of each copy
    layer: Tensor  # (E,) the layer it explains
    counted: Tensor  # (N, T) the positions whose states are compared
    groups: Tensor  # (E, T, D) one group per perturbed token, -1 for the rest

    def output_mask(self, dtype: torch.dtype) -> Tensor:
        """``(E, T, D)`` 1 at the counted positions of each copy's sentence."""
        dim = self.groups.shape[-1]
        return self.counted[self.sentence].unsqueeze(-1).to(dtype).expand(-1, -1, dim)


def _copies(
    chosen: Sequence[int],
    mask: Tensor,
    special: Tensor | None,
    special_tokens: str,
    state_positions: Tensor | None,
    ids: Tensor,
    dim: int,
) -> _Copies:
    """One copy of each sentence per layer (sentence-major), its groups and counted
    positions: real tokens, less the special ones for ``special_tokens="exclude"``."""
    (n_sent, n_tok), device = ids.shape, ids.device
    sentence = torch.arange(n_sent, device=device).repeat_interleave(len(chosen))
    layer = torch.tensor(chosen, device=device).repeat(n_sent)
    real = mask.bool()
    counted = real if state_positions is None else real & _positions(state_positions, ids)
    perturbed = real & ~special if special_tokens == "exclude" and special is not None else real
    positions = torch.arange(n_tok, device=device).expand(n_sent, n_tok)
    token_group = torch.where(perturbed, positions, torch.full_like(positions, -1))
    groups = token_group[sentence].unsqueeze(-1).expand(-1, -1, dim).contiguous()
    return _Copies(sentence, layer, counted, groups)


def _given_or_packaged(
    model: nn.Module, state_std: Mapping[int, Tensor] | None
) -> tuple[Mapping[int, Tensor] | None, str]:
    """σ_S as given, else the packaged σ_S of a known model (else None), and its label."""
    if state_std is None:
        packaged = packaged_state_std(model)
        if packaged is not None:
            return packaged.std, PACKAGED_LABEL
    return state_std, "state_std"


def _information(
    estimate: SigmaEstimate,
    chosen: list[int],
    ids: Tensor,
    tokenizer: Any,
    mask: Tensor,
    special: Tensor | None,
    sigma_max: tuple[float, str],
    rate: float,
    normaliser: Mapping[int, str],
    dim: int,
) -> LayerInformation:
    """The estimate on the ``sentences × layers × tokens`` grid, as a LayerInformation."""
    (n_sent, n_tok), n_lay = ids.shape, len(chosen)
    real = mask.bool()
    return LayerInformation(
        layers=chosen,
        tokens=_token_strings(ids, tokenizer),
        sigma=_grid(estimate.sigma, n_sent, n_lay, n_tok),
        entropy=_grid(estimate.entropy, n_sent, n_lay, n_tok),
        nats_kept=_grid(estimate.information, n_sent, n_lay, n_tok),
        std_error=_grid(estimate.std_error, n_sent, n_lay, n_tok),
        converged=estimate.converged.reshape(n_sent, n_lay).cpu(),
        mask=real.cpu(),
        special=(special if special is not None else torch.zeros_like(real)).cpu(),
        sigma_max=sigma_max[0],
        sigma_max_source=sigma_max[1],
        rate=float(rate),
        normaliser={str(k): v for k, v in normaliser.items()},
        dim=dim,
        evaluations=estimate.evaluations.reshape(n_sent, n_lay).cpu(),
    )


def _special_tokens(
    encoding: Mapping[str, Any], tokenizer: Any, ids: Tensor, special_tokens: str
) -> Tensor | None:
    """``(N, T)`` True at special tokens (from ``special_tokens_mask`` or the tokenizer),
    None where neither says, which ``special_tokens="exclude"`` cannot use."""
    special = _special(encoding, tokenizer, ids)
    if special_tokens == "exclude" and special is None:
        raise ValueError(
            "special_tokens='exclude' needs to know which tokens are special: pass "
            "tokenizer=..., or tokenize with return_special_tokens_mask=True"
        )
    return special


def _special(encoding: Mapping[str, Any], tokenizer: Any, ids: Tensor) -> Tensor | None:
    given = encoding.get("special_tokens_mask")
    if isinstance(given, Tensor):
        return given.bool()
    if tokenizer is not None:
        special_ids = torch.tensor(sorted(set(tokenizer.all_special_ids)), device=ids.device)
        return torch.isin(ids, special_ids)
    return None


def _positions(state_positions: Tensor, ids: Tensor) -> Tensor:
    """``state_positions`` checked: a bool ``(N, T)`` like ``input_ids``, one per sentence."""
    if state_positions.shape != ids.shape or state_positions.dtype != torch.bool:
        raise ValueError(
            f"state_positions must be a bool tensor shaped like input_ids {tuple(ids.shape)}, "
            f"got {state_positions.dtype} {tuple(state_positions.shape)}"
        )
    if not bool(state_positions.any(1).all()):
        raise ValueError("state_positions marks no position for some sentence; mark at least one")
    return state_positions.to(ids.device)


def _layer_options(
    options: EstimatorOptions | None, settings: Mapping[str, Any]
) -> tuple[EstimatorOptions, Mapping[int, Tensor] | None]:
    """The estimator's options for the layer-by-layer analysis, checked (σ_max a number,
    the paper's score), and σ_S, a ``{layer: σ_S}`` mapping or None."""
    opts = resolve_options(options, settings, "explain_layers")
    if opts.state_std is not None and not isinstance(opts.state_std, Mapping):
        raise TypeError(
            "explain_layers takes state_std as {layer: σ_S} (from layer_state_std), got a "
            f"{type(opts.state_std).__name__}"
        )
    if isinstance(opts.sigma_max, Tensor) and opts.sigma_max.numel() != 1:
        raise ValueError("explain_layers takes one sigma_max for all layers, a number")
    if opts.score not in (None, "paper"):
        raise ValueError(
            "explain_layers reports the paper's information (nats kept): score must be "
            f"'paper' or left out, got {opts.score!r}"
        )
    return opts, opts.state_std


def _layer_scales(
    chosen: Sequence[int],
    state_std: Mapping[int, Any] | None,
    given: str,
    clean: Mapping[int, Tensor],
    counted: Tensor,
    ex_layer: Tensor,
) -> tuple[Tensor, Tensor, dict[int, str]]:
    """σ_S of each layer folded into its state, Φ_l / σ_S,l: per example (sentence ×
    layer) the ``(E, 1, D)`` factor 1/σ_S (0 where σ_S is inf), the ``(E, 1, D)`` mask of
    elements counted in the loss (not the constant ones), and what normalised each layer
    (``given``, or the mean-square fallback, with one warning naming the layers)."""
    x0 = clean[0]
    dim, dtype, device = x0.shape[-1], x0.dtype, x0.device
    normaliser: dict[int, str] = {}
    inv = torch.zeros(len(ex_layer), 1, dim, dtype=dtype, device=device)
    keep = torch.ones(len(ex_layer), 1, dim, dtype=dtype, device=device)
    for k in chosen:
        rows = torch.nonzero(ex_layer == k).flatten()
        std = None if state_std is None else state_std.get(k)
        if std is not None:
            std = torch.as_tensor(std, dtype=dtype, device=device).reshape(-1)
            if std.numel() != dim:
                raise ValueError(
                    f"state_std[{k}] has {std.numel()} elements; layer {k}'s token "
                    f"states have {dim} (use layer_state_std on the same model)"
                )
            finite = torch.isfinite(std)
            inv[rows, 0] = torch.where(finite, 1.0 / std, torch.zeros_like(std))
            keep[rows, 0] = finite.to(dtype)
            normaliser[k] = given
        else:
            mean_sq = fallback_mean_square(clean[k], counted.unsqueeze(-1))
            inv[rows, 0] = mean_sq.rsqrt().unsqueeze(-1).expand(-1, dim).to(dtype)
            normaliser[k] = FALLBACK_LABEL
    missing = [k for k, v in normaliser.items() if v == FALLBACK_LABEL]
    if missing:
        warnings.warn(
            f"no state_std for layers {missing}: dividing by mean(Φ(x)²) of each sentence "
            "(the reference code's fallback). Each sentence and layer is then measured "
            "on its own scale, so nats kept are not comparable across layers, sentences "
            "or models (the depth profile and which words rank highest change). Pass "
            "state_std=layer_state_std(model, tokenizer(corpus, return_tensors='pt', "
            "padding=True)) with a few thousand sentences of your domain to put them on "
            "one scale",
            UserWarning,
            stacklevel=user_stacklevel(),
        )
    return inv, keep, normaliser


def _staircase_state(
    model: nn.Module,
    blocks: Sequence[nn.Module],
    ids: Tensor,
    mask: Tensor,
    side: Mapping[str, Tensor],
    ex_sent: Tensor,
    ex_layer: Tensor,
    inv: Tensor,
) -> StateFn:
    """The estimator's state function: each copy's noisy embedding output run up to its
    layer (one staircase of blocks for copies of several layers), scaled by 1/σ_S."""

    def state_fn(values: tuple[Tensor, ...], rows: Tensor) -> Tensor:
        noisy = values[0]
        lay = ex_layer[rows]
        out = torch.zeros_like(noisy)
        zero = lay == 0
        if bool(zero.any()):
            out = out.index_put((torch.nonzero(zero).flatten(),), noisy[zero])
        deep = torch.nonzero(~zero).flatten()
        if len(deep):
            sent = ex_sent[rows[deep]]
            sink: dict[int, Tensor] = {}
            part_side = {k: v[sent] for k, v in side.items()}
            with staircase(blocks, noisy[deep], lay[deep], sink):
                run_until_captured(lambda: call_model(model, ids[sent], mask[sent], part_side))
            for k, states in sink.items():
                where = deep[lay[deep] == k]
                out = out.index_put((where,), states.to(out.dtype))
        return out * inv[rows]

    return state_fn


def _default_sigma_max(model: nn.Module, sigma_max: float | Tensor | None) -> tuple[float, str]:
    """σ_max and where it came from: 10 × the std of the word embeddings, or given."""
    if sigma_max is not None:
        return float(sigma_max), "given"
    word = model.get_input_embeddings()  # type: ignore[operator]
    return embedding_sigma_max(word.weight), "word embeddings"


def _grid(t: Tensor, n_sent: int, n_lay: int, n_tok: int) -> Tensor:
    """Per-example values ``(sentences × layers, tokens')`` as ``(sentences, layers,
    tokens)`` on the CPU, NaN past each example's groups."""
    full = torch.full((n_sent * n_lay, n_tok), float("nan"), dtype=t.dtype, device=t.device)
    full[:, : t.shape[1]] = t
    return full.reshape(n_sent, n_lay, n_tok).cpu()


def _token_strings(ids: Tensor, tokenizer: Any) -> list[list[str]]:
    """Each sentence's tokens as the tokenizer writes them (else the ids as strings)."""
    rows = ids.cpu().tolist()
    if tokenizer is not None:
        return [list(tokenizer.convert_ids_to_tokens(row)) for row in rows]
    return [[str(i) for i in row] for row in rows]
