"""Exact and near-duplicate removal (synth.dedup): units, the Ray pipeline, the command."""

from __future__ import annotations

import json
import random
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from synth.dedup import DedupConfig, DuplicateIdError, candidate_probability, choose_bands_rows, deduplicate
from synth.dedup.clusters import connected_components
from synth.dedup.minhash import MinHasher
from synth.dedup.text import char_shingles, jaccard, normalise, normalise_batch, shingle_sets, texts_of, word_shingles

# Abstract, harmless sentences; documents are made of several of them.
SENTENCES = [
    "人工智能安全是一个需要长期投入的研究领域",
    "研究人员关注模型在各种场景下的可靠性与透明度",
    "城市交通规划需要兼顾效率与公平",
    "公共图书馆为居民提供了安静的阅读空间",
    "春天的公园里开满了各种颜色的花",
    "良好的睡眠习惯有助于保持身心健康",
    "志愿者们利用周末时间清理河岸的垃圾",
    "数据隐私保护需要技术手段与制度设计相结合",
    "历史博物馆展出了许多珍贵的文物",
    "学生们在实验课上学习如何记录观察结果",
    "社区医院定期举办健康知识讲座",
    "新建的自行车道让通勤变得更加方便",
    "老师鼓励大家在讨论中表达不同的观点",
    "农民根据天气变化安排播种和收割的时间",
    "网络平台应当及时处理用户的合理投诉",
    "科学家通过长期观测记录候鸟的迁徙路线",
    "这座城市的夜景吸引了许多外地游客",
    "合理的饮食结构对儿童的成长非常重要",
    "企业在发布新产品之前会进行充分的测试",
    "翻译工作要求准确理解原文的语境和含义",
    "山区的学校通过远程课堂获得了更多教学资源",
    "环境监测站每天公布空气质量的数据",
    "读书会的成员每个月分享一本好书",
    "防灾演练帮助居民熟悉紧急疏散的路线",
]


def paragraph(indices: list[int], punct: str = "。") -> str:
    return punct.join(SENTENCES[i] for i in indices) + punct


def edit_chars(text: str, count: int, seed: int) -> str:
    rng = random.Random(seed)
    chars = list(text)
    for _ in range(count):
        i = rng.randrange(len(chars))
        if chars[i] not in "。，":
            chars[i] = "的" if chars[i] != "的" else "了"
    return "".join(chars)


def corpus() -> list[dict]:
    """Rows with known duplicate structure (ids sort as the comments say)."""
    long_a = paragraph(list(range(0, 12)))
    long_b = paragraph(list(range(12, 24)))
    rows = [
        {"id": "a0", "text": long_a, "topic": "a"},
        # exact after normalisation: punctuation, full-width, spaces
        {"id": "a1", "text": long_a.replace("。", "！").replace("人工智能", "人工 智能"), "topic": "a"},
        # near: two characters changed
        {"id": "a2", "text": edit_chars(long_a, 2, seed=1), "topic": "a"},
        # near: one sentence of twelve dropped
        {"id": "a3", "text": paragraph([i for i in range(12) if i != 5]), "topic": "a"},
        {"id": "b0", "text": long_b, "topic": "b"},
        # near: two sentences swapped, commas instead of full stops
        {"id": "b1", "text": paragraph([12, 13, 15, 14] + list(range(16, 24)), "，"), "topic": "b"},
        # distinct: shares half of its sentences with a0 (Jaccard well below 0.8)
        {"id": "c0", "text": paragraph(list(range(0, 6)) + list(range(18, 24))), "topic": "c"},
        {"id": "d0", "text": SENTENCES[3] + "。", "topic": "d"},
        {"id": "e0", "text": "，。！", "topic": "e"},  # empty after normalisation: never removed
        {"id": "e1", "text": "", "topic": "e"},
    ]
    return rows


EXPECTED_REMOVED = {"a1": ("a0", "exact_duplicate"), "a2": ("a0", "near_duplicate"),
                    "a3": ("a0", "near_duplicate"), "b1": ("b0", "near_duplicate")}


# ---------------------------------------------------------------- units


def test_normalise_folds_width_case_punctuation_and_space():
    assert normalise("  Ｈｅｌｌｏ，世界！ AI　安全\t研究。１２３ ") == "hello世界ai安全研究123"
    assert normalise(None) == "" and normalise("，。！？ ") == ""
    # the fast path (punctuation removed before NFKC) equals the plain definition
    import re
    import unicodedata

    samples = [r["text"] for r in corpus()] + ["".join(chr(c) for c in range(0x3000, 0x3020)),
                                                 "".join(chr(c) for c in range(0xFF01, 0xFF66)), "Ａｂ１②㈠™ ℃"]
    for text in samples:
        assert normalise(text) == re.sub(r"[\W_]+", "", unicodedata.normalize("NFKC", text).lower())
    # and the batch version equals the per-text one
    cps, lengths = normalise_batch(samples + ["", None, "，。", "𠀀𠀁ａ😀𝟙"])
    assert texts_of(cps, lengths) == [normalise(t) for t in samples] + ["", "", "", "𠀀𠀁a1"]


def test_banding_is_chosen_for_recall_at_the_threshold():
    bands, rows = choose_bands_rows(0.8, 128)
    assert bands * rows <= 128
    assert candidate_probability(0.8, bands, rows) >= 0.995
    # datasketch's automatic choice at 0.8 (b=9, r=13) catches a pair at exactly 0.8 ~40% of the time
    assert candidate_probability(0.8, 9, 13) < 0.5
    assert DedupConfig(bands=16).banding() == (16, 8)
    with pytest.raises(ValueError):
        DedupConfig(bands=20, rows=10)


def test_char_shingles_match_a_plain_python_reference():
    texts = [normalise(r["text"]) for r in corpus()] + ["短", "abcd"]
    for n in (3, 5):
        sets = shingle_sets(texts, "char", n)
        for i in range(len(texts)):
            for j in range(len(texts)):
                ref_i = {texts[i][k : k + n] for k in range(len(texts[i]) - n + 1)} or ({texts[i]} if texts[i] else set())
                ref_j = {texts[j][k : k + n] for k in range(len(texts[j]) - n + 1)} or ({texts[j]} if texts[j] else set())
                if ref_i or ref_j:
                    expected = len(ref_i & ref_j) / len(ref_i | ref_j)
                    assert jaccard(sets[i], sets[j]) == pytest.approx(expected)
    hashes, counts = char_shingles(["今天天气很好", "", "好"], 5)
    assert counts.tolist() == [2, 0, 1] and len(hashes) == 3


def test_word_shingles_are_jieba_ngrams():
    import jieba

    texts = [normalise(SENTENCES[0] + SENTENCES[1]), normalise(SENTENCES[1] + SENTENCES[0]), "好"]
    hashes, counts = word_shingles(texts, 2)
    words = [jieba.lcut(t, HMM=False) for t in texts]
    assert counts.tolist() == [max(len(w) - 1, 1) for w in words]
    sets = shingle_sets(texts, "word", 2)
    ref = [{"".join(w[k : k + 2]) for k in range(len(w) - 1)} for w in words[:2]]
    assert jaccard(sets[0], sets[1]) == pytest.approx(len(ref[0] & ref[1]) / len(ref[0] | ref[1]))


def test_minhash_agreement_tracks_exact_jaccard():
    rng = random.Random(0)
    alphabet = [chr(c) for c in range(0x4E00, 0x4E00 + 2000)]
    base = ["".join(rng.choice(alphabet) for _ in range(rng.randint(100, 400))) for _ in range(400)]
    copies = []
    for i, text in enumerate(base):
        chars = list(text)
        for k in range(len(chars)):
            if rng.random() < (i % 8) * 0.01:
                chars[k] = rng.choice(alphabet)
        copies.append("".join(chars))
    hasher = MinHasher(128, seed=1)
    sig_a = hasher.signatures(*char_shingles(base, 5))
    sig_b = hasher.signatures(*char_shingles(copies, 5))
    estimate = (sig_a == sig_b).mean(axis=0)
    exact = np.array([jaccard(a, b) for a, b in zip(shingle_sets(base, "char", 5), shingle_sets(copies, "char", 5))])
    rmse = float(np.sqrt(((estimate - exact) ** 2).mean()))
    expected = float(np.sqrt((exact * (1 - exact) / 128).mean()))
    assert abs(float((estimate - exact).mean())) < 0.01
    assert rmse < 1.3 * expected


def test_connected_components_roots_are_smallest_members():
    roots = connected_components(7, np.array([5, 3, 1, 6]), np.array([3, 1, 4, 6]))
    assert roots.tolist() == [0, 1, 2, 1, 1, 1, 6]


# ---------------------------------------------------------------- the pipeline, on both executors


@pytest.fixture(params=["local", "ray"])
def executor(request):
    """Every pipeline test runs the steps on Ray Data and in local processes: same rows."""
    return request.param


def run(ray_session, executor, rows, blocks=2, **config):
    ds = ray_session.data.from_items(rows, override_num_blocks=blocks)
    kept, removed = deduplicate(ds, "text", "id", DedupConfig(executor=executor, **config))
    kept_rows = sorted(kept.take_all(), key=lambda r: r["id"])
    removed_rows = sorted(removed.take_all(), key=lambda r: r["id"])
    return kept_rows, removed_rows


def test_exact_and_near_duplicates_are_removed(ray_session, executor):
    kept, removed = run(ray_session, executor, corpus())
    assert {r["id"]: (r["duplicate_of"], r["reason"]) for r in removed} == EXPECTED_REMOVED
    assert [r["id"] for r in kept] == ["a0", "b0", "c0", "d0", "e0", "e1"]
    by_id = {r["id"]: r for r in removed}
    assert by_id["a1"]["similarity"] == 1.0
    for rid in ("a2", "a3", "b1"):
        assert 0.8 <= by_id[rid]["similarity"] < 1.0
    # every input column survives; removed rows point at kept rows
    assert set(removed[0]) == {"id", "text", "topic", "duplicate_of", "similarity", "reason"}
    assert set(kept[0]) == {"id", "text", "topic"}
    assert {r["duplicate_of"] for r in removed} <= {r["id"] for r in kept}


def test_representative_is_deterministic_and_configurable(ray_session, executor):
    rows = corpus()
    # ids renamed so that the shortest member of cluster "a" has the lowest id
    rename = {"a3": "a-short", "a0": "a-x0"}
    rows = [dict(r, id=rename.get(r["id"], r["id"])) for r in rows]
    _, removed = run(ray_session, executor, rows)
    assert {r["duplicate_of"] for r in removed if r["topic"] == "a"} == {"a-short"}
    _, removed = run(ray_session, executor, rows, keep="longest")
    a_members = [r for r in rows if r["topic"] == "a"]
    longest = min(a_members, key=lambda r: (-len(r["text"]), r["id"]))["id"]
    assert {r["duplicate_of"] for r in removed if r["topic"] == "a"} == {longest}


def test_chain_keeps_members_not_similar_to_a_kept_row(ray_session, executor):
    a = paragraph(list(range(12)))
    b = paragraph([i for i in range(12) if i != 1])
    c = paragraph([i for i in range(12) if i not in (1, 7)])
    sets = shingle_sets([normalise(t) for t in (a, b, c)], "char", 5)
    assert jaccard(sets[0], sets[1]) >= 0.8 and jaccard(sets[1], sets[2]) >= 0.8 > jaccard(sets[0], sets[2])
    rows = [{"id": f"k{i}", "text": t, "topic": "k"} for i, t in enumerate((a, b, c))]
    kept, removed = run(ray_session, executor, rows)
    assert [r["id"] for r in kept] == ["k0", "k2"]
    assert [(r["id"], r["duplicate_of"]) for r in removed] == [("k1", "k0")]


def test_same_result_with_one_and_several_workers_and_blocks(ray_session, executor):
    rng = random.Random(7)
    rows = corpus()
    for k in range(30):  # more clusters, spread over many blocks
        picks = rng.sample(range(len(SENTENCES)), 10)
        text = paragraph(picks)
        rows.append({"id": f"g{k:03d}", "text": text, "topic": "g"})
        rows.append({"id": f"h{k:03d}", "text": edit_chars(text, 1, seed=k), "topic": "g"})
    one = run(ray_session, executor, rows, blocks=1, concurrency=1, batch_size=4096)
    many = run(ray_session, executor, rows, blocks=9, concurrency=2, batch_size=13)
    assert one == many
    assert len(one[1]) >= 30 + len(EXPECTED_REMOVED)


def test_a_pool_of_local_processes_gives_the_rows_ray_gives(ray_session, monkeypatch):
    """The local executor with its process pool started from the first batch (spawned
    processes, batches of 13 rows, components cut into chunks) and the Ray executor agree."""
    from synth.dedup import local

    monkeypatch.setattr(local, "POOL_MIN_ROWS", 0)
    rng = random.Random(11)
    rows = corpus()
    base = paragraph(list(range(24)))
    rows += [{"id": f"v{i:03d}", "text": edit_chars(base, 1, seed=i), "topic": "v"} for i in range(60)]
    for k in range(30):
        text = paragraph(rng.sample(range(len(SENTENCES)), 10))
        rows += [{"id": f"g{k:03d}", "text": text, "topic": "g"},
                 {"id": f"h{k:03d}", "text": edit_chars(text, 1, seed=k), "topic": "g"}]
    on_ray = run(ray_session, "ray", rows, blocks=5, batch_size=13)
    in_pool = run(ray_session, "local", rows, blocks=5, batch_size=13, concurrency=2)
    assert in_pool == on_ray
    assert len(in_pool[1]) >= 59 + 30 + len(EXPECTED_REMOVED)


def test_large_component_uses_lsh_edges(ray_session, executor):
    base = paragraph(list(range(24)))
    rows = [{"id": f"v{i:03d}", "text": edit_chars(base, 1, seed=i), "topic": "v"} for i in range(60)]
    kept, removed = run(ray_session, executor, rows, blocks=3)
    assert [r["id"] for r in kept] == ["v000"]
    assert {r["duplicate_of"] for r in removed} <= {r["id"] for r in kept}
    assert all(r["similarity"] >= 0.8 for r in removed)


def test_verify_off_uses_minhash_estimate(ray_session, executor):
    _, removed = run(ray_session, executor, corpus(), verify=False)
    assert {r["id"] for r in removed} >= {"a1", "a2"}
    assert all(r["similarity"] >= 0.8 for r in removed)


def test_word_shingles_pipeline(ray_session, executor):
    _, removed = run(ray_session, executor, corpus(), shingle="word", ngram=2)
    assert {r["id"]: r["duplicate_of"] for r in removed}.keys() >= {"a1", "a2"}


def test_disabled_keeps_everything(ray_session, executor):
    kept, removed = run(ray_session, executor, corpus(), enabled=False)
    assert len(kept) == len(corpus()) and removed == []


def test_empty_input_and_integer_ids(ray_session, executor):
    empty = ray_session.data.from_arrow(pa.table({"id": pa.array([], pa.string()), "text": pa.array([], pa.string())}))
    kept, removed = deduplicate(empty, "text", "id", DedupConfig(executor=executor))
    assert kept.count() == 0 and removed.count() == 0
    rows = [{"id": 1, "text": SENTENCES[0]}, {"id": 2, "text": SENTENCES[0] + "！"}, {"id": 3, "text": None}]
    kept, removed = deduplicate(ray_session.data.from_items(rows), "text", "id", DedupConfig(executor=executor))
    assert sorted(r["id"] for r in kept.take_all()) == [1, 3]
    assert [(r["id"], r["duplicate_of"]) for r in removed.take_all()] == [(2, "1")]


def test_duplicate_ids_are_an_error(ray_session, executor):
    rows = corpus() + [{"id": "b0", "text": "另一段完全不同的文字内容", "topic": "x"}]
    with pytest.raises(DuplicateIdError, match="'b0'"):
        run(ray_session, executor, rows)


# ---------------------------------------------------------------- the command


def write_jsonl(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8")
    return path


def read_out(out: Path) -> tuple[pa.Table, pa.Table]:
    return pq.read_table(out / "kept"), pq.read_table(out / "removed")


@pytest.mark.parametrize("fmt", ["parquet", "parquet-folder"])  # jsonl: test_synth_dedup_cli
def test_command_writes_kept_and_removed(ray_session, tmp_path, capsys, fmt, executor):
    from synth.dedup.command import run_dedup_command

    rows = corpus()
    if fmt == "parquet":
        src = tmp_path / "in.parquet"
        pq.write_table(pa.Table.from_pylist(rows), src)
    else:
        src = tmp_path / "in"
        src.mkdir()
        pq.write_table(pa.Table.from_pylist(rows[:5]), src / "part-0.parquet")
        pq.write_table(pa.Table.from_pylist(rows[5:]), src / "part-1.parquet")
    out = tmp_path / "out"
    assert run_dedup_command(src, "text", "id", 0.8, out, config=DedupConfig(executor=executor)) == 0
    kept, removed = read_out(out)
    assert sorted(kept["id"].to_pylist()) == ["a0", "b0", "c0", "d0", "e0", "e1"]
    assert dict(zip(removed["id"].to_pylist(), removed["duplicate_of"].to_pylist())) == {
        k: v[0] for k, v in EXPECTED_REMOVED.items()
    }
    assert set(removed.column_names) >= {"id", "text", "topic", "duplicate_of", "similarity"}
    line = capsys.readouterr().out.strip().splitlines()[-1]
    assert "10 rows" in line and "6 kept" in line and "4 removed" in line


def test_command_reads_a_folder_whose_files_order_their_columns_differently(ray_session, tmp_path):
    from synth.dedup.command import run_dedup_command

    rows = corpus()
    src = tmp_path / "in"
    src.mkdir()
    pq.write_table(pa.Table.from_pylist(rows[:5]).select(["id", "text", "topic"]), src / "part-0.parquet")
    pq.write_table(pa.Table.from_pylist(rows[5:]).select(["topic", "text", "id"]), src / "part-1.parquet")
    assert run_dedup_command(src, "text", "id", 0.8, tmp_path / "out") == 0
    kept, removed = read_out(tmp_path / "out")
    assert sorted(kept["id"].to_pylist()) == ["a0", "b0", "c0", "d0", "e0", "e1"]
    assert kept.column_names == ["id", "text", "topic"]


def test_command_without_duplicates_writes_empty_removed(ray_session, tmp_path):
    from synth.dedup.command import run_dedup_command

    src = write_jsonl(tmp_path / "in.jsonl", corpus()[6:8])
    assert run_dedup_command(src, "text", "id", 0.8, tmp_path / "out") == 0
    kept, removed = read_out(tmp_path / "out")
    assert kept.num_rows == 2 and removed.num_rows == 0 and "duplicate_of" in removed.column_names


def nothing_written(tmp_path: Path, inputs: set[str]) -> bool:
    return {p.name for p in tmp_path.iterdir()} == inputs


@pytest.mark.parametrize(
    "case, expected",
    [
        ("missing-field", ["in.jsonl", "'body'"]),
        ("missing-id", ["in.jsonl", "'uid'"]),
        ("unreadable", ["in.parquet", "cannot read"]),
        ("empty", ["in.jsonl", "empty"]),
        ("no-such-file", ["nope.jsonl", "no such file"]),
        ("duplicate-ids", ["in.jsonl", "'a0'"]),
    ],
)
def test_command_bad_input_exits_2_and_writes_nothing(ray_session, tmp_path, capsys, case, expected):
    from synth.dedup.command import run_dedup_command

    text_field, id_field = "text", "id"
    if case == "missing-field":
        src, text_field = write_jsonl(tmp_path / "in.jsonl", corpus()), "body"
    elif case == "missing-id":
        src, id_field = write_jsonl(tmp_path / "in.jsonl", corpus()), "uid"
    elif case == "unreadable":
        src = tmp_path / "in.parquet"
        src.write_bytes(b"this is not parquet")
    elif case == "empty":
        src = write_jsonl(tmp_path / "in.jsonl", [])
    elif case == "no-such-file":
        src = tmp_path / "nope.jsonl"
    else:
        src = write_jsonl(tmp_path / "in.jsonl", corpus() + [{"id": "a0", "text": "别的内容", "topic": "z"}])
    before = {p.name for p in tmp_path.iterdir()}
    assert run_dedup_command(src, text_field, id_field, 0.8, tmp_path / "out") == 2
    err = capsys.readouterr().err
    for fragment in expected:
        assert fragment in err
    assert nothing_written(tmp_path, before)


def test_command_refuses_existing_output(ray_session, tmp_path, capsys):
    from synth.dedup.command import run_dedup_command

    src = write_jsonl(tmp_path / "in.jsonl", corpus())
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "keep-me.txt").write_text("x")
    assert run_dedup_command(src, "text", "id", 0.8, tmp_path / "out") == 2
    assert "already exists" in capsys.readouterr().err
    assert [p.name for p in (tmp_path / "out").iterdir()] == ["keep-me.txt"]


def test_synth_dedup_cli(ray_session, tmp_path):
    from typer.testing import CliRunner

    from synth.cli import app

    src = write_jsonl(tmp_path / "in.jsonl", corpus())
    result = CliRunner().invoke(app, ["dedup", str(src), "--text-field", "text", "--out", str(tmp_path / "out")])
    assert result.exit_code == 0, result.output
    assert "10 rows" in result.output and "4 removed" in result.output
    kept, removed = read_out(tmp_path / "out")
    assert sorted(kept["id"].to_pylist()) == ["a0", "b0", "c0", "d0", "e0", "e1"]
    assert dict(zip(removed["id"].to_pylist(), removed["duplicate_of"].to_pylist())) == {
        k: v[0] for k, v in EXPECTED_REMOVED.items()
    }
    result = CliRunner().invoke(app, ["dedup", str(src), "--text-field", "body", "--out", str(tmp_path / "out2")])
    assert result.exit_code == 2 and not (tmp_path / "out2").exists()


def test_split_looks_ids_up_by_hash_and_checks_the_ids_themselves():
    """`_split` (no Ray needed: a plain tuple stands in for the broadcast ref) keeps a row whose id
    hash collides with a removed id's but whose id differs; integer and chunked id columns work."""
    from synth.dedup.steps import empty_removed as _empty_removed, id_nodes as _id_nodes, mark_rows as _split

    def removed(ids: list[str], stored: list[str]):
        nodes = _id_nodes(ids)
        order = np.argsort(nodes, kind="stable")
        table = pa.table({"id": pa.array(stored), "duplicate_of": pa.array([f"of-{s}" for s in stored]),
                          "similarity": pa.array([0.9] * len(stored)), "reason": pa.array(["near_duplicate"] * len(stored))})
        return nodes[order], table.take(pa.array(order, pa.int64()))

    batch = pa.concat_tables([pa.table({"id": pa.array([1, 2, 3]), "t": ["a", "b", "c"]}),
                              pa.table({"id": pa.array([4, 5]), "t": ["d", "e"]})])
    # "2" and "5" are removed; the table holds "X" where "5"'s hash points (a 64-bit hash collision)
    ref = removed(["2", "5"], ["2", "X"])
    gone = _split(batch, "id", ref, want_removed=True)
    assert gone["id"].to_pylist() == [2] and gone["duplicate_of"].to_pylist() == ["of-2"]
    assert _split(batch, "id", ref, want_removed=False)["id"].to_pylist() == [1, 3, 4, 5]
    ref = removed(["2", "5"], ["2", "5"])
    assert sorted(_split(batch, "id", ref, want_removed=True)["id"].to_pylist()) == [2, 5]
    nothing = (np.zeros(0, np.uint64), _empty_removed())
    assert _split(batch, "id", nothing, want_removed=False).num_rows == 5
    assert _split(batch, "id", nothing, want_removed=True).num_rows == 0
