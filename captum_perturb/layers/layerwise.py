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
from collections.abc import Iterable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any, Literal

import torch
from torch import Tensor, nn
from torch.utils.data import DistributedSampler

from captum_perturb._utils.common import make_generator
from captum_perturb._utils.distributed import (
    all_reduce_sum,
    all_succeeded,
    backend,
    initialised,
    is_shard,
    rank_and_world,
)
from captum_perturb._utils.fingerprint import cache_key
from captum_perturb._utils.hf import call_without_cache
from captum_perturb._utils.hooks import StopForwardError, first_tensor, run_until_captured
from captum_perturb._utils.io import atomic_write
from captum_perturb._utils.model_state import evaluation_mode
from captum_perturb.config import LAYERWISE, EstimatorConfig
from captum_perturb.functional.diagnostics import warn_if_needed
from captum_perturb.functional.estimate import StateFn, estimate_sigma
from captum_perturb.functional.moments import (
    FALLBACK_LABEL,
    embedding_sigma_max,
    fallback_mean_square,
    state_moments,
    std_from_moments,
)
from captum_perturb.layers.blocks import staircase, transformer_blocks
from captum_perturb.layers.information import LayerInformation
from captum_perturb.layers.packaged_std import LABEL as PACKAGED_LABEL
from captum_perturb.layers.packaged_std import packaged_state_std

_SIDE_INPUTS = ("token_type_ids", "position_ids")
"""``LayerInformation.normaliser`` of a layer normalised by the reference fallback."""


def _layers(layers: Sequence[int] | None, n_blocks: int) -> list[int]:
    if layers is None:
        return list(range(n_blocks + 1))
    out = []
    for k in layers:
        if isinstance(k, bool) or not isinstance(k, int):
            raise TypeError(f"layers must be ints (0 = embedding output), got {k!r}")
        j = k + n_blocks + 1 if k < 0 else k
        if not 0 <= j <= n_blocks:
            raise ValueError(
                f"layer {k} does not exist: this model has layers 0 (embedding output) to "
                f"{n_blocks}; negative numbers count from the last"
            )
        out.append(j)
    if len(set(out)) != len(out):
        raise ValueError(f"layers {list(layers)} name a layer twice")
    return sorted(out)


def _unpack(encoding: Mapping[str, Any]) -> tuple[Tensor, Tensor, dict[str, Tensor]]:
    if "input_ids" not in encoding:
        raise ValueError(
            "encoding needs 'input_ids': pass the tokenizer's output, e.g. "
            "tokenizer(sentences, return_tensors='pt', padding=True)"
        )
    ids = encoding["input_ids"]
    if not isinstance(ids, Tensor) or ids.dim() != 2:
        raise ValueError("input_ids must be a (sentences, tokens) tensor: use return_tensors='pt'")
    mask = encoding.get("attention_mask")
    mask = torch.ones_like(ids) if mask is None else mask
    side = {k: encoding[k] for k in _SIDE_INPUTS if isinstance(encoding.get(k), Tensor)}
    return ids, mask, side


def _special(encoding: Mapping[str, Any], tokenizer: Any, ids: Tensor) -> Tensor | None:
    given = encoding.get("special_tokens_mask")
    if isinstance(given, Tensor):
        return given.bool()
    if tokenizer is not None:
        special_ids = torch.tensor(sorted(set(tokenizer.all_special_ids)), device=ids.device)
        return torch.isin(ids, special_ids)
    return None


def _call(model: nn.Module, ids: Tensor, mask: Tensor, side: Mapping[str, Tensor]) -> Any:
    return call_without_cache(model, input_ids=ids, attention_mask=mask, **side)


def _layer_states(
    model: nn.Module,
    blocks: Sequence[nn.Module],
    layers: Sequence[int],
    ids: Tensor,
    mask: Tensor,
    side: Mapping[str, Tensor],
) -> dict[int, Tensor]:
    """Clean states of the requested layers (0 = the first block's input), one pass."""
    deepest = max(layers)
    states: dict[int, Tensor] = {}
    handles = []

    def grab_input(module: nn.Module, args: Any, kwargs: Any) -> None:
        key = "hidden_states" if "hidden_states" in kwargs else next(iter(kwargs), None)
        values = args if args else (kwargs[key],) if key is not None else ()
        states[0] = first_tensor(values, "block 1's input")
        if deepest == 0:
            raise StopForwardError

    def grab(k: int) -> Any:
        def hook(module: nn.Module, args: Any, out: Any) -> None:
            states[k] = first_tensor(out, f"the output of block {k}")
            if k == deepest:
                raise StopForwardError

        return hook

    handles.append(blocks[0].register_forward_pre_hook(grab_input, with_kwargs=True))
    for k in range(1, deepest + 1):
        handles.append(blocks[k - 1].register_forward_hook(grab(k)))
    try:
        run_until_captured(lambda: _call(model, ids, mask, side))
    finally:
        for h in handles:
            h.remove()
    return {k: states[k] for k in layers}


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


def _right_padded(mask: Tensor, lengths: Tensor) -> bool:
    """Whether every row's real tokens come first (padding only at the end)."""
    positions = torch.arange(mask.shape[1], device=mask.device)
    return bool((mask.bool() == (positions < lengths.unsqueeze(1))).all())


def _batches(mask: Tensor, batch_size: int) -> list[tuple[Tensor, int]]:
    """Sentences grouped by length: ``(rows, width)`` per batch, ``width`` = the batch's
    longest sentence when padding is on the right (all of ``T`` otherwise).

    Trimming a batch's trailing padding changes no real token's state (padding is masked
    out of attention) and saves most of the cost of a corpus padded to its longest
    sentence; the moments are sums, so the order of the sentences does not matter
    (beyond float64 summation order).
    """
    lengths = mask.sum(1)
    width = mask.shape[1]
    right_padded = _right_padded(mask, lengths)
    order = torch.argsort(lengths, stable=True)
    out = []
    for start in range(0, len(order), batch_size):
        rows = order[start : start + batch_size]
        out.append((rows, int(lengths[rows].max()) if right_padded else width))
    return out


_Batch = tuple[Tensor, Tensor, dict[str, Tensor]]
_Moments = tuple[Tensor, Tensor, Tensor]


def _corpus_batches(
    corpus: Mapping[str, Any] | Iterable[Mapping[str, Any]], batch_size: int
) -> Iterator[_Batch]:
    """The forward passes over a corpus: ``(ids, mask, side inputs)``, trailing right
    padding trimmed; one padded encoding is cut by :func:`_batches`, an iterable of
    batches gives one pass per non-empty batch. The same sequence on every process."""
    if isinstance(corpus, Mapping):
        ids, mask, side = _unpack(corpus)
        for rows, width in _batches(mask, batch_size):
            yield (
                ids[rows, :width],
                mask[rows, :width],
                {k: v[rows, :width] for k, v in side.items()},
            )
        return
    if isinstance(corpus, (str, bytes, Tensor)) or not isinstance(corpus, Iterable):
        raise TypeError(
            "corpus must be the tokenizer's output (a mapping with 'input_ids') or an "
            f"iterable of such batches (e.g. a DataLoader), got {type(corpus).__name__}"
        )
    for batch in corpus:
        if not isinstance(batch, Mapping):
            raise TypeError(
                f"each batch of the corpus must be a mapping with 'input_ids' (a dict, "
                f"the tokenizer's output), got {type(batch).__name__}"
            )
        ids, mask, side = _unpack(batch)
        if ids.shape[0] == 0:
            continue
        lengths = mask.sum(1)
        width = int(lengths.max()) if _right_padded(mask, lengths) else mask.shape[1]
        yield ids[:, :width], mask[:, :width], {k: v[:, :width] for k, v in side.items()}


def _sharding(distributed: bool | None, corpus: Any) -> tuple[int, int]:
    """``(rank, world)`` to shard the corpus's batches over; ``(0, 1)``: all of them here."""
    if distributed is False:
        return 0, 1
    if distributed and not initialised():
        raise ValueError(
            "distributed=True needs an initialised torch.distributed process group (run "
            "under torchrun and call torch.distributed.init_process_group first)"
        )
    rank, world = rank_and_world()
    if world > 1 and isinstance(getattr(corpus, "sampler", None), DistributedSampler):
        raise ValueError(
            "the corpus's DataLoader already shards it with a DistributedSampler; pass a "
            "loader over the whole corpus: its batches are shared out over the processes "
            "here (batch k to process k % world size)"
        )
    return rank, world


def _input_device(model: nn.Module) -> torch.device | None:
    """Where the model takes its input ids (its input embeddings), if it says."""
    try:
        return model.get_input_embeddings().weight.device  # type: ignore[operator]
    except (AttributeError, NotImplementedError):
        return None


def _shard_moments(
    model: nn.Module,
    chosen: Sequence[int],
    batches: Iterable[_Batch],
    token_reduction: str,
    rank: int,
    world: int,
) -> dict[int, _Moments]:
    """The moments of this process's batches (batch ``k`` goes to rank ``k % world``)."""
    blocks = transformer_blocks(model)
    device = _input_device(model)
    moments: dict[int, _Moments] = {}
    with evaluation_mode([model]), torch.no_grad():
        for index, (ids, mask, side) in enumerate(batches):
            if not is_shard(index, rank, world):
                continue
            if device is not None:
                ids, mask = ids.to(device), mask.to(device)
                side = {k: v.to(device) for k, v in side.items()}
            for k, s in _layer_states(model, blocks, chosen, ids, mask, side).items():
                got = state_moments(s, mask, token_reduction)
                old = moments.get(k)
                moments[k] = (
                    got if old is None else (old[0] + got[0], old[1] + got[1], old[2] + got[2])
                )
    return moments


def _collective_device() -> torch.device:
    """Where the group's collectives take tensors: the process's GPU for NCCL, else CPU."""
    if backend() == "nccl":
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")


def _agreed_sizes(
    moments: dict[int, _Moments], chosen: Sequence[int], via: torch.device
) -> list[int]:
    """Elements per layer's moments, from the processes that ran a batch (one collective:
    a process without a batch cannot know them, yet must add zeros of that size)."""
    mine = [moments[k][0].numel() if moments else 0 for k in chosen]
    local = torch.tensor([float(bool(moments)), *mine], dtype=torch.float64, device=via)
    holders, *sums = (int(v) for v in all_reduce_sum(local).tolist())
    if holders == 0:
        raise ValueError("the corpus has no sentences (on any process)")
    sizes = [s // holders for s in sums]
    if [n * holders for n in sizes] != sums or (moments and mine != sizes):
        raise RuntimeError("the processes' layer states differ in size: the same model on each?")
    return sizes


def _all_reduce_moments(
    moments: dict[int, _Moments], chosen: Sequence[int], home: torch.device | None
) -> dict[int, _Moments]:
    """Sum every process's moments in one all-reduce (a process without batches adds
    zeros); the sums go back to the device of the local moments (``home`` if none)."""
    via = _collective_device()
    sizes = _agreed_sizes(moments, chosen, via)
    if moments:
        flat = torch.cat([m.reshape(-1).to(via) for k in chosen for m in moments[k]])
    else:
        flat = torch.zeros(3 * sum(sizes), dtype=torch.float64, device=via)
    total = all_reduce_sum(flat)
    out: dict[int, _Moments] = {}
    for k, n, part in zip(chosen, sizes, total.split([3 * n for n in sizes]), strict=True):
        shape, to = (moments[k][0].shape, moments[k][0].device) if moments else ((n,), home)
        s, sq, c = (p.reshape(shape).to(to) for p in part.split(n))
        out[k] = (s, sq, c)
    return out


def layer_moments(
    model: nn.Module,
    corpus: Mapping[str, Any] | Iterable[Mapping[str, Any]],
    layers: Sequence[int] | None = None,
    *,
    token_reduction: Literal["mean", "pool"] = "mean",
    batch_size: int = 32,
    distributed: bool | None = None,
) -> dict[int, _Moments]:
    r"""Float64 sums, sums of squares and counts of every layer's (reduced) token states
    over a corpus (:func:`~captum_perturb.functional.moments.state_moments`), for
    :func:`layer_state_std` and for the corpus mean that the shipped σ_S files record.

    For the (reduced) states :math:`s_n` of layer :math:`l`, element-wise:
    :math:`S_1 = \sum_n s_n`, :math:`S_2 = \sum_n s_n^2`, :math:`N = \sum_n 1`. Sums add
    up over any partition of the corpus, so under ``torch.distributed`` process :math:`r`
    of :math:`W` runs forward passes :math:`r, r + W, r + 2W, \dots` only, and the
    float64 :math:`(S_1, S_2, N)` are all-reduced: every process returns the whole
    corpus's moments, equal to one process's up to float64 summation order.

    Args:
        model: as for :func:`layer_state_std`.
        corpus: as for :func:`layer_state_std`.
        layers: which layers (default: all, with the embedding output).
        token_reduction: ``"mean"`` or ``"pool"``.
        batch_size: sentences per forward pass when ``corpus`` is one encoding
            (sentences are grouped by length); an iterable's batches are used as given.
        distributed: as for :func:`layer_state_std`.

    Returns:
        ``{layer: (sum, sum of squares, count)}``, each ``(D,)`` float64.

    Raises:
        ValueError: ``batch_size`` < 1, an empty corpus, ``distributed=True`` without a
            process group, a DataLoader already sharded by a ``DistributedSampler``.
    """
    if batch_size < 1:
        raise ValueError(f"batch_size must be at least 1, got {batch_size}")
    chosen = _layers(layers, len(transformer_blocks(model)))
    rank, world = _sharding(distributed, corpus)
    batches = _corpus_batches(corpus, batch_size)
    if world == 1:
        moments = _shard_moments(model, chosen, batches, token_reduction, rank, world)
    else:  # a process that fails makes every process raise, none waits for it
        failure, moments = None, {}
        try:
            moments = _shard_moments(model, chosen, batches, token_reduction, rank, world)
        except Exception as err:
            failure = err
        all_succeeded(failure)
        return _all_reduce_moments(moments, chosen, _input_device(model))
    if not moments:
        raise ValueError("the corpus has no sentences")
    return moments


def _cache_path(
    model: nn.Module,
    corpus: Any,
    chosen: Sequence[int],
    token_reduction: str,
    cache_dir: str | Path,
) -> Path:
    """The cache file: a key hashed from the weights, the whole encoding and the options."""
    if not isinstance(corpus, Mapping):
        raise ValueError(
            "cache_dir needs the corpus as one encoding (its key hashes all of it): pass the "
            "tokenizer's output, or cache the σ_S of a streamed corpus yourself"
        )
    ids, mask, side = _unpack(corpus)
    tensors = {"input_ids": ids, "attention_mask": mask, **side}
    key = cache_key(model, tensors, f"{list(chosen)}:{token_reduction}")
    return Path(cache_dir) / f"layer-std-{key}.pt"


def _cached_everywhere(path: Path, world: int) -> bool:
    """Whether every process finds the cache file (all load it, or none does and all
    join the computation's collectives)."""
    found = path.exists()
    if world > 1:
        flag = torch.tensor([float(found)], dtype=torch.float64, device=_collective_device())
        found = int(all_reduce_sum(flag)[0]) == world
    return found


def _save_atomically(obj: Any, path: Path) -> None:
    """``torch.save`` to a temporary file beside ``path``, then rename it over ``path``:
    a reader sees the old file or the whole new one, never a part."""
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write(path, lambda f: torch.save(obj, f))


def _std_per_layer(moments: Mapping[int, _Moments], chosen: Sequence[int]) -> dict[int, Tensor]:
    """Float32 σ_S per layer; the constant-element warnings name this function's caller."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        out = {k: std_from_moments(*moments[k]).float() for k in chosen}
    for w in caught:
        warnings.warn(f"layer_state_std: {w.message}", UserWarning, stacklevel=3)
    return out


def layer_state_std(
    model: nn.Module,
    corpus: Mapping[str, Any] | Iterable[Mapping[str, Any]],
    layers: Sequence[int] | None = None,
    *,
    token_reduction: Literal["mean", "pool"] = "mean",
    batch_size: int = 32,
    cache_dir: str | Path | None = None,
    distributed: bool | None = None,
) -> dict[int, Tensor]:
    r"""σ_S of every layer's token states over a corpus, in one pass per batch.

    The same estimate as :func:`~captum_perturb.estimate_state_std` (padding skipped;
    ``"mean"``: average each sentence's states over its tokens, then the std across
    sentences — the reference code's choice), for layers ``0`` (embedding output) to
    ``L`` at once: from the moments of :func:`layer_moments`,
    :math:`\sigma_S = \sqrt{\max(0,\, S_2/N - (S_1/N)^2)}` element-wise. Constant
    elements (MiniLM's last layer has three) get ``inf``. Under ``torch.distributed``
    the forward passes are shared out over the processes and the moments all-reduced
    (:func:`layer_moments`), so every process returns the same σ_S.

    Args:
        model: a Hugging Face encoder or decoder (or a model holding one); each batch is
            moved to the device of its input embeddings.
        corpus: the tokenizer's output for the corpus (``input_ids``, ``attention_mask``,
            optionally ``token_type_ids``), padded; or an iterable of such batches (a
            ``DataLoader`` over the whole corpus yielding dicts), one forward pass each,
            streamed in bounded memory.
        layers: which layers (default: all, with the embedding output).
        token_reduction: ``"mean"`` or ``"pool"`` (see ``estimate_state_std``).
        batch_size: sentences per forward pass (one encoding only).
        cache_dir: keep the result in ``cache_dir`` under a key hashed from the model's
            weights, the corpus, the layers and ``token_reduction``; a later call with the
            same model and corpus loads it instead of recomputing. The file is written
            atomically, by process 0 only when sharded. One encoding only.
        distributed: ``None``: shard the forward passes when a process group of more than
            one process is initialised (batch ``k`` to rank ``k % world size``); ``True``:
            the same, and a group is required; ``False``: every process computes the
            whole corpus alone (no collective).

    Returns:
        ``{layer: σ_S}``, each ``(D,)`` (``(D,)`` for ``"pool"`` too).

    Raises:
        ValueError: as :func:`layer_moments`; ``cache_dir`` with an iterable corpus.
    """
    chosen = _layers(layers, len(transformer_blocks(model)))
    rank, world = _sharding(distributed, corpus)
    path = None
    if cache_dir is not None:
        path = _cache_path(model, corpus, chosen, token_reduction, cache_dir)
        if _cached_everywhere(path, world):
            cached: dict[int, Tensor] = torch.load(path, weights_only=True)
            return cached
    moments = layer_moments(
        model,
        corpus,
        chosen,
        token_reduction=token_reduction,
        batch_size=batch_size,
        distributed=distributed,
    )
    out = _std_per_layer(moments, chosen)
    if path is not None and rank == 0:
        _save_atomically(out, path)
    return out


def explain_layers(
    model: nn.Module,
    encoding: Mapping[str, Any],
    layers: Sequence[int] | None = None,
    *,
    state_std: Mapping[int, Tensor] | None = None,
    special_tokens: Literal["keep", "exclude"] = "keep",
    tokenizer: Any = None,
    state_positions: Tensor | None = None,
    rate: float = 0.1,
    sigma_max: float | None = None,
    config: EstimatorConfig | None = None,
    seed: int | torch.Generator | None = 0,
    batch_size: int | None = None,
    show_progress: bool = False,
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
        state_std: ``{layer: σ_S}`` from :func:`layer_state_std` (recommended: it puts
            all layers on one scale). ``None``: the σ_S that ships with the package when
            the model's weights are known (the packaged all-MiniLM-L6-v2:
            :mod:`captum_perturb.layers.packaged_std`, SST-2 train), else — and for layers
            missing from a given ``state_std`` — the reference code's fallback
            :math:`\sigma_S^2 = \text{mean}(\Phi_l(x)^2)` per sentence, with a warning
            (each sentence and layer is then on its own scale); ``result.normaliser``
            says which layer used which (``"state_std"``, ``"packaged state_std"``,
            ``"mean square fallback"``).
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
        rate: weight of the entropy term (the reference code's ``rate``).
        sigma_max: σ bound; default 10 × the std of the word-embedding matrix.
        config: estimator settings (default :data:`~captum_perturb.LAYERWISE`, the same as
            :data:`~captum_perturb.DEFAULT`; ``result.converged`` says which estimates met
            the tolerance).
        seed: seeds all noise (int or generator); ``None`` uses torch's global RNG.
        batch_size: perturbed copies per forward pass (speed and memory; the same noise for
            any value, see ``SigmaEstimate.batch_dependent``).
        show_progress: a progress bar over the estimator's iterations.

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
    if special_tokens not in ("keep", "exclude"):
        raise ValueError(f"special_tokens must be 'keep' or 'exclude', got {special_tokens!r}")
    blocks = transformer_blocks(model)
    chosen = _layers(layers, len(blocks))
    ids, mask, side = _unpack(encoding)
    special = _special(encoding, tokenizer, ids)
    if special_tokens == "exclude" and special is None:
        raise ValueError(
            "special_tokens='exclude' needs to know which tokens are special: pass "
            "tokenizer=..., or tokenize with return_special_tokens_mask=True"
        )
    n_sent, n_tok = ids.shape
    n_lay = len(chosen)
    given = "state_std"
    if state_std is None:
        packaged = packaged_state_std(model)
        if packaged is not None:
            state_std, given = packaged.std, PACKAGED_LABEL
    device = ids.device
    with evaluation_mode([model]):
        with torch.no_grad():
            # the embedding output (where the noise goes) comes with every pass
            clean = _layer_states(model, blocks, sorted({0, *chosen}), ids, mask, side)
        x0 = clean[0]
        dim, dtype = x0.shape[-1], x0.dtype
        # one "example" of the estimator per sentence × layer
        ex_sent = torch.arange(n_sent, device=device).repeat_interleave(n_lay)
        ex_layer = torch.tensor(chosen, device=device).repeat(n_sent)
        real = mask.bool()
        counted = real if state_positions is None else real & _positions(state_positions, ids)
        perturbed = real & ~special if special_tokens == "exclude" and special is not None else real
        positions = torch.arange(n_tok, device=device).expand(n_sent, n_tok)
        token_group = torch.where(perturbed, positions, torch.full_like(positions, -1))
        groups = token_group[ex_sent].unsqueeze(-1).expand(-1, -1, dim).contiguous()
        inv, std_mask, normaliser = _layer_scales(
            chosen, state_std, given, clean, counted, ex_layer
        )
        out_mask = counted[ex_sent].unsqueeze(-1).to(dtype).expand(-1, -1, dim) * std_mask
        state_fn = _staircase_state(model, blocks, ids, mask, side, ex_sent, ex_layer, inv)
        smax, source = _default_sigma_max(model, sigma_max)
        estimate = estimate_sigma(
            state_fn,
            (x0[ex_sent].detach(),),
            (groups,),
            sigma_max=smax,
            rate=rate,
            state_std=torch.ones(dim, dtype=dtype, device=device),
            output_mask=out_mask,
            config=config or LAYERWISE,
            generator=make_generator(seed, device),
            batch_size=batch_size,
            show_progress=show_progress,
            progress_desc="information per layer",
        )
    # one warning per call (the sentence × layer estimates are the examples here)
    warn_if_needed(
        estimate,
        config or LAYERWISE,
        masked=True,
        score="paper",
        who="explain_layers",
        stacklevel=2,
        internal_batch_size=batch_size,
    )
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
        sigma_max=smax,
        sigma_max_source=source,
        rate=float(rate),
        normaliser={str(k): v for k, v in normaliser.items()},
        dim=dim,
        evaluations=estimate.evaluations.reshape(n_sent, n_lay).cpu(),
    )


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
            stacklevel=3,
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
                run_until_captured(lambda: _call(model, ids[sent], mask[sent], part_side))
            for k, states in sink.items():
                where = deep[lay[deep] == k]
                out = out.index_put((where,), states.to(out.dtype))
        return out * inv[rows]

    return state_fn


def _default_sigma_max(model: nn.Module, sigma_max: float | None) -> tuple[float, str]:
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
