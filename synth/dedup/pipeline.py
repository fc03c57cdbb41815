"""`deduplicate` and `mark_duplicates`: the steps of `synth/dedup/steps.py` on one of two executors.

- `local` (`synth/dedup/local.py`): the input's batches stream into this process, the
  per-batch steps run in a pool of local processes, the band keys are sorted in one numpy
  sort. For one machine.
- `ray`: every step is a Ray Data operator.
  Pass 1 (streaming `map_batches`): `band_rows` per batch, ~20 bytes per band per document
    go on; texts and shingles are dropped per batch.
  Shuffle: the (key, node) rows are sorted by key across workers; each sorted block holds
    every row of its keys, and `bucket_edges` turns runs of equal keys into candidate edges.
  Driver: the (small) edge list is cut into connected components.
  Pass 2 (streaming): `candidate_rows` re-shingles the candidates; their rows are sorted by
    component, so one block holds whole components, and `verify_components` verifies and
    clusters them.
  For a cluster, where the input is bigger than one machine.
`executor: auto` (the default) takes `local` unless Ray runs on more than one node.

Either way the removed rows are then looked up by id hash (`mark_rows`) in one lazy
`map_batches` over the input. Every step is a deterministic function of the rows,
independent of block layout, worker count and executor.
"""

from __future__ import annotations

import contextlib
import logging
import time
from collections.abc import Iterator
from typing import Any

import numpy as np
import pyarrow as pa
import ray
import ray.data

from synth.dedup import local
from synth.dedup.settings import DedupConfig
from synth.dedup.steps import (band_rows, bucket_edges, candidate_components, candidate_rows, empty_removed,
                               ids_with_nodes, mark_rows, removed_lookup, verify_components)

log = logging.getLogger(__name__)

# Rows per block entering a sort (band rows are 16 bytes: 32 MB blocks).
SORT_BLOCK_ROWS = 2_000_000


_GET_CACHE: dict[str, Any] = {}


def cached_get(ref: Any) -> Any:
    """ray.get with a per-process cache: broadcast tables are fetched once per worker."""
    if not isinstance(ref, ray.ObjectRef):
        return ref
    key = ref.hex()
    if key not in _GET_CACHE:
        if len(_GET_CACHE) > 16:
            _GET_CACHE.clear()
        _GET_CACHE[key] = ray.get(ref)
    return _GET_CACHE[key]


def executor_of(config: DedupConfig) -> str:
    """`local` or `ray`: the configured executor, `auto` resolved (ray only on a multi-node cluster)."""
    if config.executor != "auto":
        return config.executor
    if not ray.is_initialized():
        return "local"
    return "ray" if sum(1 for node in ray.nodes() if node.get("Alive")) > 1 else "local"


def _map_kwargs(config: DedupConfig) -> dict[str, Any]:
    if config.concurrency is None:
        return {}
    return {"compute": ray.data.TaskPoolStrategy(size=config.concurrency)}


@contextlib.contextmanager
def _sort_shuffle(ds: ray.data.Dataset) -> Iterator[None]:
    """Run shuffles of datasets derived from `ds` with Ray Data's pull-based sort.

    On small clusters it is several times faster than the default hash shuffle
    (whose aggregator actors compete with the map tasks for CPUs): 2.3M band rows
    sort in ~1.5 s vs ~8 s on 2 cores. The caller's setting is restored afterwards.
    """
    from ray.data.context import ShuffleStrategy

    ctx = ds.context
    before = ctx.shuffle_strategy
    ctx.shuffle_strategy = ShuffleStrategy.SORT_SHUFFLE_PULL_BASED
    try:
        yield
    finally:
        ctx.shuffle_strategy = before


def _collect(ds: ray.data.Dataset, step: str) -> pa.Table | None:
    started = time.perf_counter()
    tables = [t for t in ray.get(ds.to_arrow_refs()) if t.num_rows]
    log.info("dedup: %s took %.1fs", step, time.perf_counter() - started)
    if log.isEnabledFor(logging.DEBUG):
        log.debug("%s", ds.stats())
    return pa.concat_tables(tables) if tables else None


# Ray Data's operators: the steps, with broadcast tables fetched once per worker.

def _candidate_rows(batch: pa.Table, candidates_ref: Any, **kwargs: Any) -> pa.Table:
    return candidate_rows(batch, candidates=cached_get(candidates_ref), **kwargs)


def _verify_components(batch: pa.Table, large_edges_ref: Any, **kwargs: Any) -> pa.Table:
    return verify_components(batch, large_edges=cached_get(large_edges_ref), **kwargs)


def _mark_rows(batch: pa.Table, removed_ref: Any, **kwargs: Any) -> pa.Table:
    return mark_rows(batch, removed=cached_get(removed_ref), **kwargs)


def _check_fields(ds: ray.data.Dataset, text_field: str, id_field: str) -> None:
    schema = ds.schema(fetch_if_missing=False)
    if schema is not None:
        for role, field in (("text", text_field), ("id", id_field)):
            if field not in schema.names:
                raise ValueError(f"{role} field {field!r} is not a column of the input (columns: {', '.join(schema.names)})")


def removed_rows(ds: ray.data.Dataset, text_field: str, id_field: str, config: DedupConfig) -> tuple[np.ndarray, pa.Table]:
    """The removed rows' id hashes (sorted) and their table (id, duplicate_of, similarity, reason)."""
    _check_fields(ds, text_field, id_field)
    columns = [id_field, text_field] if id_field != text_field else [id_field]
    if executor_of(config) == "local":
        source = ds.select_columns(columns)
        return local.removed_rows(
            lambda: source.iter_batches(batch_size=config.batch_size, batch_format="pyarrow"),
            text_field, id_field, config)
    return _removed_rows_on_ray(ds.select_columns(columns), text_field, id_field, config)


def _removed_rows_on_ray(ds: ray.data.Dataset, text_field: str, id_field: str, config: DedupConfig) -> tuple[np.ndarray, pa.Table]:
    # Blocks of 16 batches, streamed: a huge input block would be one task on one
    # core, one-row blocks are slow, and every block of pass 1 becomes a sort input
    # (N blocks make N*N small shuffle objects held by the driver).
    source = ds.repartition(target_num_rows_per_block=16 * config.batch_size)
    common = dict(batch_format="pyarrow", **_map_kwargs(config))
    with _sort_shuffle(ds):
        edges_ds = (
            source.map_batches(band_rows, batch_size=config.batch_size,
                               fn_kwargs={"text_field": text_field, "id_field": id_field, "config": config}, **common)
            .repartition(target_num_rows_per_block=SORT_BLOCK_ROWS)
            .sort("key")
            .map_batches(bucket_edges, batch_size=None, batch_format="pyarrow")
        )

        def duplicate_ids(nodes: np.ndarray) -> list[str]:
            wanted = nodes[:5]
            found = _collect(source.map_batches(lambda batch: pa.table({"id": ids_with_nodes(batch, id_field, wanted)}),
                                                batch_format="pyarrow"), "duplicate id lookup")
            return sorted(set(found["id"].to_pylist())) if found is not None else []

        components = candidate_components(_collect(edges_ds, "signatures and band-key shuffle"), id_field, duplicate_ids)
        if components is None:
            return removed_lookup(None)
        log.info("dedup: %s", components)
        verified_ds = (
            source.map_batches(
                _candidate_rows, batch_size=config.batch_size,
                fn_kwargs={"text_field": text_field, "id_field": id_field, "config": config,
                           "candidates_ref": ray.put(components.candidates)},
                **common,
            )
            .repartition(target_num_rows_per_block=SORT_BLOCK_ROWS // 64)  # rows carry shingle sets
            .sort("comp")
            .map_batches(_verify_components, batch_size=None, batch_format="pyarrow",
                         fn_kwargs={"config": config, "large_edges_ref": ray.put(components.large_edges)})
        )
        return removed_lookup(_collect(verified_ds, "candidate verification"))


def _mark(ds: ray.data.Dataset, id_field: str, removed: tuple[np.ndarray, pa.Table], want_removed: bool | None) -> ray.data.Dataset:
    return ds.map_batches(_mark_rows, batch_format="pyarrow",
                          fn_kwargs={"id_field": id_field, "removed_ref": ray.put(removed), "want_removed": want_removed})


def deduplicate(
    ds: ray.data.Dataset, text_field: str, id_field: str, config: DedupConfig
) -> tuple[ray.data.Dataset, ray.data.Dataset]:
    if not config.enabled:
        return ds, _mark(ds, id_field, removed_lookup(None), True)
    found = removed_rows(ds, text_field, id_field, config)
    return _mark(ds, id_field, found, False), _mark(ds, id_field, found, True)


def mark_duplicates(ds: ray.data.Dataset, text_field: str, id_field: str, config: DedupConfig,
                    compared: ray.data.Dataset | None = None) -> ray.data.Dataset:
    """Every row of `ds`, in one pass, with `duplicate_of`, `similarity` and `reason` ("" if kept);
    `compared` (default: `ds`) holds the rows compared, by id, with their text."""
    compared = ds if compared is None else compared
    found = removed_rows(compared, text_field, id_field, config) if config.enabled else removed_lookup(None)
    return _mark(ds, id_field, found, None)


__all__ = ["cached_get", "deduplicate", "empty_removed", "executor_of", "mark_duplicates", "removed_rows"]
