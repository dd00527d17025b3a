"""Dataset reading and writing in pipeline.workdir: row groups read on their own threads,
all-null columns synthesised from statistics, part files written in parallel."""

from __future__ import annotations

import pyarrow as pa
import pyarrow.parquet as pq

from pipeline.schema import DICT
from pipeline.workdir import DatasetWriter, dataset_files, read_row_group, row_groups


def _table(n: int, offset: int = 0) -> pa.Table:
    return pa.table({
        "id": pa.array(range(offset, offset + n), pa.int64()),
        "host": pa.array([f"h{i % 3}" for i in range(n)], pa.string()).dictionary_encode(),
        "connector": pa.nulls(n, DICT),  # every row null: read from statistics, not decoded
        "flag": pa.array([None if i % 2 else True for i in range(n)], pa.bool_()),
        "rcpts": pa.array([None] * n, pa.list_(pa.string())),  # nested: always decoded
    })


def test_read_row_group_equals_parquet_read(tmp_path):
    path = tmp_path / "x.parquet"
    with pq.ParquetWriter(path, _table(0).schema) as w:
        w.write_table(_table(5), row_group_size=5)
        w.write_table(_table(3, 5), row_group_size=3)
    parts = list(row_groups([path]))
    assert parts == [(path, 0), (path, 1)]
    whole = pq.read_table(path)
    got = pa.Table.from_batches([read_row_group(p) for p in parts])
    assert got.schema == whole.schema
    assert got.to_pylist() == whole.to_pylist()
    some = read_row_group(parts[1], ["connector", "id"])
    assert some.schema.names == ["connector", "id"]
    assert some.column("connector").type == DICT and some.column("connector").null_count == 3
    assert some.column("id").to_pylist() == [5, 6, 7]


def test_write_part_from_threads_and_commit(tmp_path):
    from concurrent.futures import ThreadPoolExecutor

    schema = _table(0).schema
    with DatasetWriter(tmp_path / "ds", schema) as writer, ThreadPoolExecutor(2) as pool:
        list(pool.map(lambda i: writer.write_part(i, _table(4, 4 * i)), range(6)))
    files = dataset_files(tmp_path / "ds")
    assert [f.name for f in files] == [f"part-{i:05d}.parquet" for i in range(6)]
    ids = [r["id"] for f in files for r in pq.read_table(f).to_pylist()]
    assert ids == list(range(24))
    assert writer.rows == 24
