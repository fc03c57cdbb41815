"""What a stage is and what it may use.

A stage has a name and a `run` that turns its input dataset (the output of the stage
before it in the `synth.pipeline.Pipeline`, or the one the pipeline names) into one
output dataset. Output rows with a non-empty
`reject_reason` become the stage's rejects; rows whose reason is listed in
`side_outputs` go to a side output instead (the judges' disagreements → `hard`).
The runner (`synth.build`) writes everything as parquet and does the counting,
so stages stay pure transformations.
"""

from __future__ import annotations

import copy
import logging
from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

import pandas as pd
import ray.data

from synth import storage
from synth.config import PipelineConfig, Role
from synth.engines import Engine
from synth.engines.pool import EnginePool
from synth.faults import fault_point
from synth.progress import Tally
from synth.request_cache import (
    COMPACT_AFTER_SHARDS, KEY_COLUMN, add_keys, batch_shard_count, compact_cache, log_sent, lookup,
    lookup_counts, model_identity, only_hits, only_misses, write_to_cache,
)
from synth.templates import Catalog

log = logging.getLogger("synth")

# `Stage.estimate` (synth plan) before any build has measured the rates:
DEFAULT_QUESTIONS_PER_CALL_SHARE = 0.8  # of max_questions_per_call, parsed and kept per generator call
SAMPLE_QUESTION_CHARS = 40  # a question not written yet, for rendering respond and judge prompts


class CachedGeneration:
    """Answers requests from the build's request cache where it can and sends only the
    misses to the model, caching the answers as they stream; counts, per stage, what was
    sent and what the cache served (the manifest's `requests`).

    `cache_root` None: no cache, every request is sent.
    """

    def __init__(self, cache_root: Path | None, *, dry_run: bool = False):
        self.cache_root = cache_root
        self.dry_run = dry_run
        self.requests: dict[str, dict[str, Any]] = {}  # stage -> {sent, cached, sent_by_scenario}

    def answer(self, engine: Engine, spec: Any, requests: ray.data.Dataset, stage: str,
               tally: Tally) -> ray.data.Dataset:
        identity = model_identity(engine.name, spec.model_copy(update={"engine": "standin"}) if self.dry_run else spec)
        keyed = requests.map_batches(add_keys, fn_kwargs={"identity": identity}, batch_format="pandas").materialize()
        if self.cache_root is None:
            tally.expect(stage, sent=keyed.count(), cached=0)
            return tally.counting(engine.generate(keyed), stage)
        cache_dir = str(storage.inside(self.cache_root, engine.name))
        if batch_shard_count(cache_dir) > COMPACT_AFTER_SHARDS:  # keep nightly builds from piling up files
            compact_cache(cache_dir)
        stats = self.requests.setdefault(stage, {"sent": 0, "cached": 0, "sent_by_scenario": {}})
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
        tally.expect(stage, sent=total - hit_count, cached=hit_count)
        parts = []
        if hit_count:
            parts.append(looked_up.map_batches(only_hits, batch_format="pyarrow"))
        if total - hit_count or not parts:
            if total - hit_count == 0:  # nothing to send: keep the schema, start no engine
                parts.append(misses.map_batches(_empty_results, batch_format="pandas"))
            else:
                # An audit trail of every request handed to the engine (keys, one file per batch):
                # what resume tests count to prove nothing answered is ever sent again.
                sent_dir = str(storage.inside(_parent(self.cache_root), "sent", engine.name))
                misses = misses.map_batches(log_sent, fn_kwargs={"log_dir": sent_dir}, batch_format="pandas")
                answered = tally.counting(engine.generate(misses), stage)
                parts.append(answered.map_batches(write_to_cache, fn_kwargs={"cache_dir": cache_dir},
                                                  batch_format="pandas"))
        return _union(parts).drop_columns([KEY_COLUMN])


@dataclass
class StageContext:
    """What a running stage may use: the config and catalog, and three objects with one
    job each, shared by every stage of a build: the loaded models (`pool`), the request
    cache (`cache`) and the live count of answers (`tally`). The runner hands each stage
    `for_stage(name)`, a view naming it (the stage name is fixed for the view; only the
    shared objects count as they go)."""

    config: PipelineConfig
    catalog: Catalog
    dry_run: bool = False
    cache_root: Path | None = None  # <build>/cache/requests; None = no request cache
    stage: str = ""  # the stage this view is for (see `for_stage`)
    pool: EnginePool = field(init=False)
    cache: CachedGeneration = field(init=False)
    # what the engines answered, counted as it streams (live progress, the manifest's tokens)
    tally: Tally = field(default_factory=Tally)

    def __post_init__(self) -> None:
        self.pool = EnginePool(self.config, dry_run=self.dry_run)
        self.cache = CachedGeneration(self.cache_root, dry_run=self.dry_run)

    def for_stage(self, name: str) -> "StageContext":
        """This context as seen by stage `name` (the same pool, cache and tally)."""
        view = copy.copy(self)
        view.stage = name
        return view

    def close(self) -> None:
        """Close every engine and the tally: the build is done."""
        self.pool.close()
        self.tally.close()

    def prompt_style(self, role: Role) -> str:
        return self.config.models[role.model].prompt_style

    def generate(self, requests_by_role: list[tuple[Role, ray.data.Dataset]]) -> ray.data.Dataset:
        """Send each role's requests to its model; roles sharing a model go in one pass."""
        if not self.stage:
            raise RuntimeError("StageContext.generate outside a stage: use ctx.for_stage(name) (bug)")
        by_model: dict[str, list[ray.data.Dataset]] = {}
        for role, ds in requests_by_role:
            by_model.setdefault(role.model, []).append(ds)
        results = [self.cache.answer(self.pool.engine(name), self.config.models[name], _union(parts), self.stage,
                                     self.tally) for name, parts in by_model.items()]
        return _union(results)


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
    # A stage that fans out (one call → many questions, one question → several
    # answers) creates rows; any other stage must account for every input row
    # as output, reject or diverted, and the runner fails the build if not.
    fans_out: ClassVar[bool] = False
    reject_only_columns: ClassVar[tuple[str, ...]] = ()  # dropped from kept rows, kept in rejects
    # A column of kept rows that says what the stage did to each (comma-separated, "" = nothing):
    # the manifest counts its values (StageRecord.routed), beside the rejects' reasons.
    route_column: ClassVar[str | None] = None

    def side_outputs(self, config: PipelineConfig) -> dict[str, str]:
        """{reject reason: side output} for the reasons whose rows go to a side output (e.g.
        `hard`) instead of `rejects/`. From the config, never from state kept by a run."""
        return {}

    def roles(self, config: PipelineConfig) -> list[Role]:
        """The roles whose models this stage sends requests to (the build keeps those loaded)."""
        return []

    def depends(self, config: PipelineConfig) -> dict[str, Any]:
        """The part of the config this stage's output depends on (roles are declared by `roles`)."""
        return {}

    def templates(self, catalog: Catalog) -> dict[str, str]:
        """The template and seed files this stage reads itself: name -> content hash."""
        return {}

    def templates_used(self, catalog: Catalog, config: PipelineConfig) -> dict[str, str]:
        """`templates`, and those this config makes the stage read besides (the signature's
        templates: a file a build does not read never reruns it)."""
        return self.templates(catalog)

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

    # A round that reads its input rows more than once (its requests and the rows it passes
    # through untouched) gets them materialized: recomputing them would send requests again.
    rounds_read_twice: ClassVar[bool] = False

    def rounds(self, config: PipelineConfig) -> int:
        return 1

    def reads_rows_twice(self, config: PipelineConfig) -> bool:
        """`rounds_read_twice`, where it depends on the config."""
        return self.rounds_read_twice

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

    def begin(self, ctx: StageContext, rows: ray.data.Dataset) -> ray.data.Dataset:
        """The input rows → the first round's rows (a stage that adds rows before its rounds)."""
        return rows

    def run(self, ctx: StageContext, rows: ray.data.Dataset | None) -> ray.data.Dataset:
        current = self.begin(ctx, rows)
        rounds, twice = self.rounds(ctx.config), self.reads_rows_twice(ctx.config)
        for round in range(rounds):
            fault_point(f"round:{ctx.stage}:{round}")
            current = self.results(ctx, ctx.generate(self.requests(ctx, current, round)), current, round)
            if twice and round < rounds - 1:
                current = current.materialize()  # computed once: no request is sent twice
        return self.finish(ctx, current)


def empty_like(columns: dict[str, Any]) -> pd.DataFrame:
    return pd.DataFrame({k: pd.Series([], dtype=v) for k, v in columns.items()})
