r"""σ_S of every layer over one corpus: the scale that puts layers and models side by side.

Under ``torchrun`` the corpus's forward passes are shared out over the processes and the
moments all-reduced; a corpus can stream in as batches; the result is cached on disk by
a hash of the weights, the layers and the corpus.
"""

from __future__ import annotations

import warnings
from collections.abc import Iterable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any, Literal

import torch
from torch import Tensor, nn
from torch.utils.data import DistributedSampler

from captum_perturb._utils.common import user_stacklevel
from captum_perturb._utils.distributed import (
    all_reduce_sum,
    all_succeeded,
    backend,
    initialised,
    is_shard,
    rank_and_world,
)
from captum_perturb._utils.fingerprint import cache_key
from captum_perturb._utils.io import atomic_write
from captum_perturb._utils.model_state import evaluation_mode
from captum_perturb.functional.moments import (
    state_moments,
    std_from_moments,
)
from captum_perturb.layers.blocks import transformer_blocks
from captum_perturb.layers.states import chosen_layers, layer_states, unpack_encoding

_Batch = tuple[Tensor, Tensor, dict[str, Tensor]]


_Moments = tuple[Tensor, Tensor, Tensor]


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


def _corpus_batches(
    corpus: Mapping[str, Any] | Iterable[Mapping[str, Any]], batch_size: int
) -> Iterator[_Batch]:
    """The forward passes over a corpus: ``(ids, mask, side inputs)``, trailing right
    padding trimmed; one padded encoding is cut by :func:`_batches`, an iterable of
    batches gives one pass per non-empty batch. The same sequence on every process."""
    if isinstance(corpus, Mapping):
        ids, mask, side = unpack_encoding(corpus)
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
        ids, mask, side = unpack_encoding(batch)
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
            for k, s in layer_states(model, blocks, chosen, ids, mask, side).items():
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
    chosen = chosen_layers(layers, len(transformer_blocks(model)))
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
    ids, mask, side = unpack_encoding(corpus)
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
        warnings.warn(f"layer_state_std: {w.message}", UserWarning, stacklevel=user_stacklevel())
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
    chosen = chosen_layers(layers, len(transformer_blocks(model)))
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
