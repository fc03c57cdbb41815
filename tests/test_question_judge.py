"""The question judge (stage judge_questions, synth/stages/question_judge.py; issue 30).

- `route_questions`, a pure function, on judgements made by the stage's own `question_judgement`
  from judge outputs written by hand: every outcome of the routing config, two judges that
  disagree, failures (transient → pending, permanent → kept unjudged);
- `parse_question_verdict` and `score_from_logprobs(key="问题有害")` on hand-written outputs;
- real dry-run builds (the stand-in engine, synth/engines/standin.py, real Ray, real parquet) of
  one scenario: the manifest reconciles with the stage's rows and rejects, the routing shows in
  the rows, a template change reruns judge_questions and what follows and nothing before it;
- a question-judge role naming an unknown model is bad input (BadInput; the CLI exits 2).
"""

from __future__ import annotations

import json
import math
import shutil
import subprocess
import sys
from collections import Counter
from pathlib import Path

import pandas as pd
import pytest
import yaml

from synth.build import STAGES, run_build
from synth.engines.base import failure_reason, transient
from synth.export import read_table
from synth.output_parsing import OTHER_SUBCATEGORY, parse_question_verdict
from synth.scoring import FROM_LABEL, FROM_LOGPROBS, score_from_logprobs, verdict_score
from synth.stages.question_judge import (
    KIND_MISMATCH, OFF_TOPIC, QUESTION_JUDGE_COLUMNS, REASSIGNED, RELABELLED, question_judgement, route_questions,
)
from test_resume import small_config

NAMES = [s.name for s in STAGES]
JUDGE = NAMES.index("judge_questions")
ASKED = "humiliation"  # a hate_abuse subcategory: what the generator was asked for in the hand-built rows


# --- routing, no Ray -------------------------------------------------------------------------

@pytest.fixture(scope="module")
def catalog(repo_root: Path):
    from synth.templates import load_catalog

    return load_catalog(repo_root / "templates", repo_root / "seeds")


@pytest.fixture(scope="module")
def elsewhere(catalog) -> str:
    """A subcategory of another scenario than the asked one's."""
    return next(s for s, (scenario, _) in catalog.scenario_of.items() if scenario != "hate_abuse")


def logprobs_for(text: str, p_yes: float) -> str:
    """Log-probabilities in synth.scoring's form: the text up to the label as one token, then the
    label with both labels as alternatives (P(是) = p_yes), then the rest."""
    key = '"问题有害": "'
    start = text.index(key) + len(key)
    label = text[start]
    return json.dumps([[text[:start], [[text[:start], 0.0]]],
                       [label, [["是", math.log(p_yes)], ["否", math.log(1 - p_yes)]]],
                       [text[start + 1:], [[text[start + 1:], 0.0]]]], ensure_ascii=False)


def topic_of(catalog, subcategory: str) -> str:
    """What the judge writes for a subcategory id: its label 场景-子类 (都不是 for `other`)."""
    return next((label for label, sub in catalog.topics.items() if sub == subcategory), subcategory)


def judged(catalog, harmful: str = "", subcategory: str = "", p_yes: float | None = None, error: str = "",
           role: str = "qj-a", text: str | None = None) -> dict:
    """One judge's answered request (what the engine returns: `subcategory` written as the judge
    writes it, its topic label) through the stage's own reading of it."""
    if text is None:
        text = json.dumps({"分析": "提问者想要的东西。", "问题有害": harmful, "子类": topic_of(catalog, subcategory)},
                          ensure_ascii=False)
    answered = {"role": role, "error": error, "prompt": "……提问：某个问题", "prompt_style": "chat",
                "text": "" if error else text,
                "logprobs": logprobs_for(text, p_yes) if p_yes is not None and not error else ""}
    return question_judgement(answered, catalog.topics)


def route(catalog, rows: list[tuple[str, list[dict]]], on_kind_mismatch: str = "relabel",
          on_off_topic: str = "reassign", threshold: float = 0.5) -> pd.DataFrame:
    """Questions asked for (kind, ASKED) with their judges' judgements, routed."""
    scenario, scenario_name = catalog.scenario_of[ASKED]
    judges = len(rows[0][1])
    batch = pd.DataFrame([{
        "id": f"q{i}", "question": f"问题{i}？", "kind": kind, "subcategory": ASKED,
        "subcategory_name": catalog.subcategories[ASKED], "scenario": scenario, "scenario_name": scenario_name,
        **{f"_qjudge{j}": judgement for j, judgement in enumerate(judgements)},
    } for i, (kind, judgements) in enumerate(rows)])
    out = route_questions(batch, judges=judges, on_kind_mismatch=on_kind_mismatch, on_off_topic=on_off_topic,
                          scenario_of=catalog.scenario_of, names=catalog.subcategories, threshold=threshold)
    assert len(out) == len(batch) and list(out["id"]) == list(batch["id"])
    assert set(QUESTION_JUDGE_COLUMNS) <= set(out.columns)
    assert not any(c.startswith("_qjudge") for c in out.columns)
    # provenance: what the generator was asked for, always
    assert list(out["requested_kind"]) == list(batch["kind"]) and set(out["requested_subcategory"]) == {ASKED}
    return out


def test_a_kind_mismatch_is_relabelled_rejected_or_kept(catalog):
    rows = [("harmful", [judged(catalog, "否", ASKED, 0.1)]),   # a harmful-kind question judged harmless
            ("benign", [judged(catalog, "是", ASKED, 0.9)]),    # a benign one judged harmful
            ("harmful", [judged(catalog, "是", ASKED, 0.8)])]   # as asked
    relabelled = route(catalog, rows, on_kind_mismatch="relabel")
    assert list(relabelled["kind"]) == ["benign", "harmful", "harmful"]
    assert list(relabelled["question_route"]) == [RELABELLED, RELABELLED, ""]
    assert list(relabelled["reject_reason"]) == ["", "", ""]
    assert list(relabelled["question_harmful"]) == [False, True, True]
    assert list(relabelled["question_score"]) == pytest.approx([0.1, 0.9, 0.8])
    assert set(relabelled["subcategory"]) == {ASKED} and set(relabelled["judged_subcategory"]) == {ASKED}

    rejected = route(catalog, rows, on_kind_mismatch="reject")
    assert list(rejected["reject_reason"]) == [KIND_MISMATCH, KIND_MISMATCH, ""]
    assert list(rejected["kind"]) == ["harmful", "benign", "harmful"]
    assert list(rejected["question_route"]) == ["", "", ""]

    kept = route(catalog, rows, on_kind_mismatch="keep")
    assert list(kept["reject_reason"]) == ["", "", ""]
    assert list(kept["kind"]) == ["harmful", "benign", "harmful"]
    assert list(kept["question_route"]) == ["", "", ""]
    assert list(kept["question_harmful"]) == [False, True, True]  # the verdict is recorded either way


def test_off_topic_is_reassigned_rejected_or_kept(catalog, elsewhere):
    rows = [("harmful", [judged(catalog, "是", elsewhere, 0.7)]),
            ("harmful", [judged(catalog, "是", OTHER_SUBCATEGORY, 0.7)]),
            ("benign", [judged(catalog, "否", ASKED, 0.2)])]
    reassigned = route(catalog, rows, on_off_topic="reassign")
    scenario, scenario_name = catalog.scenario_of[elsewhere]
    first = reassigned.iloc[0]
    assert (first["subcategory"], first["subcategory_name"], first["scenario"], first["scenario_name"]) == (
        elsewhere, catalog.subcategories[elsewhere], scenario, scenario_name)
    assert first["requested_subcategory"] == ASKED and first["requested_kind"] == "harmful"
    assert first["question_route"] == REASSIGNED and first["reject_reason"] == ""
    # `other` is about none of the catalog's subcategories: nowhere to reassign it to
    assert reassigned.iloc[1]["reject_reason"] == OFF_TOPIC
    assert reassigned.iloc[1]["judged_subcategory"] == OTHER_SUBCATEGORY
    assert reassigned.iloc[2]["reject_reason"] == "" and reassigned.iloc[2]["question_route"] == ""
    assert reassigned.iloc[2]["subcategory"] == ASKED

    rejected = route(catalog, rows, on_off_topic="reject")
    assert list(rejected["reject_reason"]) == [OFF_TOPIC, OFF_TOPIC, ""]
    assert set(rejected["subcategory"]) == {ASKED}

    kept = route(catalog, rows, on_off_topic="keep")
    assert list(kept["reject_reason"]) == ["", "", ""]
    assert set(kept["subcategory"]) == {ASKED} and set(kept["scenario"]) == {catalog.scenario_of[ASKED][0]}
    assert list(kept["judged_subcategory"]) == [elsewhere, OTHER_SUBCATEGORY, ASKED]
    assert list(kept["question_route"]) == ["", "", ""]


def test_a_question_both_relabelled_and_reassigned_records_both(catalog, elsewhere):
    out = route(catalog, [("harmful", [judged(catalog, "否", elsewhere, 0.3)])])
    row = out.iloc[0]
    assert (row["kind"], row["subcategory"], row["question_route"]) == ("benign", elsewhere,
                                                                         f"{RELABELLED},{REASSIGNED}")
    assert (row["requested_kind"], row["requested_subcategory"]) == ("harmful", ASKED)
    # a kind rejected first is not also routed off topic: one reason
    assert route(catalog, [("harmful", [judged(catalog, "否", elsewhere, 0.3)])],
                 on_kind_mismatch="reject").iloc[0]["reject_reason"] == KIND_MISMATCH


def test_two_judges_disagreeing_on_harm_leave_the_question_undecided_and_as_asked(catalog):
    rows = [("harmful", [judged(catalog, "是", ASKED, 0.8, role="qj-a"), judged(catalog, "否", ASKED, 0.3, role="qj-b")]),
            ("benign", [judged(catalog, "是", ASKED, 0.6, role="qj-a"), judged(catalog, "否", ASKED, 0.1, role="qj-b")]),
            ("harmful", [judged(catalog, "否", ASKED, 0.2, role="qj-a"), judged(catalog, "否", ASKED, 0.4, role="qj-b")])]
    out = route(catalog, rows, on_kind_mismatch="reject")
    assert pd.isna(out.iloc[0]["question_harmful"]) and pd.isna(out.iloc[1]["question_harmful"])
    assert list(out["question_score"]) == pytest.approx([0.55, 0.35, 0.3])  # the mean, as the pair judges'
    # undecided: kept as asked, whatever on_kind_mismatch says; agreeing judges decide
    assert list(out["reject_reason"]) == ["", "", KIND_MISMATCH]
    assert list(out["kind"]) == ["harmful", "benign", "harmful"]
    assert out.iloc[2]["question_harmful"] == False  # noqa: E712 (pandas' nullable boolean)
    # each judge's verdict is kept, in role order
    assert [[j["judge"] for j in js] for js in out["question_judgements"]] == [["qj-a", "qj-b"]] * 3
    assert [j["harmful"] for j in out.iloc[0]["question_judgements"]] == ["是", "否"]


def test_two_judges_disagreeing_on_the_subcategory_reassign_nothing(catalog, elsewhere):
    other_too = next(s for s in catalog.subcategories if s not in (ASKED, elsewhere))
    rows = [("harmful", [judged(catalog, "是", elsewhere, 0.9, role="qj-a"),
                         judged(catalog, "是", other_too, 0.9, role="qj-b")]),
            ("harmful", [judged(catalog, "是", elsewhere, 0.9, role="qj-a"),
                         judged(catalog, "是", ASKED, 0.9, role="qj-b")]),
            ("harmful", [judged(catalog, "是", elsewhere, 0.9, role="qj-a"),
                         judged(catalog, "是", elsewhere, 0.7, role="qj-b")])]
    for on_off_topic in ("reassign", "reject"):
        out = route(catalog, rows, on_off_topic=on_off_topic)
        assert pd.isna(out.iloc[0]["judged_subcategory"]) and pd.isna(out.iloc[1]["judged_subcategory"])
        assert list(out["reject_reason"])[:2] == ["", ""]
        assert list(out["subcategory"])[:2] == [ASKED, ASKED] and list(out["question_route"])[:2] == ["", ""]
        assert list(out["question_harmful"]) == [True, True, True]  # harm agreed all the same
        assert out.iloc[2]["judged_subcategory"] == elsewhere  # agreeing judges do move it
    assert route(catalog, rows).iloc[2]["subcategory"] == elsewhere


def test_a_transient_failure_leaves_the_question_pending(catalog, elsewhere):
    failed = judged(catalog, error=transient("HTTP 503 from the endpoint"))
    assert failed["error"].startswith("pending_request")
    rows = [("harmful", [failed]),
            ("harmful", [judged(catalog, "否", elsewhere, 0.1, role="qj-a"), judged(catalog, error=transient("timeout"),
                                                                                    role="qj-b")])]
    out = route(catalog, [rows[0]])
    assert out.iloc[0]["reject_reason"].startswith("pending_request")
    assert out.iloc[0]["reject_reason"] == failure_reason(transient("HTTP 503 from the endpoint"))
    # with two judges one pending request is enough: the question waits for its second verdict
    # (the mismatch and the off-topic verdict of the first are not acted on yet)
    two = route(catalog, [rows[1]])
    assert two.iloc[0]["reject_reason"].startswith("pending_request")
    assert two.iloc[0]["kind"] == "harmful" and two.iloc[0]["subcategory"] == ASKED


def test_a_permanent_failure_keeps_the_question_unjudged(catalog, elsewhere):
    rows = [("harmful", [judged(catalog, error="HTTP 400: prompt longer than the context")]),
            ("harmful", [judged(catalog, text="这个问题不好判断")])]  # no verdict at all
    for judgement in (rows[0][1][0], rows[1][1][0]):
        assert judgement["error"] and not judgement["harmful"]
    # with two judges, one that failed for good leaves the question undecided too
    two = [("harmful", [judged(catalog, "否", elsewhere, 0.1, role="qj-a"),
                        judged(catalog, error="HTTP 400: bad request", role="qj-b")])]
    out = pd.concat([route(catalog, rows, on_kind_mismatch="reject", on_off_topic="reject"),
                     route(catalog, two, on_kind_mismatch="reject", on_off_topic="reject")], ignore_index=True)
    assert list(out["reject_reason"]) == ["", "", ""]
    assert out["question_harmful"].isna().all() and out["judged_subcategory"].isna().all()
    assert out["question_score"].isna().all()
    assert list(out["kind"]) == ["harmful"] * 3 and set(out["subcategory"]) == {ASKED}
    assert list(out["question_route"]) == ["", "", ""]
    assert out.iloc[0]["question_judgements"][0]["error"].startswith("llm_error")


def test_the_judges_write_topic_labels_and_the_rows_hold_ids(catalog, elsewhere):
    judgement = judged(catalog, "是", elsewhere, 0.9)
    assert json.loads(judgement["raw"])["子类"] == topic_of(catalog, elsewhere) != elsewhere
    assert judgement["subcategory"] == elsewhere and judgement["error"] == ""
    assert judged(catalog, "是", OTHER_SUBCATEGORY, 0.9)["subcategory"] == OTHER_SUBCATEGORY  # written 都不是
    assert topic_of(catalog, OTHER_SUBCATEGORY) == "都不是"


def test_the_threshold_decides_harm_and_each_judges_side(catalog):
    def two(kind: str, p_a: float, p_b: float) -> tuple[str, list[dict]]:  # both judges wrote 是
        return kind, [judged(catalog, "是", ASKED, p_a, role="qj-a"), judged(catalog, "是", ASKED, p_b, role="qj-b")]

    rows = [two("harmful", 0.8, 0.85), two("harmful", 0.95, 0.7), two("benign", 0.95, 0.99)]
    at_half = route(catalog, rows, on_kind_mismatch="reject")
    assert list(at_half["question_harmful"]) == [True, True, True]
    assert list(at_half["reject_reason"]) == ["", "", KIND_MISMATCH]
    high = route(catalog, rows, on_kind_mismatch="relabel", threshold=0.9)
    # both below 0.9: not harmful (relabelled); on opposite sides of 0.9: undecided, as asked
    assert high.iloc[0]["question_harmful"] == False and pd.isna(high.iloc[1]["question_harmful"])  # noqa: E712
    assert high.iloc[2]["question_harmful"] == True  # noqa: E712
    assert list(high["kind"]) == ["benign", "harmful", "harmful"]
    assert list(high["question_route"]) == [RELABELLED, "", RELABELLED]
    assert list(high["question_score"]) == pytest.approx([0.825, 0.825, 0.97])


def test_a_malformed_subcategory_keeps_the_harm_verdict_and_judges_no_topic(catalog):
    out = route(catalog, [("harmful", [judged(catalog, "否", "cooking", 0.2)])], on_off_topic="reject")
    row = out.iloc[0]
    assert row["question_harmful"] == False and pd.isna(row["judged_subcategory"])  # noqa: E712
    assert (row["kind"], row["question_route"], row["reject_reason"]) == ("benign", RELABELLED, "")
    assert row["question_judgements"][0]["error"] == "judge_field_malformed:subcategory"


# --- parsing and scoring ----------------------------------------------------------------------

SUBS = ("辱骂仇恨-侮辱贬低", "辱骂仇恨-仇恨")  # topic labels as Catalog.topics writes them (场景-子类)


def test_the_topic_labels_in_these_tests_are_the_catalogs(catalog):
    assert {*SUBS, "都不是"} <= set(catalog.topics)


def test_parse_question_verdict_reads_valid_fenced_prefixed_and_damaged_json():
    valid = parse_question_verdict('{"分析": "想辱骂他人", "问题有害": "是", "子类": "辱骂仇恨-侮辱贬低"}', subcategories=SUBS)
    assert (valid.label, valid.analysis, valid.reason) == ("是", "想辱骂他人", "")
    # the topic as written (the stage maps it to its id: Catalog.topics)
    assert valid.fields == {"question_harmful": "是", "subcategory": "辱骂仇恨-侮辱贬低"}

    fenced = parse_question_verdict('```json\n{"分析": "科普", "问题有害": "否", "子类": "other"}\n```',
                                    subcategories=SUBS)
    assert (fenced.label, fenced.fields["subcategory"], fenced.reason) == ("否", OTHER_SUBCATEGORY, "")
    none = parse_question_verdict('{"分析": "问写邮件", "问题有害": "否", "子类": "都不是"}', subcategories=SUBS)
    assert (none.label, none.fields["subcategory"], none.reason) == ("否", "都不是", "")

    # a completion-style judge: the prompt ends inside the JSON, the prefix is prepended
    prefix = '{"分析": "'
    continued = parse_question_verdict('想煽动仇恨", "问题有害": "是", "子类": "辱骂仇恨-仇恨"}', prefix=prefix,
                                       subcategories=SUBS)
    assert (continued.label, continued.analysis, continued.fields["subcategory"]) == ("是", "想煽动仇恨", "辱骂仇恨-仇恨")

    # damaged JSON (cut before its brace; full-width quotes and punctuation): the regex path
    cut = parse_question_verdict('{"分析": "想辱骂他人", "问题有害": "是", "子类": "辱骂仇恨-侮辱贬低"', subcategories=SUBS)
    assert (cut.label, cut.analysis, cut.fields.get("subcategory"), cut.reason) == ("是", "想辱骂他人", "辱骂仇恨-侮辱贬低", "")
    wide = parse_question_verdict('{“分析”：“只是求助”，“问题有害”：“否”，“子类”：“辱骂仇恨-仇恨”}', subcategories=SUBS)
    assert (wide.label, wide.analysis, wide.fields.get("subcategory")) == ("否", "只是求助", "辱骂仇恨-仇恨")


def test_parse_question_verdict_says_what_is_wrong():
    unknown = parse_question_verdict('{"分析": "x", "问题有害": "是", "子类": "cooking"}', subcategories=SUBS)
    assert unknown.label == "是" and unknown.reason == "judge_field_malformed:subcategory"
    assert "subcategory" not in unknown.fields
    missing_sub = parse_question_verdict('{"分析": "x", "问题有害": "否"}', subcategories=SUBS)
    assert missing_sub.label == "否" and missing_sub.reason == "judge_field_missing:subcategory"
    no_harm = parse_question_verdict('{"分析": "x", "子类": "辱骂仇恨-仇恨"}', subcategories=SUBS)
    assert no_harm.label == "" and no_harm.reason == "verdict_missing_or_invalid"
    bad_harm = parse_question_verdict('{"分析": "x", "问题有害": "可能", "子类": "辱骂仇恨-仇恨"}', subcategories=SUBS)
    assert bad_harm.label == "" and bad_harm.reason == "verdict_missing_or_invalid"
    assert parse_question_verdict("这个问题不好判断", subcategories=SUBS).reason == "verdict_unparseable"
    assert parse_question_verdict("", subcategories=SUBS).reason == "empty_output"


def test_score_from_logprobs_reads_p_yes_at_the_question_harm_key():
    text = '{"分析": "想辱骂他人", "问题有害": "是", "子类": "辱骂仇恨-侮辱贬低"}'
    kw = {"key": "问题有害", "labels": ("是", "否")}
    assert score_from_logprobs(text, logprobs_for(text, 0.8), **kw) == pytest.approx(0.8)
    # the label's token begins with the quote before it, as a BPE token may
    start = text.index('"问题有害": "') + len('"问题有害": ')
    split = json.dumps([[text[:start], [[text[:start], 0.0]]],
                        ['"是', [['"是', math.log(0.3)], ['"否', math.log(0.6)], ['"不', math.log(0.1)]]],
                        [text[start + 2:], [[text[start + 2:], 0.0]]]], ensure_ascii=False)
    assert score_from_logprobs(text, split, **kw) == pytest.approx(1 / 3)
    # a completion-style judge: the prompt held the JSON's start
    harmless = text.replace('"问题有害": "是"', '"问题有害": "否"')
    prefix, rest = harmless[:len('{"分析": "')], harmless[len('{"分析": "'):]
    at = rest.index('"问题有害": "') + len('"问题有害": "')
    continued = json.dumps([[rest[:at], [[rest[:at], 0.0]]], ["否", [["是", math.log(0.25)], ["否", math.log(0.75)]]],
                            [rest[at + 1:], [[rest[at + 1:], 0.0]]]], ensure_ascii=False)
    assert score_from_logprobs(rest, continued, prefix=prefix, **kw) == pytest.approx(0.25)
    # log-probabilities that do not spell out the text reach no verdict
    assert score_from_logprobs(text, continued, **kw) is None
    # the pair judges' key is not there: no score; no log-probabilities: no score
    assert score_from_logprobs(text, logprobs_for(text, 0.8)) is None
    assert score_from_logprobs(text, "", **kw) is None
    # verdict_score: the read score where it sits on the label's side, else the label's 0/1
    assert verdict_score("是", text, logprobs_for(text, 0.8), **kw) == (0.8, FROM_LOGPROBS)
    assert verdict_score("是", text, logprobs_for(text, 0.2), **kw) == (1.0, FROM_LABEL)
    assert verdict_score("否", text, "", **kw) == (0.0, FROM_LABEL)


# --- real dry-run builds (the stand-in engine) -------------------------------------------------
# Two builds, a full one and an incremental rebuild of it (a dry run of even one scenario takes
# a minute or more here, most of it in the stages after judge_questions).

def judge_config(repo_root: Path, tmp: Path, on_kind_mismatch: str, on_off_topic: str, judges: int = 1,
                 templates: Path | None = None) -> Path:
    """pipelines/demo.yaml on one scenario (3 subcategories, 36 questions asked for), its question
    judge routing as given (its threshold the demo's); two judges = two roles on the demo's one
    question-judge model."""
    path = small_config(repo_root, tmp, scenarios=["hate_abuse"], templates=templates or repo_root / "templates")
    data = yaml.safe_load(path.read_text())
    data.setdefault("judge_questions", {}).update(on_kind_mismatch=on_kind_mismatch, on_off_topic=on_off_topic)
    first = data["roles"]["question_judges"][0]
    data["roles"]["question_judges"] = [first, {**first, "name": "question-judge-2"}][:judges]
    path.write_text(yaml.safe_dump(data, allow_unicode=True))
    return path


def stage(manifest: dict, name: str) -> dict:
    return next(s for s in manifest["stages"] if s["name"] == name)


def routed_in_rows(rows: pd.DataFrame) -> dict[str, int]:
    return dict(Counter(what for value in rows["question_route"] for what in str(value).split(",") if what))


def check_reconciles(out: Path, manifest: dict) -> tuple[pd.DataFrame, pd.DataFrame]:
    """judge_questions' record against its rows and rejects on disk; returns (rows, rejects)."""
    record = stage(manifest, "judge_questions")
    assert record["rows_in"] == stage(manifest, "dedup_questions")["rows_out"] > 0
    assert record["rows_in"] == record["rows_out"] + sum(record["rejected"].values()) + record["pending"], record
    assert record["created"] == 0 and not record["diverted"]
    rows = read_table(out / "stages/judge_questions/rows")
    rejects = read_table(out / "stages/judge_questions/rejects")
    assert len(rows) == record["rows_out"] and len(rejects) == sum(record["rejected"].values())
    assert set(record["rejected"]) <= {KIND_MISMATCH, OFF_TOPIC}, record["rejected"]
    assert (dict(Counter(rejects["reject_reason"])) if len(rejects) else {}) == record["rejected"]
    assert record["routed"] == routed_in_rows(rows), (record["routed"], routed_in_rows(rows))
    assert len(pd.read_parquet(out / "rejects/judge_questions.parquet")) == len(rejects)
    # every question the stage read is accounted for, once
    assert sorted([*rows["id"], *rejects["id"]]) == sorted(read_table(out / "stages/dedup_questions/rows")["id"])
    # the next stage reads what was kept
    assert stage(manifest, "obfuscate")["rows_in"] == record["rows_out"]
    return rows, rejects


@pytest.fixture(scope="module")
def relabelling(ray_session, repo_root: Path, tmp_path_factory) -> tuple[Path, Path, dict]:
    """A full build: kind mismatches relabelled, off-topic questions reassigned; two question judges."""
    tmp = tmp_path_factory.mktemp("qjudge-relabel")
    config, out = judge_config(repo_root, tmp, "relabel", "reassign", judges=2), tmp / "out"
    manifest = run_build(config, out, dry_run=True)
    return config, out, manifest


@pytest.fixture(scope="module")
def rejecting(relabelling, repo_root: Path, tmp_path_factory) -> tuple[Path, dict, dict]:
    """The finished build above rebuilt (a copy of it) with its question-judge template reworded and
    its routing changed: kind mismatches rejected, one question judge (the first of the two)."""
    tmp = tmp_path_factory.mktemp("qjudge-reject")
    templates = tmp / "templates"
    shutil.copytree(repo_root / "templates", templates)
    judge = templates / "shared" / "question_judge.yaml"
    forms = yaml.safe_load(judge.read_text(encoding="utf-8"))
    forms["chat"]["user"] = "请仔细阅读。\n" + forms["chat"]["user"]  # the demo's question judge is chat-style
    judge.write_text(yaml.safe_dump(forms, allow_unicode=True), encoding="utf-8")
    out = tmp / "out"
    shutil.copytree(relabelling[1], out)
    manifest = run_build(judge_config(repo_root, tmp, "reject", "reassign", templates=templates), out, dry_run=True)
    return out, manifest, relabelling[2]


def test_a_build_relabelling_and_reassigning_with_two_judges_reconciles(relabelling, catalog):
    config, out, manifest = relabelling
    threshold = yaml.safe_load(config.read_text())["judge_questions"]["threshold"]
    rows, rejects = check_reconciles(out, manifest)
    record = stage(manifest, "judge_questions")
    assert record["routed"].get(RELABELLED, 0) > 0 and record["routed"].get(REASSIGNED, 0) > 0, record["routed"]
    assert set(record["rejected"]) <= {OFF_TOPIC}  # only `other`, which has nowhere to go
    assert record["requests"]["sent"] == 2 * record["rows_in"]  # two judges, every question
    relabelled = rows["question_route"].str.split(",").map(lambda r: RELABELLED in r)
    reassigned = rows["question_route"].str.split(",").map(lambda r: REASSIGNED in r)
    assert list(rows["kind"] != rows["requested_kind"]) == list(relabelled)
    assert list(rows["subcategory"] != rows["requested_subcategory"]) == list(reassigned)
    judged_topics = set(rows["judged_subcategory"].dropna())
    assert judged_topics and judged_topics <= {*catalog.subcategories, OTHER_SUBCATEGORY}  # ids, not labels
    for _, row in rows[reassigned].iterrows():
        assert row["subcategory"] == row["judged_subcategory"] != OTHER_SUBCATEGORY
        assert row["subcategory_name"] == catalog.subcategories[row["subcategory"]]
        assert (row["scenario"], row["scenario_name"]) == catalog.scenario_of[row["subcategory"]]
    # the two judges, each verdict kept; where their scores fall on opposite sides of the threshold
    # the question is undecided (null), kept as asked, its score the mean of theirs
    assert {len(j) for j in rows["question_judgements"]} == {2}
    split = rows[rows["question_judgements"].map(lambda js: len({j["score"] > threshold for j in js}) == 2
                                                 and all(j["score"] != threshold for j in js))]
    assert len(split) > 0
    assert split["question_harmful"].isna().all() and not split["question_route"].str.contains(RELABELLED).any()
    assert (split["kind"] == split["requested_kind"]).all()
    means = split["question_judgements"].map(lambda js: sum(j["score"] for j in js) / 2)
    assert list(split["question_score"]) == pytest.approx(list(means))
    agreed = rows[rows["question_harmful"].notna()]
    assert len(agreed) and (agreed["question_harmful"] == (agreed["kind"] == "harmful")).all()  # as judged
    # the verdict columns travel on to the next stages' rows
    assert set(QUESTION_JUDGE_COLUMNS) <= set(read_table(out / "stages/respond/rows").columns)


def test_a_build_rejecting_kind_mismatches_reconciles(rejecting):
    out, manifest, _ = rejecting
    rows, rejects = check_reconciles(out, manifest)
    record = stage(manifest, "judge_questions")
    assert record["rejected"].get(KIND_MISMATCH, 0) > 0 and record["pending"] == 0
    mismatched = rejects[rejects["reject_reason"] == KIND_MISMATCH]
    assert (mismatched["question_harmful"] != (mismatched["kind"] == "harmful")).all()
    assert (mismatched["kind"] == mismatched["requested_kind"]).all()
    # the kept rows: of the kind asked for; moved only where reassigned
    assert (rows["kind"] == rows["requested_kind"]).all() and RELABELLED not in record["routed"]
    assert list(rows["subcategory"] != rows["requested_subcategory"]) == list(rows["question_route"] == REASSIGNED)
    decided = rows[rows["question_harmful"].notna()]
    assert len(decided) and (decided["question_harmful"] == (decided["kind"] == "harmful")).all()
    assert {len(j) for j in rows["question_judgements"]} == {1}


def test_a_question_judge_change_reruns_it_and_what_follows_and_nothing_before(rejecting, repo_root: Path):
    _, manifest, before = rejecting
    assert {s["name"]: s["reused"] for s in manifest["stages"]} == {n: i < JUDGE for i, n in enumerate(NAMES)}
    record = stage(manifest, "judge_questions")
    assert record["why"] == "changed: config, templates, models"  # routing, the template, the judges
    assert all(stage(manifest, n)["why"] == "changed: input" for n in NAMES[JUDGE + 1:])
    # the reworded prompts are new requests: the one judge asked again about every question
    assert record["requests"]["sent"] == record["rows_in"] == stage(before, "judge_questions")["rows_in"]
    # and a template change alone: of every stage's inputs, only judge_questions' templates change
    from synth.templates import load_catalog

    reworded = rejecting[0].parent / "templates"  # the rebuild's templates (see the fixture)
    assert (reworded / "shared/question_judge.yaml").read_text(encoding="utf-8") != (
        repo_root / "templates/shared/question_judge.yaml").read_text(encoding="utf-8")
    catalogs = load_catalog(repo_root / "templates", repo_root / "seeds"), load_catalog(reworded, repo_root / "seeds")
    changed = [s.name for s in STAGES if s.templates(catalogs[0]) != s.templates(catalogs[1])]
    assert changed == ["judge_questions"]


# --- bad input ------------------------------------------------------------------------------------

def test_a_question_judge_naming_an_unknown_model_is_bad_input(repo_root: Path, tmp_path: Path):
    from synth.config import load_config
    from synth.errors import BadInput

    config = tmp_path / "bad.yaml"
    config.write_text(f"extends: {repo_root / 'pipelines/demo.yaml'}\ntemplates: {repo_root / 'templates'}\n"
                      f"seeds: {repo_root / 'seeds'}\nroles:\n  question_judges:\n"
                      "    - {name: question-judge, model: no-such-model}\n", encoding="utf-8")
    with pytest.raises(BadInput, match=r"roles\.question_judges\[0\]\.model.*no-such-model"):
        load_config(config)
    out = tmp_path / "out"
    result = subprocess.run([sys.executable, "-m", "synth.cli", "build", str(config), "--out", str(out), "--dry-run"],
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 2, result.stdout + result.stderr
    said = result.stdout + result.stderr
    assert "roles.question_judges[0].model" in said and "no-such-model" in said and str(config) in said
    assert not out.exists()
