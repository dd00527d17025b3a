"""The WORKDIR layout and crash-safe writes.

    WORKDIR/messages/*.parquet        one row per message (schema.MESSAGES), one part per ingest run
    WORKDIR/rejects/*.parquet         lines that could not be parsed (schema.REJECTS)
    WORKDIR/verdicts/*.parquet        messages + verdict columns (schema.VERDICTS)
    WORKDIR/manifest.json             files read so far (incremental ingest, pipeline/manifest.py)
    WORKDIR/ingest.json               per-file line accounting of the last ingest
    WORKDIR/evaluate.json             what evaluate used (pack, config digest, warnings)
    WORKDIR/report/                   what the reporters write

Every file is written under a temporary name and renamed into place; a dataset directory is
staged next to its final name and swapped in at the end, so a crash leaves the previous
outputs intact and never half a file.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
import threading
from collections.abc import Iterable, Iterator
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from .errors import WorkdirError
from .schema import conform

ROW_GROUP = 1_000_000


def atomic_write_bytes(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def atomic_write_text(path: Path, text: str) -> None:
    atomic_write_bytes(path, text.encode("utf-8"))


def write_json(path: Path, obj) -> None:
    atomic_write_text(path, json.dumps(obj, indent=2, sort_keys=False, default=str) + "\n")


def read_json(path: Path) -> dict:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        return {}


class DatasetWriter:
    """Writes a Parquet dataset into a staging directory; `commit()` swaps it in.

    Batches are buffered up to ROW_GROUP rows per row group and PART_ROWS per file, so memory
    stays bounded by one row group whatever the input size.
    """

    PART_ROWS = 8_000_000

    def __init__(self, final_dir: Path, schema: pa.Schema, prefix: str = "part"):
        self.final_dir = Path(final_dir)
        self.schema = schema
        self.prefix = prefix
        self.final_dir.parent.mkdir(parents=True, exist_ok=True)
        self.stage = Path(
            tempfile.mkdtemp(prefix=f".{self.final_dir.name}.tmp-", dir=self.final_dir.parent)
        )
        self._writer: pq.ParquetWriter | None = None
        self._part = 0
        self._rows_in_part = 0
        self._buffer: list[pa.Table] = []
        self._buffered = 0
        self.rows = 0
        self._parts_written = 0
        self._lock = threading.Lock()

    def write(self, batch: pa.RecordBatch | pa.Table) -> None:
        if batch.num_rows == 0:
            return
        table = conform(batch, self.schema)
        self._buffer.append(table)
        self._buffered += table.num_rows
        self.rows += table.num_rows
        if self._buffered >= ROW_GROUP:
            self._flush()

    def write_part(self, index: int, batch: pa.RecordBatch | pa.Table) -> None:
        """One whole part file, `index` giving its place in the dataset. Safe from several
        threads at once (each writes its own file), so writing uses every core; not to be
        mixed with write() in one dataset."""
        if batch.num_rows == 0:
            return
        table = conform(batch, self.schema)
        pq.write_table(table, self.stage / f"{self.prefix}-{index:05d}.parquet", compression="zstd", row_group_size=ROW_GROUP)
        with self._lock:
            self.rows += table.num_rows
            self._parts_written += 1

    def _flush(self) -> None:
        if not self._buffer:
            return
        table = pa.concat_tables(self._buffer)
        self._buffer, self._buffered = [], 0
        if self._writer is None or self._rows_in_part >= self.PART_ROWS:
            self._close_part()
            path = self.stage / f"{self.prefix}-{self._part:05d}.parquet"
            self._writer = pq.ParquetWriter(path, self.schema, compression="zstd")
            self._part += 1
            self._rows_in_part = 0
        self._writer.write_table(table, row_group_size=ROW_GROUP)
        self._rows_in_part += table.num_rows

    def _close_part(self) -> None:
        if self._writer is not None:
            self._writer.close()
            self._writer = None

    def carry(self, path: Path) -> None:
        """Keep an existing part file of the dataset as it is (hard link, else copy)."""
        target = self.stage / path.name
        try:
            os.link(path, target)
        except OSError:
            shutil.copy2(path, target)
        self._carried = getattr(self, "_carried", 0) + 1
        self.rows += pq.ParquetFile(target).metadata.num_rows

    def commit(self) -> None:
        self._flush()
        if self._part == 0 and not self._parts_written and not getattr(self, "_carried", 0):
            # an empty dataset still has its schema on disk
            pq.write_table(self.schema.empty_table(), self.stage / f"{self.prefix}-00000.parquet")
        self._close_part()
        replace_dir(self.stage, self.final_dir)

    def abort(self) -> None:
        self._close_part()
        shutil.rmtree(self.stage, ignore_errors=True)

    def __enter__(self) -> DatasetWriter:
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is None:
            self.commit()
        else:
            self.abort()


def replace_dir(stage: Path, final: Path) -> None:
    """Swap a fully written staging directory in for `final` (two renames, old removed last)."""
    old = final.with_name(f".{final.name}.old")
    if old.exists():
        shutil.rmtree(old)
    if final.exists():
        os.replace(final, old)
    os.replace(stage, final)
    shutil.rmtree(old, ignore_errors=True)


def dataset_files(directory: Path) -> list[Path]:
    return sorted(p for p in Path(directory).glob("*.parquet") if not p.name.startswith("."))


def require_dataset(workdir: Path, name: str, hint: str) -> list[Path]:
    files = dataset_files(Path(workdir) / name)
    if not files:
        raise WorkdirError(f"{Path(workdir) / name}: no {name} dataset here; {hint}")
    return files


def iter_batches(
    files: Iterable[Path], columns: list[str] | None = None, batch_size: int = ROW_GROUP
) -> Iterator[pa.RecordBatch]:
    """Stream a dataset's record batches (bounded memory)."""
    for path in files:
        pf = pq.ParquetFile(path)
        yield from pf.iter_batches(batch_size=batch_size, columns=columns)


def row_groups(files: Iterable[Path]) -> Iterator[tuple[Path, int]]:
    """(file, row group) pairs of a dataset: units of work that threads read on their own."""
    for path in files:
        for i in range(pq.ParquetFile(path).metadata.num_row_groups):
            yield path, i


def read_row_group(part: tuple[Path, int], columns: list[str] | None = None) -> pa.RecordBatch:
    """One row group as a record batch, read by the calling thread alone: the engine reads
    row groups on its worker threads, so reading uses both cores without Arrow's own pool.
    pre_buffer=False: for local files, coalescing reads ahead costs more than it saves."""
    path, i = part
    pf = pq.ParquetFile(path, pre_buffer=False)
    group = pf.metadata.row_group(i)
    schema = pf.schema_arrow
    schema = pa.schema([schema.field(c) for c in (columns if columns is not None else schema.names)])
    empty = _all_null_columns(group)
    if not group.num_rows:
        return pa.RecordBatch.from_pylist([], schema)
    table = pf.read_row_group(i, columns=[c for c in schema.names if c not in empty], use_threads=False)
    arrays = [pa.nulls(group.num_rows, f.type) if f.name in empty else table.column(f.name).combine_chunks() for f in schema]
    return pa.RecordBatch.from_arrays(arrays, schema=schema)


def _all_null_columns(row_group: pq.RowGroupMetaData) -> set[str]:
    """Top-level columns whose statistics say every value of the row group is null: they are
    made with pa.nulls instead of decoded (a source format without a field, such as the
    connector column of MTA logs, costs nothing to read)."""
    empty = set()
    for j in range(row_group.num_columns):
        col = row_group.column(j)
        stats = col.statistics
        if "." not in col.path_in_schema and stats is not None and stats.has_null_count and stats.null_count == row_group.num_rows:
            empty.add(col.path_in_schema)
    return empty


def read_table(files: Iterable[Path], columns: list[str] | None = None) -> pa.Table:
    files = list(files)
    tables = [pq.read_table(p, columns=columns) for p in files]
    return pa.concat_tables(tables) if tables else pa.table({})
