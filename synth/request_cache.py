"""The request cache: an LLM request already answered is never sent again.

A request's key is a hash of everything that determines its answer: the model
(name, id, prompt style), the system and user prompt, the sampling parameters,
the seed and the JSON schema. Answers are appended to
`<build>/cache/requests/<model>/` as parquet shards *while the engine streams*,
each shard written to a temporary name and renamed, so a build killed mid-stage
keeps every batch that finished. Failed requests are not cached (a rerun retries
them). This is also what makes rebuilds incremental: after a template, a seed
pool or a model changes, only the requests whose prompt or model changed miss.
"""

from __future__ import annotations

import hashlib
import json
import os
import uuid
from pathlib import Path

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from synth.config import ModelSpec
from synth.engines.base import RESULT_COLUMNS
from synth.rows import to_arrow

KEY_COLUMN = "cache_key"
_KEYED = ("system", "prompt", "seed", "json_schema", "temperature", "top_p", "top_k", "max_tokens", "stop")


def model_identity(name: str, spec: ModelSpec) -> str:
    return json.dumps({"name": name, "model": spec.model, "style": spec.prompt_style, "engine": spec.engine},
                      sort_keys=True)


def add_keys(batch: pd.DataFrame, identity: str) -> pd.DataFrame:
    keys = []
    for row in batch[list(_KEYED)].itertuples(index=False):
        payload = json.dumps([identity, *[list(v) if hasattr(v, "tolist") else v for v in row]],
                             ensure_ascii=False, default=str)
        keys.append(hashlib.sha256(payload.encode("utf-8")).hexdigest()[:32])
    return batch.assign(**{KEY_COLUMN: keys})


def cached_keys(cache_dir: Path) -> set[str]:
    keys: set[str] = set()
    for shard in sorted(Path(cache_dir).glob("*.parquet")):
        keys.update(pq.read_table(shard, columns=[KEY_COLUMN]).column(KEY_COLUMN).to_pylist())
    return keys


class CacheReader:
    """Ray Data callable: fills result columns from the cache (rows must all be hits)."""

    def __init__(self, cache_dir: str, keys: set[str]):
        frames = [pq.read_table(s, columns=[KEY_COLUMN, *RESULT_COLUMNS]).to_pandas()
                  for s in sorted(Path(cache_dir).glob("*.parquet"))]
        table = pd.concat(frames) if frames else pd.DataFrame(columns=[KEY_COLUMN, *RESULT_COLUMNS])
        table = table[table[KEY_COLUMN].isin(keys)].drop_duplicates(KEY_COLUMN)
        self.results = table.set_index(KEY_COLUMN)

    def __call__(self, batch: pd.DataFrame) -> pd.DataFrame:
        found = self.results.loc[batch[KEY_COLUMN]].reset_index(drop=True)
        batch = batch.reset_index(drop=True)
        for column in RESULT_COLUMNS:
            batch[column] = found[column].values
        return batch


def write_to_cache(batch: pd.DataFrame, cache_dir: str) -> pd.DataFrame:
    """Ray Data function: writes a finished batch's successful answers as one shard, atomically."""
    done = batch[batch["error"] == ""][[KEY_COLUMN, *RESULT_COLUMNS]]
    if len(done):
        directory = Path(cache_dir)
        directory.mkdir(parents=True, exist_ok=True)
        name = f"{uuid.uuid4().hex}.parquet"
        tmp = directory / f".{name}.tmp"
        pq.write_table(to_arrow(done), tmp)
        os.replace(tmp, directory / name)
        _fault_point("cache_shard_written", len(list(directory.glob("*.parquet"))))
    return batch


def log_sent(batch: pd.DataFrame, log_dir: str) -> pd.DataFrame:
    """Ray Data function: records the keys of a batch about to be sent to the engine."""
    if len(batch):
        directory = Path(log_dir)
        directory.mkdir(parents=True, exist_ok=True)
        (directory / f"{uuid.uuid4().hex}.txt").write_text("\n".join(batch[KEY_COLUMN]) + "\n")
    return batch


def sent_keys(log_dir: Path) -> list[str]:
    """Every key ever sent (with repeats, if a request was sent twice)."""
    return [k for f in sorted(Path(log_dir).glob("*.txt")) for k in f.read_text().split()]


def _fault_point(name: str, count: int) -> None:
    from synth.faults import fault_point

    fault_point(name, count)
