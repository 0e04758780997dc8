"""The run folder of :func:`~captum_perturb.explain_corpus`: one Parquet part per batch.

Layout::

    out_dir/
        run.json                 the settings of the run (checked on every restart)
        parts/batch-00000007.parquet   rows of batch 7, written once, atomically
        rows.parquet             all parts in batch order (written after the last part)

A part is written to a temporary file in ``parts/``, flushed to disk and renamed, so it
is either whole or absent; Parquet's footer and page checksums (written and verified
here) and a SHA-256 of the values in the part's record catch what a rename cannot: a
truncated or damaged file. A part that does not read back whole, or whose rows do not
match its own record (batch, row count, example ids, checksum), is *corrupt*: it is
deleted with a warning and its batch is explained again.
"""

from __future__ import annotations

import hashlib
import json
import re
import warnings
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

from captum_perturb._utils.common import user_stacklevel
from captum_perturb._utils.io import atomic_write, parquet

_KEY = b"captum_perturb"
_PART = re.compile(r"^batch-(\d{8})\.parquet$")
#: rows per row group of the merged file (a row group is read in one piece)
_ROW_GROUP = 1 << 17


def _digest(table: Any) -> str:
    """SHA-256 of a table's values (catches damage that decodes without an error)."""
    return hashlib.sha256(repr(table.to_pydict()).encode("utf-8")).hexdigest()


def _is_damage(err: Exception) -> bool:
    """Whether reading a part failed because the part is damaged (pyarrow's decoding and
    checksum errors, a broken record), not because the file system failed: an I/O error
    carries an errno, and deleting good parts on one would lose work."""
    import pyarrow as pa

    if isinstance(err, OSError):
        return err.errno is None
    return isinstance(err, (pa.ArrowException, ValueError, KeyError, TypeError, EOFError))


class PartStore:
    """Reads and writes the parts, the settings and the merged table of one run folder.

    Args:
        out_dir: the run folder (created if missing).
    """

    SETTINGS = "run.json"
    MERGED = "rows.parquet"

    def __init__(self, out_dir: str | Path) -> None:
        self.root = Path(out_dir).expanduser()
        self.parts = self.root / "parts"
        self.parts.mkdir(parents=True, exist_ok=True)

    # ------------------------------------------------------------------------ settings
    def check_settings(self, settings: Mapping[str, Any], *, write: bool) -> None:
        """Compare ``settings`` with the folder's ``run.json``; write it if absent and
        ``write``, else require it (process 0 has written it).

        Raises:
            ValueError: the folder holds a run with other settings (rows of two runs must
                never be mixed), or (``write=False``) has no ``run.json``.
        """
        path = self.root / self.SETTINGS
        if not path.exists() and not write:
            raise ValueError(
                f"{self.root} has no {self.SETTINGS}, which process 0 wrote there: out_dir "
                "must be one folder that every process sees (on several machines a shared "
                "file system; give an absolute path)"
            )
        if path.exists():
            old = json.loads(path.read_text(encoding="utf-8"))
            differ = sorted(k for k in {*old, *settings} if old.get(k) != settings.get(k))
            if differ:
                raise ValueError(
                    f"{self.root} holds a run with other settings ({', '.join(differ)} "
                    "differ): explain into another folder, or delete this one to start over"
                )
        elif write:
            text = json.dumps(dict(settings), indent=1, sort_keys=True).encode("utf-8")
            atomic_write(path, lambda f: f.write(text))

    # --------------------------------------------------------------------------- parts
    def part_path(self, batch: int) -> Path:
        return self.parts / f"batch-{batch:08d}.parquet"

    def write_part(
        self, batch: int, table: Any, examples: Sequence[int], run: Mapping, source: str
    ) -> None:
        """Write the rows of ``batch`` (a ``pyarrow.Table``) as one part; ``examples`` are
        the ids of its examples, ``run`` the settings the estimator reported and ``source``
        what the batch was made of (checked on resume)."""
        record = {
            "batch": batch,
            "rows": table.num_rows,
            "examples": list(examples),
            "run": run,
            "source": source,
            "digest": _digest(table),
        }
        table = table.replace_schema_metadata({_KEY: json.dumps(record).encode("utf-8")})
        atomic_write(
            self.part_path(batch),
            lambda f: parquet().write_table(table, f, write_page_checksum=True),
        )

    def read_part(self, batch: int) -> tuple[Any, dict[str, Any]]:
        """The table of ``batch`` and its record, checked against each other.

        Raises:
            ValueError: (or any error of pyarrow) when the part is corrupt.
        """
        table = parquet().read_table(self.part_path(batch), page_checksum_verification=True)
        record = json.loads(table.schema.metadata[_KEY])
        if record["batch"] != batch or record["rows"] != table.num_rows:
            raise ValueError(f"batch {record['batch']} with {record['rows']} rows")
        if record["digest"] != _digest(table):
            raise ValueError("its values do not match its checksum")
        extra = set(table.column("example").to_pylist()) - set(record["examples"])
        if extra:
            raise ValueError(f"rows of examples {sorted(extra)[:5]} not in the part's record")
        return table, record

    def finished(self, mine: Callable[[int], bool]) -> dict[int, dict[str, Any]]:
        """``{b: record}`` of the batches ``b`` with ``mine(b)`` that have a whole part on
        disk; corrupt parts among them are deleted, with a warning, so they are redone."""
        found = {int(m.group(1)) for p in self.parts.iterdir() if (m := _PART.match(p.name))}
        found = {b for b in found if mine(b)}
        good = {}
        parquet()  # a missing pyarrow is not a corrupt part
        for b in sorted(found):
            try:
                _, record = self.read_part(b)
            except Exception as err:
                if not _is_damage(err):
                    raise
                warnings.warn(
                    f"explain_corpus: part {self.part_path(b)} is corrupt ({err}); deleted, "
                    f"batch {b} is explained again",
                    UserWarning,
                    stacklevel=user_stacklevel(),
                )
                self.part_path(b).unlink(missing_ok=True)
            else:
                good[b] = record
        return good

    # --------------------------------------------------------------------------- merge
    def merge(self, n_batches: int, meta: Mapping[str, Any]) -> Path:
        """Write ``rows.parquet``: parts ``0 … n_batches-1`` in order, streamed.

        Raises:
            ValueError: a part is missing or corrupt, or an example is in two parts.
        """
        import pyarrow as pa

        pq = parquet()
        for tmp in [*self.parts.glob("*.tmp-*"), *self.root.glob("*.tmp-*")]:
            tmp.unlink(missing_ok=True)  # left by a process that was killed
        missing = [b for b in range(n_batches) if not self.part_path(b).exists()]
        if missing:
            raise ValueError(
                f"{len(missing)} of {n_batches} batches have no part in {self.parts} (first: "
                f"{missing[:5]}); run the same command again to explain them"
            )
        seen: set[int] = set()
        out = self.root / self.MERGED
        run: dict[str, Any] = {}

        def write(f: Any) -> None:
            writer = None
            buffer: list[Any] = []
            for b in range(n_batches):
                table = self._checked_part(b, seen, run)
                buffer.append(table.replace_schema_metadata(None))
                if sum(t.num_rows for t in buffer) >= _ROW_GROUP or b == n_batches - 1:
                    merged = pa.concat_tables(buffer)
                    if writer is None:
                        info = json.dumps({**meta, "run": run}).encode("utf-8")
                        schema = merged.schema.with_metadata({_KEY: info})
                        writer = pq.ParquetWriter(f, schema, write_page_checksum=True)
                    writer.write_table(merged)
                    buffer = []
            if writer is not None:
                writer.close()

        if n_batches == 0:
            raise ValueError("the corpus has no batch")
        atomic_write(out, write)
        return out

    def _checked_part(self, b: int, seen: set[int], run: dict[str, Any]) -> Any:
        """Part ``b`` for the merge, checked against the parts before it (``seen``
        examples and ``run`` settings, both updated).

        Raises:
            ValueError: the part is corrupt, repeats an example, or has other settings.
        """
        try:
            table, record = self.read_part(b)
        except Exception as err:
            if not _is_damage(err):
                raise
            raise ValueError(
                f"part {self.part_path(b)} is corrupt ({err}); run the same command "
                "again: the part is detected, deleted and redone"
            ) from err
        twice = seen & set(record["examples"])
        if twice:
            raise ValueError(
                f"examples {sorted(twice)[:5]} are in two batches: the batches' ids "
                "(id_key) must name every example once in the corpus"
            )
        seen.update(record["examples"])
        if run and record["run"] != run:
            raise ValueError(f"batch {b}'s estimator settings differ: {record['run']}")
        run.update(record["run"])
        return table
