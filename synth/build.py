"""`synth build`: prepare, run the stages, export, write the manifest and the report.

The parts: `synth.runner` (each stage reused or run), `synth.stage_writer` (a stage's
output as parquet, every row counted), `synth.signatures` (when a stage can be reused),
`synth.manifest`, and the exports (`synth.export`) and report (`synth.report`).

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

People's labels (`<out>/reviews/`, written by `synth review pull`) are data, not cache: a build
never deletes them (`--fresh` deletes stages/ and cache/ only) and its export applies them, as
`synth export BUILD` (`export_again`) does without running a stage.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from synth import storage
from synth.config import PipelineConfig
from synth.errors import BadInput, BuildFailed
from synth.engines.pushback import BUILD_LOG_ENV
from synth.faults import DRIVER_PID
from synth.lock import BuildLock
from synth.manifest import build_manifest
from synth.pipeline import PIPELINE, Pipeline
from synth.prepare import check_eval_sets, prepare
from synth.runner import run_stages
from synth.session import init_ray, log_to_file
from synth.stages.base import Stage, StageContext
from synth.templates import Catalog

log = logging.getLogger("synth")

STAGES: tuple[Stage, ...] = PIPELINE.stages  # the shipped pipeline's stages, in run order


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
    from synth.plan import make_plan

    plan = make_plan(config, catalog, pipeline=pipeline)  # what this build should cost, recorded beside what it did
    out = storage.location(out)  # a local Path, or a URI on an object store (s3://…): see synth.storage
    storage.check_reachable(out)
    storage.make_dirs(out)
    build_log = storage.local_log_dir(out) / "build.log"  # a remote build's log: local, uploaded at the end
    build_log.parent.mkdir(parents=True, exist_ok=True)
    # the engines' workers log to this build's build.log; fault injection (tests) kills this driver
    with BuildLock(out) as lock, _environ({BUILD_LOG_ENV: str(build_log.resolve()), DRIVER_PID: str(os.getpid())}):
        try:
            manifest = _build(config, catalog, plan, out, build_log, lock, dry_run=dry_run, fresh=fresh,
                              max_failures=max_failures, pipeline=pipeline)
        finally:
            try:  # an object store's copy of the log, of a failed build too: it says why
                storage.sync_back(build_log.parent, out, ["build.log"])
            except Exception as e:  # noqa: BLE001 - never hide the build's own error behind this one
                log.warning("could not upload %s to %s: %s", build_log, out, type(e).__name__)
    return manifest


@contextmanager
def _environ(values: dict[str, str]) -> Iterator[None]:
    """`values` in this process's environment while a build runs, as they were afterwards (a process
    that builds twice, a test session, never points the next build at the last one's build.log)."""
    before = {name: os.environ.get(name) for name in values}
    os.environ.update(values)
    try:
        yield
    finally:
        for name, value in before.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value


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
    init_ray()
    ctx = StageContext(config=config, catalog=catalog, dry_run=dry_run,
                       cache_root=storage.join(out, "cache", "requests"))
    try:
        records = run_stages(ctx, out, max_failures, lock, plan, pipeline=pipeline)
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
        manifest = build_manifest(config, catalog, ctx, records, export_counts, dry_run)
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
        storage.sync_back(local, out, BUILD_OUTPUTS)
    return manifest


def check_finished(out: Path | str) -> None:
    """BadInput naming `out` unless a build finished there (its manifest.json is written last),
    before anything takes its lock."""
    storage.check_reachable(out)
    if not storage.exists(storage.join(out, "manifest.json")):
        raise BadInput(f"{storage.display(out)}: not a finished build (no manifest.json); "
                       "run or resume it with `synth build CONFIG --out BUILD_DIR`")


def export_again(out: Path | str, config_path: Path | None = None) -> dict[str, Any]:
    """`synth export BUILD`: a finished build's exports, the manifest's export counts and the report
    written again from its stage outputs and recorded config (inputs/config.yaml; `config_path` for a
    build made before synth recorded it), running no stage: what the end of a build does, with the
    people's labels in reviews/ applied. Returns the counts."""
    from synth.config import load_config
    from synth.export import INPUTS_DIR, export_build, open_build

    check_finished(out)
    with BuildLock(out), storage.local_mirror(out) as local:
        open_build(local, config_path)  # a finished build with its recorded inputs, else BadInput saying what is missing
        config, _, _ = load_config(config_path or local / INPUTS_DIR / "config.yaml")
        manifest = json.loads((local / "manifest.json").read_text(encoding="utf-8"))
        counts = export_build(local, config, judges_measured=manifest.get("judges_calibration"))
        manifest["export"] = counts
        storage.write_json(local / "manifest.json", manifest)
        _write_report(local)
        storage.sync_back(local, out, BUILD_OUTPUTS)
    return counts


# What the exports and the report write into a build (uploaded from a local copy on an object
# store); manifest.json last: a build is finished when its manifest is there.
BUILD_OUTPUTS = ("inputs", "corpus", "sft", "hard", "rejects", "libra_test.jsonl", "report", "manifest.json")



def _write_report(out: Path) -> None:
    """The build report (report/, and the headline in corpus/README.md); `synth report` redoes it."""
    from synth.report import write_report

    try:
        log.info("report: %s", write_report(out))
    except Exception:  # the corpus and manifest are complete; a report bug must not fail the build
        log.exception("writing the build report failed (rerun: synth report %s)", out)


__all__ = ["run_build", "export_again", "prepare", "STAGES", "BadInput", "BuildFailed"]
