"""`synth dedup INPUT --text-field F [--id-field id] [--threshold 0.8] --out OUT` and
`synth decontaminate INPUT --against EVAL [--against EVAL2 ...] --text-field F
[--against-field G] [--against-id-field id] [--threshold 0.7] --out OUT`.

INPUT is a .jsonl file, a .parquet file or a folder of parquet files. Writes
OUT/kept/ and OUT/removed/ as parquet (all input columns; removed rows add
`duplicate_of`, `similarity` and `reason` for dedup; `contaminated_by` (the evaluation
item's id), `contamination_similarity` and `reason` ("contaminated: <set>") for
decontaminate) and prints a one-line summary.

Bad input (missing file or field, unreadable file, empty input, duplicate ids, an
evaluation file that is missing, empty, malformed or lacks its text or id field, an
existing non-empty OUT) prints an error naming the file and field on stderr and
returns 2 with nothing written: results are written to a temporary folder beside
OUT and renamed into place only when complete.
"""

from __future__ import annotations

import logging
import os
import shutil
import sys
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field as dataclass_field
from pathlib import Path

import pyarrow as pa

from synth.dedup.settings import DecontaminateConfig, DedupConfig, DuplicateIdError
from synth.errors import BadInput

log = logging.getLogger(__name__)


class _BadInput(Exception):
    pass


@dataclass
class _Input:
    kind: str  # "jsonl" | "parquet"
    files: list[Path]
    rows: int
    schema: pa.Schema
    parsed: dict[Path, pa.Table] = dataclass_field(default_factory=dict)  # a jsonl file, parsed once for every pass


def _is_text(t: pa.DataType) -> bool:
    return pa.types.is_string(t) or pa.types.is_large_string(t) or pa.types.is_null(t)


def _id_ok(t: pa.DataType) -> bool:
    return _is_text(t) or pa.types.is_integer(t)


def _json_parse_options(text_field: str):
    import pyarrow.json as pj

    return pj.ParseOptions(explicit_schema=pa.schema([(text_field, pa.string())]))


def _check_columns(path: Path, schema: pa.Schema, text_field: str, id_field: str | None) -> None:
    for role, field in (("text", text_field), ("id", id_field)):
        if field is not None and field not in schema.names:
            raise _BadInput(
                f"{path}: no field {field!r} (--{role}-field); fields are: {', '.join(schema.names) or '(none)'}"
            )
    if not _is_text(schema.field(text_field).type):
        raise _BadInput(f"{path}: field {text_field!r} is {schema.field(text_field).type}, expected text")
    if id_field is not None and not _id_ok(schema.field(id_field).type):
        raise _BadInput(f"{path}: field {id_field!r} is {schema.field(id_field).type}, expected a string or integer id")


def _scan_input(path: Path, text_field: str, id_field: str | None) -> _Input:
    """Check the input before any work: fields present and typed, ids set (unless `id_field`
    is None: no ids needed), rows > 0."""
    if not path.exists():
        raise _BadInput(f"{path}: no such file or folder")
    if path.is_dir():
        files = sorted(p for p in path.rglob("*.parquet") if p.is_file())
        if not files:
            raise _BadInput(f"{path}: folder holds no .parquet files")
        kind = "parquet"
    elif path.suffix.lower() in (".jsonl", ".ndjson", ".json"):
        files, kind = [path], "jsonl"
        if path.is_file() and not path.read_bytes()[:4096].strip() and path.stat().st_size < 4096:
            raise _BadInput(f"{path}: input is empty (0 rows)")
    elif path.suffix.lower() == ".parquet":
        files, kind = [path], "parquet"
    else:
        raise _BadInput(f"{path}: unsupported input (expected a .jsonl file, a .parquet file or a folder of parquet files)")

    rows = 0
    schema: pa.Schema | None = None
    for file in files:
        try:
            if kind == "parquet":
                import pyarrow.parquet as pq

                pf = pq.ParquetFile(file)
                file_schema = pf.schema_arrow
                _check_columns(file, file_schema, text_field, id_field)
                # the ids only (null checks); the text is read by the passes themselves
                batches = pf.iter_batches(columns=[id_field], batch_size=65536) if id_field is not None else iter(())
                rows += pf.metadata.num_rows
            else:
                import pyarrow.json as pj

                reader = pj.open_json(file, parse_options=_json_parse_options(text_field))
                file_schema = reader.schema
                _check_columns(file, file_schema, text_field, id_field)
                batches = reader
            text_seen = False
            for batch in batches:
                if kind == "jsonl":
                    text_seen = text_seen or batch.column(batch.schema.get_field_index(text_field)).null_count < batch.num_rows
                    rows += batch.num_rows
                if id_field is None:
                    continue
                column = batch.column(batch.schema.get_field_index(id_field))
                if column.null_count:
                    raise _BadInput(f"{file}: field {id_field!r} is missing or null in {column.null_count} row(s)")
                if not _id_ok(column.type):
                    raise _BadInput(f"{file}: field {id_field!r} is {column.type}, expected a string or integer id")
            if kind == "jsonl" and rows and not text_seen:
                # the explicit schema makes the text field appear even where no row has it
                raise _BadInput(f"{file}: no field {text_field!r} (--text-field) in any row")
        except _BadInput:
            raise
        except (pa.ArrowException, OSError, ValueError) as e:
            raise _BadInput(f"{file}: cannot read as {kind}: {e}") from e
        schema = schema or file_schema
    if rows == 0:
        raise _BadInput(f"{path}: input is empty (0 rows)")
    assert schema is not None
    return _Input(kind=kind, files=files, rows=rows, schema=schema)


def _read(inp: _Input, text_field: str, num_blocks: int):
    import ray.data

    paths = [str(f) for f in inp.files]
    if inp.kind == "parquet":
        # Ray 2.60's default parquet reader (datasource v2) starts 32 footer-reader
        # actors per read: 10-60 s on a 2-core machine; the v1 reader takes < 1 s.
        ctx = ray.data.DataContext.get_current()
        before = ctx.use_datasource_v2
        ctx.use_datasource_v2 = False
        try:
            return ray.data.read_parquet(paths, override_num_blocks=num_blocks)
        finally:
            ctx.use_datasource_v2 = before
    return ray.data.read_json(
        paths, override_num_blocks=num_blocks, parse_options=_json_parse_options(text_field)
    )


def _executor(config: DedupConfig) -> str:
    """`local` or `ray`; `auto` runs on Ray only when RAY_ADDRESS names a cluster to join
    (on one machine Ray's start-up and shuffles cost more than the work: BENCHMARKS.md)."""
    if config.executor != "auto":
        return config.executor
    return "ray" if os.environ.get("RAY_ADDRESS") else "local"


def _local_batches(inp: _Input, text_field: str, columns: list[str] | None, batch_size: int) -> Iterator[pa.Table]:
    """The input's rows (`columns`, or all), `batch_size` at a time, read as `_read` reads them."""
    for file in inp.files:
        if inp.kind == "parquet":
            import pyarrow.parquet as pq

            for batch in pq.ParquetFile(file).iter_batches(batch_size=batch_size, columns=columns):
                yield pa.Table.from_batches([batch])
        else:
            import pyarrow.json as pj

            if file not in inp.parsed:
                inp.parsed[file] = pj.read_json(file, parse_options=_json_parse_options(text_field))
            table = inp.parsed[file]
            table = table.select(columns) if columns is not None else table
            for batch in table.to_batches(max_chunksize=batch_size):
                yield pa.Table.from_batches([batch])


class _LocalOut:
    """One parquet file in `folder`, with the schema of the first non-empty table written (an
    empty result is one empty file with `schema`)."""

    def __init__(self, folder: Path, schema: pa.Schema) -> None:
        folder.mkdir(parents=True, exist_ok=True)
        self.path, self.schema = folder / "part-00000.parquet", schema
        self.writer = None

    def write(self, table: pa.Table) -> None:
        import pyarrow.parquet as pq

        if not table.num_rows:
            return
        if self.writer is None:
            self.writer = pq.ParquetWriter(self.path, table.schema)
        if table.schema != self.writer.schema:  # another file of a folder: its columns by name, cast
            table = table.select(self.writer.schema.names).cast(self.writer.schema)
        self.writer.write_table(table)

    def close(self) -> None:
        import pyarrow.parquet as pq

        if self.writer is not None:
            self.writer.close()
        else:
            pq.write_table(self.schema.empty_table(), self.path)


def _write(ds, folder: Path, schema: pa.Schema) -> None:
    """Write `ds` as parquet into `folder`; an empty result is one empty file with the schema."""
    import pyarrow.parquet as pq

    ds.write_parquet(str(folder))
    if not folder.exists() or not any(folder.glob("*.parquet")):
        folder.mkdir(parents=True, exist_ok=True)
        pq.write_table(schema.empty_table(), folder / "part-0.parquet")


_DEDUP_REMOVED = (pa.field("duplicate_of", pa.string()), pa.field("similarity", pa.float64()),
                  pa.field("reason", pa.string()))


def _removed_schema(schema: pa.Schema, added: Sequence[pa.Field] = _DEDUP_REMOVED) -> pa.Schema:
    """The input's schema with the columns a removed row adds (replacing any of the same names)."""
    names = {f.name for f in added}
    return pa.schema([f for f in schema if f.name not in names] + list(added))


def _check_out(out: Path) -> None:
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise _BadInput(f"{out}: output already exists and is not an empty folder; remove it or choose another --out")
    if not out.parent.exists():
        raise _BadInput(f"{out.parent}: parent folder of --out does not exist")


def _num_blocks(rows: int) -> int:
    import ray

    cpus = int(ray.cluster_resources().get("CPU", 1))
    return max(2 * cpus, min(rows // 10_000, 4 * cpus * 8), 1)


def _temporary_out(out: Path) -> Path:
    """A folder beside OUT for the results, renamed to OUT when they are complete."""
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.", suffix=".tmp", dir=out.parent))
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(tmp, 0o777 & ~umask)  # mkdtemp makes it private; OUT should look like any folder
    return tmp


def _move_into_place(tmp: Path, out: Path) -> None:
    if out.exists():
        out.rmdir()  # checked empty before any work
    os.replace(tmp, out)


def _print(text: str, err: bool = False) -> None:
    print(text, file=sys.stderr if err else sys.stdout)


def run_dedup_command(
    input: Path,
    text_field: str,
    id_field: str = "id",
    threshold: float = 0.8,
    out: Path = Path("dedup-out"),
    *,
    config: DedupConfig | None = None,
    echo: Callable[..., None] | None = None,
) -> int:
    """Run `synth dedup`; returns the exit code (0 ok, 2 bad input). `echo(text, err=False)` prints
    the result line (default: stdout, an error to stderr)."""
    echo = echo or _print
    input, out = Path(input), Path(out)
    started = time.perf_counter()
    tmp: Path | None = None
    try:
        try:
            config = DedupConfig.model_validate({**(config or DedupConfig()).model_dump(), "threshold": threshold})
        except ValueError as e:
            raise _BadInput(f"--threshold {threshold}: {e}") from e
        _check_out(out)
        inp = _scan_input(input, text_field, id_field)
        if _executor(config) == "local":
            from synth.dedup import local
            from synth.dedup.steps import mark_rows

            columns = [id_field, text_field] if id_field != text_field else [id_field]
            try:
                found = local.removed_rows(lambda: _local_batches(inp, text_field, columns, config.batch_size),
                                           text_field, id_field, config, rows=inp.rows)
                tmp = _temporary_out(out)
                kept, removed = _LocalOut(tmp / "kept", inp.schema), _LocalOut(tmp / "removed", _removed_schema(inp.schema))
                for batch in _local_batches(inp, text_field, None, config.batch_size):  # one pass writes both
                    kept.write(mark_rows(batch, id_field, found, False))
                    removed.write(mark_rows(batch, id_field, found, True))
                kept.close()
                removed.close()
            except (pa.ArrowException, OSError, KeyError) as e:  # the scan reads ids only: a bad text page shows here
                raise _BadInput(f"{input}: cannot read as {inp.kind}, or its files' columns differ: {e}") from e
        else:
            from synth.session import init_ray

            init_ray()
            from synth.dedup.pipeline import deduplicate

            ds = _read(inp, text_field, _num_blocks(inp.rows))
            kept, removed = deduplicate(ds, text_field, id_field, config)

            tmp = _temporary_out(out)
            _write(kept, tmp / "kept", inp.schema)
            _write(removed, tmp / "removed", _removed_schema(inp.schema))
        import pyarrow.dataset as pds

        removed_rows = pds.dataset(tmp / "removed", format="parquet").to_table(columns=["reason"])
        n_removed = removed_rows.num_rows
        n_exact = sum(1 for r in removed_rows["reason"].to_pylist() if r == "exact_duplicate")
        _move_into_place(tmp, out)
        tmp = None
        echo(
            f"dedup: {inp.rows} rows → {inp.rows - n_removed} kept, {n_removed} removed "
            f"({n_exact} exact, {n_removed - n_exact} near duplicates) at Jaccard ≥ {config.threshold} "
            f"in {time.perf_counter() - started:.1f}s → {out}"
        )
        return 0
    except (_BadInput, DuplicateIdError) as e:
        where = f"{input}: " if isinstance(e, DuplicateIdError) else ""
        echo(f"synth dedup: error: {where}{e}", err=True)
        return 2
    finally:
        if tmp is not None:
            shutil.rmtree(tmp, ignore_errors=True)


def _eval_sets(against: Sequence[Path], text_field: str, against_field: str | None, against_id_field: str) -> list[dict]:
    """--against files as `decontaminate.against` entries, named by their stem (by their path where stems repeat)."""
    stems = [Path(a).stem for a in against]
    return [{"path": Path(a), "text_field": against_field or text_field, "id_field": against_id_field,
             "name": stem if stems.count(stem) == 1 else str(a)} for a, stem in zip(against, stems)]


def _clean(batch: pa.Table, reason_column: str, want_removed: bool) -> pa.Table:
    import pyarrow.compute as pc

    removed = pc.not_equal(batch[reason_column], "")
    if want_removed:
        return batch.filter(removed)
    from synth.dedup.decontaminate import COLUMNS

    return batch.filter(pc.invert(removed)).drop_columns([*COLUMNS, reason_column])


def run_decontaminate_command(
    input: Path,
    against: Sequence[Path],
    text_field: str,
    against_field: str | None = None,
    against_id_field: str = "id",
    threshold: float = 0.7,
    out: Path = Path("decontaminate-out"),
    *,
    config: DecontaminateConfig | None = None,
    echo: Callable[..., None] | None = None,
) -> int:
    """Run `synth decontaminate`; returns the exit code (0 ok, 2 bad input); `echo` as for dedup."""
    echo = echo or _print
    from synth.dedup.decontaminate import COLUMNS, ContaminationIndex, load_eval_sets, mark_contamination, set_of_reason

    input, out = Path(input), Path(out)
    started = time.perf_counter()
    tmp: Path | None = None
    try:
        if not against:
            raise _BadInput("--against: give at least one evaluation file")
        try:
            settings = (config or DecontaminateConfig()).model_dump(exclude={"against"})
            config = DecontaminateConfig.model_validate(
                {**settings, "threshold": threshold,
                 "against": _eval_sets(against, text_field, against_field, against_id_field)})
        except ValueError as e:
            raise _BadInput(f"--threshold {threshold} / --against: {e}") from e
        _check_out(out)
        inp = _scan_input(input, text_field, None)
        sets = load_eval_sets(config.against, [text_field])

        from synth.session import init_ray

        init_ray()
        index = ContaminationIndex(sets, config)
        ds = _read(inp, text_field, _num_blocks(inp.rows))
        marked = mark_contamination(ds, [text_field], index, batch_size=config.batch_size, reason_column="reason")

        tmp = _temporary_out(out)
        _write(marked.map_batches(_clean, batch_format="pyarrow", fn_kwargs={"reason_column": "reason", "want_removed": False}),
               tmp / "kept", inp.schema)
        added = [pa.field(COLUMNS[0], pa.string()), pa.field(COLUMNS[1], pa.float64()), pa.field("reason", pa.string())]
        _write(marked.map_batches(_clean, batch_format="pyarrow", fn_kwargs={"reason_column": "reason", "want_removed": True}),
               tmp / "removed", _removed_schema(inp.schema, added))
        import pyarrow.dataset as pds

        reasons = pds.dataset(tmp / "removed", format="parquet").to_table(columns=["reason"])["reason"].to_pylist()
        by_set = {s.name: 0 for s in sets}
        for reason in reasons:
            by_set[set_of_reason(reason)] += 1
        _move_into_place(tmp, out)
        tmp = None
        echo(
            f"decontaminate: {inp.rows} rows → {inp.rows - len(reasons)} kept, {len(reasons)} removed "
            f"({', '.join(f'{name}: {n}' for name, n in by_set.items())}; "
            f"{sum(len(s.ids) for s in sets)} evaluation items) "
            f"in {time.perf_counter() - started:.1f}s → {out}"
        )
        return 0
    except (_BadInput, BadInput) as e:
        echo(f"synth decontaminate: error: {e}", err=True)
        return 2
    finally:
        if tmp is not None:
            shutil.rmtree(tmp, ignore_errors=True)
