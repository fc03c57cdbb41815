"""Request-cache lookup: the old driver-side key set + one CacheReader actor vs the join.

    .venv/bin/python bench/request_cache_lookup.py [--cached 100000] [--requests 100000] [--shards 100]

Writes `--cached` answers as `--shards` shards (as engine batches leave them), then times
splitting `--requests` keyed requests (half of them cached) into answered hits and misses to
send, with the counts a stage records, both ways. Prints seconds and the driver's peak RSS
growth. Not a test: run it alone on an idle machine.
"""

from __future__ import annotations

import argparse
import resource
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq


def make_cache(directory: Path, n: int, shards: int) -> list[str]:
    keys = [f"{i:032x}" for i in np.random.default_rng(0).integers(0, 2**62, n)]
    per = -(-n // shards)
    for s in range(shards):
        part = keys[s * per:(s + 1) * per]
        pq.write_table(pa.table({
            "cache_key": part, "text": ["答" * 200] * len(part), "finish_reason": ["stop"] * len(part),
            "prompt_tokens": pa.array([50] * len(part), pa.int64()),
            "completion_tokens": pa.array([200] * len(part), pa.int64()), "error": [""] * len(part),
        }), directory / f"batch-{s:04d}.parquet")
    return keys


def make_requests(cached: list[str], n: int) -> pd.DataFrame:
    keys = cached[: n // 2] + [f"miss{i:028x}" for i in range(n - n // 2)]
    return pd.DataFrame({"cache_key": keys, "scenario": [f"s{i % 7}" for i in range(n)],
                         "prompt": ["问" * 100] * n, "seed": range(n), "stop": [["\n\n"]] * n})


def old_way(keyed, cache_dir: str) -> tuple[int, int, int]:
    import ray.data

    from synth.engines.base import RESULT_COLUMNS

    KEY = "cache_key"

    class CacheReader:  # as it was
        def __init__(self, cache_dir: str, keys: set[str]):
            frames = [pq.read_table(s, columns=[KEY, *RESULT_COLUMNS]).to_pandas()
                      for s in sorted(Path(cache_dir).glob("*.parquet"))]
            table = pd.concat(frames)
            table = table[table[KEY].isin(keys)].drop_duplicates(KEY)
            self.results = table.set_index(KEY)

        def __call__(self, batch: pd.DataFrame) -> pd.DataFrame:
            found = self.results.loc[batch[KEY]].reset_index(drop=True)
            batch = batch.reset_index(drop=True)
            for column in RESULT_COLUMNS:
                batch[column] = found[column].values
            return batch

    known: set[str] = set()
    for shard in sorted(Path(cache_dir).glob("*.parquet")):
        known.update(pq.read_table(shard, columns=[KEY]).column(KEY).to_pylist())
    hit_count, sent_by = 0, {}
    for batch in keyed.select_columns([KEY, "scenario"]).iter_batches(batch_format="pandas"):
        hits = batch[KEY].isin(known)
        hit_count += int(hits.sum())
        for scenario, n in batch.loc[~hits, "scenario"].value_counts().items():
            sent_by[scenario] = sent_by.get(scenario, 0) + int(n)
    hits = keyed.map_batches(lambda b: b[b[KEY].isin(known)], batch_format="pandas")
    hits = hits.map_batches(CacheReader, fn_constructor_kwargs={"cache_dir": cache_dir, "keys": known},
                            compute=ray.data.ActorPoolStrategy(size=1), batch_format="pandas").materialize()
    misses = keyed.map_batches(lambda b: b[~b[KEY].isin(known)], batch_format="pandas").materialize()
    return hit_count, hits.count(), misses.count()


def new_way(keyed, cache_dir: str) -> tuple[int, int, int]:
    from synth.request_cache import lookup, lookup_counts, only_hits, only_misses

    looked_up = lookup(keyed, cache_dir)
    hit_count, _ = lookup_counts(looked_up, "scenario")
    hits = looked_up.map_batches(only_hits, batch_format="pyarrow").materialize()
    misses = looked_up.map_batches(only_misses, batch_format="pyarrow").materialize()
    return hit_count, hits.count(), misses.count()


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--cached", type=int, default=100_000)
    parser.add_argument("--requests", type=int, default=100_000)
    parser.add_argument("--shards", type=int, default=100)
    args = parser.parse_args()

    import ray.data

    from synth.session import init_ray
    from synth.request_cache import compact_cache

    init_ray()
    with tempfile.TemporaryDirectory() as tmp:
        cache_dir = Path(tmp)
        cached = make_cache(cache_dir, args.cached, args.shards)
        frame = make_requests(cached, args.requests)
        keyed = ray.data.from_pandas(frame, override_num_blocks=8).materialize()
        for name, way in (("old (key set + CacheReader)", old_way), ("new (join)", new_way)):
            rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
            start = time.perf_counter()
            result = way(keyed, str(cache_dir))
            print(f"{name}: {time.perf_counter() - start:.1f} s, hits/hit rows/misses {result}, "
                  f"driver peak RSS +{(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - rss) / 1024:.0f} MB")
        start = time.perf_counter()
        shards = compact_cache(cache_dir)
        print(f"compact_cache: {args.shards} shards → {shards} in {time.perf_counter() - start:.1f} s")
        start = time.perf_counter()
        print(f"new (join) on the compacted cache: {new_way(keyed, str(cache_dir))}, "
              f"{time.perf_counter() - start:.1f} s")


if __name__ == "__main__":
    main()
