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
from synth.rows import REJECT_COLUMN
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
        records = _run_stages(ctx, out, max_failures)

        from synth.export import export_build

        export_counts = export_build(out, config)
        manifest = _manifest(config, catalog, ctx, records, export_counts, dry_run)
        _write_json_atomic(out / "manifest.json", manifest)
        log.info("corpus: %s (%d rows), manifest: %s", out / "corpus", export_counts["corpus_rows"],
                 out / "manifest.json")
    return manifest


def _run_stages(ctx: StageContext, out: Path, max_failures: int | None) -> list[StageRecord]:
    records: list[StageRecord] = []
    upstream_signature = _build_signature(ctx)
    previous: ray.data.Dataset | None = None
    previous_rows = 0
    for stage in STAGES:
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
            ctx.stage = stage.name
            result = stage.run(ctx, previous).materialize()
            record = _write_stage(stage, result, stage_dir, previous_rows, signature)
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


def _write_stage(stage: Stage, result: ray.data.Dataset, stage_dir: Path, rows_in: int, signature: str) -> StageRecord:
    tmp = stage_dir.with_name(f".{stage.name}.tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    reasons = _count_by(result, REJECT_COLUMN)
    schema = result.schema()
    rows_out = reasons.pop("", 0)
    diverted_reasons = {r: n for r, n in reasons.items() if r in stage.diverted}
    rejected_reasons = {r: n for r, n in reasons.items() if r not in stage.diverted}

    kept = result.filter(expr=f"{REJECT_COLUMN} == ''")
    _write(kept.drop_columns([REJECT_COLUMN, *stage.reject_only_columns]), tmp / "rows", schema,
           drop=[REJECT_COLUMN, *stage.reject_only_columns])
    fault_point(f"mid_write:{stage.name}")
    not_rejected = ", ".join(repr(r) for r in ("", *stage.diverted))
    rejects = result.filter(expr=f"{REJECT_COLUMN} not in [{not_rejected}]")
    _write(rejects.map_batches(lambda b: b.assign(stage=stage.name), batch_format="pandas"), tmp / "rejects", schema,
           extra={"stage": pa.string()})
    for side in sorted(set(stage.diverted.values())):  # one side output may take several reasons
        reasons = ", ".join(repr(r) for r, s in stage.diverted.items() if s == side)
        _write(result.filter(expr=f"{REJECT_COLUMN} in [{reasons}]"), tmp / side, schema)

    rejected: dict[str, int] = {}
    for reason, n in rejected_reasons.items():
        rejected[reason_key(reason)] = rejected.get(reason_key(reason), 0) + n
    diverted: dict[str, int] = {}
    for reason, n in diverted_reasons.items():
        diverted[stage.diverted[reason]] = diverted.get(stage.diverted[reason], 0) + n
    created = rows_out + sum(rejected.values()) + sum(diverted.values()) - rows_in
    if created and not stage.fans_out:
        raise BuildFailed(f"stage {stage.name}: {rows_in} rows in but {rows_in + created} accounted for (bug: rows lost)")
    shutil.rmtree(stage_dir, ignore_errors=True)
    tmp.rename(stage_dir)
    return StageRecord(stage.name, rows_in, rows_out, dict(sorted(rejected.items())), diverted, created,
                       signature=signature)


def _count_by(ds: ray.data.Dataset, column: str) -> dict[str, int]:
    """Value counts of one column: counted per block, summed on the driver (no shuffle)."""

    def count(batch: pd.DataFrame) -> pd.DataFrame:
        counts = batch[column].value_counts()
        return pd.DataFrame({"value": counts.index.astype(str), "n": counts.values.astype("int64")})

    totals: dict[str, int] = {}
    for part in ds.select_columns([column]).map_batches(count, batch_format="pandas").iter_batches(batch_format="pandas"):
        for value, n in zip(part["value"], part["n"]):
            totals[value] = totals.get(value, 0) + int(n)
    return totals


def _write(ds: ray.data.Dataset, path: Path, schema: Any, drop: list[str] = (), extra: dict | None = None) -> None:
    """Parquet files under `path`; an empty dataset still gets one empty file with the schema."""
    ds.write_parquet(str(path), try_create_dir=True)
    if any(path.glob("*.parquet")):
        return
    path.mkdir(parents=True, exist_ok=True)
    arrow = pa.schema([f for f in _arrow_schema(schema) if f.name not in drop])
    for name, typ in (extra or {}).items():
        arrow = arrow.append(pa.field(name, typ))
    pq.write_table(arrow.empty_table(), path / "empty.parquet")


def _arrow_schema(schema: Any) -> pa.Schema:
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
