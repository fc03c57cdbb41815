"""Writing a stage's output, and what a finished stage records.

`write_stage` streams a stage's result into `<out>/stages/<name>/{rows,rejects,pending[,side]}/`
(shards named by their rows' ids, so a retried Ray task overwrites its own shard), in a
directory that then replaces the stage's (`synth.storage.replacing_dir`), and counts every
row as kept, rejected, pending or sent to a side output (`StageRecord`). The runner then
writes `_SUCCESS.json` (`MARKER`) with the record and the stage's signature.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd
import pyarrow as pa
import ray
import ray.data

from synth import storage
from synth.engines.base import PENDING
from synth.errors import BuildFailed
from synth.faults import fault_point, worker_fault_point
from synth.rows import REJECT_COLUMN, to_arrow
from synth.stages.base import Stage

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
    routed: dict[str, int] = field(default_factory=dict)  # kept rows per thing done to them (Stage.route_column)


def reason_key(reason: str) -> str:
    """Reasons are short codes; engine errors carry details that are kept in the rejects table only."""
    for code in ("llm_error", PENDING):
        if code in reason:
            return reason[: reason.index(code) + len(code)]
    return reason


def is_failure(reason_code: str) -> bool:
    """A request that failed (after the engine's retries): what --max-failures counts."""
    return reason_code.endswith("llm_error") or reason_code == PENDING


def over_budget(failures: int, max_failures: int, out: Path) -> BuildFailed:
    return BuildFailed(
        f"{failures} LLM requests failed after retries (budget --max-failures {max_failures}); "
        f"finished stages are kept in {storage.join(out, 'stages')}, see rejects/ and pending/ for the errors"
    )


def write_stage(stage: Stage, result: ray.data.Dataset, stage_dir: Path, rows_in: int, signature: str,
                 input_schema: Any = None, budget: tuple[int, int, Path] | None = None,
                 on_rows: Any = None, sides: dict[str, str] | None = None) -> StageRecord:
    """Stream the result into rows / rejects / pending / side outputs, shard by shard, then rename.

    `budget`: (requests failed before this stage, --max-failures, build dir); checked as the batches' counts arrive, so a
    dead endpoint or a wrong key stops the build in its first batches, not after the stage.
    `on_rows(n)`: told the rows of each batch as it is written (live progress).
    `sides`: the stage's `side_outputs` ({reject reason: side output}).
    """
    storage.delete(storage.join(stage_dir, MARKER))  # readers trust only a marked stage directory
    with storage.replacing_dir(stage_dir) as tmp:  # local: renamed over it; object store: written in place
        sides = dict(sides or {})
        writer = ShardWriter(str(tmp), stage.name, sides, list(stage.reject_only_columns), stage.route_column)
        reasons: dict[str, int] = {}
        failed = 0
        schema: pa.Schema | None = None
        nodes: dict[str, int] = {}
        routed: dict[str, int] = {}
        for part in result.map_batches(writer, batch_format="pandas").iter_batches(batch_format="pandas"):
            for counts in part["routed"]:
                for what, n in json.loads(counts).items():
                    routed[what] = routed.get(what, 0) + n
            for reason, n, batch_schema, node in zip(part["reason"], part["n"], part["schema"], part["node"]):
                reasons[reason] = reasons.get(reason, 0) + int(n)
                nodes[node] = nodes.get(node, 0) + int(n)
                failed += int(n) if is_failure(reason_key(reason)) else 0
                if schema is None and batch_schema:
                    schema = pa.ipc.read_schema(pa.py_buffer(batch_schema))
                if on_rows is not None:
                    on_rows(int(n))
            if budget is not None and budget[0] + failed > budget[1]:
                raise over_budget(budget[0] + failed, budget[1], budget[2])
        if schema is None:  # no batch at all (an earlier stage kept no row): the input's columns,
            schema = arrow_schema(None, input_schema)  # and the stage's own (as strings: no row has a value)
            for column in stage.columns or ():
                if column not in schema.names:
                    schema = schema.append(pa.field(column, pa.string()))
        if stage.columns is not None:
            missing = [c for c in stage.columns if c not in schema.names]
            if missing:
                raise BuildFailed(f"stage {stage.name}: output lacks its declared columns {missing} (bug)")
        # Every output directory holds at least one (possibly empty) file with the schema.
        drop = [REJECT_COLUMN, *stage.reject_only_columns]
        ensure_schema_file(storage.join(tmp, "rows"), pa.schema([f for f in schema if f.name not in drop]))
        ensure_schema_file(storage.join(tmp, "rejects"), schema.append(pa.field("stage", pa.string())))
        ensure_schema_file(storage.join(tmp, PENDING_DIR), schema)
        for side in set(sides.values()):
            ensure_schema_file(storage.join(tmp, side), schema)
        fault_point(f"mid_write:{stage.name}")

        rows_out = reasons.pop("", 0)
        rejected: dict[str, int] = {}
        diverted: dict[str, int] = {}
        pending = 0
        for reason, n in reasons.items():
            if reason in sides:
                diverted[sides[reason]] = diverted.get(sides[reason], 0) + n
            elif reason_key(reason) == PENDING:
                pending += n
            else:
                rejected[reason_key(reason)] = rejected.get(reason_key(reason), 0) + n
        created = rows_out + sum(rejected.values()) + sum(diverted.values()) + pending - rows_in
        if created and not stage.fans_out:
            raise BuildFailed(f"stage {stage.name}: {rows_in} rows in but {rows_in + created} accounted for (bug: rows lost)")
    return StageRecord(stage.name, rows_in, rows_out, dict(sorted(rejected.items())), diverted, created,
                       pending=pending, signature=signature, nodes=dict(sorted(nodes.items())),
                       routed=dict(sorted(routed.items())))


PENDING_DIR = "pending"


class ShardWriter:
    """Ray Data callable: splits one batch into rows / rejects / pending / side outputs and
    writes each as a shard named by a hash of the batch's row ids, so a task that Ray
    retries (worker killed, node lost) overwrites its own shards instead of adding copies.

    Returns the batch's reason counts (and its Arrow schema, and the Ray node that wrote it),
    so counting and writing are one pass.
    """

    def __init__(self, root: str, stage: str, diverted: dict[str, str], reject_only: list[str],
                 route_column: str | None = None):
        self.root = storage.location(root)
        self.stage, self.diverted, self.reject_only = stage, diverted, reject_only
        self.route_column = route_column

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
        routed: dict[str, int] = {}
        if self.route_column is not None and self.route_column in kept.columns:
            for value in kept[self.route_column].dropna().astype(str):
                for what in filter(None, value.split(",")):
                    routed[what] = routed.get(what, 0) + 1
        # the batch's route counts ride on its first reason row (the others carry none)
        routes = [json.dumps(routed)] + ["{}"] * (len(counts) - 1) if len(counts) else []
        return pd.DataFrame({"reason": counts.index.astype(str), "n": counts.values.astype("int64"),
                             "schema": [schema] * len(counts), "node": [node] * len(counts), "routed": routes})


_SCHEMA_SENT: set[str] = set()  # per worker process: the stage directories whose schema it sent


def ensure_schema_file(path: Path | str, schema: pa.Schema) -> None:
    if not storage.files(path):
        storage.make_dirs(path)
        storage.write_table(storage.join(path, "empty.parquet"), schema.empty_table())


def arrow_schema(schema: Any, input_schema: Any = None) -> pa.Schema:
    if schema is None:  # an empty result without blocks (an earlier stage kept no row): the input's columns
        base = arrow_schema(input_schema) if input_schema is not None else pa.schema([])
        return base if REJECT_COLUMN in base.names else base.append(pa.field(REJECT_COLUMN, pa.string()))
    base = getattr(schema, "base_schema", schema)
    if isinstance(base, pa.Schema):
        return base
    return pa.schema([pa.field(n, pa.string()) for n in schema.names])


def read_rows(path: Path | str) -> ray.data.Dataset:
    return storage.read_dataset(path)


def read_marker(stage_dir: Path | str) -> dict | None:
    try:
        return json.loads(storage.read_bytes(storage.join(stage_dir, MARKER)))
    except (OSError, ValueError):
        return None


