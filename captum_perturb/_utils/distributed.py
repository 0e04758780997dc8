"""``torch.distributed`` in one place: which process am I, my share of the work, waiting.

Everything here is a no-op in a single process (no process group, or a group of one), so
the corpus code paths are the same with and without ``torchrun``.

Sharding follows :class:`torch.utils.data.DistributedSampler` without shuffling: process
``r`` of ``N`` takes items ``r, r + N, r + 2N, …`` — disjoint, covering, and the same
for a given ``N`` on every run. Unlike the sampler it never pads the last round with
repeated items (a repeated example would be explained, and counted, twice).
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import timedelta
from typing import TypeVar

import torch
import torch.distributed as dist
from torch import Tensor

T = TypeVar("T")

#: how long a collective (the barrier before the merge) waits for the slowest process;
#: ranks of one corpus run finish hours apart when their shares differ in length
DEFAULT_TIMEOUT = timedelta(hours=12)


def initialised() -> bool:
    """Whether a ``torch.distributed`` process group is running in this process."""
    return dist.is_available() and dist.is_initialized()


def backend() -> str | None:
    """The process group's backend (``"gloo"``, ``"nccl"``), None without one."""
    return str(dist.get_backend()) if initialised() else None


def rank_and_world() -> tuple[int, int]:
    """``(rank, world size)`` of the current process group, ``(0, 1)`` without one."""
    if initialised():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def is_shard(index: int, rank: int, world: int) -> bool:
    """Whether item ``index`` belongs to process ``rank`` of ``world``."""
    return index % world == rank


def barrier() -> None:
    """Wait for every process of the group (nothing to wait for without one)."""
    if rank_and_world()[1] > 1:
        dist.barrier()


def all_reduce_sum(t: Tensor) -> Tensor:
    """The sum of ``t`` over all processes (a new tensor; ``t`` is not changed)."""
    out = t.clone()
    if rank_and_world()[1] > 1:
        dist.all_reduce(out, op=dist.ReduceOp.SUM)
    return out


def on_first(fn: Callable[[], T]) -> T | None:
    """Run ``fn`` on process 0 only and wait for it; when it raises, every process raises
    (process 0 its own error, the others a ``RuntimeError`` quoting it), so no process is
    left waiting at the next collective. Returns ``fn()`` on process 0, ``None`` elsewhere.
    """
    rank, world = rank_and_world()
    out: T | None = None
    failure: BaseException | None = None
    if rank == 0:
        try:
            out = fn()
        except Exception as err:
            if world == 1:
                raise
            failure = err
    if world > 1:
        box = [None if failure is None else f"{type(failure).__name__}: {failure}"]
        dist.broadcast_object_list(box, src=0)
        if failure is not None:
            raise failure
        if box[0] is not None:
            raise RuntimeError(f"process 0 failed: {box[0]}")
    return out


def all_succeeded(failure: BaseException | None) -> None:
    """A collective in place of a barrier after work that may fail on some processes: when
    any process passes an error, every process raises (its own error, or a
    ``RuntimeError`` naming the process that failed), so none waits for the others until
    the group's timeout."""
    world = rank_and_world()[1]
    if world == 1:
        if failure is not None:
            raise failure
        return
    errors: list[str | None] = [None] * world
    mine = None if failure is None else f"{type(failure).__name__}: {failure}"
    dist.all_gather_object(errors, mine)
    if failure is not None:
        raise failure
    for r, err in enumerate(errors):
        if err is not None:
            raise RuntimeError(f"process {r} failed: {err}")


def process_0_first(fn: Callable[[], T]) -> T:
    """``fn()`` on process 0, then on the others: process 0 makes what the others then
    reuse (a model trained and cached on first use, a download). When it fails on
    process 0, every process raises (:func:`all_succeeded`) instead of waiting."""
    rank = rank_and_world()[0]
    failure: BaseException | None = None
    out: list[T] = []
    if rank == 0:
        try:
            out.append(fn())
        except Exception as err:
            failure = err
    all_succeeded(failure)
    if rank != 0:
        out.append(fn())
    return out[0]


def same_everywhere(value: str, what: str) -> None:
    """Raise on every process unless ``value`` is the same on all of them."""
    world = rank_and_world()[1]
    if world == 1:
        return
    values: list[str | None] = [None] * world
    dist.all_gather_object(values, value)
    if len(set(values)) > 1:
        differ = [r for r, v in enumerate(values) if v != values[0]]
        raise ValueError(f"{what} differ between processes (processes {differ} against 0)")


@contextmanager
def process_group_from_env(
    backend: str | None = None, timeout: timedelta = DEFAULT_TIMEOUT
) -> Iterator[tuple[int, int]]:
    """Join the process group that ``torchrun`` describes in the environment.

    With ``WORLD_SIZE`` > 1 (set by ``torchrun`` / ``python -m torch.distributed.run``,
    or by hand with ``MASTER_ADDR``, ``MASTER_PORT``, ``RANK``) this initialises
    ``torch.distributed`` and destroys the group on exit. Without it, or when a group
    already exists, nothing is changed.

    Args:
        backend: ``"gloo"`` (CPU work), ``"nccl"`` (each process on the GPU
            ``LOCAL_RANK``); default NCCL when CUDA is available, gloo otherwise.
        timeout: how long a collective waits for the slowest process.

    Yields:
        ``(rank, world size)``.
    """
    joined = False
    if int(os.environ.get("WORLD_SIZE", "1")) > 1 and not dist.is_initialized():
        backend = backend or ("nccl" if torch.cuda.is_available() else "gloo")
        if backend == "nccl":
            torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
        dist.init_process_group(backend, timeout=timeout)
        joined = True
    try:
        yield rank_and_world()
        if joined:  # gloo aborts a process that leaves while another still sends to it
            dist.barrier()
    finally:
        if joined:
            dist.destroy_process_group()
