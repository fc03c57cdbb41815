"""Builds on an object store: `--out s3://bucket/prefix` against a real S3-compatible server
(moto's, started on 127.0.0.1 by these tests and stopped after them; nothing leaves the machine).

A dry-run build into s3://, a SIGKILL mid-stage and a resume that equals a clean build,
`synth export` and `synth report` reading from the store, `datasets.load_dataset` of the
corpus through the same URI, the lease lock, and bad input (unknown scheme, unreachable
store, missing credentials) exiting 2 with a message naming the URI and never the secret.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from conftest import BUCKET, SECRET
from test_resume import small_config, synth_build

CORPUS_FILES = ("libra_test.jsonl", "corpus/data/train-00000-of-00001.parquet",
                "corpus/data/validation-00000-of-00001.parquet", "hard/hard.parquet")


def store_bytes(uri: str, files=CORPUS_FILES) -> dict[str, bytes]:
    from synth import storage

    return {f: storage.read_bytes(storage.join(uri, f)) for f in files}


def run_cli(env: dict[str, str], *args: str, timeout: int = 300) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "synth.cli", *args], env={**os.environ, **env},
                          capture_output=True, text=True, timeout=timeout)


@pytest.fixture(scope="module")
def clean(s3, repo_root: Path, tmp_path_factory) -> tuple[Path, str]:
    """A small dry-run build into s3://…/clean: (its config, its URI)."""
    tmp = tmp_path_factory.mktemp("s3-clean")
    config = small_config(repo_root, tmp)
    uri = f"s3://{BUCKET}/builds/clean"
    result = synth_build(config, uri, env_extra=s3)  # type: ignore[arg-type]
    assert result.returncode == 0, result.stderr[-3000:]
    assert SECRET not in result.stderr + result.stdout
    return config, uri


def test_a_dry_run_build_writes_everything_into_the_store(clean, s3):
    from synth import storage

    _, uri = clean
    manifest = json.loads(storage.read_bytes(storage.join(uri, "manifest.json")))
    assert manifest["export"]["corpus_rows"] > 0
    for stage in manifest["stages"]:
        marker = json.loads(storage.read_bytes(storage.join(uri, "stages", stage["name"], "_SUCCESS.json")))
        assert marker["record"]["rows_out"] == stage["rows_out"]
        assert storage.files(storage.join(uri, "stages", stage["name"], "rows"))
    assert storage.subdirs(storage.join(uri, "cache", "requests"))  # the request cache is in the store too
    for name in ("report/index.html", "report/report.json", "corpus/README.md", "sft/README.md", "build.log",
                 "inputs/config.yaml"):
        assert storage.exists(storage.join(uri, name)), name
    assert not storage.exists(storage.join(uri, ".synth.lock"))  # the lease is released
    text = storage.read_bytes(storage.join(uri, "build.log")).decode() + json.dumps(manifest)
    assert SECRET not in text and "synth-test-key" not in text


def test_sigkill_mid_stage_then_resume_equals_a_clean_build(clean, s3):
    from synth import storage

    config, clean_uri = clean
    uri = f"s3://{BUCKET}/builds/killed"
    killed = synth_build(config, uri, fault="mid_write:respond", env_extra=s3)  # type: ignore[arg-type]
    assert killed.returncode == -signal.SIGKILL, (killed.returncode, killed.stderr[-2000:])
    assert storage.exists(storage.join(uri, ".synth.lock"))  # the dead build's lease is left behind
    assert not storage.exists(storage.join(uri, "stages", "respond", "_SUCCESS.json"))  # unmarked: not trusted
    resumed = synth_build(config, uri, env_extra=s3)  # type: ignore[arg-type]
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert "stale lease" in resumed.stderr
    assert store_bytes(uri) == store_bytes(clean_uri)
    manifest = json.loads(storage.read_bytes(storage.join(uri, "manifest.json")))
    # Stages finished before the kill were reused: their markers were read back from the store.
    assert [s["name"] for s in manifest["stages"] if s["reused"]][:3] == ["elements", "queries", "augment"]


def test_export_and_report_read_from_the_store(clean, s3, tmp_path: Path):
    from synth import storage

    _, uri = clean
    local = tmp_path / "libra.jsonl"
    result = run_cli(s3, "export", uri, "--format", "libra-test", "--out", str(local))
    assert result.returncode == 0, result.stderr[-3000:]
    assert local.read_bytes() == storage.read_bytes(storage.join(uri, "libra_test.jsonl"))
    remote = f"{uri}-exports/sft"
    result = run_cli(s3, "export", uri, "--format", "sft", "--out", remote)
    assert result.returncode == 0, result.stderr[-3000:]
    assert storage.files(storage.join(remote, "data"))
    storage.delete(storage.join(uri, "report", "index.html"))
    result = run_cli(s3, "report", uri)
    assert result.returncode == 0, result.stderr[-3000:]
    assert storage.exists(storage.join(uri, "report", "index.html"))


def test_a_build_on_google_cloud_storage_equals_the_s3_build(clean, gcs, tmp_path: Path):
    """gs:// through pyarrow's GcsFileSystem, against a GCS emulator: the same config's dry run
    writes the same exports as into S3, and `synth export` reads them back from gs://."""
    from synth import storage

    config, s3_uri = clean
    uri = f"gs://{BUCKET}/builds/gcs"
    result = synth_build(config, uri, env_extra=gcs)  # type: ignore[arg-type]
    assert result.returncode == 0, result.stderr[-3000:]
    assert store_bytes(uri) == store_bytes(s3_uri)
    assert storage.exists(storage.join(uri, "report/index.html")) and storage.exists(storage.join(uri, "build.log"))
    assert storage.subdirs(storage.join(uri, "cache", "requests"))
    assert not storage.exists(storage.join(uri, ".synth.lock"))
    local = tmp_path / "libra.jsonl"
    result = run_cli(gcs, "export", uri, "--format", "libra-test", "--out", str(local))
    assert result.returncode == 0, result.stderr[-3000:]
    assert local.read_bytes() == storage.read_bytes(storage.join(uri, "libra_test.jsonl"))


def test_datasets_loads_the_corpus_through_the_same_uri(clean, s3, tmp_path: Path):
    import datasets

    _, uri = clean
    options = {"key": s3["AWS_ACCESS_KEY_ID"], "secret": s3["AWS_SECRET_ACCESS_KEY"],
               "client_kwargs": {"endpoint_url": s3["AWS_ENDPOINT_URL"]}}
    # a cache of its own: the user's datasets cache keeps what an earlier run loaded from the
    # same s3:// path (the emulator's bucket is new each run, the path is not)
    corpus = datasets.load_dataset("parquet", data_files={"train": f"{uri}/corpus/data/train-*.parquet",
                                                          "validation": f"{uri}/corpus/data/validation-*.parquet"},
                                   storage_options=options, cache_dir=str(tmp_path / "hf-datasets"))
    from synth import storage

    manifest = json.loads(storage.read_bytes(storage.join(uri, "manifest.json")))
    assert corpus["train"].num_rows == manifest["export"]["train_rows"]
    assert corpus["validation"].num_rows == manifest["export"]["validation_rows"]


def test_two_builds_on_one_prefix_the_second_exits_2(s3, repo_root: Path, tmp_path: Path):
    from synth import storage
    from synth.lock import BuildLock, LeaseLock

    uri = f"s3://{BUCKET}/builds/locked"
    with BuildLock(uri) as lease:
        assert isinstance(lease, LeaseLock)
        held = json.loads(storage.read_bytes(storage.join(uri, ".synth.lock")))
        assert held["pid"] == os.getpid() and held["expires"] > time.time()
        result = synth_build(small_config(repo_root, tmp_path), uri, env_extra=s3)  # type: ignore[arg-type]
        assert result.returncode == 2, result.stderr[-2000:]
        assert "another build is writing here" in result.stderr and uri in result.stderr
    assert not storage.exists(storage.join(uri, ".synth.lock"))


def test_the_lease_is_refreshed_and_an_expired_one_taken_over(s3, monkeypatch):
    from synth import storage
    from synth.errors import BadInput, BuildFailed
    from synth.lock import LeaseLock

    monkeypatch.setenv("SYNTH_LEASE_SECONDS", "1.5")
    uri = f"s3://{BUCKET}/builds/lease"
    lease = storage.join(uri, ".synth.lock")
    # An unexpired lease of a live process on another host: busy (exit 2).
    storage.write_bytes(lease, json.dumps({"pid": 1, "host": "elsewhere", "token": "x",
                                           "expires": time.time() + 60}).encode())
    with pytest.raises(BadInput, match="another build is writing here"):
        LeaseLock(uri).__enter__()
    # An expired one: taken over.
    storage.write_bytes(lease, json.dumps({"pid": 1, "host": "elsewhere", "token": "x",
                                           "expires": time.time() - 1}).encode())
    with LeaseLock(uri) as mine:
        first = json.loads(storage.read_bytes(lease))["expires"]
        time.sleep(1.2)
        refreshed = json.loads(storage.read_bytes(lease))
        assert refreshed["token"] == mine.me["token"] and refreshed["expires"] > first
        mine.check()  # still ours
        # Another build takes it over (e.g. it judged ours stale): ours notices at its next refresh
        # and stops at the next stage boundary, and does not delete the other's lease on exit.
        storage.write_bytes(lease, json.dumps({"pid": 2, "host": "elsewhere", "token": "theirs",
                                               "expires": time.time() + 60}).encode())
        time.sleep(1.2)
        with pytest.raises(BuildFailed, match="taken over by pid 2 on elsewhere"):
            mine.check()
    assert json.loads(storage.read_bytes(lease))["token"] == "theirs"


@pytest.mark.parametrize("case", ["unknown-scheme", "unreachable", "no-credentials", "no-bucket"])
def test_bad_stores_exit_2_naming_the_uri_never_the_secret(case: str, s3, repo_root: Path, tmp_path: Path):
    env = dict(s3)
    uri = f"s3://{BUCKET}/builds/bad"
    if case == "unknown-scheme":
        uri = "nosuchfs://bucket/prefix"
    elif case == "unreachable":
        with socket.socket() as s:  # a port nothing listens on
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        env.update(AWS_ENDPOINT_URL=f"http://127.0.0.1:{port}", SYNTH_S3_MAX_ATTEMPTS="1",
                   SYNTH_S3_CONNECT_TIMEOUT="1")
    elif case == "no-credentials":
        env.update(AWS_ACCESS_KEY_ID="", AWS_SECRET_ACCESS_KEY="", AWS_SHARED_CREDENTIALS_FILE=str(tmp_path / "none"))
    else:
        uri = "s3://no-such-bucket/prefix"
    started = time.monotonic()
    result = run_cli(env, "build", str(small_config(repo_root, tmp_path)), "--out", uri, "--dry-run", timeout=120)
    assert result.returncode == 2, (result.returncode, result.stderr[-2000:])
    assert uri in result.stderr
    assert SECRET not in result.stderr + result.stdout
    assert "Traceback" not in result.stderr
    assert time.monotonic() - started < 60
