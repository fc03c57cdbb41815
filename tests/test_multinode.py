"""A build on a Ray cluster of two nodes on this machine, submitted as the README says
(`ray job submit --address http://HEAD:8265 -- synth build … --out s3://…`), writing into an
object store that both nodes reach (moto's S3 server on 127.0.0.1, see conftest.py).

The cluster is `ray.cluster_utils.Cluster`: a head with the dashboard (its job server) and a
second node, each its own raylet and object store, one CPU each, all on 127.0.0.1. Its nodes
inherit this process's environment as a cluster's nodes have theirs: the store's AWS_*
variables, and PATH with this virtualenv's `bin/` first (where `synth` and `ray` are, as on a
head where synth is installed). The job's driver runs on the head and joins the cluster
through the RAY_ADDRESS the job server gives it.

Checked: the stage work ran on both nodes and shared a stage; every shard either node wrote
is in the store (rows per stage = the stage's count); the exports in the store equal those of a
single-node build of the same config on local disk.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import BUCKET
from test_resume import export_bytes, small_config

pytestmark = pytest.mark.cluster

BIN = Path(sys.executable).parent


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def alone(repo_root: Path, tmp_path_factory) -> tuple[Path, Path]:
    """The config built on one node, into a local directory (before the cluster starts:
    ray.cluster_utils points RAY_ADDRESS at its head while it runs)."""
    tmp = tmp_path_factory.mktemp("multinode")
    config = small_config(repo_root, tmp)
    env = {k: v for k, v in os.environ.items() if k not in ("RAY_ADDRESS", "SYNTH_FAULT")}
    result = subprocess.run([sys.executable, "-m", "synth.cli", "build", str(config), "--out", str(tmp / "alone"),
                             "--dry-run"], env={**env, "SYNTH_NUM_CPUS": "2"}, capture_output=True, text=True,
                            timeout=900)
    assert result.returncode == 0, result.stderr[-3000:]
    return config, tmp / "alone"


@pytest.fixture(scope="module")
def cluster(alone, s3):
    from ray.cluster_utils import Cluster

    os.environ.pop("RAY_ADDRESS", None)
    saved_path = os.environ["PATH"]
    os.environ["PATH"] = f"{BIN}{os.pathsep}{saved_path}"  # the nodes' PATH: `synth` is installed on the head
    # Every port its own (0: any free one), not Ray's defaults: this test process already runs a
    # Ray of its own (other tests' session), whose dashboard agent holds the default agent port
    # 52365; a head whose agent cannot bind it has no job agent, and the job server answers 500.
    c = Cluster(initialize_head=True, connect=False, head_node_args={
        "num_cpus": 1, "object_store_memory": 300 * 2**20, "include_dashboard": True,
        "dashboard_host": "127.0.0.1", "dashboard_port": _free_port(), "dashboard_agent_listen_port": 0})
    c.add_node(num_cpus=1, object_store_memory=300 * 2**20, dashboard_agent_listen_port=0)
    c.wait_for_nodes()
    try:
        yield c
    finally:
        c.shutdown()
        os.environ["PATH"] = saved_path
        os.environ.pop("RAY_ADDRESS", None)


@pytest.fixture(scope="module")
def submitted(alone, cluster) -> tuple[str, subprocess.CompletedProcess]:
    """The README's command: `ray job submit --address http://HEAD:8265 -- synth build …`."""
    config, _ = alone
    uri = f"s3://{BUCKET}/builds/cluster"
    head = f"http://{cluster.head_node.webui_url}"
    env = {k: v for k, v in os.environ.items() if k not in ("RAY_ADDRESS", "SYNTH_FAULT")}
    result = subprocess.run([str(BIN / "ray"), "job", "submit", "--address", head, "--",
                             "synth", "build", str(config), "--out", uri, "--dry-run"],
                            env=env, capture_output=True, text=True, timeout=900)
    assert result.returncode == 0, (result.stdout[-4000:], result.stderr[-3000:])
    assert "succeeded" in result.stdout, result.stdout[-4000:]
    return uri, result


def test_a_job_on_two_nodes_writes_every_shard_into_the_shared_store(cluster, submitted):
    from synth import storage

    uri, _ = submitted
    node_ids = {cluster.head_node.node_id, *(n.node_id for n in cluster.worker_nodes)}
    assert len(node_ids) == 2
    manifest = json.loads(storage.read_bytes(storage.join(uri, "manifest.json")))
    used = set()
    for record in manifest["stages"]:
        name = record["name"]
        # every row a stage handled was written by a node of the cluster, and all of them are in the store
        assert set(record["nodes"]) <= node_ids, name
        handled = record["rows_out"] + sum(record["rejected"].values()) + sum(record["diverted"].values())
        assert sum(record["nodes"].values()) == handled + record.get("pending", 0), name
        shards = storage.files(storage.join(uri, "stages", name, "rows"))
        assert sum(storage.parquet_file(s).metadata.num_rows for s in shards) == record["rows_out"], name
        assert storage.exists(storage.join(uri, "stages", name, "_SUCCESS.json")), name
        used |= set(record["nodes"])
    assert used == node_ids  # both nodes wrote shards
    assert any(len(r["nodes"]) == 2 for r in manifest["stages"])  # and shared a stage


def test_the_cluster_build_in_the_store_equals_a_single_node_build_on_disk(alone, submitted):
    from synth import storage

    _, out_alone = alone
    uri, _ = submitted
    expected = export_bytes(out_alone)
    assert {f: storage.read_bytes(storage.join(uri, f)) for f in expected} == expected
