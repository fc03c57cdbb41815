"""Near-duplicate removal on one machine: the steps of `synth/dedup/steps.py` over a pool of
local processes, with no Ray.

On one machine Ray Data's shuffles buy nothing and cost most of the time: `synth dedup` on
Ray spends ~8 s starting Ray, its workers and the sorts' tasks even for 200 documents, and
took 23.7 s for 100k documents against 12.1 s here (BENCHMARKS.md). Here the input is read twice
(signatures, then the candidates' shingles), the band keys of all documents are sorted in
one numpy sort, and the per-batch work runs in `workers` processes (none below
`POOL_MIN_ROWS` rows, where starting them costs more than it saves). The steps are the Ray
executor's, so both give the same rows (tests/test_dedup.py runs both).

Memory: the band keys of every document (~370 bytes per document at 21 bands) and the
candidates' shingle sets are held at once, so this is for what one machine holds; a
cluster runs the Ray executor (`executor: auto` picks it when Ray has several nodes).
"""

from __future__ import annotations

import functools
import logging
import multiprocessing
import os
import time
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import Future, ProcessPoolExecutor
from typing import Any

import numpy as np
import pyarrow as pa

from synth.dedup.settings import DedupConfig
from synth.dedup.steps import (band_rows, bucket_edges, candidate_components, candidate_rows, ids_with_nodes,
                               removed_lookup, verify_components)

log = logging.getLogger(__name__)

# Below this many input rows the work runs in the calling process: starting worker
# processes (~1 s each, importing numpy and pyarrow) costs more than they save.
POOL_MIN_ROWS = 20_000


def default_workers() -> int:
    """The CPUs this process may use (SYNTH_NUM_CPUS, as a build's Ray session, else all)."""
    configured = os.environ.get("SYNTH_NUM_CPUS")
    if configured and configured.isdigit() and int(configured) > 0:
        return int(configured)
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)


class _Workers:
    """Runs the steps' calls: in this process until `POOL_MIN_ROWS` input rows have been seen
    (a small input never pays for starting processes), then in a pool of `workers` processes.
    Results come back in input order, at most `2 * workers` calls in flight (so a long input
    is never all in memory at once)."""

    def __init__(self, workers: int, rows: int | None = None) -> None:
        self.workers = workers
        self.rows = 0
        self.pool: ProcessPoolExecutor | None = None
        if rows is not None and rows >= POOL_MIN_ROWS:  # known to be big: start the processes now
            self._start()

    def _start(self) -> None:
        if self.workers > 1:
            self.pool = ProcessPoolExecutor(max_workers=self.workers, mp_context=multiprocessing.get_context("spawn"))

    def map(self, fn: Callable[[pa.Table], Any], tables: Iterable[pa.Table]) -> Iterator[Any]:
        pending: deque[Future] = deque()
        for table in tables:
            self.rows += table.num_rows
            if self.pool is None and self.rows >= POOL_MIN_ROWS:
                self._start()
            pending.append(self.pool.submit(fn, table) if self.pool is not None else _done(fn, table))
            while len(pending) >= 2 * self.workers or (pending and pending[0].done()):
                yield pending.popleft().result()
        while pending:
            yield pending.popleft().result()

    def close(self) -> None:
        if self.pool is not None:
            self.pool.shutdown(cancel_futures=True)


def _done(fn: Callable[[pa.Table], Any], table: pa.Table) -> Future:
    future: Future = Future()
    try:
        future.set_result(fn(table))
    except Exception as e:  # noqa: BLE001 - raised again by .result(), as from a pool
        future.set_exception(e)
    return future


def _by_component(table: pa.Table, parts: int) -> list[pa.Table]:
    """`table` (candidate rows) cut into up to `parts` tables of whole components."""
    if not table.num_rows:
        return []
    order = np.argsort(table["comp"].to_numpy(), kind="stable")
    table = table.take(pa.array(order, pa.int64()))
    comp = table["comp"].to_numpy()
    starts = np.flatnonzero(np.concatenate(([True], comp[1:] != comp[:-1])))
    cuts = [0]
    for target in np.linspace(0, len(comp), parts + 1)[1:-1]:
        at = int(starts[min(np.searchsorted(starts, target), len(starts) - 1)])
        if at > cuts[-1]:
            cuts.append(at)
    cuts.append(len(comp))
    return [table.slice(lo, hi - lo) for lo, hi in zip(cuts[:-1], cuts[1:])]


def _timed(step: str, started: float) -> None:
    log.info("dedup: %s took %.1fs", step, time.perf_counter() - started)


def removed_rows(
    batches: Callable[[], Iterable[pa.Table]],
    text_field: str,
    id_field: str,
    config: DedupConfig,
    *,
    workers: int | None = None,
    rows: int | None = None,
) -> tuple[np.ndarray, pa.Table]:
    """The removed rows of the input `batches()` yields (called once per pass; each batch holds
    at least `id_field` and `text_field`) as `mark_rows` looks them up: their id hashes, sorted,
    and their table (id, duplicate_of, similarity, reason) in that order. `rows`: the input's
    size, where known (a big input starts its processes at once)."""
    pool = _Workers(config.concurrency or workers or default_workers(), rows)
    try:
        started = time.perf_counter()
        keys = [t for t in pool.map(functools.partial(band_rows, text_field=text_field, id_field=id_field,
                                                      config=config), batches()) if t.num_rows]
        edges = bucket_edges(pa.concat_tables(keys)) if keys else None
        del keys
        _timed("signatures and band keys", started)

        def duplicate_ids(nodes: np.ndarray) -> list[str]:
            found = {i for batch in batches() for i in ids_with_nodes(batch, id_field, nodes[:5])}
            return sorted(found)

        components = candidate_components(edges, id_field, duplicate_ids)
        if components is None:
            return removed_lookup(None)
        log.info("dedup: %s", components)
        started = time.perf_counter()
        candidates = [t for t in pool.map(
            functools.partial(candidate_rows, text_field=text_field, id_field=id_field, config=config,
                              candidates=components.candidates), batches()) if t.num_rows]
        found = list(pool.map(functools.partial(verify_components, config=config, large_edges=components.large_edges),
                              _by_component(pa.concat_tables(candidates), 4 * pool.workers) if candidates else []))
        _timed("candidate verification", started)
    finally:
        pool.close()
    return removed_lookup(pa.concat_tables(found) if found else None)
