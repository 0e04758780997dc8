"""Run a test function on N gloo processes of this machine (one shared launcher).

The processes meet through a ``FileStore`` in a temporary folder rather than a TCP store
hosted by process 0: with a TCP store, process 0 can exit (and close the store) while
another process is still tearing its group down, which aborts that process now and then
("terminate called without an active exception"). Every process ends with a barrier
before destroying its group, as ``torch.distributed`` recommends.
"""

from __future__ import annotations

import os
import tempfile
import time
from collections.abc import Callable
from datetime import timedelta
from typing import Any

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp


def _entry(rank: int, fn: Callable[..., None], world: int, store: str, args: tuple) -> None:
    torch.set_num_threads(1)
    dist.init_process_group(
        "gloo",
        init_method=f"file://{store}",
        rank=rank,
        world_size=world,
        timeout=timedelta(seconds=60),
    )
    try:
        fn(rank, world, *args)
        dist.barrier()
    finally:
        dist.destroy_process_group()


def run_processes(fn: Callable[..., None], world: int, *args: Any, timeout: float = 120) -> None:
    """Run ``fn(rank, world, *args)`` on ``world`` spawned processes in one gloo group
    (one thread each); an error in any fails the test, and so does a hang.

    ``fn`` must be a module-level function (it is pickled by reference).
    """
    with tempfile.TemporaryDirectory() as tmp:
        store = os.path.join(tmp, "rendezvous")
        ctx = mp.start_processes(
            _entry, args=(fn, world, store, args), nprocs=world, join=False, start_method="spawn"
        )
        deadline = time.monotonic() + timeout
        while not ctx.join(timeout=1.0):
            if time.monotonic() > deadline:
                for p in ctx.processes:
                    if p.is_alive():
                        p.kill()
                pytest.fail(f"{world} processes did not finish within {timeout:.0f} s")
