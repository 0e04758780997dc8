r"""Explain a whole corpus: streamed to disk, resumable, sharded over ``torchrun`` processes.

:func:`explain_corpus` runs :func:`~captum_perturb.explain_layers` or one of the Captum
classes over every batch of a :class:`~torch.utils.data.DataLoader` (or any iterable of
tokenised batches), writes each batch's tidy rows as soon as they exist, and merges them
into one Parquet table. Memory stays that of one batch whatever the corpus size.

**Same numbers however it is run.** Batch :math:`b` is always explained with seed
``seed + b``, whichever process takes it and whether or not the run was interrupted, so
the merged table of ``N`` processes equals that of one process (up to float reduction
order inside the model, which the same batch on the same hardware repeats exactly). The
unit of work is the batch, not the example, because the estimator's result for an
example depends on the batch it is explained in (the padded width; which examples keep
iterating together).

**Sharding.** Under ``torch.distributed`` (e.g. launched by ``torchrun``) process ``r`` of
``N`` explains batches ``r, r+N, r+2N, …`` (the convention of
:class:`~torch.utils.data.DistributedSampler`, without its padding), writes its own parts,
and process 0 merges after a barrier. ``out_dir`` must be on a file system every process
sees (on several machines: a shared one).

**Resume.** A restarted run skips every batch that has a whole part on disk; a corrupt or
partial part is detected (Parquet footer and page checksums, the part's own record),
deleted with a warning and redone, never merged. A folder written with other settings is
refused.
"""

from __future__ import annotations

import hashlib
import json
import math
import warnings
from collections import Counter
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass, fields, is_dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn
from torch.utils.data import DataLoader, DistributedSampler, IterableDataset, RandomSampler

from captum_perturb._utils.common import user_stacklevel
from captum_perturb._utils.distributed import (
    all_succeeded,
    is_shard,
    on_first,
    rank_and_world,
    same_everywhere,
)
from captum_perturb._utils.fingerprint import tensor_bytes, weights_hash
from captum_perturb._utils.io import parquet
from captum_perturb._utils.model_state import modules_of
from captum_perturb.attr.layer_perturbation_entropy import LayerPerturbationEntropyAttribution
from captum_perturb.attr.perturbation_entropy import PerturbationEntropyAttribution
from captum_perturb.attr.result import PerturbationEntropyResult
from captum_perturb.corpus.parts import PartStore
from captum_perturb.functional.diagnostics import score_of
from captum_perturb.functional.problem import AT_BOUND
from captum_perturb.layers.explain import explain_layers
from captum_perturb.layers.information import LayerInformation
from captum_perturb.options import SETTINGS, EstimatorOptions, resolve_options

#: columns of the rows (Parquet types) and what they hold
COLUMNS: dict[str, str] = {
    "example": "int64: the example's id (the batch's `id_key` field, else its index)",
    "position": "int32: token position (Captum classes with a custom mask: the feature id)",
    "token": "string: the token (null without tokenizer or for non-token features)",
    "special": "bool: a special token ([CLS], [SEP], …)",
    "layer": "int32: explain_layers' layer (0 = embedding output); null for Captum classes",
    "sigma": "float64: the learned σ (NaN where the token was not perturbed)",
    "score": "float64: the attribution in nats per dimension (explain_layers: log(σ_max/σ))",
    "nats": "float64: nats of the token the state keeps, dimensions × score",
    "entropy": "float64: entropy of the token's noise in nats",
    "std_error": "float64: standard error of the score",
    "saturated": "bool: σ sits at the bound σ_max",
    "converged": "bool: the estimate of this example (and layer) met its tolerance",
    "evaluations": "int64: copies of the example pushed through the model for it",
}


def _schema() -> Any:
    import pyarrow as pa

    types = {
        "example": pa.int64(),
        "position": pa.int32(),
        "token": pa.string(),
        "special": pa.bool_(),
        "layer": pa.int32(),
        "sigma": pa.float64(),
        "score": pa.float64(),
        "nats": pa.float64(),
        "entropy": pa.float64(),
        "std_error": pa.float64(),
        "saturated": pa.bool_(),
        "converged": pa.bool_(),
        "evaluations": pa.int64(),
    }
    return pa.schema([pa.field(k, types[k]) for k in COLUMNS])


# ------------------------------------------------------------------------------- batches
@dataclass
class _Batch:
    index: int
    ids: list[int]
    data: Mapping[str, Any]
    source: str  # what the batch is made of: its dataset indices or its token ids, hashed


def _digest(kind: str, values: Any) -> str:
    h = hashlib.sha256(kind.encode())
    h.update(tensor_bytes(torch.as_tensor(values).cpu()) if len(values) else b"")
    return f"{kind} {h.hexdigest()[:20]}"


def _check_source(index: int, source: str | None, done: Mapping[int, Mapping[str, Any]]) -> None:
    if source is None or done[index].get("source") != source:
        raise ValueError(
            f"batch {index} on disk was made from other examples than this corpus's batch "
            f"{index} (the corpus or its batching changed): explain into another folder, or "
            "delete this one to start over"
        )


class _Plan:
    """The batches this process explains, in order, and (once iterated) how many there are."""

    def __init__(self, batches: Iterable[Any], rank: int, world: int, id_key: str) -> None:
        self.source, self.rank, self.world, self.id_key = batches, rank, world, id_key
        self.indices: list[list[int]] | None = None
        self.total: int | None = None
        if isinstance(batches, DataLoader):
            self._check_loader(batches)
            if batches.batch_sampler is not None and not isinstance(
                batches.dataset, IterableDataset
            ):
                self.indices = [list(b) for b in batches.batch_sampler]
                self.total = len(self.indices)

    @staticmethod
    def _check_loader(loader: DataLoader) -> None:
        if isinstance(loader.sampler, DistributedSampler):
            raise ValueError(
                "the DataLoader already uses a DistributedSampler: pass the whole corpus's "
                "loader; explain_corpus shards whole batches over the processes itself, so "
                "that every batch is explained as in a one-process run"
            )
        if isinstance(loader.sampler, RandomSampler):
            raise ValueError(
                "the DataLoader shuffles (shuffle=True): every run and every process must see "
                "the same batches (to resume, and to shard); build it with shuffle=False"
            )

    def fingerprint(self) -> str:
        """What the batches are made of, when known before loading them (a sampler's
        index lists): every process must see the same batches."""
        if self.indices is None:
            return "an iterable"
        return _digest("plan", [i for b in self.indices for i in (*b, -1)])

    def mine(self, index: int) -> bool:
        return is_shard(index, self.rank, self.world)

    def todo(self, skip: Mapping[int, Any]) -> int | None:
        """How many batches this process will explain, when the corpus's length is known."""
        total = self.total
        if total is None:
            try:
                total = len(self.source)  # type: ignore[arg-type]
            except TypeError:  # an iterable (dataset) without a length
                return None
        return sum(1 for b in range(total) if self.mine(b) and b not in skip)

    def batches(self, skip: Mapping[int, Mapping[str, Any]]) -> Iterator[_Batch]:
        if self.indices is not None:
            yield from self._from_sampler(skip)
        else:
            yield from self._from_iterable(skip)

    def _from_sampler(self, skip: Mapping[int, Mapping[str, Any]]) -> Iterator[_Batch]:
        """Load only this process's batches: the loader's own dataset, collate function and
        workers, with a batch sampler restricted to them."""
        assert self.indices is not None
        loader = self.source
        assert isinstance(loader, DataLoader)
        sources = [_digest("indices", b) for b in self.indices]
        for b in skip:  # a part beyond the corpus's end: the corpus changed
            _check_source(b, sources[b] if b < len(sources) else None, skip)
        todo = [b for b in range(len(self.indices)) if self.mine(b) and b not in skip]
        mine = DataLoader(
            loader.dataset,
            batch_sampler=[self.indices[b] for b in todo],
            collate_fn=loader.collate_fn,
            num_workers=loader.num_workers,
            pin_memory=loader.pin_memory,
            timeout=loader.timeout,
            worker_init_fn=loader.worker_init_fn,
            multiprocessing_context=loader.multiprocessing_context,
        )
        for b, data in zip(todo, mine, strict=True):
            yield _Batch(b, _ids(data, self.id_key, self.indices[b]), data, sources[b])

    def _from_iterable(self, skip: Mapping[int, Mapping[str, Any]]) -> Iterator[_Batch]:
        offset = 0
        b = -1
        for b, data in enumerate(self.source):
            if not isinstance(data, Mapping):
                raise TypeError(
                    f"batch {b} is a {type(data).__name__}: explain_corpus needs mappings "
                    "like the tokenizer's output (input_ids, attention_mask, …)"
                )
            n = _batch_size(data)
            if not self.mine(b):
                pass
            elif b in skip:
                _check_source(b, _digest("input_ids", data["input_ids"]), skip)
            else:
                ids = _ids(data, self.id_key, list(range(offset, offset + n)))
                yield _Batch(b, ids, data, _digest("input_ids", data["input_ids"]))
            offset += n
        self.total = b + 1


def _batch_size(data: Mapping[str, Any]) -> int:
    ids = data.get("input_ids")
    if not isinstance(ids, Tensor) or ids.dim() != 2:
        raise ValueError(
            "every batch needs 'input_ids' as a (batch, tokens) tensor: tokenize with "
            "return_tensors='pt' and padding=True (or a DataCollatorWithPadding)"
        )
    return int(ids.shape[0])


def _ids(data: Mapping[str, Any], key: str, default: list[int]) -> list[int]:
    given = data.get(key)
    if given is None:
        return default
    out = [int(i) for i in (given.tolist() if isinstance(given, Tensor) else given)]
    if len(out) != _batch_size(data):
        raise ValueError(f"the batch's {key!r} has {len(out)} ids for {_batch_size(data)} rows")
    if len(set(out)) != len(out):
        raise ValueError(
            f"the batch's {key!r} field names an example twice ({out}): give every example "
            f"its own id, or pass another id_key= (without that field, examples are numbered)"
        )
    return out


def _to_device(data: Mapping[str, Any], device: torch.device) -> dict[str, Any]:
    return {k: v.to(device) if isinstance(v, Tensor) else v for k, v in data.items()}


# ---------------------------------------------------------------------------------- rows
def _layer_rows(info: LayerInformation, ids: list[int]) -> dict[str, Any]:
    """Rows of :func:`explain_layers`' result: example × layer × real position."""
    n, n_lay, t = info.sigma.shape
    real = np.broadcast_to(info.mask.numpy()[:, None, :], (n, n_lay, t))
    s, j, p = np.nonzero(real)
    sigma = info.sigma.double().numpy()[s, j, p]
    nats = info.nats_kept.double().numpy()[s, j, p]
    evaluations = (
        info.evaluations.numpy()[s, j]
        if info.evaluations is not None
        else np.full(len(s), -1, dtype=np.int64)
    )
    return {
        "example": np.asarray(ids, dtype=np.int64)[s],
        "position": p.astype(np.int32),
        "token": [info.tokens[a][b] for a, b in zip(s.tolist(), p.tolist(), strict=True)],
        "special": info.special.numpy()[s, p],
        "layer": np.asarray(info.layers, dtype=np.int32)[j],
        "sigma": sigma,
        "score": nats / info.dim,
        "nats": nats,
        "entropy": info.entropy.double().numpy()[s, j, p],
        "std_error": info.std_error.double().numpy()[s, j, p],
        "saturated": sigma >= info.sigma_max * math.exp(-AT_BOUND),
        "converged": info.converged.numpy()[s, j],
        "evaluations": evaluations.astype(np.int64),
    }


def _attribution_rows(
    result: PerturbationEntropyResult,
    ids: list[int],
    data: Mapping[str, Any],
    tokenizer: Any,
    by_token: bool,
) -> dict[str, Any]:
    """Rows of a Captum class's result: example × feature group."""
    est = result.estimate
    present = (est.group_size > 0).cpu()
    s, g = (x.numpy() for x in torch.nonzero(present, as_tuple=True))
    position = result.group_ids.cpu().numpy()[s, g]
    score = score_of(est, result.score).double().cpu().numpy()[s, g]
    size = est.group_size.double().cpu().numpy()[s, g]
    tokens: list[str | None] = [None] * len(s)
    special = np.zeros(len(s), dtype=bool)
    input_ids = data.get("input_ids")
    if by_token and isinstance(input_ids, Tensor):
        at = input_ids.cpu().numpy()[s, position]
        if tokenizer is not None:
            tokens = list(tokenizer.convert_ids_to_tokens(at.tolist()))
            special = np.isin(at, sorted(set(tokenizer.all_special_ids)))
        else:
            tokens = [str(i) for i in at.tolist()]
        mask = data.get("special_tokens_mask")
        if isinstance(mask, Tensor):
            special = mask.bool().cpu().numpy()[s, position]
    return {
        "example": np.asarray(ids, dtype=np.int64)[s],
        "position": position.astype(np.int32),
        "token": tokens,
        "special": special,
        "layer": [None] * len(s),
        "sigma": est.sigma.double().cpu().numpy()[s, g],
        "score": score,
        "nats": size * score,
        "entropy": est.entropy.double().cpu().numpy()[s, g],
        "std_error": result.std_error.double().cpu().numpy()[s, g],
        "saturated": est.saturated.cpu().numpy()[s, g],
        "converged": est.converged.cpu().numpy()[s],
        "evaluations": est.evaluations.cpu().numpy()[s].astype(np.int64),
    }


# ----------------------------------------------------------------------------- explainers
_Explain = Callable[[_Batch, int], tuple[dict[str, Any], dict[str, Any]]]


def _default_args(batch: Mapping[str, Any]) -> dict[str, Any]:
    mask = batch.get("attention_mask")
    if mask is None:
        return {"inputs": batch["input_ids"]}
    return {
        "inputs": batch["input_ids"],
        "additional_forward_args": (mask,),
        "attention_mask": mask,
    }


def _explainer(
    explainer: Any,
    tokenizer: Any,
    attribute_args: Callable[[Mapping[str, Any]], Mapping[str, Any]] | None,
    kwargs: dict[str, Any],
) -> tuple[str, list[nn.Module], _Explain]:
    """``(method name, modules, explain(batch, seed) -> (columns, run fields))``."""
    if isinstance(explainer, nn.Module):
        return "explain_layers", [explainer], _layers_explainer(explainer, tokenizer, kwargs)
    if isinstance(explainer, (PerturbationEntropyAttribution, LayerPerturbationEntropyAttribution)):
        return _captum_explainer(explainer, tokenizer, attribute_args, kwargs)
    raise TypeError(
        f"explain_corpus explains with an nn.Module (explain_layers) or a "
        f"PerturbationEntropyAttribution / LayerPerturbationEntropyAttribution, not a "
        f"{type(explainer).__name__}"
    )


def _layers_explainer(model: nn.Module, tokenizer: Any, kwargs: dict[str, Any]) -> _Explain:
    """``explain_layers`` on each batch: one row per example × layer × token."""

    def layers(batch: _Batch, seed: int) -> tuple[dict[str, Any], dict[str, Any]]:
        device = next(model.parameters()).device
        info = explain_layers(
            model, _to_device(batch.data, device), tokenizer=tokenizer, seed=seed, **kwargs
        )
        run = {
            "sigma_max": info.sigma_max,
            "sigma_max_source": info.sigma_max_source,
            "rate": info.rate,
            "normaliser": info.normaliser,
            "dim": info.dim,
            "layers": info.layers,
        }
        return _layer_rows(info, batch.ids), run

    return layers


def _captum_explainer(
    attr: PerturbationEntropyAttribution | LayerPerturbationEntropyAttribution,
    tokenizer: Any,
    attribute_args: Callable[[Mapping[str, Any]], Mapping[str, Any]] | None,
    kwargs: dict[str, Any],
) -> tuple[str, list[nn.Module], _Explain]:
    """The class's ``explain`` on each batch: one row per example × feature group."""
    if attribute_args is None and not isinstance(attr, LayerPerturbationEntropyAttribution):
        raise TypeError(
            "PerturbationEntropyAttribution perturbs the forward function's inputs, which "
            "explain_corpus cannot build from a batch of token ids: pass "
            "attribute_args=lambda batch: {'inputs': embeddings_of(batch), "
            "'additional_forward_args': (batch['attention_mask'],), ...}"
        )
    to_args = attribute_args or _default_args
    extra = [attr.layer] if isinstance(attr, LayerPerturbationEntropyAttribution) else []
    modules = modules_of(attr.forward_func, extra=extra)
    mask = kwargs.get("layer_mask", kwargs.get("feature_mask", "token"))
    by_token = isinstance(mask, str) and mask == "token"

    def captum(batch: _Batch, seed: int) -> tuple[dict[str, Any], dict[str, Any]]:
        device = next(p.device for m in modules for p in m.parameters())
        data = _to_device(batch.data, device)
        args = {**to_args(data), **kwargs}
        result = attr.explain(seed=seed, **args)
        run = {"score": result.score, "normaliser": result.normaliser}
        return _attribution_rows(result, batch.ids, data, tokenizer, by_token), run

    return type(attr).__name__, modules, captum


def _describe(value: Any) -> Any:
    """A JSON-able description of a setting, for ``run.json`` (tensors by content hash)."""
    if isinstance(value, Tensor):
        digest = hashlib.sha256(tensor_bytes(value.detach().cpu())).hexdigest()[:16]
        return f"tensor {value.dtype} {tuple(value.shape)} {digest}"
    if isinstance(value, Mapping):
        return {str(k): _describe(v) for k, v in sorted(value.items(), key=lambda kv: str(kv[0]))}
    if isinstance(value, (list, tuple)):
        return [_describe(v) for v in value]
    if is_dataclass(value) and not isinstance(value, type):
        return {f.name: _describe(getattr(value, f.name)) for f in fields(value)}
    if isinstance(value, (str, int, float, bool)) or value is None:
        return value
    code = getattr(value, "__code__", None)
    if code is not None:  # a function: its name and its code (a changed lambda is another run)
        body = repr((code.co_code, code.co_consts, code.co_names)).encode()
        return f"{value.__qualname__} {hashlib.sha256(body).hexdigest()[:16]}"
    if callable(value):
        return type(value).__qualname__
    text = repr(value)
    return type(value).__qualname__ if " at 0x" in text else text


# ------------------------------------------------------------------------------ the run
def explain_corpus(
    explainer: nn.Module | PerturbationEntropyAttribution | LayerPerturbationEntropyAttribution,
    batches: Iterable[Mapping[str, Any]],
    out_dir: str | Path,
    *,
    tokenizer: Any = None,
    seed: int = 0,
    id_key: str = "idx",
    attribute_args: Callable[[Mapping[str, Any]], Mapping[str, Any]] | None = None,
    show_progress: bool = True,
    options: EstimatorOptions | None = None,
    **kwargs: Any,
) -> Path:
    r"""Explain every batch of a corpus into one Parquet table, resumable and sharded.

    Args:
        explainer: a Hugging Face model (``nn.Module``): :func:`~captum_perturb.explain_layers`
            on each batch, one row per example × layer × token; or a
            :class:`~captum_perturb.LayerPerturbationEntropyAttribution` /
            :class:`~captum_perturb.PerturbationEntropyAttribution`: its ``explain`` on
            each batch, one row per example × feature group.
        batches: a :class:`~torch.utils.data.DataLoader` (``shuffle=False``; a map-style
            dataset is loaded batch by batch, only this process's batches) or any iterable
            of tokenised batches: mappings with ``input_ids`` and ``attention_mask``
            ``(batch, tokens)`` tensors (``token_type_ids``, ``special_tokens_mask`` are
            used when present). Tensors are moved to the model's device.
        out_dir: the run folder: ``run.json``, ``parts/`` and the result ``rows.parquet``.
        tokenizer: turns ids into the ``token`` column and finds special tokens.
        seed: batch ``b`` is explained with seed ``seed + b``.
        id_key: the batch field holding example ids (e.g. GLUE's ``idx``); without it the
            id is the example's index in the corpus (in a map-style dataset: its index).
        attribute_args: ``batch -> {argument: value}`` for the Captum class's ``explain``
            (``inputs``, ``target``, ``additional_forward_args``, ``attention_mask``, …),
            per batch. Default for the layer class: ``inputs=input_ids``,
            ``additional_forward_args=(attention_mask,)``, ``attention_mask=attention_mask``
            (a forward function ``f(input_ids, attention_mask)``).
        show_progress: a progress bar per process (needs tqdm).
        options: the estimator's settings for every batch,
            :class:`~captum_perturb.EstimatorOptions` (its ``seed`` is this function's:
            batch ``b`` gets ``seed + b``).
        **kwargs: :class:`~captum_perturb.EstimatorOptions`' fields by keyword, over
            ``options``, and the explainer's own keywords, for every batch: of
            ``explain_layers`` (``layers``, ``special_tokens``, ``internal_batch_size``,
            …) or of the class's ``explain`` (``layer_mask``, ``internal_batch_size``, …).

    Returns:
        The absolute path of ``rows.parquet`` (on every process, after the merge), columns
        :data:`COLUMNS`, rows in batch order; its schema metadata (key
        ``captum_perturb``) holds the settings and the estimator's run fields. Read it
        with ``pyarrow.parquet.read_table`` or ``pandas.read_parquet``;
        :func:`read_layer_information` turns an ``explain_layers`` table back into a
        :class:`~captum_perturb.LayerInformation`.

    Raises:
        ValueError: a shuffling or already sharded DataLoader (or batches that differ
            between processes), a batch without ``input_ids``, an example id twice,
            ``out_dir`` holding a run with other settings or made from another corpus,
            ``out_dir`` not shared by the processes, a part missing or damaged at the
            merge.
        TypeError: an explainer of another kind; ``PerturbationEntropyAttribution``
            without ``attribute_args``.
        RuntimeError: on the other processes, when one process failed (naming it), so
            that none waits for the rest until the group's timeout.

    Warns:
        UserWarning: once per call and process, when estimates did not converge or the
            explainer warned on some batches (counts, and the first messages); when a
            corrupt part is deleted to be redone.

    Example:
        >>> import tempfile
        >>> import pyarrow.parquet as pq
        >>> import torch
        >>> from transformers import BertConfig, BertModel
        >>> from captum_perturb import explain_corpus
        >>> _ = torch.manual_seed(0)
        >>> config = BertConfig(
        ...     vocab_size=50,
        ...     hidden_size=16,
        ...     num_hidden_layers=2,
        ...     num_attention_heads=2,
        ...     intermediate_size=32,
        ... )
        >>> model = BertModel(config)
        >>> batches = [
        ...     {
        ...         "input_ids": torch.tensor([[2, 7, 9, 3], [2, 8, 3, 0]]),
        ...         "attention_mask": torch.tensor([[1, 1, 1, 1], [1, 1, 1, 0]]),
        ...     },
        ...     {"input_ids": torch.tensor([[2, 5, 3]]), "attention_mask": torch.ones(1, 3)},
        ... ]
        >>> path = explain_corpus(model, batches, tempfile.mkdtemp(), show_progress=False)
        >>> table = pq.read_table(path)
        >>> table.num_rows  # (4 + 3 + 3 real tokens) × 3 layers
        30
        >>> sorted(set(table.column("example").to_pylist()))
        [0, 1, 2]
    """
    opts, kwargs = _corpus_options(options, kwargs)
    rank, world = rank_and_world()
    method, modules, explain = _explainer(explainer, tokenizer, attribute_args, kwargs)
    plan = _Plan(batches, rank, world, id_key)
    store = PartStore(out_dir)
    settings = {
        "method": method,
        "seed": seed,
        "weights": [weights_hash(m) for m in modules],
        "options": _describe(opts),
        "arguments": _describe({k: v for k, v in kwargs.items() if k != "options"}),
        "attribute_args": _describe(attribute_args),
        "id_key": id_key,
    }
    on_first(lambda: store.check_settings(settings, write=True))
    same_everywhere(plan.fingerprint(), "the DataLoader's batches (a random sampler?)")
    failure = None
    try:
        if rank != 0:
            store.check_settings(settings, write=False)
        done = store.finished(plan.mine)
        warned, unconverged, explained = _explain_batches(
            plan, done, explain, store, seed, show_progress
        )
    except Exception as err:
        failure = err
    all_succeeded(failure)  # every part is on disk, or every process raises
    total = plan.total or 0
    on_first(lambda: store.merge(total, {"settings": settings, "columns": COLUMNS}))
    _warn(warned, unconverged, explained, rank, world)
    return (store.root / store.MERGED).resolve()


def _corpus_options(
    options: EstimatorOptions | None, kwargs: Mapping[str, Any]
) -> tuple[EstimatorOptions, dict[str, Any]]:
    """The estimator's options (``options`` with the settings among ``kwargs`` over it) and
    the keywords for the explainer, the options among them.

    Raises:
        ValueError: ``options`` with a seed of its own (the batches' seeds are
            ``explain_corpus``'s ``seed + b``).
    """
    if options is not None and isinstance(options, EstimatorOptions) and options.seed != 0:
        raise ValueError(
            "explain_corpus seeds batch b with seed + b: pass seed= to explain_corpus, "
            f"not in options (got options.seed={options.seed!r})"
        )
    settings = {k: v for k, v in kwargs.items() if k in SETTINGS}
    opts = resolve_options(options, settings, "explain_corpus")
    rest = {k: v for k, v in kwargs.items() if k not in SETTINGS}
    return opts, {**rest, "options": opts}


def _explain_batches(
    plan: _Plan,
    done: Mapping[int, Mapping[str, Any]],
    explain: _Explain,
    store: PartStore,
    seed: int,
    show_progress: bool,
) -> tuple[list[str], int, int]:
    """Explain this process's unfinished batches, one part each; returns the explainer's
    warnings (first lines), the number of unconverged examples and of examples explained."""
    import pyarrow as pa

    schema = _schema()
    warned: list[str] = []
    unconverged = explained = 0
    bar = None
    if show_progress:
        from tqdm.auto import tqdm

        rank = plan.rank
        bar = tqdm(
            desc=f"explain_corpus (process {rank})",
            total=plan.todo(done),
            unit="batch",
            position=rank,
        )
    for batch in plan.batches(done):
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            columns, run = explain(batch, seed + batch.index)
        warned += [str(w.message).split("\n")[0] for w in caught]
        table = pa.table(columns, schema=schema)
        store.write_part(batch.index, table, batch.ids, run, batch.source)
        ok = np.asarray(columns["converged"], dtype=bool)
        unconverged += len(set(np.asarray(columns["example"])[~ok].tolist()))
        explained += len(batch.ids)
        if bar is not None:
            bar.update(1)
    if bar is not None:
        bar.close()
    return warned, unconverged, explained


def _warn(warned: list[str], unconverged: int, explained: int, rank: int, world: int) -> None:
    if not warned and not unconverged:
        return
    who = f"explain_corpus (process {rank} of {world})" if world > 1 else "explain_corpus"
    parts = []
    if unconverged:
        parts.append(
            f"{unconverged} of the {explained} examples explained in this call have at least "
            "one estimate that did not converge (column 'converged'; raise config.max_iter)"
        )
    if warned:
        counts = Counter(warned)
        listed = "; ".join(f"{k}× '{m}'" for m, k in counts.most_common(3))
        more = f" and {len(counts) - 3} other messages" if len(counts) > 3 else ""
        parts.append(f"the explainer warned on its batches: {listed}{more}")
    warnings.warn(f"{who}: " + "; ".join(parts), UserWarning, stacklevel=user_stacklevel())


def read_layer_information(path: str | Path) -> LayerInformation:
    """The :class:`~captum_perturb.LayerInformation` of an ``explain_layers`` corpus table.

    Examples appear in the table's order (``meta["examples"]`` holds their ids); positions
    without a row are padding.

    Args:
        path: ``rows.parquet`` written by :func:`explain_corpus` with a model.

    Raises:
        ValueError: the table was not written by ``explain_layers``.
    """
    table = parquet().read_table(path)
    meta = json.loads(table.schema.metadata[b"captum_perturb"])
    if meta["settings"]["method"] != "explain_layers":
        raise ValueError(f"{path} holds {meta['settings']['method']} rows, not explain_layers")
    run = meta["run"]
    col = {k: table.column(k).to_numpy(zero_copy_only=False) for k in COLUMNS}
    layers = list(run["layers"])
    order, s, j, p = _grid_index(col, layers)
    n, n_lay, t = len(order), len(layers), int(p.max()) + 1

    def grid(values: np.ndarray) -> Tensor:
        out = np.full((n, n_lay, t), np.nan)
        out[s, j, p] = values
        return torch.from_numpy(out).float()

    def per_layer(values: np.ndarray, dtype: torch.dtype) -> Tensor:
        out = np.zeros((n, n_lay), dtype=values.dtype)
        out[s, j] = values
        return torch.from_numpy(out).to(dtype)

    mask = torch.zeros(n, t, dtype=torch.bool)
    mask[s, p] = True
    special = torch.zeros(n, t, dtype=torch.bool)
    special[s, p] = torch.from_numpy(col["special"].astype(bool))
    tokens = [[""] * t for _ in range(n)]
    for a, b, tok in zip(s.tolist(), p.tolist(), col["token"].tolist(), strict=True):
        tokens[a][b] = tok
    return LayerInformation(
        layers=layers,
        tokens=tokens,
        sigma=grid(col["sigma"]),
        entropy=grid(col["entropy"]),
        nats_kept=grid(col["nats"]),
        std_error=grid(col["std_error"]),
        converged=per_layer(col["converged"].astype(bool), torch.bool),
        mask=mask,
        special=special,
        sigma_max=float(run["sigma_max"]),
        sigma_max_source=str(run["sigma_max_source"]),
        rate=float(run["rate"]),
        normaliser=dict(run["normaliser"]),
        dim=int(run["dim"]),
        meta={"examples": [int(e) for e in order]},
        evaluations=per_layer(col["evaluations"].astype(np.int64), torch.long),
    )


def _grid_index(
    col: Mapping[str, np.ndarray], layers: list[int]
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Where each row goes on the ``examples × layers × positions`` grid: the example ids
    in table order, and each row's example, layer and position index."""
    ids, first = np.unique(col["example"], return_index=True)
    order = ids[np.argsort(first)]
    row_of = {int(e): i for i, e in enumerate(order)}
    s = np.asarray([row_of[int(e)] for e in col["example"]], dtype=np.int64)
    j = np.searchsorted(np.asarray(layers), col["layer"])
    return order, s, j, col["position"].astype(np.int64)


__all__ = ["COLUMNS", "explain_corpus", "read_layer_information"]
