"""Files written whole or not at all, and the optional Parquet dependency."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any


def atomic_write(path: Path, write: Any) -> None:
    """``write(file)`` into a temporary file beside ``path``, fsync, rename over ``path``:
    a reader sees the old file or the whole new one, never a part."""
    tmp = path.with_name(f"{path.name}.tmp-{os.getpid()}")
    try:
        with open(tmp, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def parquet() -> Any:
    """``pyarrow.parquet``, or an ImportError that names the extra to install."""
    try:
        import pyarrow.parquet as pq
    except ImportError as err:  # pragma: no cover - depends on the environment
        raise ImportError(
            "explain_corpus writes Parquet through pyarrow: pip install 'captum-perturb[corpus]' "
            "(or pip install pyarrow)"
        ) from err
    return pq
