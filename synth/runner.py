"""The runner: every stage of a `Pipeline` in order, each reused or run and written.

A stage whose marker carries the same signature (a hash of what it declares it depends on:
its config slice, templates, models, its input's output; see `synth.signatures`) and has no
pending requests is reused, so a crashed build resumes from the last finished stage and a
changed config reruns exactly the stages it changes. Models load ahead of their first use
(`models_started`) and close when no coming stage needs them (`StageContext.pool`).
"""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Any

from synth import storage
from synth.config import PipelineConfig
from synth.faults import fault_point
from synth.lock import BuildLock
from synth.pipeline import PIPELINE, Pipeline
from synth.progress import StageProgress
from synth.signatures import digest, stage_inputs, why_run
from synth.stage_writer import (
    MARKER, StageRecord, is_failure, over_budget, read_marker, read_rows, write_stage,
)
from synth.stages.base import Stage, StageContext

log = logging.getLogger("synth")


def run_stages(ctx: StageContext, out: Path | str, max_failures: int | None, lock: BuildLock,
                plan: dict[str, Any] | None = None, pipeline: Pipeline = PIPELINE) -> list[StageRecord]:
    """Run (or reuse) every stage of `pipeline` in order, each on its input stage's output rows."""
    planned = {s["name"]: s for s in (plan or {}).get("stages", [])}
    records: list[StageRecord] = []
    outputs: dict[str, tuple[str, int]] = {}  # stage → (what its output stands for, its rows out)
    for stage in pipeline:
        lock.check()  # a build whose lease on an object store was taken over stops here
        # Loaded models stay loaded across the stages between their uses; any other is closed.
        loading = models_started(ctx.config, pipeline.after(stage.name))
        ctx.pool.release(keep=models_kept(ctx.config, pipeline.after(stage.name)))
        stage_dir = storage.join(out, "stages", stage.name)
        source = pipeline.input_of(stage.name)
        upstream_output, rows_in = outputs[source] if source is not None else ("", 0)
        previous = read_rows(storage.join(out, "stages", source, "rows")) if source is not None else None
        inputs = stage_inputs(stage, ctx, upstream_output)
        signature = digest(inputs)
        marker = read_marker(stage_dir)
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
            ctx.pool.start(loading)
            failed_before = sum(n for r in records for code, n in r.rejected.items() if is_failure(code))
            failed_before += sum(r.pending for r in records)
            with StageProgress(stage.name, ctx.tally, planned.get(stage.name),
                               rows_total=None if stage.fans_out else rows_in) as progress:
                result = stage.run(ctx.for_stage(stage.name), previous)
                record = write_stage(stage, result, stage_dir, rows_in, signature,
                                      budget=None if max_failures is None else (failed_before, max_failures, out),
                                      input_schema=previous.schema() if previous is not None else None,
                                      on_rows=progress.add_rows, sides=stage.side_outputs(ctx.config))
            for key, value in progress.summary().items():
                setattr(record, key, value)
            record.seconds = round(time.monotonic() - started, 2)
            record.requests = ctx.cache.requests.get(stage.name, {})
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
            raise over_budget(failures, max_failures, out)
    return records


def models_needed_next(config: PipelineConfig, stages: tuple[Stage, ...]) -> set[str]:
    """The models of the first of `stages` that sends requests (none if no stage does)."""
    for stage in stages:
        if models := {role.model for role in stage.roles(config)}:
            return models
    return set()


def models_kept(config: PipelineConfig, stages: tuple[Stage, ...]) -> set[str]:
    """The models a loaded engine may stay loaded for, before the first of `stages` runs: those of
    the next stage that sends requests, and each model a later stage uses again where one stage
    of `stages` runs it together with all those kept (so they fit in memory at once: no reload
    for a model idle for a stage or two, and no more memory held than some stage needs anyway)."""
    uses = [models for stage in stages if (models := {role.model for role in stage.roles(config)})]
    kept = set(uses[0]) if uses else set()
    for models in uses[1:]:
        for model in sorted(models - kept):
            if any(kept | {model} <= together for together in uses):
                kept.add(model)
    return kept


def models_started(config: PipelineConfig, stages: tuple[Stage, ...]) -> set[str]:
    """The models to begin loading before the first of `stages` runs: the next requesting
    stage's, and each model of a later stage that would stay loaded (`models_kept`) from now
    until its first use. Such a model loads while the stages before it run instead of when its
    own stage starts (the demo: Qwen loads while Gemma writes the questions); one the runner
    would close again before its use is not started early (libra-stage1's responders)."""
    started = models_needed_next(config, stages)
    for i, stage in enumerate(stages):
        for model in sorted({role.model for role in stage.roles(config)} - started):
            if all(model in models_kept(config, stages[j:]) for j in range(i)):
                started.add(model)
    return started
