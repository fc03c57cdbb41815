"""Scheduled builds that survive: SIGKILL and resume, incremental rebuilds, the lock, the failure budget.

Builds run as real `synth build` subprocesses; `SYNTH_FAULT` (synth/faults.py)
makes the build SIGKILL itself at a named point, as a pre-empted job dies.
The stand-in engine is deterministic, so a resumed build must equal an
uninterrupted one byte for byte.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
import yaml

from synth.export import read_table

SMALL = {  # a small config: three scenarios, one call per subcategory and kind
    "scenarios": ["hate_abuse", "ethics_morality", "physical_mental_health"],
}


def small_config(repo_root: Path, tmp_path: Path, **changes) -> Path:
    data = yaml.safe_load((repo_root / "pipelines/demo.yaml").read_text())
    data.update(SMALL, templates=str(changes.pop("templates", repo_root / "templates")),
                seeds=str(changes.pop("seeds", repo_root / "seeds")), **changes)
    path = tmp_path / f"pipeline-{len(list(tmp_path.glob('pipeline-*')))}.yaml"
    path.write_text(yaml.safe_dump(data, allow_unicode=True))
    return path


def synth_build(config: Path, out: Path, *extra: str, fault: str | None = None, dry_run: bool = True,
                timeout: int = 900, env_extra: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    env = {**os.environ, "SYNTH_NUM_CPUS": "2", **(env_extra or {})}
    env.pop("SYNTH_FAULT", None)
    if fault:
        env["SYNTH_FAULT"] = fault
    return subprocess.run(
        [sys.executable, "-m", "synth.cli", "build", str(config), "--out", str(out),
         *(["--dry-run"] if dry_run else []), *extra],
        env=env, capture_output=True, text=True, timeout=timeout,
    )


def export_bytes(out: Path) -> dict[str, bytes]:
    files = ["libra_test.jsonl", "corpus/data/train-00000-of-00001.parquet",
             "corpus/data/validation-00000-of-00001.parquet", "hard/hard.parquet"]
    files += [str(p.relative_to(out)) for p in sorted((out / "rejects").glob("*.parquet"))]
    return {f: (out / f).read_bytes() for f in files}


def answered_keys(out: Path) -> set[str]:
    from synth.request_cache import cached_keys

    return {k for d in (out / "cache/requests").glob("*") for k in cached_keys(d)}


@pytest.fixture(scope="module")
def reference(repo_root: Path, tmp_path_factory) -> tuple[Path, Path]:
    tmp = tmp_path_factory.mktemp("reference")
    config = small_config(repo_root, tmp)
    out = tmp / "out"
    result = synth_build(config, out)
    assert result.returncode == 0, result.stderr[-3000:]
    return config, out


@pytest.mark.parametrize(
    "fault",
    ["cache_shard_written@2", "mid_write:respond", "stage_start:annotate"],
    ids=["during-generation", "during-parquet-write", "between-stages"],
)
def test_sigkill_then_resume_equals_an_uninterrupted_build(reference, tmp_path: Path, fault: str):
    config, reference_out = reference
    out = tmp_path / "out"
    killed = synth_build(config, out, fault=fault)
    assert killed.returncode == -signal.SIGKILL, (killed.returncode, killed.stderr[-2000:])
    assert (out / ".synth.lock").exists()  # the dead build's lock is left behind, as after a real crash
    answered_before = answered_keys(out)
    sent_before = set((out / "cache/sent").rglob("*.txt"))
    resumed = synth_build(config, out)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert "stale lock" in resumed.stderr
    assert export_bytes(out) == export_bytes(reference_out)
    # Counted at the engine boundary: nothing answered before the kill was sent again.
    sent_after = [k for f in set((out / "cache/sent").rglob("*.txt")) - sent_before for k in f.read_text().split()]
    assert not answered_before & set(sent_after)
    manifest = json.loads((out / "manifest.json").read_text())
    # Work finished before the kill was not paid for twice.
    sent = sum(s["requests"].get("sent", 0) for s in manifest["stages"] if not s["reused"])
    reference_manifest = json.loads((reference_out / "manifest.json").read_text())
    total = sum(s["requests"].get("sent", 0) for s in reference_manifest["stages"])
    assert sent < total
    assert any(s["reused"] or s["requests"].get("cached") for s in manifest["stages"])


@pytest.mark.parametrize("stage", ["respond", "annotate"])
def test_a_writer_task_killed_mid_stage_is_retried_without_duplicates(reference, tmp_path: Path, stage: str):
    """SIGKILL the Ray worker inside a stage's writer task, after it wrote a batch's shards:
    Ray retries the task, which overwrites its own shards (named by the rows' ids)."""
    config, reference_out = reference
    out = tmp_path / "out"
    once = tmp_path / "killed"
    result = synth_build(config, out, env_extra={"SYNTH_WORKER_FAULT": f"shard_written:{stage}",
                                                 "SYNTH_WORKER_FAULT_ONCE": str(once)})
    assert result.returncode == 0, result.stderr[-3000:]
    assert once.exists()  # the worker was killed
    manifest = json.loads((out / "manifest.json").read_text())
    record = next(s for s in manifest["stages"] if s["name"] == stage)
    rows = read_table(out / "stages" / stage / "rows")
    assert len(rows) == record["rows_out"] and rows["id"].is_unique
    for folder, n in [("rejects", sum(record["rejected"].values())), *record["diverted"].items()]:
        assert len(read_table(out / "stages" / stage / folder)) == n, folder
    assert export_bytes(out) == export_bytes(reference_out)


def test_adding_a_scenario_generates_only_its_rows(reference, repo_root: Path, tmp_path: Path):
    config, reference_out = reference
    out = tmp_path / "out"
    import shutil

    shutil.copytree(reference_out, out)
    data = yaml.safe_load(config.read_text())
    data["scenarios"] = [*data["scenarios"], "privacy_property"]
    bigger = tmp_path / "bigger.yaml"
    bigger.write_text(yaml.safe_dump(data, allow_unicode=True))
    result = synth_build(bigger, out)
    assert result.returncode == 0, result.stderr[-3000:]
    manifest = json.loads((out / "manifest.json").read_text())
    for stage in manifest["stages"]:
        by_scenario = stage["requests"].get("sent_by_scenario", {})
        assert set(by_scenario) <= {"privacy_property"}, (stage["name"], by_scenario)
    queries = next(s for s in manifest["stages"] if s["name"] == "queries")
    generation = data["generation"]
    calls = generation["harmful_calls_per_subcategory"] + generation["benign_calls_per_subcategory"]
    assert queries["requests"]["sent_by_scenario"]["privacy_property"] == 4 * calls  # 4 subcategories
    rows = read_table(out / "stages/respond/rows")
    assert "privacy_property" in set(rows["scenario"])


def test_a_second_build_on_the_same_directory_exits_2(reference, tmp_path: Path):
    config, _ = reference
    out = tmp_path / "out"
    out.mkdir()
    holder = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        (out / ".synth.lock").write_text(json.dumps({"pid": holder.pid, "host": os.uname().nodename,
                                                     "started": "now"}))
        result = synth_build(config, out)
        assert result.returncode == 2
        assert "another build is writing here" in result.stderr and str(holder.pid) in result.stderr
    finally:
        holder.kill()
