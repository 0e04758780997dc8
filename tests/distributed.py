"""Run a test function on N gloo processes of this machine (one shared launcher).

The processes meet through a ``FileStore`` in a temporary folder (no port to pick, no
store server in process 0), end with a barrier before destroying their group, as
``torch.distributed`` recommends, and then leave with ``os._exit(0)``: with gloo, a
process that finished its work can still abort in the interpreter's teardown ("terminate
called without an active exception", SIGABRT; gloo's worker threads still holding
tensors when Python finalises, as described in pytorch/pytorch#179291). That happened in
about one run in four of these tests on this 2-core machine, after every check had
passed; the exit skips the teardown so that the tests report the code under test.
"""

from __future__ import annotations

import os
import sys
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
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)  # the work is done and checked; see the module docstring


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
