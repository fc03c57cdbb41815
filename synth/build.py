"""Run the stages in order, write each one's output as parquet, count, export.

    elements → queries → augment → filter_questions → dedup_questions
             → respond → annotate → filter_pairs → dedup_pairs → export

Each stage writes `<out>/stages/<name>/{rows,rejects[,hard]}/` into a temporary
directory renamed into place when complete, then a `_SUCCESS.json` marker with
its counts and a signature of everything it depends on. A rerun skips a stage
whose marker carries the same signature, so a crashed build resumes from the
last finished stage and a changed config reruns what it changes.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import sys
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import ray
import ray.data

import synth
from synth.config import PipelineConfig, load_config
from synth.errors import BadInput, BuildFailed
from synth.faults import DRIVER_PID, fault_point
from synth.filters import build_filters
from synth.lock import BuildLock
from synth.rows import REJECT_COLUMN, to_arrow
from synth.stages.base import Stage, StageContext
from synth.stages.cleaning import DedupPairs, DedupQuestions, FilterPairs, FilterQuestions
from synth.stages.generation import Augment, Elements, Queries
from synth.stages.labelling import Annotate, Respond
from synth.templates import Catalog, load_catalog

log = logging.getLogger("synth")

STAGES: tuple[Stage, ...] = (
    Elements(), Queries(), Augment(), FilterQuestions(), DedupQuestions(),
    Respond(), Annotate(), FilterPairs(), DedupPairs(),
)
MARKER = "_SUCCESS.json"


@dataclass
class StageRecord:
    name: str
    rows_in: int
    rows_out: int
    rejected: dict[str, int] = field(default_factory=dict)
    diverted: dict[str, int] = field(default_factory=dict)
    created: int = 0
    seconds: float = 0.0
    reused: bool = False
    requests: dict[str, Any] = field(default_factory=dict)  # LLM requests sent vs served from the cache
    signature: str = ""


def reason_key(reason: str) -> str:
    """Reasons are short codes; engine errors carry details that are kept in the rejects table only."""
    if "llm_error" in reason:
        return reason[: reason.index("llm_error") + len("llm_error")]
    return reason


def prepare(config_path: Path, templates: Path | None = None, seeds: Path | None = None):
    """Load and validate everything a build reads, before anything is written."""
    config, templates_dir, seeds_dir = load_config(config_path)
    catalog = load_catalog(templates or templates_dir, seeds or seeds_dir, only=config.scenarios or None)
    build_filters(config.filters.questions, "filters.questions")
    build_filters(config.filters.pairs, "filters.pairs")
    for tactic in config.augment.tactics:
        catalog.tactic(tactic)
    for i, role in enumerate(config.roles.responders):
        if role.persona is not None:
            catalog.persona(role.persona, i)
    return config, catalog


def init_ray() -> None:
    if not ray.is_initialized():
        address = os.environ.get("RAY_ADDRESS")
        kwargs: dict[str, Any] = {"include_dashboard": False, "log_to_driver": False}
        if not address:
            kwargs["num_cpus"] = int(os.environ.get("SYNTH_NUM_CPUS", os.cpu_count() or 2))
        ray.init(address=address, **kwargs)
    ctx = ray.data.DataContext.get_current()
    ctx.enable_progress_bars = sys.stderr.isatty()
    ctx.print_on_execution_start = False
    logging.getLogger("ray.data").setLevel(logging.WARNING)


def run_build(
    config_path: Path,
    out: Path,
    *,
    dry_run: bool = False,
    fresh: bool = False,
    max_failures: int | None = None,
    templates: Path | None = None,
    seeds: Path | None = None,
) -> dict[str, Any]:
    """Build (or resume, or incrementally rebuild) into `out`; see the module docstring.

    `max_failures`: how many LLM requests may fail (after the engine's retries) and be
    recorded in rejects/ before the build fails; None = no limit.
    """
    config, catalog = prepare(config_path, templates, seeds)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    with BuildLock(out):
        if fresh:
            for name in ("stages", "cache"):
                shutil.rmtree(out / name, ignore_errors=True)
        _log_to_file(out / "build.log")
        log.setLevel(logging.INFO)
        log.info("build %s → %s%s", config.name, out, " (dry run: stand-in engine)" if dry_run else "")
        os.environ[DRIVER_PID] = str(os.getpid())  # fault injection (tests) kills the driver, see faults.py
        init_ray()
        ctx = StageContext(config=config, catalog=catalog, dry_run=dry_run, cache_root=out / "cache" / "requests")
        try:
            records = _run_stages(ctx, out, max_failures)
        finally:
            ctx.release_engines(keep=set())

        from synth.export import export_build

        export_counts = export_build(out, config, catalog=catalog)
        manifest = _manifest(config, catalog, ctx, records, export_counts, dry_run)
        _write_json_atomic(out / "manifest.json", manifest)
        log.info("corpus: %s (%d rows), manifest: %s", out / "corpus", export_counts["corpus_rows"],
                 out / "manifest.json")
        _write_report(out)
    return manifest


def _write_report(out: Path) -> None:
    """The build report (report/, and the headline in corpus/README.md); `synth report` redoes it."""
    from synth.report import write_report

    try:
        log.info("report: %s", write_report(out))
    except Exception:  # the corpus and manifest are complete; a report bug must not fail the build
        log.exception("writing the build report failed (rerun: synth report %s)", out)


def _run_stages(ctx: StageContext, out: Path, max_failures: int | None) -> list[StageRecord]:
    records: list[StageRecord] = []
    upstream_signature = _build_signature(ctx)
    previous: ray.data.Dataset | None = None
    previous_rows = 0
    for i, stage in enumerate(STAGES):
        # Loaded models stay loaded across the stages between their uses; any other is closed.
        needed_next = _models_needed_next(ctx.config, STAGES[i:])
        ctx.release_engines(keep=needed_next)
        stage_dir = out / "stages" / stage.name
        signature = hashlib.sha256(f"{upstream_signature}:{stage.name}".encode()).hexdigest()[:16]
        upstream_signature = signature
        marker = _read_marker(stage_dir)
        if marker and marker.get("signature") == signature:
            record = StageRecord(**{**marker["record"], "reused": True})
            log.info("stage %-16s reused (%d rows)", stage.name, record.rows_out)
        else:
            fault_point(f"stage_start:{stage.name}")
            started = time.monotonic()
            log.info("stage %-16s running", stage.name)
            # Here, not before reused stages: a resumed build loads no model for stages already done.
            ctx.start_engines(needed_next)
            ctx.stage = stage.name
            result = stage.run(ctx, previous).materialize()
            record = _write_stage(stage, result, stage_dir, previous_rows, signature,
                                  input_schema=previous.schema() if previous is not None else None)
            record.seconds = round(time.monotonic() - started, 2)
            record.requests = ctx.requests.get(stage.name, {})
            _write_json_atomic(stage_dir / MARKER, {"signature": signature, "record": record.__dict__})
            log.info(
                "stage %-16s %d in → %d out, %d rejected%s (%.1fs)", stage.name, record.rows_in, record.rows_out,
                sum(record.rejected.values()),
                "".join(f", {n} to {k}" for k, n in record.diverted.items()), record.seconds,
            )
        records.append(record)
        failures = sum(n for r in records for reason, n in r.rejected.items() if reason.endswith("llm_error"))
        if max_failures is not None and failures > max_failures:
            raise BuildFailed(
                f"{failures} LLM requests failed after retries (budget --max-failures {max_failures}); "
                f"finished stages are kept in {out / 'stages'}, see rejects/ for the errors"
            )
        previous = read_rows(stage_dir / "rows")
        previous_rows = record.rows_out
    return records


def _models_needed_next(config: PipelineConfig, stages: tuple[Stage, ...]) -> set[str]:
    """The models of the first of `stages` that sends requests (none if no stage does)."""
    for stage in stages:
        if models := {role.model for role in stage.roles(config)}:
            return models
    return set()


def _write_stage(stage: Stage, result: ray.data.Dataset, stage_dir: Path, rows_in: int, signature: str,
                 input_schema: Any = None) -> StageRecord:
    """Write rows / rejects / side outputs in one pass over the result, shard by shard, then rename."""
    tmp = stage_dir.with_name(f".{stage.name}.tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    schema = _arrow_schema(result.schema(), input_schema)
    writer = ShardWriter(str(tmp), stage.name, dict(stage.diverted), list(stage.reject_only_columns))
    reasons: dict[str, int] = {}
    for part in result.map_batches(writer, batch_format="pandas").iter_batches(batch_format="pandas"):
        for reason, n in zip(part["reason"], part["n"]):
            reasons[reason] = reasons.get(reason, 0) + int(n)
    # Every output directory holds at least one (possibly empty) file with the schema.
    drop = [REJECT_COLUMN, *stage.reject_only_columns]
    _ensure_schema_file(tmp / "rows", pa.schema([f for f in schema if f.name not in drop]))
    _ensure_schema_file(tmp / "rejects", schema.append(pa.field("stage", pa.string())))
    for side in set(stage.diverted.values()):
        _ensure_schema_file(tmp / side, schema)
    fault_point(f"mid_write:{stage.name}")

    rows_out = reasons.pop("", 0)
    rejected: dict[str, int] = {}
    diverted: dict[str, int] = {}
    for reason, n in reasons.items():
        if reason in stage.diverted:
            diverted[stage.diverted[reason]] = diverted.get(stage.diverted[reason], 0) + n
        else:
            rejected[reason_key(reason)] = rejected.get(reason_key(reason), 0) + n
    created = rows_out + sum(rejected.values()) + sum(diverted.values()) - rows_in
    if created and not stage.fans_out:
        raise BuildFailed(f"stage {stage.name}: {rows_in} rows in but {rows_in + created} accounted for (bug: rows lost)")
    shutil.rmtree(stage_dir, ignore_errors=True)
    tmp.rename(stage_dir)
    return StageRecord(stage.name, rows_in, rows_out, dict(sorted(rejected.items())), diverted, created,
                       signature=signature)


class ShardWriter:
    """Ray Data callable: splits one batch into rows / rejects / side outputs, writes each as a shard.

    Returns the batch's reason counts, so counting and writing are one pass.
    """

    def __init__(self, root: str, stage: str, diverted: dict[str, str], reject_only: list[str]):
        self.root, self.stage, self.diverted, self.reject_only = Path(root), stage, diverted, reject_only

    def __call__(self, batch: pd.DataFrame) -> pd.DataFrame:
        reason = batch[REJECT_COLUMN].astype(str)
        name = f"{uuid.uuid4().hex}.parquet"
        kept = batch[reason == ""].drop(columns=[REJECT_COLUMN, *self.reject_only])
        rejects = batch[(reason != "") & ~reason.isin(list(self.diverted))].assign(stage=self.stage)
        parts = {"rows": kept, "rejects": rejects}
        for side in set(self.diverted.values()):
            parts[side] = batch[reason.isin([r for r, s in self.diverted.items() if s == side])]
        for folder, frame in parts.items():
            if len(frame):
                path = self.root / folder
                path.mkdir(parents=True, exist_ok=True)
                pq.write_table(to_arrow(frame), path / name)
        counts = reason.value_counts()
        return pd.DataFrame({"reason": counts.index.astype(str), "n": counts.values.astype("int64")})


def _ensure_schema_file(path: Path, schema: pa.Schema) -> None:
    if not any(path.glob("*.parquet")):
        path.mkdir(parents=True, exist_ok=True)
        pq.write_table(schema.empty_table(), path / "empty.parquet")


def _arrow_schema(schema: Any, input_schema: Any = None) -> pa.Schema:
    if schema is None:  # an empty result without blocks (an earlier stage kept no row): the input's columns
        base = _arrow_schema(input_schema) if input_schema is not None else pa.schema([])
        return base if REJECT_COLUMN in base.names else base.append(pa.field(REJECT_COLUMN, pa.string()))
    base = getattr(schema, "base_schema", schema)
    if isinstance(base, pa.Schema):
        return base
    return pa.schema([pa.field(n, pa.string()) for n in schema.names])


def read_rows(path: Path) -> ray.data.Dataset:
    return ray.data.read_parquet(str(path))


def _read_marker(stage_dir: Path) -> dict | None:
    try:
        return json.loads((stage_dir / MARKER).read_text())
    except (OSError, ValueError):
        return None


def _build_signature(ctx: StageContext) -> str:
    parts = {
        "config": ctx.config.fingerprint(),
        "scenarios": {k: s.hash for k, s in sorted(ctx.catalog.scenarios.items())},
        "shared": ctx.catalog.hashes,
        "dry_run": ctx.dry_run,
        "version": synth.__version__,
    }
    return hashlib.sha256(json.dumps(parts, sort_keys=True).encode()).hexdigest()[:16]


def _manifest(config: PipelineConfig, catalog: Catalog, ctx: StageContext, records: list[StageRecord],
              export_counts: dict[str, Any], dry_run: bool) -> dict[str, Any]:
    return {
        "name": config.name,
        "synth_version": synth.__version__,
        "config_hash": config.fingerprint(),
        "seed": config.seed,
        "dry_run": dry_run,
        "engine": "standin" if dry_run else "real",
        "models": {name: {"engine": "standin" if dry_run else spec.engine, "model": spec.model,
                          "prompt_style": spec.prompt_style} for name, spec in config.models.items()},
        "roles": {
            "generator": config.roles.generator.name,
            "responders": [r.name for r in config.roles.responders],
            "judges": [r.name for r in config.roles.judges],
        },
        "scenarios": {k: {"template_hash": s.hash, "subcategories": len(s.template.subcategories)}
                      for k, s in sorted(catalog.scenarios.items())},
        "stages": [{k: v for k, v in r.__dict__.items() if k != "signature"} for r in records],
        "export": export_counts,
    }


def _write_json_atomic(path: Path, data: Any) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(json.dumps(data, ensure_ascii=False, indent=2, sort_keys=False) + "\n", encoding="utf-8")
    os.replace(tmp, path)


def _log_to_file(path: Path) -> None:
    for handler in log.handlers:
        if isinstance(handler, logging.FileHandler) and Path(handler.baseFilename) == path.resolve():
            return
    handler = logging.FileHandler(path, encoding="utf-8")
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(message)s"))
    log.addHandler(handler)


__all__ = ["run_build", "prepare", "STAGES", "BadInput", "BuildFailed"]
