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

    from synth.build import init_ray

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
