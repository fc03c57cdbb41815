"""A build on a Ray cluster of two nodes on this machine (`ray.cluster_utils.Cluster`: a head
and a second node, each its own raylet and object store, one CPU each): the stage work runs
on both nodes, every shard either node wrote is in the build's output, and the corpus equals
the one a single-node build of the same config writes.

The cluster lives in this test's processes only (127.0.0.1, its own ports); the builds run
as `synth build` subprocesses with RAY_ADDRESS, as a team runs them on a cluster.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest

from synth.export import read_table
from test_resume import export_bytes, small_config

pytestmark = pytest.mark.cluster


@pytest.fixture(scope="module")
def cluster():
    from ray.cluster_utils import Cluster

    os.environ.pop("RAY_ADDRESS", None)
    c = Cluster(initialize_head=True, connect=False, head_node_args={
        "num_cpus": 1, "object_store_memory": 300 * 2**20, "include_dashboard": False})
    c.add_node(num_cpus=1, object_store_memory=300 * 2**20)
    c.wait_for_nodes()
    try:
        yield c
    finally:
        c.shutdown()


@pytest.fixture(scope="module")
def alone(repo_root: Path, tmp_path_factory) -> tuple[Path, Path]:
    """The same config built on one node (before the cluster starts: ray.cluster_utils points
    RAY_ADDRESS at its head while it runs)."""
    tmp = tmp_path_factory.mktemp("multinode")
    config = small_config(repo_root, tmp)
    result = _build(config, tmp / "alone")
    assert result.returncode == 0, result.stderr[-3000:]
    return config, tmp / "alone"


@pytest.fixture(scope="module")
def builds(alone, cluster) -> tuple[Path, Path, Path]:
    config, out_alone = alone
    on_cluster = out_alone.parent / "cluster"
    result = _build(config, on_cluster, address=cluster.address)
    assert result.returncode == 0, result.stderr[-3000:]
    return config, on_cluster, out_alone


def _build(config: Path, out: Path, address: str | None = None) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k not in ("RAY_ADDRESS", "SYNTH_FAULT")}
    env.update({"RAY_ADDRESS": address} if address else {"SYNTH_NUM_CPUS": "2"})
    return subprocess.run([sys.executable, "-m", "synth.cli", "build", str(config), "--out", str(out), "--dry-run"],
                          env=env, capture_output=True, text=True, timeout=900)


def test_stage_work_runs_on_both_nodes_and_every_shard_lands_in_the_output(cluster, builds):
    _, out, _ = builds
    node_ids = {cluster.head_node.node_id, *(n.node_id for n in cluster.worker_nodes)}
    assert len(node_ids) == 2
    manifest = json.loads((out / "manifest.json").read_text())
    used = set()
    for record in manifest["stages"]:
        # every row a stage handled was written by a node of the cluster, and all of them are on disk
        assert set(record["nodes"]) <= node_ids, record["name"]
        handled = record["rows_out"] + sum(record["rejected"].values()) + sum(record["diverted"].values())
        assert sum(record["nodes"].values()) == handled + record.get("pending", 0), record["name"]
        assert len(read_table(out / "stages" / record["name"] / "rows")) == record["rows_out"], record["name"]
        used |= set(record["nodes"])
    assert used == node_ids  # both nodes wrote shards
    assert any(len(r["nodes"]) == 2 for r in manifest["stages"])  # and shared a stage


def test_the_cluster_build_equals_a_single_node_build(builds):
    _, on_cluster, alone = builds
    assert export_bytes(on_cluster) == export_bytes(alone)
