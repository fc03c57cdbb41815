"""The exports stream: a split larger than the shard size comes as several files whose union is
the one-file export, rows are read and written a chunk at a time, and the bytes written do not
depend on how the rows arrived (chunk sizes, part files).

The build directory is made by hand (final-stage parts in no id order, hard pools, rejects), as
in test_sft_export.py; `CHUNK_ROWS` is made tiny so every path crosses chunk boundaries.
"""

from __future__ import annotations

import json
import random
import shutil
from pathlib import Path

import datasets
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import yaml

import synth.stream_io as stream_io
from synth.config import load_config
from synth.export import export_build, export_format
from synth.pipeline import PIPELINE
from synth.stream_io import SortedRows, write_parquet

SUBCATEGORIES = [("illegal_activities", "违法犯罪", "cybersecurity", "网络安全"),
                 ("illegal_activities", "违法犯罪", "fraud", "诈骗"),
                 ("bias_discrimination", "偏见歧视", "region", "地域"),
                 ("physical_mental_health", "身心健康", "mental_health", "心理健康")]

FINAL_STAGE = PIPELINE.final.name  # the stage whose rows the exports read


def _row(k: int, rng: random.Random, **extra) -> dict:
    scenario, scenario_name, sub, sub_name = SUBCATEGORIES[k % len(SUBCATEGORIES)]
    label = "不安全" if rng.random() < 0.6 else "安全"
    verdict = "提供了有害帮助" if label == "不安全" else "拒绝了请求"
    analyze = "" if k % 11 == 0 else f"回答{verdict}（示例{k}）"
    return {"id": f"{rng.getrandbits(64):016x}", "scenario": scenario, "scenario_name": scenario_name,
            "subcategory": sub, "subcategory_name": sub_name, "kind": "harmful" if k % 2 else "benign",
            "attack": "none", "question": f"关于{sub_name}的示例问题{k}？" + "内容" * (k % 5),
            "response": f"这是示例回答{k}。", "responder": "r", "persona": "helpful", "label": label,
            "analyze": analyze,
            "judgements": [{"judge": "judge-a", "verdict": label, "analysis": analyze, "raw": "{}", "error": ""},
                           {"judge": "judge-b", "verdict": label, "analysis": "", "raw": "{}", "error": ""}],
            "elements": {"behavior": "某类行为", "task_type": "问答"}, "generator": "g", "template_id": scenario,
            "template_hash": "0" * 16, "finish_reason": "stop", "seed": k, **extra}


def _write_parts(folder: Path, rows: list[dict], parts: int) -> None:
    folder.mkdir(parents=True)
    for i in range(parts):
        pq.write_table(pa.Table.from_pylist(rows[i::parts]), folder / f"part-{i}.parquet")


def _stage_outputs(out: Path) -> Path:
    rng = random.Random(5)
    final = out / "stages" / FINAL_STAGE
    _write_parts(final / "rows", [_row(k, rng) for k in range(90)], parts=3)
    _write_parts(final / "rejects", [_row(k, rng, reject_reason="near_duplicate") for k in range(9)], parts=2)
    (final / "_SUCCESS.json").write_text(json.dumps({"signature": "x", "record": {}}))
    _write_parts(out / "stages" / "annotate" / "hard",
                 [_row(k, rng, reject_reason="judges_disagree") for k in range(7)], parts=2)
    return out


@pytest.fixture(scope="module")
def config(repo_root: Path, tmp_path_factory):
    raw = yaml.safe_load((repo_root / "pipelines/demo.yaml").read_text(encoding="utf-8"))
    raw.update(templates=str(repo_root / "templates"), seeds=str(repo_root / "seeds"),
               balance={"max_per_subcategory_label": 12, "unsafe_share": 0.55, "tolerance": 0.0})
    raw["export"]["validation_share"] = 0.2
    path = tmp_path_factory.mktemp("config") / "pipeline.yaml"
    path.write_text(yaml.safe_dump(raw, allow_unicode=True), encoding="utf-8")
    return load_config(path)[0]


@pytest.fixture(scope="module")
def builds(config, tmp_path_factory) -> tuple[Path, Path, dict, dict]:
    """The same stage outputs exported as one file per split, and in shards of 5 rows read 4 at a time."""
    tmp = tmp_path_factory.mktemp("streaming")
    whole = _stage_outputs(tmp / "whole")
    sharded = tmp / "sharded"
    shutil.copytree(whole, sharded)
    whole_counts = export_build(whole, config)
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(stream_io, "CHUNK_ROWS", 4)
        sharded_counts = export_build(sharded, config, shard_rows=5)
    for out, counts in ((whole, whole_counts), (sharded, sharded_counts)):
        (out / "manifest.json").write_text(json.dumps({"name": config.name, "export": counts}, ensure_ascii=False))
    return whole, sharded, whole_counts, sharded_counts


def _rows(files: list[Path]) -> list[dict]:
    return [row for f in files for row in pq.read_table(f).to_pylist()]


def test_a_large_split_comes_as_shards_whose_union_is_the_one_file_export(builds):
    whole, sharded, whole_counts, sharded_counts = builds
    assert whole_counts == sharded_counts
    assert whole_counts["balance"]["cut"]["balance_cap"] > 0 and whole_counts["balance"]["cut"]["balance_share"] > 0
    for split in ("train", "validation"):
        (one,) = sorted((whole / "corpus" / "data").glob(f"{split}-*.parquet"))
        assert one.name == f"{split}-00000-of-00001.parquet"
        shards = sorted((sharded / "corpus" / "data").glob(f"{split}-*.parquet"))
        n = whole_counts[f"{split}_rows"]
        assert [s.name for s in shards] == [f"{split}-{i:05d}-of-{len(shards):05d}.parquet" for i in range(len(shards))]
        assert len(shards) == -(-n // 5) > 1
        assert all(pq.ParquetFile(s).metadata.num_rows <= 5 for s in shards)
        assert {pq.read_schema(s) for s in shards} == {pq.read_schema(one)}
        rows = _rows(shards)
        assert rows == _rows([one]) and len(rows) == n
        assert [r["id"] for r in rows] == sorted(r["id"] for r in rows)


def test_every_other_export_is_the_same_whatever_the_chunks(builds):
    whole, sharded, _, _ = builds
    for relative in ("libra_test.jsonl", "sft/alpaca/train.jsonl", "sft/alpaca/validation.jsonl",
                     "sft/dataset_info.json", "sft/README.md", "corpus/README.md"):
        assert (whole / relative).read_bytes() == (sharded / relative).read_bytes(), relative
    parquet = [p.relative_to(whole) for p in (whole / "rejects").glob("*.parquet")]
    parquet += [Path("hard/hard.parquet"), Path("sft/data/train-00000-of-00001.parquet"),
                Path("sft/data/validation-00000-of-00001.parquet")]
    assert len(parquet) == 6  # annotate, decontaminate (the final stage), balance rejects; hard; sft train, validation
    for relative in parquet:
        assert pq.read_table(whole / relative) == pq.read_table(sharded / relative), relative
    hard = pq.read_table(sharded / "hard/hard.parquet").to_pylist()
    assert [r["id"] for r in hard] == sorted(r["id"] for r in hard)
    assert {r["hard_reason"] for r in hard} == {"judges_disagree"}  # a build before the tier: annotate's hard/
    assert not list(sharded.glob(".export-*"))  # the spill files are gone


def test_sharded_corpus_and_sft_load_with_datasets(builds, tmp_path: Path):
    whole, sharded, counts, _ = builds
    for view in ("corpus", "sft"):
        one = datasets.load_dataset(str(whole / view), cache_dir=str(tmp_path / "cache"))
        many = datasets.load_dataset(str(sharded / view), cache_dir=str(tmp_path / "cache"))
        assert set(many) == {"train", "validation"}
        for split in many:
            assert len(many[split]) == counts[f"{split}_rows"]
            assert list(many[split]["id"]) == list(one[split]["id"])


def test_re_export_reads_the_shards(builds, tmp_path: Path):
    whole, sharded, _, _ = builds
    (tmp_path / "sharded").mkdir()
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(stream_io, "CHUNK_ROWS", 4)
        for fmt, name in (("jsonl", "c.jsonl"), ("libra-test", "l.jsonl"), ("sft", "sft")):
            export_format(sharded, fmt, tmp_path / "sharded" / name)
    for fmt, name in (("jsonl", "c.jsonl"), ("libra-test", "l.jsonl")):
        export_format(whole, fmt, tmp_path / name)
        assert (tmp_path / "sharded" / name).read_bytes() == (tmp_path / name).read_bytes(), fmt
    assert (tmp_path / "sharded" / "l.jsonl").read_bytes() == (sharded / "libra_test.jsonl").read_bytes()
    for split in ("train", "validation"):  # same rows, same chunk size: same bytes as the build wrote
        relative = f"data/{split}-00000-of-00001.parquet"
        assert (tmp_path / "sharded" / "sft" / relative).read_bytes() == (sharded / "sft" / relative).read_bytes()


def test_written_bytes_do_not_depend_on_how_rows_arrive(tmp_path: Path, monkeypatch):
    monkeypatch.setattr(stream_io, "CHUNK_ROWS", 3)
    rng = random.Random(1)
    table = pa.table({"id": [f"{rng.getrandbits(32):08x}" for _ in range(23)], "n": list(range(23))})
    schema = table.schema
    outputs = []
    for i, sizes in enumerate(([23], [1] * 23, [5, 11, 7])):
        pieces, start = [], 0
        for size in sizes:
            pieces.append(table.slice(start, size).to_batches()[0])
            start += size
        rows = SortedRows(pieces[::-1], table.column("id"), schema, tmp_path / f"spill{i}")
        paths = [tmp_path / f"out{i}-{j}.parquet" for j in range(3)]
        assert write_parquet(paths, schema, rows, rows_per_file=10) == 23
        outputs.append([p.read_bytes() for p in paths])
    assert outputs[0] == outputs[1] == outputs[2]
    files = [tmp_path / f"out0-{j}.parquet" for j in range(3)]
    assert [pq.ParquetFile(f).metadata.num_rows for f in files] == [10, 10, 3]
    # row groups of 3 rows counted from each file's start: 3+3+3+1, 3+3+3+1, 3
    assert [pq.ParquetFile(f).metadata.num_row_groups for f in files] == [4, 4, 1]
    assert _rows(files) == sorted(table.to_pylist(), key=lambda r: r["id"])
