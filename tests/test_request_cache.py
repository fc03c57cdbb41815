"""The request cache as data: lookup by a join on cache_key (Ray Data's join, or the same
match in the driver for a small lookup: the lookup tests run both), deterministic shards, compaction.

Real Ray, real parquet in tmp_path, a recording engine (no model) and tens of rows.
"""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from synth.config import load_config
from synth.engines import Engine
from synth.engines.base import RESULT_COLUMNS
from synth.request_cache import (
    COMPACTED_PREFIX, HIT_COLUMN, KEY_COLUMN, cached_keys, compact_cache, lookup, lookup_counts,
    shard_name, shard_paths, write_to_cache,
)
from synth.stages.base import StageContext

ROOT = Path(__file__).resolve().parent.parent
MODEL = "gemma-270m"


class AnsweringEngine(Engine):
    """Answers each request with text derived from its prompt; records what it was sent."""

    def __init__(self, name, spec, sent: list[str]):
        super().__init__(name, spec)
        self.sent = sent

    def generate(self, requests):
        def answer(batch: pd.DataFrame) -> pd.DataFrame:
            return batch.assign(text="answer to " + batch["prompt"], finish_reason="stop",
                                prompt_tokens=batch["prompt"].str.len(), completion_tokens=3, error="",
                                logprobs="")

        answered = requests.map_batches(answer, batch_format="pandas").materialize()
        self.sent.extend(answered.to_pandas()["prompt"])
        return answered


def requests(prompts: list[str], scenario: str = "s1") -> pd.DataFrame:
    return pd.DataFrame({
        "request_id": [f"r-{p}" for p in prompts], "scenario": scenario, "system": "", "prompt": prompts,
        "seed": [sum(map(ord, p)) for p in prompts], "json_schema": "", "temperature": 0.7, "top_p": 0.9,
        "top_k": -1, "max_tokens": 64, "stop": [["\n\n"] for _ in prompts],
    })


def generate(tmp_path: Path, frame: pd.DataFrame) -> tuple[pd.DataFrame, dict, list[str]]:
    """One `CachedGeneration.answer` pass over `frame` with a fresh context on the same cache."""
    import ray.data

    config, _, _ = load_config(ROOT / "pipelines/demo.yaml")
    ctx = StageContext(config=config, catalog=None, cache_root=tmp_path / "cache/requests")  # type: ignore[arg-type]
    sent: list[str] = []
    engine = AnsweringEngine(MODEL, config.models[MODEL], sent)
    out = ctx.cache.answer(engine, config.models[MODEL], ray.data.from_pandas(frame), "respond", ctx.tally).to_pandas()
    ctx.tally.close()
    return out.sort_values("prompt").reset_index(drop=True), ctx.cache.requests["respond"], sent


def answers(keys: list[str], text: str = "t") -> pa.Table:
    n = len(keys)
    return pa.table({KEY_COLUMN: keys, "text": [f"{text}-{k}" for k in keys], "finish_reason": ["stop"] * n,
                     "prompt_tokens": pa.array([1] * n, pa.int64()), "completion_tokens": pa.array([2] * n, pa.int64()),
                     "error": [""] * n})


@pytest.fixture(params=["in-process", "ray-join"])
def lookup_path(request, monkeypatch) -> str:
    """Each lookup test runs both ways: in the driver (a small lookup) and as Ray Data's join."""
    import synth.request_cache

    if request.param == "ray-join":
        monkeypatch.setattr(synth.request_cache, "LOCAL_LOOKUP_ROWS", 0)
    return request.param


def write_shard(directory: Path, table: pa.Table, name: str) -> None:
    directory.mkdir(parents=True, exist_ok=True)
    pq.write_table(table, directory / name)


def test_hits_come_from_the_cache_and_only_misses_are_sent(ray_session, tmp_path: Path, lookup_path: str):
    first = [f"q{i:02d}" for i in range(20)]
    out, stats, sent = generate(tmp_path, requests(first))
    assert sorted(sent) == first and stats["sent"] == 20 and stats["cached"] == 0
    assert stats["sent_by_scenario"] == {"s1": 20}
    assert len(shard_paths(tmp_path / "cache/requests" / MODEL)) >= 1

    new = [f"n{i:02d}" for i in range(10)]
    out2, stats2, sent2 = generate(tmp_path, pd.concat([requests(first), requests(new, scenario="s2")]))
    assert sorted(sent2) == new  # the engine saw only the misses
    assert (stats2["sent"], stats2["cached"], stats2["sent_by_scenario"]) == (10, 20, {"s2": 10})
    assert len(out2) == 30 and HIT_COLUMN not in out2 and KEY_COLUMN not in out2
    hits = out2[out2["prompt"].isin(first)].reset_index(drop=True)
    pd.testing.assert_frame_equal(hits[list(RESULT_COLUMNS)], out[list(RESULT_COLUMNS)])  # the cached answers
    assert out2.dtypes.to_dict() == out.dtypes.to_dict()  # the join keeps the columns, their order and types

    out3, stats3, sent3 = generate(tmp_path, pd.concat([requests(first), requests(new, scenario="s2")]))
    assert sent3 == [] and (stats3["sent"], stats3["cached"], stats3["sent_by_scenario"]) == (0, 30, {})
    pd.testing.assert_frame_equal(out3, out2)


def test_a_first_build_runs_no_join(ray_session, tmp_path: Path, monkeypatch):
    import ray.data

    monkeypatch.setattr(ray.data.Dataset, "join", lambda *a, **k: pytest.fail("joined against an empty cache"))
    _, stats, sent = generate(tmp_path, requests(["a", "b"]))
    assert (stats["sent"], stats["cached"], len(sent)) == (2, 0, 2)


def test_the_key_check_skips_the_join_only_when_nothing_can_hit(ray_session, tmp_path: Path, monkeypatch,
                                                                 lookup_path: str):
    """The cache holds another stage's answers (string keys) and one shard with large_string keys:
    requests none of which is cached run no lookup at all; one cached request is still found."""
    import ray.data

    directory = tmp_path / "cache"
    write_shard(directory, answers(["other1", "other2"]), "batch-a.parquet")
    large = answers(["k7"])
    write_shard(directory, large.set_column(0, KEY_COLUMN, large[KEY_COLUMN].cast(pa.large_string())),
                "batch-b.parquet")
    misses = ray.data.from_pandas(pd.DataFrame({KEY_COLUMN: ["k1", "k2"], "scenario": "s"})).materialize()
    with monkeypatch.context() as patched:
        patched.setattr(ray.data.Dataset, "join", lambda *a, **k: pytest.fail("joined though nothing can hit"))
        assert lookup(misses, directory) is None
    keyed = ray.data.from_pandas(pd.DataFrame({KEY_COLUMN: ["k1", "k7"], "scenario": "s"})).materialize()
    rows = lookup(keyed, directory).to_pandas().sort_values(KEY_COLUMN)
    assert list(rows[HIT_COLUMN]) == [False, True] and list(rows["text"])[1] == "t-k7"


def test_duplicate_keys_in_the_cache_do_not_duplicate_rows(ray_session, tmp_path: Path, lookup_path: str):
    import ray.data

    directory = tmp_path / "cache"
    write_shard(directory, answers(["k1", "k2", "k3"]), "batch-a.parquet")
    write_shard(directory, answers(["k2", "k3", "k4"]), "batch-b.parquet")  # k2, k3 stored twice
    keyed = ray.data.from_pandas(pd.DataFrame({KEY_COLUMN: ["k1", "k2", "k3", "k9"], "scenario": "s"})).materialize()
    looked_up = lookup(keyed, directory)
    rows = looked_up.to_pandas().sort_values(KEY_COLUMN)
    assert list(rows[KEY_COLUMN]) == ["k1", "k2", "k3", "k9"]
    assert list(rows[HIT_COLUMN]) == [True, True, True, False]
    assert list(rows["text"])[:3] == ["t-k1", "t-k2", "t-k3"]
    assert lookup_counts(looked_up, "scenario") == (3, {"s": 1})
    assert all(p.name.startswith(COMPACTED_PREFIX) for p in shard_paths(directory))  # deduped on disk


def test_compaction_keeps_every_answer_once_and_merges_shards(tmp_path: Path):
    directory = tmp_path / "cache"
    keys = [f"{i:032x}" for i in range(0, 2**128, 2**128 // 50)][:50]  # spread over the key space
    for i in range(25):  # 25 shards of 4 rows, each key in two shards
        write_shard(directory, answers([keys[(2 * i + j) % 50] for j in range(4)]), f"batch-{i:02d}.parquet")
    assert compact_cache(directory, target_rows=40) == 3  # 100 rows / 40 → 3 key ranges
    shards = shard_paths(directory)
    assert len(shards) == 3 and all(s.name.startswith(COMPACTED_PREFIX) for s in shards)
    tables = [pq.read_table(s) for s in shards]
    stored = [k for t in tables for k in t.column(KEY_COLUMN).to_pylist()]
    assert sorted(stored) == sorted(keys)  # every answer, once
    assert all(t.column(KEY_COLUMN).to_pylist() == sorted(t.column(KEY_COLUMN).to_pylist()) for t in tables)
    assert {r["text"] for t in tables for r in t.to_pylist()} == {f"t-{k}" for k in keys}
    # compacting into the same ranges again changes nothing (same keys → same names, rewritten in place)
    assert compact_cache(directory, target_rows=20) == 3 and shard_paths(directory) == shards


def test_a_crash_during_compaction_loses_no_answer(tmp_path: Path, monkeypatch):
    directory = tmp_path / "cache"
    for i in range(6):
        write_shard(directory, answers([f"{i}{j}" for j in range(3)]), f"batch-{i}.parquet")

    def crash(self, missing_ok=False):
        raise KeyboardInterrupt("killed while deleting the compacted inputs")

    monkeypatch.setattr(Path, "unlink", crash)
    with pytest.raises(KeyboardInterrupt):
        compact_cache(directory)
    monkeypatch.undo()
    assert cached_keys(directory) == {f"{i}{j}" for i in range(6) for j in range(3)}  # all there, some twice
    assert compact_cache(directory) == 1
    assert pq.read_table(shard_paths(directory)[0]).num_rows == 18


def test_a_shard_is_named_by_its_keys(tmp_path: Path, monkeypatch):
    assert shard_name(["b", "a"]) == shard_name(["a", "b", "a"]) != shard_name(["a", "c"])
    batch = answers(["k1", "k2"]).to_pandas().assign(prompt="p", logprobs="")
    monkeypatch.delenv("SYNTH_FAULT", raising=False)
    monkeypatch.setattr("synth.request_cache.shard_paths", lambda d: pytest.fail("listed the cache per batch"))
    write_to_cache(batch, str(tmp_path))
    write_to_cache(batch.iloc[::-1], str(tmp_path))  # a retried task: same keys, same shard
    assert [p.name for p in tmp_path.glob("*.parquet")] == [shard_name(["k1", "k2"])]
    assert not list(tmp_path.glob(".*"))  # no temporary file left


def test_a_cache_from_before_scores_is_read_and_its_answers_are_not_taken_for_scored_requests(
        ray_session, tmp_path: Path, lookup_path: str):
    import ray.data

    from synth.request_cache import add_keys

    directory = tmp_path / "cache"
    write_shard(directory, answers(["k1", "k2"]), "batch-old.parquet")  # written before `logprobs` existed
    new = answers(["k3"]).append_column("logprobs", pa.array(['[["x", [["x", -0.1]]]]']))
    write_shard(directory, new, "batch-new.parquet")
    keyed = ray.data.from_pandas(pd.DataFrame({KEY_COLUMN: ["k1", "k3", "k9"], "scenario": "s"})).materialize()
    rows = lookup(keyed, directory).to_pandas().sort_values(KEY_COLUMN)
    assert list(rows[HIT_COLUMN]) == [True, True, False]
    assert list(rows["logprobs"])[:2] == ["", '[["x", [["x", -0.1]]]]']  # an old answer has none, not a misread
    compact_cache(directory)  # old and new shards merge, the old rows' logprobs empty
    merged = pa.concat_tables(pq.read_table(s) for s in shard_paths(directory)).to_pylist()
    assert {r[KEY_COLUMN]: r["logprobs"] for r in merged} == {"k1": "", "k2": "", "k3": '[["x", [["x", -0.1]]]]'}
    # a request that asks for log-probabilities has a key of its own; one that does not keeps its old key
    base = pd.DataFrame({"system": [""], "prompt": ["p"], "seed": [1], "json_schema": [""], "temperature": [0.0],
                         "top_p": [1.0], "top_k": [0], "max_tokens": [8], "stop": [[]]})
    plain = add_keys(base, "m")[KEY_COLUMN][0]
    assert add_keys(base.assign(top_logprobs=0), "m")[KEY_COLUMN][0] == plain
    assert add_keys(base.assign(top_logprobs=5), "m")[KEY_COLUMN][0] != plain
