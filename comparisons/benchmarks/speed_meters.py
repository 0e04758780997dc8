"""The meters of the speed benchmark (:mod:`.speed`): the wall time of a call and how far
it raises the process's peak resident memory."""

from __future__ import annotations

import contextlib
import ctypes
import gc
import math
import statistics
import time
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

MB = 2**20


def timed(fn: Callable[[], Any], repeat: int = 1) -> tuple[Any, float]:
    """Result of ``fn`` and its median wall time over ``repeat`` runs."""
    times = []
    out = None
    for _ in range(repeat):
        start = time.perf_counter()
        out = fn()
        times.append(time.perf_counter() - start)
    return out, statistics.median(times)


def _status_bytes(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) * 1024  # reported in kB
    raise OSError(f"no {field} in /proc/self/status")


def _release_freed_memory() -> None:
    """Collect garbage and hand freed heap pages back to the system (glibc), so that a
    call's peak is not hidden by memory the allocator kept from an earlier one."""
    gc.collect()
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL("libc.so.6").malloc_trim(0)


def peak_rss_increase(fn: Callable[[], Any]) -> tuple[Any, float]:
    """``fn()`` and how far the process's peak resident memory rose above its resident
    memory just before the call, in bytes (Linux: ``/proc/self/clear_refs`` resets the
    peak). NaN, with a warning, where ``/proc`` does not allow it."""
    _release_freed_memory()
    try:
        Path("/proc/self/clear_refs").write_text("5")
        before = _status_bytes("VmRSS")
    except OSError as err:
        warnings.warn(f"peak memory not measured ({err})", RuntimeWarning, stacklevel=2)
        return fn(), math.nan
    out = fn()
    return out, float(max(0, _status_bytes("VmHWM") - before))
