"""One Ray session per test run (Ray start-up costs seconds; tests share it)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
os.environ.setdefault("RAY_DEDUP_LOGS", "0")
os.environ.setdefault("RAY_ENABLE_UV_RUN_RUNTIME_ENV", "0")


@pytest.fixture(scope="session")
def ray_session():
    import ray

    from synth.session import init_ray

    init_ray()
    yield ray
    ray.shutdown()


@pytest.fixture(scope="session")
def repo_root() -> Path:
    return ROOT


@pytest.fixture(scope="session")
def demo_build(ray_session, repo_root: Path, tmp_path_factory) -> tuple[Path, dict]:
    """A dry run of pipelines/demo.yaml (stand-in engine), shared by the tests that read one."""
    from synth.build import run_build

    out = tmp_path_factory.mktemp("demo") / "build"
    manifest = run_build(repo_root / "pipelines/demo.yaml", out, dry_run=True)
    return out, manifest


# An S3-compatible server for the object-storage tests (tests/test_object_storage.py,
# tests/test_multinode.py): moto's, on 127.0.0.1, started and stopped per test module.
SECRET = "s3cr3t-never-printed"
BUCKET = "synth-test"


@pytest.fixture(scope="module")
def s3() -> dict[str, str]:
    """A moto S3 server on 127.0.0.1 with one bucket; the AWS_* variables that reach it, also set in
    this process's environment while the module runs (so Ray nodes a test starts inherit them)."""
    from moto.server import ThreadedMotoServer

    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    env = {"AWS_ACCESS_KEY_ID": "synth-test-key", "AWS_SECRET_ACCESS_KEY": SECRET,
           "AWS_ENDPOINT_URL": f"http://{host}:{port}", "AWS_DEFAULT_REGION": "us-east-1",
           "AWS_EC2_METADATA_DISABLED": "true"}
    saved = {k: os.environ.get(k) for k in env}
    os.environ.update(env)  # for this process's reads (pyarrow, datasets); restored below
    try:
        import boto3

        boto3.client("s3", endpoint_url=env["AWS_ENDPOINT_URL"]).create_bucket(Bucket=BUCKET)
        yield env
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
        from synth import storage

        storage._filesystem.cache_clear()
        server.stop()


@pytest.fixture(scope="module")
def gcs() -> dict[str, str]:
    """A Google Cloud Storage emulator (gcp-storage-emulator, in memory) on 127.0.0.1 with one
    bucket; STORAGE_EMULATOR_HOST, the variable Google's clients read, set while the module runs."""
    import socket

    from gcp_storage_emulator.server import create_server

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    server = create_server("127.0.0.1", port, in_memory=True, default_bucket=BUCKET)
    server.start()
    env = {"STORAGE_EMULATOR_HOST": f"http://127.0.0.1:{port}"}
    saved = os.environ.get("STORAGE_EMULATOR_HOST")
    os.environ.update(env)
    try:
        yield env
    finally:
        if saved is None:
            os.environ.pop("STORAGE_EMULATOR_HOST", None)
        else:
            os.environ["STORAGE_EMULATOR_HOST"] = saved
        from synth import storage

        storage._filesystem.cache_clear()
        server.stop()
