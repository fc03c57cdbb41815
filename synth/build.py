"""Run the stages in order, write each one's output as parquet, count, export.

    elements → queries → augment → filter_questions → dedup_questions
             → respond → filter_responses → annotate → filter_pairs → dedup_pairs
             → decontaminate → export

The runner owns all I/O: a stage only turns its input dataset into an output
dataset; the runner streams that output into `<out>/stages/<name>/{rows,rejects,
pending[,hard]}/` (shards named by their rows' ids, so a retried Ray task overwrites
its own shard), inside a temporary directory renamed into place, then writes a
`_SUCCESS.json` marker with the counts and the stage's signature: a hash of what
the stage declares it depends on (its config slice, templates, models, its input's
output; see `Stage`). A rerun reuses a stage whose marker carries the same
signature and has no pending requests, so a crashed build resumes from the last
finished stage and a changed config reruns exactly the stages it changes. The
manifest says why each stage ran (`why`).

Rows whose request failed transiently are *pending*: the stage completes, and the
next run reruns it, sending exactly those requests again (everything else comes
from the request cache); what follows reruns too, so the corpus then equals a clean
build's.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd
import pyarrow as pa
import ray
import ray.data

import synth
from synth import storage
from synth.config import PipelineConfig
from synth.errors import BadInput, BuildFailed
from synth.engines.base import PENDING
from synth.engines.pushback import BUILD_LOG_ENV
from synth.faults import DRIVER_PID, fault_point, worker_fault_point
from synth.lock import BuildLock
from synth.progress import StageProgress
from synth.rows import REJECT_COLUMN, to_arrow
from synth.pipeline import PIPELINE, Pipeline
from synth.prepare import check_eval_sets, prepare
from synth.session import init_ray, log_to_file
from synth.signatures import digest, stage_inputs, why_run
from synth.stages.base import Stage, StageContext
from synth.templates import Catalog

log = logging.getLogger("synth")

STAGES: tuple[Stage, ...] = PIPELINE.stages  # the shipped pipeline's stages, in run order
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
    pending: int = 0  # rows whose request failed transiently: sent again by the next run
    why: str = ""  # "reused", or why the stage ran (no output yet, pending requests, which input changed)
    signature: str = ""
    nodes: dict[str, int] = field(default_factory=dict)  # rows written per Ray node id (where the work ran)
    # what the requests this stage sent spent (cache hits cost nothing), and the plan's estimate beside it
    prompt_tokens: int = 0
    output_tokens: int = 0
    requests_per_s: float = 0.0
    output_tokens_per_s: float = 0.0
    plan: dict[str, Any] = field(default_factory=dict)


def reason_key(reason: str) -> str:
    """Reasons are short codes; engine errors carry details that are kept in the rejects table only."""
    for code in ("llm_error", PENDING):
        if code in reason:
            return reason[: reason.index(code) + len(code)]
    return reason


def is_failure(reason_code: str) -> bool:
    """A request that failed (after the engine's retries): what --max-failures counts."""
    return reason_code.endswith("llm_error") or reason_code == PENDING


def run_build(
    config_path: Path,
    out: Path,
    *,
    dry_run: bool = False,
    fresh: bool = False,
    max_failures: int | None = None,
    templates: Path | None = None,
    seeds: Path | None = None,
    pipeline: Pipeline = PIPELINE,
) -> dict[str, Any]:
    """Build (or resume, or incrementally rebuild) into `out` through `pipeline`; see the module docstring.

    `max_failures`: how many LLM requests may fail (after the engine's retries) and be
    recorded in rejects/ before the build fails; None = no limit.
    """
    config, catalog = prepare(config_path, templates, seeds)
    check_eval_sets(config)
    from synth.plan import headline, make_plan

    plan = make_plan(config, catalog, pipeline=pipeline)  # what this build should cost, recorded beside what it did
    remote = storage.is_remote(out)  # an object store (s3://…): see synth.storage
    if remote:
        storage.check_reachable(out)
    else:
        out = Path(out)
        out.mkdir(parents=True, exist_ok=True)
    build_log = storage.local_log_dir(out) / "build.log"  # a remote build's log: local, uploaded at the end
    build_log.parent.mkdir(parents=True, exist_ok=True)
    with BuildLock(out) as lock:
        try:
            manifest = _build(config, catalog, plan, out, build_log, lock, dry_run=dry_run, fresh=fresh,
                              max_failures=max_failures, pipeline=pipeline)
        finally:
            if remote:  # the log of a failed build too: it says why
                try:
                    storage.upload(build_log, storage.join(out, "build.log"))
                except Exception as e:  # noqa: BLE001 - never hide the build's own error behind this one
                    log.warning("could not upload %s to %s: %s", build_log, out, type(e).__name__)
    return manifest


def _build(config: PipelineConfig, catalog: Catalog, plan: dict, out: Path | str, build_log: Path, lock: BuildLock, *,
           dry_run: bool, fresh: bool, max_failures: int | None, pipeline: Pipeline = PIPELINE) -> dict[str, Any]:
    """`run_build` once the build lock is held: the stages, then the exports, manifest and report."""
    from synth.plan import headline

    if fresh:
        for name in ("stages", "cache"):
            storage.delete_dir(storage.join(out, name))
    log_to_file(build_log)
    log.setLevel(logging.INFO)
    log.info("build %s → %s%s", config.name, out, " (dry run: stand-in engine)" if dry_run else "")
    log.info("%s", headline(plan))
    os.environ[BUILD_LOG_ENV] = str(build_log.resolve())  # engines' workers log there too
    os.environ[DRIVER_PID] = str(os.getpid())  # fault injection (tests) kills the driver, see faults.py
    init_ray()
    ctx = StageContext(config=config, catalog=catalog, dry_run=dry_run,
                       cache_root=storage.join(out, "cache", "requests"))
    try:
        records = _run_stages(ctx, out, max_failures, lock, plan, pipeline=pipeline)
    finally:
        ctx.close()

    from synth.export import export_build

    # The exports and the report read and write local files: on an object store they run in a
    # local copy of the build (without the request cache) and what they wrote is uploaded.
    with storage.local_mirror(out) as local:
        from synth.eval_judges import last_calibration

        # the last `synth eval-judges` of exactly these judges (templates, rubrics, models, sampling)
        measured = last_calibration(ctx)
        export_counts = export_build(local, config, catalog=catalog, judges_measured=measured,
                                     final=pipeline.final.name)
        manifest = _manifest(config, catalog, ctx, records, export_counts, dry_run)
        manifest["judges_calibration"] = measured
        from synth.calibration import effective_rule

        # the thresholds the labels come from, and the calibration record they were read from (if any)
        manifest["label_rule"] = effective_rule(config)
        manifest["plan"] = plan
        storage.write_json(local / "manifest.json", manifest)
        log.info("corpus: %s (%d rows), manifest: %s", storage.join(out, "corpus"), export_counts["corpus_rows"],
                 storage.join(out, "manifest.json"))
        if manifest["pending"]:
            log.warning("%d requests failed transiently and are pending: run the same command again to send "
                        "them (everything else is reused)", manifest["pending"])
        _write_report(local)
        if local != out:
            upload_outputs(local, out)
    return manifest


# What the exports and the report write into a build (uploaded from a local copy on an object
# store); manifest.json last: a build is finished when its manifest is there.
BUILD_OUTPUTS = ("inputs", "corpus", "sft", "hard", "rejects", "libra_test.jsonl", "report", "manifest.json")


def upload_outputs(local: Path, out: str, names: tuple[str, ...] = BUILD_OUTPUTS) -> None:
    for name in names:
        if (local / name).exists():
            storage.upload(local / name, storage.join(out, name))


def _write_report(out: Path) -> None:
    """The build report (report/, and the headline in corpus/README.md); `synth report` redoes it."""
    from synth.report import write_report

    try:
        log.info("report: %s", write_report(out))
    except Exception:  # the corpus and manifest are complete; a report bug must not fail the build
        log.exception("writing the build report failed (rerun: synth report %s)", out)


def _run_stages(ctx: StageContext, out: Path | str, max_failures: int | None, lock: BuildLock,
                plan: dict[str, Any] | None = None, pipeline: Pipeline = PIPELINE) -> list[StageRecord]:
    """Run (or reuse) every stage of `pipeline` in order, each on its input stage's output rows."""
    planned = {s["name"]: s for s in (plan or {}).get("stages", [])}
    records: list[StageRecord] = []
    outputs: dict[str, tuple[str, int]] = {}  # stage → (what its output stands for, its rows out)
    for stage in pipeline:
        lock.check()  # a build whose lease on an object store was taken over stops here
        # Loaded models stay loaded across the stages between their uses; any other is closed.
        needed_next = _models_needed_next(ctx.config, pipeline.after(stage.name))
        ctx.release_engines(keep=needed_next)
        stage_dir = storage.join(out, "stages", stage.name)
        source = pipeline.input_of(stage.name)
        upstream_output, rows_in = outputs[source] if source is not None else ("", 0)
        previous = read_rows(storage.join(out, "stages", source, "rows")) if source is not None else None
        inputs = stage_inputs(stage, ctx, upstream_output)
        signature = digest(inputs)
        marker = _read_marker(stage_dir)
        why = why_run(marker, signature, inputs)
        if why == "reused":
            record = StageRecord(**{**marker["record"], "reused": True, "why": why})
            output = marker.get("output", signature)
            log.info("stage %-16s reused (%d rows)", stage.name, record.rows_out)
        else:
            fault_point(f"stage_start:{stage.name}")
            started = time.monotonic()
            log.info("stage %-16s running (%s)", stage.name, why)
            # Here, not before reused stages: a resumed build loads no model for stages already done.
            ctx.start_engines(needed_next)
            ctx.stage = stage.name
            failed_before = sum(n for r in records for code, n in r.rejected.items() if is_failure(code))
            failed_before += sum(r.pending for r in records)
            with StageProgress(stage.name, ctx.tally, planned.get(stage.name),
                               rows_total=None if stage.fans_out else rows_in) as progress:
                result = stage.run(ctx, previous)
                record = _write_stage(stage, result, stage_dir, rows_in, signature,
                                      budget=None if max_failures is None else (failed_before, max_failures, out),
                                      input_schema=previous.schema() if previous is not None else None,
                                      on_rows=progress.add_rows)
            for key, value in progress.summary().items():
                setattr(record, key, value)
            record.seconds = round(time.monotonic() - started, 2)
            record.requests = ctx.requests.get(stage.name, {})
            record.why = why
            # What the next stage's signature chains from: a stage with pending rows will produce
            # more rows when rerun, so its output is not the one its signature alone stands for.
            output = signature if not record.pending else digest({"partial": signature, "at": time.time_ns()})
            storage.write_json(storage.join(stage_dir, MARKER), {"signature": signature, "inputs": inputs, "output": output,
                                                    "record": record.__dict__})
            log.info(
                "stage %-16s %d in → %d out, %d rejected%s%s (%.1fs)", stage.name, record.rows_in, record.rows_out,
                sum(record.rejected.values()),
                "".join(f", {n} to {k}" for k, n in record.diverted.items()),
                f", {record.pending} pending (sent again next run)" if record.pending else "", record.seconds,
            )
        records.append(record)
        outputs[stage.name] = (output, record.rows_out)
        failures = sum(n for r in records for code, n in r.rejected.items() if is_failure(code))
        failures += sum(r.pending for r in records)
        if max_failures is not None and failures > max_failures:
            raise _over_budget(failures, max_failures, out)
    return records


def _over_budget(failures: int, max_failures: int, out: Path) -> BuildFailed:
    return BuildFailed(
        f"{failures} LLM requests failed after retries (budget --max-failures {max_failures}); "
        f"finished stages are kept in {storage.join(out, 'stages')}, see rejects/ and pending/ for the errors"
    )


def _models_needed_next(config: PipelineConfig, stages: tuple[Stage, ...]) -> set[str]:
    """The models of the first of `stages` that sends requests (none if no stage does)."""
    for stage in stages:
        if models := {role.model for role in stage.roles(config)}:
            return models
    return set()


def _write_stage(stage: Stage, result: ray.data.Dataset, stage_dir: Path, rows_in: int, signature: str,
                 input_schema: Any = None, budget: tuple[int, int, Path] | None = None,
                 on_rows: Any = None) -> StageRecord:
    """Stream the result into rows / rejects / pending / side outputs, shard by shard, then rename.

    `budget`: (requests failed before this stage, --max-failures, build dir); checked as the batches' counts arrive, so a
    dead endpoint or a wrong key stops the build in its first batches, not after the stage.
    `on_rows(n)`: told the rows of each batch as it is written (live progress).
    """
    if storage.is_remote(stage_dir):  # no rename on an object store: write-then-marker
        storage.delete(storage.join(stage_dir, MARKER))  # readers trust only a marked stage directory
        storage.delete_dir(stage_dir)
        tmp = stage_dir
    else:
        tmp = stage_dir.with_name(f".{stage.name}.tmp")
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
    writer = ShardWriter(str(tmp), stage.name, dict(stage.diverted), list(stage.reject_only_columns))
    reasons: dict[str, int] = {}
    failed = 0
    schema: pa.Schema | None = None
    nodes: dict[str, int] = {}
    for part in result.map_batches(writer, batch_format="pandas").iter_batches(batch_format="pandas"):
        for reason, n, batch_schema, node in zip(part["reason"], part["n"], part["schema"], part["node"]):
            reasons[reason] = reasons.get(reason, 0) + int(n)
            nodes[node] = nodes.get(node, 0) + int(n)
            failed += int(n) if is_failure(reason_key(reason)) else 0
            if schema is None and batch_schema:
                schema = pa.ipc.read_schema(pa.py_buffer(batch_schema))
            if on_rows is not None:
                on_rows(int(n))
        if budget is not None and budget[0] + failed > budget[1]:
            raise _over_budget(budget[0] + failed, budget[1], budget[2])
    if schema is None:  # no batch at all (an earlier stage kept no row): the input's columns,
        schema = _arrow_schema(None, input_schema)  # and the stage's own (as strings: no row has a value)
        for column in stage.columns or ():
            if column not in schema.names:
                schema = schema.append(pa.field(column, pa.string()))
    if stage.columns is not None:
        missing = [c for c in stage.columns if c not in schema.names]
        if missing:
            raise BuildFailed(f"stage {stage.name}: output lacks its declared columns {missing} (bug)")
    # Every output directory holds at least one (possibly empty) file with the schema.
    drop = [REJECT_COLUMN, *stage.reject_only_columns]
    _ensure_schema_file(storage.join(tmp, "rows"), pa.schema([f for f in schema if f.name not in drop]))
    _ensure_schema_file(storage.join(tmp, "rejects"), schema.append(pa.field("stage", pa.string())))
    _ensure_schema_file(storage.join(tmp, PENDING_DIR), schema)
    for side in set(stage.diverted.values()):
        _ensure_schema_file(storage.join(tmp, side), schema)
    fault_point(f"mid_write:{stage.name}")

    rows_out = reasons.pop("", 0)
    rejected: dict[str, int] = {}
    diverted: dict[str, int] = {}
    pending = 0
    for reason, n in reasons.items():
        if reason in stage.diverted:
            diverted[stage.diverted[reason]] = diverted.get(stage.diverted[reason], 0) + n
        elif reason_key(reason) == PENDING:
            pending += n
        else:
            rejected[reason_key(reason)] = rejected.get(reason_key(reason), 0) + n
    created = rows_out + sum(rejected.values()) + sum(diverted.values()) + pending - rows_in
    if created and not stage.fans_out:
        raise BuildFailed(f"stage {stage.name}: {rows_in} rows in but {rows_in + created} accounted for (bug: rows lost)")
    if tmp != stage_dir:
        shutil.rmtree(stage_dir, ignore_errors=True)
        tmp.rename(stage_dir)
    return StageRecord(stage.name, rows_in, rows_out, dict(sorted(rejected.items())), diverted, created,
                       pending=pending, signature=signature, nodes=dict(sorted(nodes.items())))


PENDING_DIR = "pending"


class ShardWriter:
    """Ray Data callable: splits one batch into rows / rejects / pending / side outputs and
    writes each as a shard named by a hash of the batch's row ids, so a task that Ray
    retries (worker killed, node lost) overwrites its own shards instead of adding copies.

    Returns the batch's reason counts (and its Arrow schema, and the Ray node that wrote it),
    so counting and writing are one pass.
    """

    def __init__(self, root: str, stage: str, diverted: dict[str, str], reject_only: list[str]):
        self.root = storage.location(root)
        self.stage, self.diverted, self.reject_only = stage, diverted, reject_only

    def __call__(self, batch: pd.DataFrame) -> pd.DataFrame:
        if REJECT_COLUMN not in batch.columns:
            raise BuildFailed(f"stage {self.stage}: its rows have no {REJECT_COLUMN!r} column (a stage sets it on "
                              "every row: '' keeps the row, a reason rejects it)")
        reason = batch[REJECT_COLUMN].astype(str)
        ids = "\n".join(batch["id"].astype(str)) if "id" in batch.columns else str(len(batch))
        name = f"{hashlib.sha256(ids.encode()).hexdigest()[:24]}.parquet"
        is_pending = reason.str.startswith(PENDING)
        is_side = reason.isin(list(self.diverted))
        kept = batch[reason == ""].drop(columns=[REJECT_COLUMN, *self.reject_only])
        rejects = batch[(reason != "") & ~is_side & ~is_pending].assign(stage=self.stage)
        parts = {"rows": kept, "rejects": rejects, PENDING_DIR: batch[is_pending]}
        for side in set(self.diverted.values()):
            parts[side] = batch[reason.isin([r for r, s in self.diverted.items() if s == side])]
        for folder, frame in parts.items():
            if len(frame):  # atomically: a local temporary file renamed, or one PUT (synth.storage)
                storage.write_table(storage.join(self.root, folder, name), to_arrow(frame))
        worker_fault_point(f"shard_written:{self.stage}")
        counts = reason.value_counts()
        # The driver needs the stage's Arrow schema once (for the empty files of empty outputs):
        # each worker process sends it with its first batch of this stage.
        schema = b"" if str(self.root) in _SCHEMA_SENT else to_arrow(batch).schema.serialize().to_pybytes()
        _SCHEMA_SENT.add(str(self.root))
        node = ray.get_runtime_context().get_node_id()
        return pd.DataFrame({"reason": counts.index.astype(str), "n": counts.values.astype("int64"),
                             "schema": [schema] * len(counts), "node": [node] * len(counts)})


_SCHEMA_SENT: set[str] = set()  # per worker process: the stage directories whose schema it sent


def _ensure_schema_file(path: Path | str, schema: pa.Schema) -> None:
    if not storage.files(path):
        if not storage.is_remote(path):
            path.mkdir(parents=True, exist_ok=True)
        storage.write_table(storage.join(path, "empty.parquet"), schema.empty_table())


def _arrow_schema(schema: Any, input_schema: Any = None) -> pa.Schema:
    if schema is None:  # an empty result without blocks (an earlier stage kept no row): the input's columns
        base = _arrow_schema(input_schema) if input_schema is not None else pa.schema([])
        return base if REJECT_COLUMN in base.names else base.append(pa.field(REJECT_COLUMN, pa.string()))
    base = getattr(schema, "base_schema", schema)
    if isinstance(base, pa.Schema):
        return base
    return pa.schema([pa.field(n, pa.string()) for n in schema.names])


def read_rows(path: Path | str) -> ray.data.Dataset:
    if storage.is_remote(path):
        fs, inside_fs = storage.resolve(path)
        return ray.data.read_parquet(inside_fs, filesystem=fs)
    return ray.data.read_parquet(str(path))


def _read_marker(stage_dir: Path | str) -> dict | None:
    try:
        return json.loads(storage.read_bytes(storage.join(stage_dir, MARKER)))
    except (OSError, ValueError):
        return None


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
        # rows whose request failed transiently: the next run of the same command sends them again
        "pending": sum(r.pending for r in records),
        "export": export_counts,
    }


__all__ = ["run_build", "prepare", "STAGES", "BadInput", "BuildFailed"]
