"""The request cache: an LLM request already answered is never sent again.

A request's key is a hash of everything that determines its answer: the model
(name, id, prompt style), the system and user prompt, the conversation before it
(`history`, when there is one), the sampling parameters, the seed and the JSON
schema. The cache is data: a directory of parquet shards per model,
`<build>/cache/requests/<model>/`, each row a key and its answer (`cache_key` +
RESULT_COLUMNS). Failed requests are not cached (a rerun retries them). This is
also what makes rebuilds incremental: after a template, a seed pool or a model
changes, only the requests whose prompt or model changed miss.

Lookup (`lookup`) is a Ray Data left-outer join of the keyed requests with
`read_parquet(<shards>)` on `cache_key`: rows that found an answer are hits,
the rest are sent. No key set is held by the driver and no actor holds every
answer; a model without shards (a first build) skips the join. A small lookup (requests and
cached rows together under `LOCAL_LOOKUP_ROWS`) is the same left-outer match done in this
process with pyarrow: a shuffle's actors are new worker processes, which cost seconds each,
more than matching a few thousand keys.

Writing (`write_to_cache`) happens *while the engine streams*: each finished
batch's answers become one shard, written to a temporary name and renamed, so a
build killed mid-stage keeps every batch that finished. A shard is named by a
hash of its keys (`batch-<hash>.parquet`), so a retried Ray task overwrites its
own shard instead of adding a copy.

Compaction (`compact_cache`) rewrites the shards as a few key-range shards
(`compacted-<hash>.parquet`, sorted and unique by key). It writes every new
shard before deleting any old one, so a crash leaves each answer present once
or duplicated, never lost. Duplicates (a crash during compaction, a request
answered twice) are harmless: a lookup that sees a key matched twice compacts
and joins again, so a request never becomes two rows.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import os
import uuid
from collections.abc import Iterable
from pathlib import Path

import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.dataset as pads
import pyarrow.parquet as pq
import ray.data

from synth import storage
from synth.config import ModelSpec
from synth.engines.base import RESULT_COLUMNS, history_json
from synth.rows import to_arrow

log = logging.getLogger("synth")

KEY_COLUMN = "cache_key"
HIT_COLUMN = "_cache_hit"  # set by `lookup`: the row's answer came from the cache
_KEYED = ("system", "prompt", "seed", "json_schema", "temperature", "top_p", "top_k", "max_tokens", "stop")
BATCH_PREFIX = "batch-"  # one engine batch's answers (older caches have unprefixed uuid names)
COMPACTED_PREFIX = "compacted-"  # written by `compact_cache`
COMPACT_AFTER_SHARDS = 64  # compact a model's cache once it has more batch shards than this
COMPACTED_SHARD_ROWS = 100_000  # rows per compacted shard (one is in memory at a time)
LOOKUP_ROWS_PER_PARTITION = 100_000  # join partitions: (requests + cached rows) / this
LOCAL_LOOKUP_ROWS = 20_000  # up to this many requests + cached rows, the lookup runs in this process


def model_identity(name: str, spec: ModelSpec) -> str:
    return json.dumps({"name": name, "model": spec.model, "style": spec.prompt_style, "engine": spec.engine},
                      sort_keys=True)


def add_keys(batch: pd.DataFrame, identity: str) -> pd.DataFrame:
    keys = []
    top = batch["top_logprobs"] if "top_logprobs" in batch else [0] * len(batch)
    histories = batch["history"] if "history" in batch else [""] * len(batch)
    for row, top_logprobs, history in zip(batch[list(_KEYED)].itertuples(index=False), top, histories):
        values = [list(v) if hasattr(v, "tolist") else v for v in row]
        # A request for log-probabilities has its own key (and one without keeps the key it
        # had before they existed): an answer cached without them is asked again, not misread.
        if int(top_logprobs or 0):
            values.append({"top_logprobs": int(top_logprobs)})
        # Likewise the conversation before the prompt: a single-turn request (no history,
        # "" or no column at all) keeps the key it had before histories existed.
        history = history_json(history)
        if history:
            values.append({"history": history})
        payload = json.dumps([identity, *values], ensure_ascii=False, default=str)
        keys.append(hashlib.sha256(payload.encode("utf-8")).hexdigest()[:32])
    return batch.assign(**{KEY_COLUMN: keys})


def shard_paths(cache_dir: Path | str) -> list[Path]:
    """The cache's shards (locations: Paths, or URIs on an object store; see synth.storage)."""
    return storage.files(storage.location(cache_dir))


def batch_shard_count(cache_dir: Path | str) -> int:
    """Shards not (yet) compacted: what `compact_cache` would merge."""
    return sum(1 for s in shard_paths(cache_dir) if not storage.name(s).startswith(COMPACTED_PREFIX))


def cached_keys(cache_dir: Path) -> set[str]:
    """Every key in a model's cache, read into one set: for tests and tools. The build
    never does this; it looks keys up with `lookup`."""
    keys: set[str] = set()
    for shard in shard_paths(cache_dir):
        keys.update(storage.read_table(shard, columns=[KEY_COLUMN]).column(KEY_COLUMN).to_pylist())
    return keys


# --- lookup -------------------------------------------------------------------------


def lookup(keyed: ray.data.Dataset, cache_dir: Path | str) -> ray.data.Dataset | None:
    """The keyed requests (materialized) with the cache's answers joined on: RESULT_COLUMNS
    (null for a miss) and HIT_COLUMN, one row per request, materialized. None if the
    cache has no shard (nothing can hit: no join is run)."""
    shards = shard_paths(cache_dir)
    if not shards or not _any_cached(keyed, shards):
        return None
    columns, total = keyed.columns(), keyed.count()
    for _ in range(2):  # a second join only after compacting away duplicate keys
        cached_rows = sum(storage.parquet_file(s).metadata.num_rows for s in shards)
        if total + cached_rows <= LOCAL_LOOKUP_ROWS:
            joined = _local_lookup(keyed, shards, columns)
            if joined is not None:
                return joined
            log.info("request cache %s has duplicate keys: compacting before the lookup", cache_dir)
            compact_cache(cache_dir)
            shards = shard_paths(cache_dir)
            continue
        paths, filesystem = storage.ray_paths(shards)
        answers = ray.data.read_parquet(paths, filesystem=filesystem).map_batches(_answers, batch_format="pyarrow")
        partitions = max(1, math.ceil((total + cached_rows) / LOOKUP_ROWS_PER_PARTITION))
        joined = (keyed.join(answers, "left_outer", num_partitions=partitions, on=(KEY_COLUMN,))
                  .map_batches(_restore_columns, fn_kwargs={"columns": columns}, batch_format="pyarrow")
                  .materialize())
        if joined.count() == total:
            return joined
        # A key stored twice matched twice. Compaction leaves every key once.
        log.info("request cache %s has duplicate keys: compacting before the lookup", cache_dir)
        compact_cache(cache_dir)
        shards = shard_paths(cache_dir)
    raise RuntimeError(f"request cache {cache_dir} still has duplicate keys after compaction")


def _any_cached(keyed: ray.data.Dataset, shards: list) -> bool:
    """Whether any request's key is in the cache, from the key columns alone (16 bytes per
    key read, no join): a model's first requests of a build, whose cache holds only another
    stage's answers, skip the join (a Ray Data hash shuffle of every request and cached row)."""
    # shards written by different writers may store the key as string or large_string
    cached = pa.chunked_array([pc.cast(storage.read_table(s, columns=[KEY_COLUMN])[KEY_COLUMN], pa.large_string())
                               for s in shards]).combine_chunks()
    return any(pc.any(pc.is_in(pc.cast(t[KEY_COLUMN], pa.large_string()), value_set=cached)).as_py()
               for t in ray.get(keyed.select_columns([KEY_COLUMN]).to_arrow_refs()) if t.num_rows)


def _local_lookup(keyed: ray.data.Dataset, shards: list, columns: list[str]) -> ray.data.Dataset | None:
    """`lookup` of a small request set, in this process: the rows and columns the join gives
    (RESULT_COLUMNS null for a miss, HIT_COLUMN), or None if a key is stored twice."""
    requests = pa.concat_tables(ray.get(keyed.to_arrow_refs()), promote_options="permissive")
    answers = pa.concat_tables([_answers(storage.read_table(s)) for s in shards], promote_options="permissive")
    if pc.count_distinct(answers[KEY_COLUMN]).as_py() != answers.num_rows:
        return None
    found = pc.index_in(requests[KEY_COLUMN], value_set=answers[KEY_COLUMN])  # null for a miss
    table = requests.select(columns)
    for column in RESULT_COLUMNS:
        table = table.append_column(column, answers[column].take(found))
    return ray.data.from_arrow(table.append_column(HIT_COLUMN, pc.is_valid(found)))


def lookup_counts(looked_up: ray.data.Dataset, column: str) -> tuple[int, dict[str, int]]:
    """(hits, misses by `column`) of a `lookup` result, counted block by block."""
    counts = looked_up.select_columns([column, HIT_COLUMN]).map_batches(
        _count_groups, fn_kwargs={"columns": [column, HIT_COLUMN]}, batch_format="pyarrow", batch_size=None)
    hits, misses = 0, {}
    for row in counts.iter_rows():
        if row[HIT_COLUMN]:
            hits += row["n"]
        else:
            misses[str(row[column])] = misses.get(str(row[column]), 0) + row["n"]
    return hits, misses


def only_hits(table: pa.Table) -> pa.Table:
    """Ray Data function (pyarrow) on a `lookup` result: the answered rows, as an engine returns them."""
    return table.filter(table[HIT_COLUMN]).drop_columns([HIT_COLUMN])


def only_misses(table: pa.Table) -> pa.Table:
    """Ray Data function (pyarrow) on a `lookup` result: the rows still to send, as requests."""
    return table.filter(pc.invert(table[HIT_COLUMN])).drop_columns([HIT_COLUMN, *RESULT_COLUMNS])


def _answers(table: pa.Table) -> pa.Table:
    """A shard's rows as the lookup joins them: the key, RESULT_COLUMNS, the hit flag."""
    table = with_result_columns(table).select([KEY_COLUMN, *RESULT_COLUMNS])
    return table.append_column(HIT_COLUMN, pa.repeat(pa.scalar(True), table.num_rows))


def with_result_columns(table: pa.Table) -> pa.Table:
    """A shard written before a result column existed (`logprobs`) gets it empty: its
    requests asked for none (a request for them has a key of its own, see `add_keys`)."""
    if "logprobs" not in table.column_names:
        return table.append_column("logprobs", pa.repeat(pa.scalar("", pa.string()), table.num_rows))
    # a reader that unified the shards' schemas gives the old rows nulls
    index = table.schema.get_field_index("logprobs")
    return table.set_column(index, "logprobs", pc.fill_null(table.column(index), ""))


def _restore_columns(table: pa.Table, columns: list[str]) -> pa.Table:
    """Undo what the join changes: the column order (it moves list and struct columns
    last) and the hit flag (null for a miss)."""
    table = table.select([*columns, *RESULT_COLUMNS, HIT_COLUMN])
    return table.set_column(table.num_columns - 1, HIT_COLUMN, pc.is_valid(table[HIT_COLUMN]))


def _count_groups(table: pa.Table, columns: list[str]) -> pa.Table:
    return table.group_by(columns).aggregate([([], "count_all")]).rename_columns([*columns, "n"])


# --- writing ------------------------------------------------------------------------


def write_to_cache(batch: pd.DataFrame, cache_dir: str) -> pd.DataFrame:
    """Ray Data function: writes a finished batch's successful answers as one shard, atomically,
    named by its keys (a retried task rewrites the same shard)."""
    done = batch[batch["error"] == ""][[KEY_COLUMN, *RESULT_COLUMNS]].drop_duplicates(KEY_COLUMN)
    if len(done):
        _write_shard(cache_dir, to_arrow(done), BATCH_PREFIX)
        if os.environ.get("SYNTH_FAULT"):  # counting shards costs a listing: only for fault tests
            _fault_point("cache_shard_written", len(shard_paths(cache_dir)))
    return batch


def shard_name(keys: Iterable[str], prefix: str = BATCH_PREFIX) -> str:
    """A shard's file name: a hash of its (distinct) keys, whatever their order."""
    digest = hashlib.sha256("\n".join(sorted(set(keys))).encode("utf-8")).hexdigest()[:32]
    return f"{prefix}{digest}.parquet"


def _write_shard(directory: Path | str, table: pa.Table, prefix: str) -> Path | str:
    """Atomically: a local file under a unique temporary name then renamed (two writers of one
    name never mix), an object in one PUT (synth.storage.write_table)."""
    directory = storage.location(directory)
    path = storage.join(directory, shard_name(table.column(KEY_COLUMN).to_pylist(), prefix))
    storage.write_table(path, table)
    return path


# --- compaction ---------------------------------------------------------------------


def compact_cache(cache_dir: Path | str, target_rows: int = COMPACTED_SHARD_ROWS) -> int:
    """Rewrite a model's cache as ceil(rows / target_rows) shards, each holding one range of
    keys, sorted and unique by key; returns how many shards there are now.

    One key range is in memory at a time (each range is read from every shard with a key
    filter; compacted shards, sorted, are skipped by their statistics). All new shards are
    written (temporary name, rename) before any old one is deleted: a crash at any point
    leaves every answer readable, at worst twice, which `lookup` tolerates."""
    directory = storage.location(cache_dir)
    shards = shard_paths(directory)
    if not shards:
        return 0
    rows = sum(storage.parquet_file(s).metadata.num_rows for s in shards)
    ranges = max(1, math.ceil(rows / target_rows))
    paths, filesystem = storage.ray_paths(shards)
    # shards written before a result column existed lack it: read with every shard's columns
    schema = pa.unify_schemas([storage.parquet_file(s).schema_arrow for s in shards])
    schema = with_result_columns(schema.empty_table()).schema
    source = pads.dataset(paths, schema=schema, format="parquet", filesystem=filesystem)
    written: set[Path | str] = set()
    for i in range(ranges):
        table = source.to_table(columns=[KEY_COLUMN, *RESULT_COLUMNS], filter=_key_range(i, ranges))
        table = with_result_columns(table)
        if table.num_rows:
            written.add(_write_shard(directory, _unique_by_key(table), COMPACTED_PREFIX))
    for shard in shards:
        if shard not in written:  # an unchanged compacted shard was rewritten in place
            storage.delete(shard)
    log.info("compacted request cache %s: %d shards → %d (%d rows in)", directory, len(shards), len(written), rows)
    return len(written)


def _key_range(i: int, n: int) -> pc.Expression | None:
    """The i-th of n ranges that split all strings; keys are hex digests, so the ranges are
    about equally full. Bounds compare as strings: 8 hex digits order like their values."""
    key = pc.field(KEY_COLUMN)
    low = key >= f"{i * 16**8 // n:08x}" if i > 0 else None
    high = key < f"{(i + 1) * 16**8 // n:08x}" if i < n - 1 else None
    if low is not None and high is not None:
        return low & high
    return low if low is not None else high


def _unique_by_key(table: pa.Table) -> pa.Table:
    """Sorted by key, the first row of each key kept (the sort is stable)."""
    table = table.sort_by(KEY_COLUMN)
    if table.num_rows < 2:
        return table
    keys = table.column(KEY_COLUMN)
    changed = pc.not_equal(keys.slice(1), keys.slice(0, table.num_rows - 1))
    return table.filter(pa.concat_arrays([pa.array([True]), *changed.chunks]))


# --- the audit trail ----------------------------------------------------------------


def log_sent(batch: pd.DataFrame, log_dir: str) -> pd.DataFrame:
    """Ray Data function: records the keys of a batch about to be sent to the engine."""
    if len(batch):
        directory = storage.location(log_dir)
        storage.write_bytes(storage.join(directory, f"{uuid.uuid4().hex}.txt"),
                            ("\n".join(batch[KEY_COLUMN]) + "\n").encode())
    return batch


def sent_keys(log_dir: Path) -> list[str]:
    """Every key ever sent (with repeats, if a request was sent twice)."""
    directory = storage.location(log_dir)
    return [k for f in storage.files(directory, ".txt") for k in storage.read_bytes(f).decode().split()]


def _fault_point(name: str, count: int) -> None:
    from synth.faults import fault_point

    fault_point(name, count)
