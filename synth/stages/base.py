"""What a stage is and what it may use.

A stage has a name and a `run` that turns its input dataset (the output of the stage
before it in the `synth.pipeline.Pipeline`, or the one the pipeline names) into one
output dataset. Output rows with a non-empty
`reject_reason` become the stage's rejects; rows whose reason is listed in
`diverted` go to a side output instead (the judges' disagreements → `hard`).
The runner (`synth.build`) writes everything as parquet and does the counting,
so stages stay pure transformations.
"""

from __future__ import annotations

import logging
from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

import pandas as pd
import ray.data

from synth.config import PipelineConfig, Role
from synth.engines import Engine, make_engine
from synth.errors import BadInput
from synth.progress import Tally
from synth.request_cache import (
    COMPACT_AFTER_SHARDS, KEY_COLUMN, add_keys, batch_shard_count, compact_cache, log_sent, lookup,
    lookup_counts, model_identity, only_hits, only_misses, write_to_cache,
)
from synth.templates import Catalog

log = logging.getLogger("synth")


@dataclass
class StageContext:
    config: PipelineConfig
    catalog: Catalog
    dry_run: bool = False
    cache_root: Path | None = None  # <build>/cache/requests; None = no request cache
    engines: dict[str, Engine] = field(default_factory=dict)
    stage: str = ""  # the stage running now (set by the runner)
    # per stage: requests answered by a model vs served from the cache, by scenario
    requests: dict[str, dict[str, Any]] = field(default_factory=dict)
    # what the engines answered, counted as it streams (live progress, the manifest's tokens)
    tally: Tally = field(default_factory=Tally)

    def engine(self, model_name: str) -> Engine:
        if model_name not in self.engines:
            self.engines[model_name] = make_engine(model_name, self.config.models[model_name], dry_run=self.dry_run)
        return self.engines[model_name]

    def release_engines(self, keep: set[str]) -> None:
        """Close the engines of models not in `keep`: a loaded model holds its GPUs (or
        CPUs) until closed, and the next model may need them."""
        for name in [n for n in self.engines if n not in keep]:
            log.info("closing engine %s", name)
            self.engines.pop(name).close()

    def close(self) -> None:
        """Close every engine and the tally: the context is done."""
        self.release_engines(keep=set())
        self.tally.close()

    def start_engines(self, models: set[str]) -> None:
        """Begin loading these models now, so a model loads while the stages before its
        first use run (its GPUs would idle otherwise); already loaded ones are left as is."""
        for name in sorted(models):
            self.engine(name).start()

    def prompt_style(self, role: Role) -> str:
        return self.config.models[role.model].prompt_style

    def generate(self, requests_by_role: list[tuple[Role, ray.data.Dataset]]) -> ray.data.Dataset:
        """Send each role's requests to its model; roles sharing a model go in one pass."""
        by_model: dict[str, list[ray.data.Dataset]] = {}
        for role, ds in requests_by_role:
            by_model.setdefault(role.model, []).append(ds)
        results = [self._generate_cached(name, _union(parts)) for name, parts in by_model.items()]
        return _union(results)

    def _generate_cached(self, model_name: str, requests: ray.data.Dataset) -> ray.data.Dataset:
        """Answer from the request cache where possible; send only the misses, caching answers as they stream."""
        spec = self.config.models[model_name]
        identity = model_identity(model_name, spec.model_copy(update={"engine": "standin"}) if self.dry_run else spec)
        keyed = requests.map_batches(add_keys, fn_kwargs={"identity": identity}, batch_format="pandas").materialize()
        if self.cache_root is None:
            self.tally.expect(self.stage, sent=keyed.count(), cached=0)
            return self.tally.counting(self.engine(model_name).generate(keyed), self.stage)
        cache_dir = str(inside(self.cache_root, model_name))
        if batch_shard_count(cache_dir) > COMPACT_AFTER_SHARDS:  # keep nightly builds from piling up files
            compact_cache(cache_dir)
        stats = self.requests.setdefault(self.stage, {"sent": 0, "cached": 0, "sent_by_scenario": {}})
        total = keyed.count()
        # A join of the requests with the cache's shards on cache_key; None when nothing
        # can hit (no shard yet: a first build pays for no join; or no request at all).
        looked_up = lookup(keyed, cache_dir) if total else None
        if looked_up is None:
            hit_count, sent_by_scenario, misses = 0, _count_column(keyed, "scenario"), keyed
        else:
            hit_count, sent_by_scenario = lookup_counts(looked_up, "scenario")
            misses = looked_up.map_batches(only_misses, batch_format="pyarrow")
        for scenario, n in sent_by_scenario.items():
            stats["sent_by_scenario"][scenario] = stats["sent_by_scenario"].get(scenario, 0) + n
        stats["cached"] += hit_count
        stats["sent"] += total - hit_count
        self.tally.expect(self.stage, sent=total - hit_count, cached=hit_count)
        parts = []
        if hit_count:
            parts.append(looked_up.map_batches(only_hits, batch_format="pyarrow"))
        if total - hit_count or not parts:
            if total - hit_count == 0:  # nothing to send: keep the schema, start no engine
                parts.append(misses.map_batches(_empty_results, batch_format="pandas"))
            else:
                # An audit trail of every request handed to the engine (keys, one file per batch):
                # what resume tests count to prove nothing answered is ever sent again.
                sent_dir = str(inside(_parent(self.cache_root), "sent", model_name))
                misses = misses.map_batches(log_sent, fn_kwargs={"log_dir": sent_dir}, batch_format="pandas")
                answered = self.tally.counting(self.engine(model_name).generate(misses), self.stage)
                parts.append(answered.map_batches(write_to_cache, fn_kwargs={"cache_dir": cache_dir},
                                                  batch_format="pandas"))
        return _union(parts).drop_columns([KEY_COLUMN])


def _count_column(ds: ray.data.Dataset, column: str) -> dict[str, int]:
    counts: dict[str, int] = {}
    for batch in ds.select_columns([column]).iter_batches(batch_format="pandas"):
        for value, n in batch[column].value_counts().items():
            counts[str(value)] = counts.get(str(value), 0) + int(n)
    return counts


def _union(parts: list[ray.data.Dataset]) -> ray.data.Dataset:
    return parts[0].union(*parts[1:]) if len(parts) > 1 else parts[0]


def _empty_results(batch: pd.DataFrame) -> pd.DataFrame:
    return batch.assign(text="", finish_reason="", prompt_tokens=0, completion_tokens=0, error="")


def _parent(location: Path | str) -> Path | str:
    return location.parent if isinstance(location, Path) else str(location).rstrip("/").rsplit("/", 1)[0]


def inside(base: Path, *parts: str) -> Path:
    """`base/parts…`, refusing any path that would leave `base` (names come from configs).
    A remote `base` (a URI, see synth.storage) gives a URI."""
    from synth import storage

    if storage.is_remote(base):
        if any(p in ("", ".", "..") or "/" in p or "\0" in p for part in parts for p in [part]):
            raise BadInput(f"path {'/'.join(parts)!r} would escape {base}")
        return storage.join(base, *parts)  # type: ignore[return-value]
    try:
        path = Path(base, *parts).resolve()
    except (OSError, ValueError) as e:  # e.g. a NUL byte: no such path can exist
        raise BadInput(f"path {'/'.join(parts)!r} under {base} is not usable: {e}") from None
    if not path.is_relative_to(Path(base).resolve()):
        raise BadInput(f"path {'/'.join(parts)!r} would escape {base}")
    return path


class Stage(ABC):
    """A declared unit of the build.

    What a stage declares is what the runner needs to decide whether its output can be
    reused: its `signature` is a hash of `depends(config)` (the config slice it reads),
    `templates(catalog)` (the template and seed files it renders, by content hash), the
    identity and sampling of the `roles` it sends requests to, and its input's output.
    Throughput settings (batch sizes, concurrency, replicas) and paths are never part of
    it, so changing them reuses everything.
    """

    name: ClassVar[str]
    # Columns every output row has (None: the input's columns, passed through).
    columns: ClassVar[tuple[str, ...] | None] = None
    # Columns of its input rows this stage reads: the pipeline checks that a stage upstream writes them.
    reads: ClassVar[tuple[str, ...]] = ()
    # `synth plan`: rows out per row in when no earlier build says (see `estimate`).
    keep: ClassVar[float] = 1.0
    diverted: ClassVar[dict[str, str]] = {}  # reject reason -> side output name
    # A stage that fans out (one call → many questions, one question → several
    # answers) creates rows; any other stage must account for every input row
    # as output, reject or diverted, and the runner fails the build if not.
    fans_out: ClassVar[bool] = False
    reject_only_columns: ClassVar[tuple[str, ...]] = ()  # dropped from kept rows, kept in rejects

    def roles(self, config: PipelineConfig) -> list[Role]:
        """The roles whose models this stage sends requests to (the build keeps those loaded)."""
        return []

    def depends(self, config: PipelineConfig) -> dict[str, Any]:
        """The part of the config this stage's output depends on (roles are declared by `roles`)."""
        return {}

    def templates(self, catalog: Catalog) -> dict[str, str]:
        """The template and seed files this stage reads itself: name -> content hash."""
        return {}

    @abstractmethod
    def run(self, ctx: StageContext, rows: ray.data.Dataset | None) -> ray.data.Dataset:
        """Transform the input rows; mark drops with `reject_reason`."""

    def estimate(self, planner: Any) -> None:
        """`synth plan`: this stage's requests and rows out, from the rows in (`synth.plan.Planner`).
        A stage that sends no request keeps `keep` of its rows (or the earlier build's rate)."""
        planner.keep(self.name, self.keep)


class LLMStage(Stage):
    """A stage that sends requests to models. A subclass writes its `roles`, its `requests` (one
    dataset of request rows per role, see `synth.engines.request_row`), its `results` (the
    answers, which carry the request rows' columns, parsed into rows) and its `estimate` for
    `synth plan`. The wiring is here: the context sends every role's requests to its model
    through the request cache (roles sharing a model in one pass), counting them as they stream.

    A stage of several `rounds` (the judges one after another; the turns of a dialogue) runs
    requests → generate → results once per round, each round reading the rows the one before
    wrote, then `finish`. A stage keeps no state between runs.
    """

    @abstractmethod
    def roles(self, config: PipelineConfig) -> list[Role]:
        """The roles whose models this stage sends requests to."""

    def rounds(self, config: PipelineConfig) -> int:
        return 1

    @abstractmethod
    def requests(self, ctx: StageContext, rows: ray.data.Dataset, round: int = 0
                 ) -> list[tuple[Role, ray.data.Dataset]]:
        """Per role, its request rows (the input row's columns travel with them)."""

    @abstractmethod
    def results(self, ctx: StageContext, answered: ray.data.Dataset, rows: ray.data.Dataset, round: int = 0
                ) -> ray.data.Dataset:
        """The answered requests (request rows + RESULT_COLUMNS) → rows (`rows`: this round's input)."""

    def finish(self, ctx: StageContext, rows: ray.data.Dataset) -> ray.data.Dataset:
        """The last round's rows → the stage's output rows."""
        return rows

    def run(self, ctx: StageContext, rows: ray.data.Dataset | None) -> ray.data.Dataset:
        current = rows
        for round in range(self.rounds(ctx.config)):
            current = self.results(ctx, ctx.generate(self.requests(ctx, current, round)), current, round)
        return self.finish(ctx, current)


def empty_like(columns: dict[str, Any]) -> pd.DataFrame:
    return pd.DataFrame({k: pd.Series([], dtype=v) for k, v in columns.items()})
