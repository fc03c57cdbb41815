"""Reading a build's parquet outputs for the report: only the columns asked for, texts streamed.

Shared by the report's sections (synth.report.collect), the scorecard (synth.report.scorecard)
and the export's coverage figures, so each reads rows the same way.
"""

from __future__ import annotations

from pathlib import Path
from typing import Iterator, Sequence

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from synth.stream_io import CHUNK_ROWS, parquet_files


def _files(path: Path) -> list[Path]:
    path = Path(path)
    return [path] if path.is_file() else parquet_files(path)


def _present(parquet: pq.ParquetFile, columns: Sequence[str]) -> list[str]:
    """The `columns` a file has: top-level names, or `column.field` for one field of a list of
    structs (as its parquet path, `judgements.list.element.judge`)."""
    names = set(parquet.schema_arrow.names)
    paths = [parquet.schema.column(i).path for i in range(len(parquet.schema))]
    out = []
    for c in columns:
        if c in names:
            out.append(c)
        elif "." in c:
            top, field = c.split(".", 1)
            out += [p for p in paths if p.startswith(f"{top}.") and p.endswith(f".{field}")]
    return out


def read_columns(path: Path, columns: Sequence[str]) -> pd.DataFrame:
    """Only `columns` of a parquet file or folder (those it has); empty when there is nothing."""
    tables = []
    for f in _files(path):
        parquet = pq.ParquetFile(f)
        tables.append(parquet.read(columns=_present(parquet, columns)))
    tables = [t for t in tables if t.num_columns]
    return pa.concat_tables(tables, promote_options="default").to_pandas() if tables else pd.DataFrame()


def read_texts(path: Path, column: str) -> Iterator[str]:
    """One text column of a parquet file or folder, streamed (null as "None", as `astype(str)` gives)."""
    for f in _files(path):
        parquet = pq.ParquetFile(f)
        if column in parquet.schema_arrow.names:
            for batch in parquet.iter_batches(batch_size=CHUNK_ROWS, columns=[column]):
                yield from (str(v) for v in batch.column(0).to_pylist())


def share(num: int, den: int) -> float | None:
    """num / den to four places; None where there is nothing to divide by (not measured, not 0)."""
    return round(num / den, 4) if den else None


def requested(frame: pd.DataFrame, column: str) -> pd.Series:
    """What the generator was asked for (`kind` or `subcategory`): `requested_<column>`, which
    judge_questions sets before routing may rewrite `column`; `column` itself on rows from
    before that stage (or builds without it), where the two are the same."""
    asked = f"requested_{column}"
    return frame[asked].fillna(frame[column]) if asked in frame else frame[column]
