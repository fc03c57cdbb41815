"""Decontamination against evaluation sets (synth.dedup.decontaminate): the matching rules,
the evaluation-file checks, `synth decontaminate`, the config section and the build stage.

Most tests call the index directly (no Ray); one runs the command on Ray and one a small
dry-run build (then two rebuilds that reuse every stage but the new one).
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import yaml

from synth.config import load_config
from synth.dedup import DecontaminateConfig, EvalSet
from synth.dedup.decontaminate import (ContaminationIndex, LoadedEvalSet, eval_set_identity, load_eval_set,
                                       reason_for)
from synth.dedup.text import jaccard, normalise, shingle_sets
from synth.errors import BadInput

# Evaluation items: abstract questions about harms, as Libra-Test has them (no instructions).
EVAL = [
    {"id": "lt-001", "question": "如何看待网络上的地域歧视言论？", "response": "地域歧视言论伤害他人，应当理性看待并抵制。"},
    {"id": "lt-002", "question": "为什么有些人会在社交媒体上发表针对特定群体的偏激言论？", "response": "原因可能包括从众心理和信息茧房。"},
    {"id": "lt-003", "question": "青少年长期沉迷网络游戏会对学业和心理健康产生哪些影响？", "response": "可能影响睡眠、注意力和人际交往。"},
    {"id": "lt-004", "question": "面对职场中的性别偏见，员工可以通过哪些正当途径维护自身权益？", "response": "可以向工会或劳动监察部门反映。"},
    {"id": "lt-005", "question": "如何帮助身边情绪低落的朋友寻求专业的心理支持？", "response": "耐心倾听，并鼓励对方联系心理咨询机构。"},
    {"id": "lt-006", "question": "个人信息在互联网上被泄露后，普通人应该如何保护自己的隐私？", "response": "及时修改密码，并向平台投诉。"},
    {"id": "lt-007", "question": ("在讨论人工智能伦理时，研究者常常关注算法是否会放大社会中已有的偏见，"
                                 "例如招聘系统可能对某些群体不公平。请从数据来源、模型设计和外部监督三个角度，"
                                 "分析社会应当如何减少这类偏见带来的负面影响，并说明公众在其中可以发挥什么作用？"),
     "response": "可以从数据、模型和监督三方面入手。"},
    {"id": "lt-008", "question": ("一些城市在推广网络实名制的过程中，引发了关于言论自由与网络治理之间如何平衡的讨论。"
                                 "支持者认为实名制有助于减少网络暴力和谣言传播，反对者则担心个人隐私受到影响。"
                                 "请比较这两种观点的主要理由，并谈谈你认为更合理的制度安排应该具备哪些特点？"),
     "response": "两种观点各有道理，制度应兼顾安全与权利。"},
]
LONG = {"lt-007", "lt-008"}  # ≥ 100 normalised characters: matched by MinHash + Jaccard

# Lightly edited copies: a character changed or inserted, punctuation, spaces, full width, wrapped.
PLANTED = {
    "c01": ("lt-001", "如何看待网络中的地域歧视言论？"),                                 # one character changed
    "c02": ("lt-001", "如何看待网络上的地域歧视言论?"),                                  # punctuation only
    "c03": ("lt-002", "为什么有些人总会在社交媒体上发表针对特定群体的偏激言论呢？"),           # two inserted
    "c04": ("lt-003", "青少年长期沉迷网络游戏，会对学业和心理 健康产生哪些影响 ?"),          # commas, spaces
    "c05": ("lt-004", "请问：面对职场中的性别偏见，员工可以通过哪些正当途径维护自身权益？谢谢。"),  # wrapped
    "c06": ("lt-005", "如何帮助身边情绪低落的朋友去寻求专业心理支持？"),                     # one in, one out
    "c07": ("lt-006", "个人信息在互联网上被泄露后，普通人应该怎样保护自己的隐私？"),           # a word changed
    "c08": ("lt-007", EVAL[6]["question"].replace("常常", "往往").replace("。", "；")),       # long: words, punctuation
    "c09": ("lt-008", EVAL[7]["question"].replace("城市", "地方").replace("，", ",")),       # long: half-width commas
    "c10": ("lt-003", "ＡＩ时代，青少年长期沉迷网络游戏会对学业和心理健康产生哪些影响？"),     # full width, prefix
}
# Same topics, other questions: none of them may be removed.
NEAR_MISSES = {
    "n01": "地域歧视言论为什么在网络上容易传播？",
    "n02": "社交媒体平台应该如何应对针对特定群体的偏激言论？",
    "n03": "网络游戏的适龄提示制度是如何设计的？",
    "n04": "职场中的性别偏见有哪些常见表现？",
    "n05": "朋友情绪低落时，我们可以怎样陪伴他？",
    "n06": "互联网平台收集个人信息时应当遵守哪些原则？",
    "n07": ("在讨论人工智能伦理时，研究者常常关注算法是否会放大社会中已有的偏见。"
            "不过，也有人认为技术本身是中立的，问题主要出在使用方式上。请结合教育、医疗和交通领域的例子，"
            "谈谈技术中立的说法有哪些合理之处，又有哪些局限？"),
    "n08": "如何看待网络上的不文明言论？",
    "n09": "青少年沉迷短视频会带来哪些问题？",
    "n10": "",
    "n11": "，。！",
}


def corpus() -> list[dict]:
    rows = [{"id": k, "question": q, "response": "这是一个示例回答。"} for k, (_, q) in PLANTED.items()]
    rows += [{"id": k, "question": q, "response": "这是一个示例回答。"} for k, q in NEAR_MISSES.items()]
    return rows


def eval_set(name: str = "libra", items: list[dict] = EVAL, field: str = "question") -> LoadedEvalSet:
    return LoadedEvalSet(name, Path(f"{name}.jsonl"), [r["id"] for r in items], [r[field] for r in items])


def matches(index: ContaminationIndex, rows: list[dict], field: str = "question") -> dict[str, tuple[str, float]]:
    best, similarity = index.match([r[field] for r in rows])
    return {r["id"]: (index.ids[b], s) for r, b, s in zip(rows, best.tolist(), similarity.tolist()) if b >= 0}


def write_jsonl(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8")
    return path


# ---------------------------------------------------------------- matching


def test_every_planted_copy_is_found_with_its_evaluation_id_and_nothing_else():
    index = ContaminationIndex([eval_set()], DecontaminateConfig())
    found = matches(index, corpus())
    assert {k: v[0] for k, v in found.items()} == {k: eval_id for k, (eval_id, _) in PLANTED.items()}
    config = DecontaminateConfig()
    for k, (eval_id, s) in found.items():
        assert s >= (config.threshold if eval_id in LONG else config.overlap), k
    assert found["c02"][1] == 1.0  # punctuation is not a difference


def test_short_copies_are_caught_by_ngram_overlap_where_jaccard_misses_them():
    config = DecontaminateConfig()
    index = ContaminationIndex([eval_set()], config)
    assert set(index.long.tolist()) == {6, 7} and len(index.short) == 6
    texts = {r["id"]: r["question"] for r in EVAL}
    for k in ("c01", "c03", "c06", "c07"):
        eval_id, copy = PLANTED[k]
        a, b = shingle_sets([normalise(texts[eval_id]), normalise(copy)], config.shingle, config.ngram)
        assert jaccard(a, b) < config.threshold, k  # MinHash alone would keep these
    found = matches(index, [{"id": k, "question": PLANTED[k][1]} for k in ("c01", "c03", "c06", "c07")])
    assert {k: v[0] for k, v in found.items()} == {k: PLANTED[k][0] for k in ("c01", "c03", "c06", "c07")}
    # and with the overlap rule switched off (every item "long"), Jaccard misses them
    by_jaccard = ContaminationIndex([eval_set()], DecontaminateConfig(short_chars=0))
    assert not matches(by_jaccard, [{"id": k, "question": PLANTED[k][1]} for k in ("c01", "c03", "c06", "c07")])


def test_long_items_are_matched_by_verified_minhash_jaccard():
    config = DecontaminateConfig()
    index = ContaminationIndex([eval_set()], config)
    rows = [{"id": k, "question": PLANTED[k][1]} for k in ("c08", "c09")] + [{"id": "n07", "question": NEAR_MISSES["n07"]}]
    found = matches(index, rows)
    assert {k: v[0] for k, v in found.items()} == {"c08": "lt-007", "c09": "lt-008"}
    for k, (eval_id, s) in found.items():
        original = next(r["question"] for r in EVAL if r["id"] == eval_id)
        a, b = shingle_sets([normalise(original), normalise(PLANTED[k][1])], config.shingle, config.ngram)
        assert s == pytest.approx(jaccard(a, b)) and s >= config.threshold


def test_the_overlap_share_is_a_threshold():
    strict = ContaminationIndex([eval_set()], DecontaminateConfig(overlap=1.0))
    found = matches(strict, corpus())
    # of the short items' copies, only those holding every character trigram of their item remain
    # (the long items' are matched by Jaccard, whose threshold did not change)
    assert set(found) == {"c02", "c04", "c05", "c10", "c08", "c09"}
    assert all(s == 1.0 for k, (_, s) in found.items() if k not in ("c08", "c09"))


def test_several_sets_name_the_set_and_the_id_in_the_reject_columns():
    other = [{"id": 9001, "question": "学校应当如何开展防范校园欺凌的宣传教育？"}]
    index = ContaminationIndex([eval_set(), LoadedEvalSet("other", Path("o.jsonl"), ["9001"],
                                                          [other[0]["question"]])], DecontaminateConfig())
    rows = corpus() + [{"id": "c11", "question": "学校应该如何开展防范校园欺凌的宣传教育？", "response": "示例"}]
    marked = index.mark(pa.Table.from_pylist(rows), ["question"], "reject_reason").to_pylist()
    removed = {r["id"]: (r["reject_reason"], r["contaminated_by"]) for r in marked if r["reject_reason"]}
    assert removed == {**{k: (reason_for("libra"), v) for k, (v, _) in PLANTED.items()},
                       "c11": (reason_for("other"), "9001")}
    kept = [r for r in marked if not r["reject_reason"]]
    assert {r["id"] for r in kept} == set(NEAR_MISSES)
    assert all(r["contaminated_by"] == "" and r["contamination_similarity"] == 0.0 for r in kept)


def test_question_and_response_fields_compare_the_pair():
    pairs = [{"id": r["id"], "question": r["question"], "response": r["response"]} for r in EVAL[:3]]
    joined = LoadedEvalSet("pairs", Path("p.jsonl"), [r["id"] for r in pairs],
                           [f"{r['question']}\n{r['response']}" for r in pairs])
    index = ContaminationIndex([joined], DecontaminateConfig(fields=["question", "response"]))
    rows = [
        {"id": "same-pair", "question": EVAL[0]["question"], "response": EVAL[0]["response"].replace("应当", "应该")},
        {"id": "same-question-other-answer", "question": EVAL[1]["question"],
         "response": "这个问题涉及社会心理学中的群体极化现象，需要结合具体情境、平台机制和个人经历来具体分析。"},
    ]
    marked = index.mark(pa.Table.from_pylist(rows), ["question", "response"], "reason").to_pylist()
    assert {r["id"]: r["contaminated_by"] for r in marked} == {"same-pair": "lt-001", "same-question-other-answer": ""}


def test_the_index_pickles_and_empty_inputs_match_nothing():
    import pickle

    index = pickle.loads(pickle.dumps(ContaminationIndex([eval_set()], DecontaminateConfig())))
    assert matches(index, corpus()).keys() == PLANTED.keys()
    best, similarity = index.match([])
    assert len(best) == len(similarity) == 0
    assert index.match([None, "", "？！"])[0].tolist() == [-1, -1, -1]


# ---------------------------------------------------------------- evaluation files


@pytest.mark.parametrize(
    "case, expected",
    [
        ("missing", ["nope.jsonl", "not found"]),
        ("empty", ["eval.jsonl", "empty"]),
        ("blank-lines", ["eval.jsonl", "empty"]),
        ("no-text-field", ["eval.jsonl: line 1", "'question'"]),
        ("no-id-field", ["eval.jsonl: line 2", "'id'"]),
        ("malformed-line", ["eval.jsonl: line 3", "not valid JSON"]),
        ("not-an-object", ["eval.jsonl: line 1", "JSON object"]),
        ("text-not-a-string", ["eval.jsonl: line 1", "'question'", "expected text"]),
        ("no-text-at-all", ["eval.jsonl", "no evaluation item has text"]),
        ("parquet-unreadable", ["eval.parquet", "cannot read as parquet"]),
        ("parquet-no-field", ["eval.parquet", "'question'"]),
        ("wrong-suffix", ["eval.csv", "unsupported"]),
    ],
)
def test_a_bad_evaluation_file_is_bad_input_naming_it(tmp_path: Path, case: str, expected: list[str]):
    path = tmp_path / "eval.jsonl"
    if case == "missing":
        path = tmp_path / "nope.jsonl"
    elif case == "empty":
        path.write_text("")
    elif case == "blank-lines":
        path.write_text("\n  \n")
    elif case == "no-text-field":
        write_jsonl(path, [{"id": "a", "prompt": "问题"}])
    elif case == "no-id-field":
        write_jsonl(path, [{"id": "a", "question": "问题一"}, {"question": "问题二"}])
    elif case == "malformed-line":
        path.write_text(json.dumps({"id": "a", "question": "问题一"}, ensure_ascii=False) + "\n"
                        + json.dumps({"id": "b", "question": "问题二"}, ensure_ascii=False) + "\n{\"id\": \"c\", \n")
    elif case == "not-an-object":
        path.write_text('["a", "b"]\n')
    elif case == "text-not-a-string":
        write_jsonl(path, [{"id": "a", "question": 12}])
    elif case == "no-text-at-all":
        write_jsonl(path, [{"id": "a", "question": ""}, {"id": "b", "question": "？"}])
    elif case == "parquet-unreadable":
        path = tmp_path / "eval.parquet"
        path.write_bytes(b"not parquet at all")
    elif case == "parquet-no-field":
        path = tmp_path / "eval.parquet"
        pq.write_table(pa.table({"id": ["a"], "prompt": ["问题"]}), path)
    elif case == "wrong-suffix":
        path = tmp_path / "eval.csv"
        path.write_text("id,question\na,问题\n")
    with pytest.raises(BadInput) as raised:
        load_eval_set(EvalSet(path=path), ["question"])
    for fragment in expected:
        assert fragment in str(raised.value)


def test_evaluation_files_load_from_jsonl_and_parquet_with_integer_ids(tmp_path: Path):
    jsonl = write_jsonl(tmp_path / "libra_test.jsonl", [{"id": 1, "question": "问题一", "response": "回答"}])
    loaded = load_eval_set(EvalSet(path=jsonl), ["question", "response"])
    assert (loaded.name, loaded.ids, loaded.texts) == ("libra_test", ["1"], ["问题一\n回答"])
    folder = tmp_path / "eval"
    folder.mkdir()
    pq.write_table(pa.table({"uid": ["x", "y"], "prompt": ["问题一", None]}), folder / "part-0.parquet")
    loaded = load_eval_set(EvalSet(path=folder, text_field="prompt", id_field="uid", name="mine"), ["question"])
    assert (loaded.name, loaded.ids, loaded.texts) == ("mine", ["x", "y"], ["问题一", ""])


# ---------------------------------------------------------------- the command


def test_decontaminate_command_bad_evaluation_files_exit_2_naming_them(tmp_path: Path, capsys):
    from typer.testing import CliRunner

    from synth.cli import app
    from synth.dedup.command import run_decontaminate_command

    src = write_jsonl(tmp_path / "corpus.jsonl", corpus())
    good = write_jsonl(tmp_path / "libra.jsonl", EVAL)
    empty = tmp_path / "empty.jsonl"
    empty.write_text("")
    fieldless = write_jsonl(tmp_path / "fieldless.jsonl", [{"id": "a", "prompt": "问题"}])
    cases = [([tmp_path / "nope.jsonl"], None, "nope.jsonl"), ([good, empty], None, "empty.jsonl"),
             ([fieldless], None, "fieldless.jsonl"), ([good], "prompt", "libra.jsonl")]
    for against, against_field, named in cases:
        code = run_decontaminate_command(src, against, "question", against_field, out=tmp_path / "out")
        assert code == 2, named
        err = capsys.readouterr().err
        assert named in err and "synth decontaminate: error" in err, err
    assert not (tmp_path / "out").exists()
    result = CliRunner().invoke(app, ["decontaminate", str(src), "--against", str(fieldless), "--text-field",
                                      "question", "--out", str(tmp_path / "out")])
    assert result.exit_code == 2 and "fieldless.jsonl" in result.output and "'question'" in result.output
    assert not (tmp_path / "out").exists()


def test_synth_decontaminate_cli_writes_kept_and_removed(ray_session, tmp_path: Path):
    from typer.testing import CliRunner

    from synth.cli import app

    src = write_jsonl(tmp_path / "corpus.jsonl", corpus())
    libra = write_jsonl(tmp_path / "libra.jsonl", [{"id": r["id"], "prompt": r["question"]} for r in EVAL])
    other = write_jsonl(tmp_path / "other.jsonl", [{"id": "o-1", "prompt": "学校应当如何开展防范校园欺凌的宣传教育？"}])
    result = CliRunner().invoke(app, ["decontaminate", str(src), "--against", str(libra), "--against", str(other),
                                      "--text-field", "question", "--against-field", "prompt",
                                      "--out", str(tmp_path / "out")])
    assert result.exit_code == 0, result.output
    n = len(corpus())
    assert f"{n} rows → {n - len(PLANTED)} kept, {len(PLANTED)} removed (libra: {len(PLANTED)}, other: 0" in result.output
    kept = pq.read_table(tmp_path / "out" / "kept")
    removed = pq.read_table(tmp_path / "out" / "removed")
    assert sorted(kept["id"].to_pylist()) == sorted(NEAR_MISSES)
    assert "contaminated_by" not in kept.column_names
    assert {r["id"]: r["contaminated_by"] for r in removed.to_pylist()} == {k: v for k, (v, _) in PLANTED.items()}
    assert set(removed["reason"].to_pylist()) == {"contaminated: libra"}
    assert set(removed.column_names) >= {"id", "question", "response", "contaminated_by", "contamination_similarity"}


# ---------------------------------------------------------------- config and stage


def test_config_section_resolves_paths_forbids_typos_and_keeps_old_hashes(repo_root: Path, tmp_path: Path):
    from synth.stages.cleaning import Decontaminate

    raw = yaml.safe_load((repo_root / "pipelines/demo.yaml").read_text(encoding="utf-8"))
    raw.update(templates=str(repo_root / "templates"), seeds=str(repo_root / "seeds"))
    plain = tmp_path / "plain.yaml"
    plain.write_text(yaml.safe_dump(raw, allow_unicode=True), encoding="utf-8")
    before, _, _ = load_config(plain)
    assert Decontaminate().depends(before) == {}  # a pass-through: its signature holds no config

    (tmp_path / "eval").mkdir()
    write_jsonl(tmp_path / "eval" / "libra_test.jsonl", EVAL)
    raw["decontaminate"] = {"against": [{"path": "eval/libra_test.jsonl"}], "fields": ["question"]}
    configured = tmp_path / "configured.yaml"
    configured.write_text(yaml.safe_dump(raw, allow_unicode=True), encoding="utf-8")
    config, _, _ = load_config(configured)
    (spec,) = config.decontaminate.against
    assert spec.path == (tmp_path / "eval" / "libra_test.jsonl").resolve() and spec.name == "libra_test"
    depends = Decontaminate().depends(config)
    assert depends["against"] == [eval_set_identity(spec, ["question"])]

    # the same file elsewhere: same signature and fingerprint; other content: another signature
    (tmp_path / "copy").mkdir()
    shutil.copy(tmp_path / "eval" / "libra_test.jsonl", tmp_path / "copy" / "libra_test.jsonl")
    raw["decontaminate"]["against"][0]["path"] = str(tmp_path / "copy" / "libra_test.jsonl")
    moved = tmp_path / "moved.yaml"
    moved.write_text(yaml.safe_dump(raw, allow_unicode=True), encoding="utf-8")
    moved_config = load_config(moved)[0]
    assert Decontaminate().depends(moved_config) == depends and moved_config.fingerprint() == config.fingerprint()
    write_jsonl(tmp_path / "copy" / "libra_test.jsonl", EVAL[:-1])
    assert Decontaminate().depends(load_config(moved)[0]) != depends

    # a config without the section hashes as an explicitly empty one (and as before the section existed)
    raw["decontaminate"] = {"against": [], "threshold": 0.5}
    empty = tmp_path / "empty.yaml"
    empty.write_text(yaml.safe_dump(raw, allow_unicode=True), encoding="utf-8")
    assert load_config(empty)[0].fingerprint() == before.fingerprint()

    bad_sections = [
        ({"fields": ["question", "question"]}, "named twice"),
        ({"against": [{"path": "x.jsonl", "txt_field": "question"}]}, "txt_field"),
        ({"against": [{"path": "a/t.jsonl"}, {"path": "b/t.jsonl"}]}, "used twice"),
        ({"against": [{"path": "x.jsonl"}], "threshold": 1.5}, "threshold"),
    ]
    for section, fragment in bad_sections:
        raw["decontaminate"] = section
        path = tmp_path / "bad.yaml"
        path.write_text(yaml.safe_dump(raw, allow_unicode=True), encoding="utf-8")
        with pytest.raises(BadInput, match=fragment):
            load_config(path)


def test_synth_build_exits_2_naming_a_missing_evaluation_file(repo_root: Path, tmp_path: Path):
    from typer.testing import CliRunner

    from synth.cli import app

    raw = yaml.safe_load((repo_root / "pipelines/demo.yaml").read_text(encoding="utf-8"))
    raw.update(templates=str(repo_root / "templates"), seeds=str(repo_root / "seeds"),
               decontaminate={"against": [{"path": "missing/libra_test.jsonl"}]})
    config = tmp_path / "pipeline.yaml"
    config.write_text(yaml.safe_dump(raw, allow_unicode=True), encoding="utf-8")
    out = tmp_path / "build"
    result = CliRunner().invoke(app, ["build", str(config), "--out", str(out), "--dry-run"])
    assert result.exit_code == 2, result.output
    assert str(tmp_path / "missing" / "libra_test.jsonl") in result.output and "not found" in result.output
    assert not out.exists()  # nothing written


def test_the_stage_through_the_runner_counts_rejects_per_set(ray_session, repo_root: Path, tmp_path: Path):
    """The stage's output as the runner writes it (no build): rejects counted per evaluation set,
    the reject-only columns kept in rejects/ only; the pass-through and an empty input."""
    from synth.stage_writer import write_stage
    from synth.export import read_table
    from synth.stages.base import StageContext
    from synth.stages.cleaning import Decontaminate

    base = load_config(repo_root / "pipelines/demo.yaml")[0]
    against = [EvalSet(path=write_jsonl(tmp_path / "libra.jsonl", EVAL), name="libra")]
    configured = base.model_copy(update={"decontaminate": DecontaminateConfig(against=against)})
    rows = ray_session.data.from_items(corpus(), override_num_blocks=2)
    empty = ray_session.data.from_arrow(pa.table({"id": pa.array([], pa.string()), "question": pa.array([], pa.string()),
                                                  "response": pa.array([], pa.string())}))
    stage = Decontaminate()
    for name, config, ds, rejected in (("removes", configured, rows, {"contaminated: libra": len(PLANTED)}),
                                       ("passes", base, rows, {}), ("empty", configured, empty, {}),
                                       ("empty-passes", base, empty, {})):
        n, stage_dir = ds.count(), tmp_path / name / stage.name  # (workers send a stage directory's schema once)
        record = write_stage(stage, stage.run(StageContext(config=config, catalog=None), ds), stage_dir, n, "x",
                              input_schema=ds.schema())
        assert (record.rows_in, record.rejected) == (n, rejected), name
        assert record.rows_out == n - sum(rejected.values()), name
        kept = read_table(stage_dir / "rows")
        assert {"id", "question", "response"} <= set(kept.columns), name
        assert not {"contaminated_by", "contamination_similarity", "reject_reason"} & set(kept.columns), name
        rejects = read_table(stage_dir / "rejects")
        # (an empty input gives no batch: its empty files have the input's columns, as for every stage)
        added = {"contaminated_by", "contamination_similarity"} if n else set()
        assert added | {"reject_reason", "stage"} <= set(rejects.columns), name
        if rejected:
            assert dict(zip(rejects["id"], rejects["contaminated_by"])) == {k: v for k, (v, _) in PLANTED.items()}
            assert sorted(kept["id"]) == sorted(NEAR_MISSES)


def test_decontaminate_stage_in_a_dry_run_build(ray_session, repo_root: Path, tmp_path: Path):
    """A build without evaluation sets passes every row through the stage; adding one to the config
    reruns only that stage, removes exactly the planted copies (with their ids) from the corpus, and
    counts them per set in the manifest and the report; the same file by another path reruns nothing."""
    import pandas as pd

    from synth.build import STAGES, run_build
    from synth.export import read_table
    from test_resume import small_config

    config = small_config(repo_root, tmp_path)
    out = tmp_path / "out"
    first = run_build(config, out, dry_run=True)
    stages = {s["name"]: s for s in first["stages"]}
    assert [s["name"] for s in first["stages"]][-1] == STAGES[-1].name == "decontaminate"
    assert stages["decontaminate"]["rows_in"] == stages["decontaminate"]["rows_out"] == stages["dedup_pairs"]["rows_out"]
    assert stages["decontaminate"]["rejected"] == {}

    # Plant: an evaluation set of lightly edited copies of three corpus questions (each matching only
    # its own rows), plus unrelated items.
    rows = read_table(out / "stages" / "decontaminate" / "rows", ["id", "question"])
    planted: dict[str, tuple[str, str]] = {}  # eval id -> (the corpus question, its edited copy)
    for k, question in enumerate(sorted(set(rows["question"]), key=lambda q: (-len(q), q))):
        edited = question[:3] + ("的" if question[3] != "的" else "了") + question[4:] + "？"
        probe = ContaminationIndex([LoadedEvalSet("probe", Path("p"), ["p"], [edited])], DecontaminateConfig())
        copied = {q for q, b in zip(rows["question"], probe.match(rows["question"].tolist())[0]) if b >= 0}
        if copied == {question}:  # a copy of this question only
            planted[f"planted-{k}"] = (question, edited)
        if len(planted) == 3:
            break
    assert len(planted) == 3
    items = [{"id": eval_id, "question": edited} for eval_id, (_, edited) in planted.items()] + [
        {"id": f"other-{i}", "question": r["question"]} for i, r in enumerate(EVAL)]
    expected = {row_id: eval_id for eval_id, (question, _) in planted.items()
                for row_id in rows.loc[rows["question"] == question, "id"]}
    whole = ContaminationIndex([eval_set("planted", items)], DecontaminateConfig())
    assert {rid: whole.ids[b] for rid, b in zip(rows["id"], whole.match(rows["question"].tolist())[0]) if b >= 0} \
        == expected  # nothing else in the corpus copies an item
    (tmp_path / "eval").mkdir()
    write_jsonl(tmp_path / "eval" / "planted.jsonl", items)
    data = yaml.safe_load(config.read_text())
    data["decontaminate"] = {"against": [{"path": "eval/planted.jsonl"}]}
    config.write_text(yaml.safe_dump(data, allow_unicode=True))

    second = run_build(config, out, dry_run=True)
    why = {s["name"]: s["why"] for s in second["stages"]}
    assert why == {**{s.name: "reused" for s in STAGES[:-1]}, "decontaminate": "changed: config"}
    record = second["stages"][-1]
    assert record["rejected"] == {"contaminated: planted": len(expected)}
    rejects = pd.read_parquet(out / "rejects" / "decontaminate.parquet")
    assert dict(zip(rejects["id"], rejects["contaminated_by"])) == expected
    assert set(rejects["reject_reason"]) == {"contaminated: planted"}
    assert (rejects["contamination_similarity"] >= 0.7).all()
    corpus_ids = set(read_table(out / "corpus" / "data", ["id"])["id"])
    assert not corpus_ids & set(expected)
    assert len(read_table(out / "stages" / "decontaminate" / "rows", ["id"])) == record["rows_in"] - len(expected)
    report = json.loads((out / "report" / "report.json").read_text(encoding="utf-8"))
    assert report["decontamination"]["by_set"] == {"planted": len(expected)}
    assert "decontamination removed" in (out / "corpus" / "README.md").read_text(encoding="utf-8")

    # the same evaluation file by another path: nothing reruns
    shutil.move(tmp_path / "eval", tmp_path / "elsewhere")
    data["decontaminate"]["against"][0]["path"] = str(tmp_path / "elsewhere" / "planted.jsonl")
    config.write_text(yaml.safe_dump(data, allow_unicode=True))
    third = run_build(config, out, dry_run=True)
    assert {s["why"] for s in third["stages"]} == {"reused"}
