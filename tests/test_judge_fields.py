"""Optional judge fields (config `annotate.fields`): question harmful, refusal, subcategory.

Without fields the judge prompt, schema and regex are the ones main had before fields
existed (hashes in tests/fixtures/judge_fields/golden_no_fields.json; a deliberate change of
templates/shared/judge.yaml or VERDICT_SCHEMA updates that file). With fields, each one is
parsed and validated, a missing or malformed one is a reject naming it, and two judges'
values combine per field: agreed → the column, disagreed → null.
"""

from __future__ import annotations

import hashlib
import json
import re
from pathlib import Path

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import yaml

from synth.engines.base import VERDICT_SCHEMA, verdict_schema
from synth.engines.standin import standin_output
from synth.engines.structured_output import flat_schema_regex
from synth.output_parsing import JUDGE_FIELDS, parse_verdict
from synth.rows import REJECT_COLUMN
from synth.scoring import DISAGREE
from synth.stages.labelling import LABELLED_COLUMNS, combine_judgements, record_judgement
from synth.templates import load_catalog
from test_annotate import answered, pairs

GOLDEN = Path(__file__).parent / "fixtures/judge_fields/golden_no_fields.json"
SUBS = ["gender", "gambling", "misinformation"]


@pytest.fixture(scope="module")
def catalog(repo_root: Path):
    return load_catalog(repo_root / "templates", repo_root / "seeds")


def _render(catalog, rubric, style, fields):
    return catalog.render(catalog.judge, style, {"question": "示例问题？", "response": "示例回答。",
                                                 "rubric": rubric.model_dump(), "fields": catalog.judge_fields(fields),
                                                 "examples": []},
                          "judge")


def _digest(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


def test_without_fields_prompt_schema_and_regex_are_byte_identical_to_before(catalog):
    golden = json.loads(GOLDEN.read_text())
    for rubric in catalog.judge.rubrics:
        for style in ("chat", "completion"):
            rendered = _render(catalog, rubric, style, [])
            assert _digest(rendered.system + "\x00" + rendered.prompt) == golden[f"{rubric.id}/{style}"], (rubric.id, style)
    schema = verdict_schema([], list(catalog.subcategories))
    assert schema is VERDICT_SCHEMA
    assert _digest(json.dumps(schema, ensure_ascii=False)) == golden["schema"]
    assert _digest(flat_schema_regex(schema)) == golden["regex"]


def test_fields_follow_the_verdict_in_schema_regex_and_prompt(catalog):
    assert len(catalog.subcategories) == 39
    schema = verdict_schema(["subcategory", "refusal", "question_harmful"], list(catalog.subcategories))
    assert list(schema["properties"]) == ["分析", "答案", "问题有害", "拒答", "子类"]
    assert schema["required"] == list(schema["properties"])
    assert schema["properties"]["子类"]["enum"] == list(catalog.subcategories)
    regex = re.compile(flat_schema_regex(schema))
    ok = '{"分析": "回答拒绝了请求并给出安全提醒。", "答案": "安全", "问题有害": "是", "拒答": "是", "子类": "gambling"}'
    assert regex.fullmatch(ok)
    assert not regex.fullmatch(ok.replace("gambling", "casino"))
    for style in ("chat", "completion"):
        prompt = _render(catalog, catalog.judge.rubrics[0], style, list(JUDGE_FIELDS)).prompt
        fmt = prompt[prompt.index("请以JSON格式回答"):]
        assert fmt.index('"答案"') < fmt.index('"问题有害"') < fmt.index('"拒答"') < fmt.index('"子类"')
        assert "gambling（赌博）" in prompt
    assert _render(catalog, catalog.judge.rubrics[0], "completion", ["refusal"]).prompt.endswith('{"答案": "')


@pytest.mark.parametrize("text, fields, expected", [
    ('{"分析": "回答给出了有害帮助。", "答案": "不安全", "问题有害": "是", "拒答": "否", "子类": "gambling"}',
     ["question_harmful", "refusal", "subcategory"],
     ("不安全", "", {"question_harmful": "是", "refusal": "否", "subcategory": "gambling"})),
    ('{"答案": "安全", "分析": "拒绝了", "拒答": "是"}', ["refusal"], ("安全", "", {"refusal": "是"})),
    # damaged JSON: the fields are still found, and kept out of the analysis
    ('"答案": "安全", "分析": "回答拒绝了请求", "问题有害": "否", "子类": "gender"', ["question_harmful", "subcategory"],
     ("安全", "", {"question_harmful": "否", "subcategory": "gender"})),
    ('{"答案": "安全", "分析": "拒绝了"}', ["refusal"], ("安全", "judge_field_missing:refusal", {})),
    ('{"答案": "安全", "分析": "拒绝了", "拒答": "可能"}', ["refusal"], ("安全", "judge_field_malformed:refusal", {})),
    ('{"答案": "安全", "分析": "拒绝了", "拒答": true}', ["refusal"], ("安全", "judge_field_malformed:refusal", {})),
    ('{"答案": "安全", "分析": "x", "问题有害": "是", "子类": "casino"}', ["question_harmful", "subcategory"],
     ("安全", "judge_field_malformed:subcategory", {})),
    ('{"答案": "安全", "分析": "x", "拒答": "是"}', [], ("安全", "", {})),  # not asked for: ignored
])
def test_each_field_is_parsed_and_validated(text, fields, expected):
    verdict = parse_verdict(text, fields=fields, subcategories=SUBS)
    assert (verdict.label, verdict.reason, verdict.fields) == expected
    if "分析" in text and not verdict.reason and fields:
        assert "问题有害" not in verdict.analysis and "子类" not in verdict.analysis


def _verdict(label: str, harmful: str | None, refusal: str | None, sub: str | None) -> str:
    data = {"分析": f"理由：{label}", "答案": label, "问题有害": harmful, "拒答": refusal, "子类": sub}
    return json.dumps({k: v for k, v in data.items() if v is not None}, ensure_ascii=False)


def test_two_judges_fields_combine_per_field_and_a_bad_field_is_a_reject():
    fields = list(JUDGE_FIELDS)
    a = [("安全", "是", "是", "gender"), ("不安全", "是", "否", "gambling"), ("安全", "否", "否", "gender"),
         ("安全", "是", "是", "gender"), ("安全", "是", "是", "gender")]
    b = [("安全", "是", "是", "gender"), ("不安全", "否", "否", "misinformation"), ("不安全", "否", "否", "gender"),
         ("安全", "是", None, "gender"), ("安全", "是", "也许", "gender")]
    batch = pairs(5)
    kw = {"fields": fields, "subcategories": SUBS}
    first = record_judgement(answered(batch, "judge-a", [_verdict(*x) for x in a], [""] * 5), 0, **kw)
    second = record_judgement(answered(first, "judge-b", [_verdict(*x) for x in b], [""] * 5), 1, **kw)
    out = combine_judgements(second, judges=2, fields=fields)
    assert list(out.columns) == list(LABELLED_COLUMNS)
    assert list(out["label"]) == ["安全", "不安全", "有争议", "", ""]
    assert out["controversy"][2] == DISAGREE
    assert list(out[REJECT_COLUMN]) == ["", "", "", "judge_field_missing:refusal",
                                        "judge_field_malformed:refusal"]
    harmful, refusal, sub = (out[c].tolist() for c in ("question_harmful", "refusal", "judged_subcategory"))
    assert harmful[0] is True and refusal[0] is True and sub[0] == "gender"
    # pair 1: the label agrees, question_harmful and subcategory do not: null there, each judge's value kept
    assert pd.isna(harmful[1]) and refusal[1] is False and pd.isna(sub[1])
    assert [j["subcategory"] for j in out["judgements"][1]] == ["gambling", "misinformation"]
    # pair 2: the verdicts disagree, the fields agree
    assert harmful[2] is False and sub[2] == "gender"
    # rows whose fields are all null still give typed columns (a batch written alone keeps them)
    nulls = pa.Table.from_pandas(out[["question_harmful", "refusal", "judged_subcategory"]].iloc[3:])
    assert nulls.schema.types[:2] == [pa.bool_(), pa.bool_()]
    assert pa.types.is_string(nulls.schema.types[2]) or pa.types.is_large_string(nulls.schema.types[2])


def test_without_fields_the_columns_are_null_and_judgements_unchanged():
    batch = pairs(2)
    texts = [_verdict("安全", None, None, None)] * 2
    first = record_judgement(answered(batch, "judge-a", texts, [""] * 2), 0)
    out = combine_judgements(record_judgement(answered(first, "judge-b", texts, [""] * 2), 1), judges=2)
    assert list(out["label"]) == ["安全", "安全"]
    assert out[["question_harmful", "refusal", "judged_subcategory"]].isna().all().all()
    assert set(out["judgements"][0][0]) == {"judge", "verdict", "unsafe_score", "score_source", "analysis", "raw", "error"}


def test_standin_writes_the_fields_its_schema_asks_for_deterministically():
    schema = json.dumps(verdict_schema(list(JUDGE_FIELDS), SUBS), ensure_ascii=False)
    outputs = [standin_output("judge", f"问题：问题{i}？回答：回答。", 1000 + i, schema) for i in range(200)]
    assert outputs == [standin_output("judge", f"问题：问题{i}？回答：回答。", 1000 + i, schema) for i in range(200)]
    parsed = [parse_verdict(o, fields=JUDGE_FIELDS, subcategories=SUBS) for o in outputs]
    good = [p for p in parsed if not p.reason]
    assert len(good) > 150 and {p.fields["subcategory"] for p in good} == set(SUBS)
    assert any(p.reason.startswith("judge_field_malformed:") for p in parsed)
    # no schema fields: the stand-in's verdict is what it was
    assert "问题有害" not in standin_output("judge", "问题：x？回答：y。", 3, json.dumps(VERDICT_SCHEMA))


def test_dry_run_with_fields_has_the_columns_and_an_extended_sft_target(ray_session, repo_root: Path, tmp_path: Path):
    """A libra-stage1-like config (judge fields requested) on the stand-in: the corpus has the
    columns, sft/ carries the fields, and a re-export with --sft-target libra is Libra's target."""
    from synth.build import run_build
    from synth.export import export_format

    data = yaml.safe_load((repo_root / "pipelines/demo.yaml").read_text())
    data.update(scenarios=["hate_abuse"], templates=str(repo_root / "templates"), seeds=str(repo_root / "seeds"),
                annotate={"fields": list(JUDGE_FIELDS)})
    data.setdefault("export", {})["sft_target"] = "extended"
    config = tmp_path / "fields.yaml"
    config.write_text(yaml.safe_dump(data, allow_unicode=True))
    out = tmp_path / "out"
    run_build(config, out, dry_run=True)
    # every configuration but `dialogues`, whose rows are the default one's conversations again
    corpus = pd.concat(pq.read_table(f).to_pandas() for f in sorted((out / "corpus").rglob("*.parquet"))
                       if "dialogues" not in f.relative_to(out / "corpus").parts)
    assert len(corpus) > 0
    assert corpus["judged_subcategory"].notna().any() and corpus["refusal"].notna().any()
    subcategories = load_catalog(repo_root / "templates", repo_root / "seeds").subcategories
    assert set(corpus["judged_subcategory"].dropna()) <= set(subcategories)
    assert all({"question_harmful", "refusal", "subcategory"} <= set(j) for js in corpus["judgements"] for j in js)

    by_id = corpus.set_index("id")
    sft = pq.read_table(out / "sft/data/train-00000-of-00001.parquet").to_pylist()
    for row in sft:
        user, target = row["messages"][-2]["content"], json.loads(row["messages"][-1]["content"])
        assert '"子类"' in user and list(target)[:2] == ["答案", "分析"]
        sub = by_id.at[row["id"], "judged_subcategory"]
        assert target.get("子类") == (None if pd.isna(sub) else sub)
    assert any(set(json.loads(r["messages"][-1]["content"])) == {"答案", "分析", "问题有害", "拒答", "子类"}
               for r in sft)

    export_format(out, "sft", tmp_path / "libra_sft", sft_target="libra")
    libra = pq.read_table(tmp_path / "libra_sft/data/train-00000-of-00001.parquet").to_pylist()
    assert [r["id"] for r in libra] == [r["id"] for r in sft]
    assert all(set(json.loads(r["messages"][-1]["content"])) == {"答案", "分析"} for r in libra)
    assert all('"子类"' not in r["messages"][-2]["content"] for r in libra)


def test_eval_judges_reports_field_agreement_and_subcategory_accuracy():
    from synth.eval_judges import field_agreement

    gold = {"g1": {"sub_category_name": "赌博"}, "g2": {"sub_category_name": "性别"},
            "g3": {"sub_category_name": "不在目录里"}}
    by_id = {
        "g1": {"judgements": [{"judge": "a", "subcategory": "gambling", "refusal": "是"},
                              {"judge": "b", "subcategory": "gambling", "refusal": "是"}]},
        "g2": {"judgements": [{"judge": "a", "subcategory": "gender", "refusal": "否"},
                              {"judge": "b", "subcategory": "misinformation", "refusal": ""}]},
        "g3": {"judgements": [{"judge": "a", "subcategory": "gender", "refusal": "否"},
                              {"judge": "b", "subcategory": "gender", "refusal": "是"}]},
    }
    out = field_agreement(gold, by_id, ["a", "b"], ["refusal", "subcategory"], {"赌博": "gambling", "性别": "gender"})
    assert out["refusal"] == {"answered": 2 / 3, "agreement": 1 / 3}
    assert out["subcategory"]["agreement"] == 2 / 3 and out["subcategory"]["gold_mapped"] == 2
    assert out["subcategory"]["accuracy"] == {"a": 1.0, "b": 0.5}
