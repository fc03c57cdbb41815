"""The exports' tables read and written a chunk at a time, so the driver never holds a whole corpus.

- `parquet_files`, `unified_schema`, `batches`: a folder of parquet parts read as record
  batches of one schema (columns missing from a part come as nulls, as `concat_tables` does).
- `SortedRows`: rows in id order, `CHUNK_ROWS` ids at a time (an external sort by id range).
- `write_parquet`: tables written in order into one or several files whose row groups depend
  only on the rows, not on how they arrived, so the same rows always give the same bytes.
- `write_jsonl`: one JSON object a line, written as the rows come; `read_jsonl` reads one
  back (gold sets, predictions, evaluation sets), naming the file and line of a bad one.

Every file is written under a temporary name and renamed when complete.
"""

from __future__ import annotations

import json
import math
import os
from pathlib import Path
from typing import Any, Iterable, Iterator, Sequence

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from synth.errors import BadInput

CHUNK_ROWS = 10_000  # rows held at once by a sort chunk, a read batch and a parquet row group
SPILL_OPTIONS = pa.ipc.IpcWriteOptions(compression="lz4")


def parquet_files(path: Path) -> list[Path]:
    return sorted(Path(path).glob("*.parquet"))


def unified_schema(files: Sequence[Path], columns: Sequence[str] | None = None) -> pa.Schema:
    """The schema of all `files` together (fields in order of first appearance), limited to `columns`."""
    if not files:
        return pa.schema([])
    schema = pa.unify_schemas([pq.read_schema(f) for f in files], promote_options="default")
    if columns is not None:
        schema = pa.schema([schema.field(c) for c in columns if c in schema.names])
    return schema.remove_metadata()


def batches(files: Sequence[Path], schema: pa.Schema) -> Iterator[pa.RecordBatch]:
    """The rows of `files` in file order, as batches of `schema`'s columns (nulls where a file lacks one)."""
    for path in files:
        parquet = pq.ParquetFile(path)
        present = set(parquet.schema_arrow.names)
        for batch in parquet.iter_batches(batch_size=CHUNK_ROWS, columns=[c for c in schema.names if c in present]):
            yield conform(batch, schema)


def conform(batch: pa.RecordBatch, schema: pa.Schema) -> pa.RecordBatch:
    names = batch.schema.names
    arrays = [batch.column(f.name).cast(f.type) if f.name in names else pa.nulls(len(batch), f.type) for f in schema]
    return pa.RecordBatch.from_arrays(arrays, schema=schema)


def read_column(files: Sequence[Path], column: str) -> pa.ChunkedArray:
    """One column of every file (empty when no file has it)."""
    parts = [pq.read_table(f, columns=[column]).column(column) for f in files if column in pq.read_schema(f).names]
    return pa.chunked_array([c for part in parts for c in part.chunks], type=parts[0].type) if parts \
        else pa.chunked_array([], type=pa.string())


def with_ids(tables: Iterable[pa.Table], ids: Any) -> Iterator[pa.Table]:
    """The rows of `tables` whose id is in `ids`, in order."""
    value_set = pa.array(ids, type=pa.string())
    for table in tables:
        yield table.filter(pc.is_in(table.column("id"), value_set=value_set))


class SortedRows:
    """The rows of `source` (batches of `schema`) sorted by `sort_keys` (id first), one chunk at a time.

    `ids` is every id the batches hold. One pass over `source` spreads its rows into temporary
    Arrow files under `tmp`, one per range of `CHUNK_ROWS` consecutive ids; each file is then
    sorted once. Iterating (as often as needed) reads one range at a time, in id order, so at
    most about `CHUNK_ROWS` rows are in memory. Rows with the same id land in the same range.
    """

    def __init__(self, source: Iterable[pa.RecordBatch], ids: Any, schema: pa.Schema, tmp: Path,
                 sort_keys: Sequence[str] = ("id",)):
        ordered = np.sort(_strings(ids))
        self.rows, self.schema = len(ordered), schema
        bounds = ordered[CHUNK_ROWS::CHUNK_ROWS]  # the first id of every range after the first
        tmp = Path(tmp)
        tmp.mkdir(parents=True)
        self._paths = [tmp / f"{i:05d}.arrow" for i in range(len(bounds) + 1)]
        writers: dict[int, pa.ipc.RecordBatchFileWriter] = {}
        try:
            for batch in source:
                chunk = np.searchsorted(bounds, _strings(batch.column("id")), side="right")
                for i in np.unique(chunk):
                    if i not in writers:
                        writers[i] = pa.ipc.new_file(self._paths[i], schema, options=SPILL_OPTIONS)
                    writers[i].write_batch(batch.filter(pa.array(chunk == i)))
        finally:
            for writer in writers.values():
                writer.close()
        order = [(key, "ascending") for key in sort_keys]
        for i in writers:
            table = _read_spill(self._paths[i]).sort_by(order)
            with pa.ipc.new_file(self._paths[i], schema, options=SPILL_OPTIONS) as writer:
                writer.write_table(table)

    def __iter__(self) -> Iterator[pa.Table]:
        for path in self._paths:
            if path.exists():
                yield _read_spill(path)


def _strings(values: Any) -> np.ndarray:
    if isinstance(values, (pa.Array, pa.ChunkedArray)):
        values = values.to_numpy(zero_copy_only=False)
    return np.asarray(values, dtype=str)


def _read_spill(path: Path) -> pa.Table:
    with pa.OSFile(str(path)) as f:
        return pa.ipc.open_file(f).read_all()


def shard_paths(directory: Path, split: str, rows: int, rows_per_file: int) -> list[Path]:
    """Hugging Face shard names, `<directory>/<split>-00000-of-00003.parquet`; one file at least."""
    n = max(1, math.ceil(rows / rows_per_file))
    return [Path(directory) / f"{split}-{i:05d}-of-{n:05d}.parquet" for i in range(n)]


def write_parquet(paths: Sequence[Path], schema: pa.Schema, tables: Iterable[pa.Table],
                  rows_per_file: int | None = None) -> int:
    """Write `tables` in order: `paths[i]` gets rows [i·rows_per_file, (i+1)·rows_per_file) (all rows
    in `paths[0]` when rows_per_file is None), in row groups of CHUNK_ROWS rows counted from each
    file's start. Every path is written, empty ones with the schema. Returns the rows written."""
    limit = rows_per_file or math.inf
    pending: list[pa.Table] = []
    n_pending = index = in_file = total = 0
    writer: pq.ParquetWriter | None = None

    def finish() -> None:
        nonlocal writer, index, in_file
        if writer is None:
            writer = pq.ParquetWriter(_tmp(paths[index]), schema)
        writer.close()
        os.replace(_tmp(paths[index]), paths[index])
        writer, index, in_file = None, index + 1, 0

    def flush(final: bool) -> None:
        nonlocal pending, n_pending, writer, in_file, total
        while n_pending and (final or n_pending >= min(CHUNK_ROWS, limit - in_file)):
            take = int(min(CHUNK_ROWS, limit - in_file, n_pending))
            rows = pa.concat_tables(pending)
            if writer is None:
                Path(paths[index]).parent.mkdir(parents=True, exist_ok=True)
                writer = pq.ParquetWriter(_tmp(paths[index]), schema)
            writer.write_table(rows.slice(0, take), row_group_size=take)
            pending, n_pending = [rows.slice(take)], n_pending - take
            in_file, total = in_file + take, total + take
            if in_file == limit:
                finish()

    for table in tables:
        pending.append(table.cast(schema) if table.schema != schema else table)
        n_pending += len(table)
        flush(final=False)
    flush(final=True)
    while index < len(paths):  # the last file, and files no row reached
        Path(paths[index]).parent.mkdir(parents=True, exist_ok=True)
        finish()
    return total


def read_text_file(path: Path, what: str) -> str:
    """A UTF-8 file's text; BadInput naming the file (`what` says which: "gold file", "task file" ...)
    when it is missing, a directory, not UTF-8 or unreadable."""
    try:
        return Path(path).read_text(encoding="utf-8")
    except FileNotFoundError:
        raise BadInput(f"{path}: {what} not found") from None
    except IsADirectoryError:
        raise BadInput(f"{path}: {what} is a directory") from None
    except UnicodeDecodeError as e:
        raise BadInput(f"{path}: {what} is not UTF-8 ({e.reason} at byte {e.start})") from None
    except OSError as e:
        raise BadInput(f"{path}: cannot read {what}: {e.strerror}") from None


def read_jsonl(path: Path, what: str) -> Iterator[tuple[int, dict[str, Any]]]:
    """(line number, object) per non-blank line of a JSON-lines file; BadInput naming the file
    (`what` says which: gold, predictions, evaluation ...) and the line where it is not one."""
    path = Path(path)
    text = read_text_file(path, f"{what} file")
    for number, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as e:
            raise BadInput(f"{path}: line {number}: not valid JSON ({e.msg}, column {e.colno})") from None
        if not isinstance(row, dict):
            raise BadInput(f"{path}: line {number}: expected a JSON object, got {type(row).__name__}")
        yield number, row


def write_jsonl(path: Path, rows: Iterable[dict[str, Any]]) -> int:
    """One JSON object a line (Chinese kept as is), written as `rows` come. Returns the lines written."""
    path = Path(path)
    tmp = _tmp(path)
    n = 0
    with tmp.open("w", encoding="utf-8") as f:
        for row in rows:
            f.write(json.dumps(row, ensure_ascii=False) + "\n")
            n += 1
    os.replace(tmp, path)
    return n


def _tmp(path: Path) -> Path:
    path = Path(path)
    return path.with_name(f".{path.name}.tmp")
