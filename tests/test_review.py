"""The review round-trip through Label Studio's JSON files (issue 32): push, annotate, pull, re-export.

Three kinds of tests:
- pure functions: the majority and label_source rules, the agreement figures against a hand
  computation, the labeling config, parsing a Label Studio export (good and bad);
- a build made by hand (as in test_dialogue_exports.py: final-stage rows, a marker, `export_build`,
  no Ray): the whole round trip through the CLI, people's labels in the corpus, the counts, the card,
  report.json's figures against a hand computation, reviews as eval-judges gold, bad input;
- the demo's dry-run build (Ray): the same round trip on real stage outputs, eval-judges on the
  reviews, and a later build into the same directory keeping them.
Texts are the builds' own placeholders: no content of any harm.
"""

from __future__ import annotations

import json
import math
import shutil
import xml.etree.ElementTree as ET
from pathlib import Path

import pandas as pd
import pyarrow.parquet as pq
import pytest
from typer.testing import CliRunner

from synth.agreement import krippendorff_alpha, label_figures, wilson_interval
from synth.balance import apply_balance
from synth.cli import app
from synth.config import Balance
from synth.errors import BadInput
from synth.human_labels import (AGREED, HUMAN, JUDGES, PEOPLE_UNDECIDED, REVIEW_STAGE, majority, merge_annotations,
                                people_labels, settle)
from synth.review import annotations_from, labeling_config, stratified_sample, task_for
from test_dialogue_exports import make_build

runner = CliRunner()
SAFE, UNSAFE, DISPUTED = "安全", "不安全", "有争议"
FLIP = {SAFE: UNSAFE, UNSAFE: SAFE}


# -- pure functions ----------------------------------------------------------------------------


def test_majority_and_a_tie():
    assert majority([SAFE, SAFE, UNSAFE]) == SAFE
    assert majority([SAFE, UNSAFE]) == DISPUTED  # a tie stays 有争议
    assert majority([SAFE, UNSAFE, DISPUTED]) == DISPUTED
    assert majority([DISPUTED, DISPUTED, SAFE]) == DISPUTED
    assert majority([UNSAFE]) == UNSAFE
    assert majority(["", ""]) == ""


def test_settle_gives_the_label_and_its_source():
    assert settle(SAFE, "", None) == (SAFE, JUDGES, "")
    assert settle(SAFE, "", SAFE) == (SAFE, AGREED, "")
    assert settle(SAFE, "", UNSAFE) == (UNSAFE, HUMAN, "")  # people override the judges
    assert settle(DISPUTED, "judges_disagree", UNSAFE) == (UNSAFE, HUMAN, "")  # leaves the tier
    assert settle(DISPUTED, "judges_disagree", DISPUTED) == (DISPUTED, AGREED, "judges_disagree")  # stays
    assert settle(UNSAFE, "", DISPUTED) == (DISPUTED, HUMAN, PEOPLE_UNDECIDED)  # goes to the tier


def _annotation(i, row, annotator, label, updated="2026-01-01T00:00:00Z", cancelled=False):
    return {"annotation_id": str(i), "row_id": row, "annotator": annotator, "created_at": pd.Timestamp(updated),
            "updated_at": pd.Timestamp(updated), "lead_time": 1.0, "was_cancelled": cancelled, "label": label,
            "question_harmful": None, "refusal": None, "subcategory": "", "selection": "controversial",
            "project": "p", "source": "x"}


def test_people_labels_count_each_annotator_s_latest_annotation_once():
    frame = pd.DataFrame([
        _annotation(1, "r1", "a", UNSAFE, "2026-01-01T00:00:00Z"),
        _annotation(2, "r1", "a", SAFE, "2026-01-02T00:00:00Z"),  # a changed their mind: the later counts
        _annotation(3, "r1", "b", SAFE),
        _annotation(4, "r1", "c", UNSAFE, cancelled=True),  # skipped: does not count
        _annotation(5, "r2", "a", SAFE), _annotation(6, "r2", "b", UNSAFE),
    ])
    people = people_labels(frame).set_index("row_id")
    assert people.loc["r1", "label"] == SAFE and people.loc["r1", "annotators"] == 2
    assert people.loc["r2", "label"] == DISPUTED and people.loc["r2", "annotators"] == 2


def test_merging_annotations_is_idempotent_and_keeps_the_latest_edit():
    old = pd.DataFrame([_annotation(1, "r1", "a", SAFE, "2026-01-01T00:00:00Z")])
    again = merge_annotations(old, old.copy())
    assert len(again) == 1 and again.loc[0, "label"] == SAFE
    edited = pd.DataFrame([_annotation(1, "r1", "a", UNSAFE, "2026-01-03T00:00:00Z")])
    assert merge_annotations(old, edited).loc[0, "label"] == UNSAFE
    stale = pd.DataFrame([_annotation(1, "r1", "a", UNSAFE, "2025-12-01T00:00:00Z")])
    assert merge_annotations(old, stale).loc[0, "label"] == SAFE


def kappa_by_hand(a: list[str], b: list[str]) -> float:
    """Cohen's kappa by its definition: (p_o - p_e) / (1 - p_e)."""
    n = len(a)
    po = sum(x == y for x, y in zip(a, b)) / n
    pe = sum((a.count(c) / n) * (b.count(c) / n) for c in set(a) | set(b))
    return (po - pe) / (1 - pe)


def f1_by_hand(truth: list[str], predicted: list[str], positive: str) -> float:
    tp = sum(t == p == positive for t, p in zip(truth, predicted))
    fp = sum(p == positive != t for t, p in zip(truth, predicted))
    fn = sum(t == positive != p for t, p in zip(truth, predicted))
    return 2 * tp / (2 * tp + fp + fn) if tp + fp + fn else 0.0


def test_label_figures_by_hand():
    people = [SAFE, SAFE, SAFE, UNSAFE, UNSAFE, UNSAFE]
    judge = [SAFE, SAFE, UNSAFE, UNSAFE, UNSAFE, ""]  # the last: no verdict, wrong
    f = label_figures(people, judge)
    assert f["n"] == 6 and f["accuracy"] == pytest.approx(4 / 6, abs=1e-4)
    # 安全: TP 2, FP 0, FN 1 -> 4/5; 不安全: TP 2, FP 1, FN 1 -> 4/6
    assert f["f1"] == {SAFE: pytest.approx(0.8, abs=1e-4), UNSAFE: pytest.approx(4 / 6, abs=1e-4)}
    # p_o = 4/6; p_e = (3/6)(2/6) + (3/6)(3/6) + 0 = 5/12; kappa = (8/12 - 5/12) / (7/12) = 3/7
    assert f["kappa"] == pytest.approx(3 / 7, abs=1e-4) == pytest.approx(kappa_by_hand(people, judge), abs=1e-4)
    assert label_figures([SAFE, SAFE], [SAFE, SAFE])["kappa"] is None  # one label throughout: undefined
    assert label_figures([], [])["accuracy"] is None


def test_krippendorff_alpha_by_hand():
    # units: [a a] [a b] [b b] [a a b]. Coincidences: o_aa = 2 + 0 + 0 + 1 = 3, o_bb = 2,
    # o_ab = o_ba = 1 + 1 = 2 ([a b]: 1 each way; [a a b]: 2 a-b pairs / (3 - 1) = 1 each way).
    # n_a = 5, n_b = 4, n = 9; alpha = 1 - (n - 1) * (o_ab + o_ba) / (2 n_a n_b) = 1 - 8 * 4 / 40 = 0.2
    units = [["a", "a"], ["a", "b"], ["b", "b"], ["a", "a", "b"], ["a"]]  # one value: not pairable
    assert krippendorff_alpha(units) == pytest.approx(0.2)
    assert krippendorff_alpha([["a", "a"], ["b", "b"]]) == pytest.approx(1.0)
    assert krippendorff_alpha([["a", "a"], ["a", "a"]]) is None  # nothing to disagree on


def test_wilson_interval_by_hand():
    low, high = wilson_interval(8, 10)
    z = 1.959963984540054
    centre, half = (0.8 + z * z / 20) / (1 + z * z / 10), z * math.sqrt(0.8 * 0.2 / 10 + z * z / 400) / (1 + z * z / 10)
    assert (low, high) == (pytest.approx(centre - half), pytest.approx(centre + half))
    assert (round(low, 3), round(high, 3)) == (0.490, 0.943)  # the textbook value
    assert wilson_interval(0, 0) == (None, None)
    assert wilson_interval(5, 5)[1] == 1.0


SUBCATEGORIES = [("cybersecurity", "违法犯罪 / 网络安全"), ("region", "偏见歧视 / 地域")]


def test_the_labeling_config_parses_and_has_the_choices():
    root = ET.fromstring(labeling_config(SUBCATEGORIES))
    choices = {c.get("name"): c for c in root.iter("Choices")}
    assert set(choices) == {"label", "question_harmful", "refusal", "subcategory"}
    values = {name: [x.get("value") for x in c.iter("Choice")] for name, c in choices.items()}
    assert values["label"] == [SAFE, UNSAFE, DISPUTED]
    assert values["question_harmful"] == values["refusal"] == ["是", "否"]
    assert [(x.get("alias"), x.get("value")) for x in choices["subcategory"].iter("Choice")] == SUBCATEGORIES
    objects = {o.get("name"): o for o in root if o.tag in ("Paragraphs", "Text")}
    assert objects["dialogue"].get("value") == "$messages" and objects["judges"].get("value") == "$judges"
    assert all(c.get("toName") == "dialogue" for c in choices.values())


def _row(row_id: str, label: str, verdicts: tuple[str, str], history: list[dict] | None = None) -> dict:
    return {"id": row_id, "scenario": "illegal_activities", "scenario_name": "违法犯罪", "subcategory": "cybersecurity",
            "subcategory_name": "网络安全", "kind": "harmful", "question": f"示例提问（{row_id}）",
            "response": f"示例回答（{row_id}）", "history": json.dumps(history or [], ensure_ascii=False),
            "turns": 1 + len(history or []) // 2, "label": label, "controversy": "", "unsafe_score": 0.5,
            "judgements": [{"judge": "judge-a", "verdict": verdicts[0], "unsafe_score": 0.9, "analysis": "分析甲"},
                           {"judge": "judge-b", "verdict": verdicts[1], "unsafe_score": float("nan"), "analysis": ""}]}


def test_a_task_has_the_conversation_and_the_judges_as_predictions():
    history = [{"role": "user", "content": "示例前一提问"}, {"role": "assistant", "content": "示例前一回答"}]
    task = task_for(_row("r1", DISPUTED, (UNSAFE, SAFE), history), selection="controversial", project="p", build="b")
    data = task["data"]
    assert data["row_id"] == "r1" and data["selection"] == "controversial" and data["project"] == "p"
    assert [m["content"] for m in data["messages"]] == ["示例前一提问", "示例前一回答", "示例提问（r1）", "示例回答（r1）"]
    assert "用户：示例前一提问" in data["conversation"] and data["judges_label"] == DISPUTED
    assert "judge-a：不安全" in data["judges"] and "分析甲" in data["judges"]
    a, b = task["predictions"]
    assert a == {"model_version": "judge-a", "score": 0.9, "result": [
        {"from_name": "label", "to_name": "dialogue", "type": "choices", "value": {"choices": [UNSAFE]}}]}
    assert b["model_version"] == "judge-b" and "score" not in b  # no score (NaN): none given
    json.dumps(task, ensure_ascii=False)  # JSON as it is


def test_the_audit_sample_is_stratified_and_deterministic():
    rows = pd.DataFrame([{"id": f"{s}{label}{i}", "scenario": s, "label": label}
                         for s, sizes in (("a", {SAFE: 30, UNSAFE: 10}), ("b", {SAFE: 5, UNSAFE: 5}))
                         for label, size in sizes.items() for i in range(size)])
    sample = stratified_sample(rows, 10, seed=7)
    assert len(sample) == 10 and sample["id"].is_unique
    assert sample.equals(stratified_sample(rows, 10, seed=7))
    strata = sample.groupby(["scenario", "label"]).size().to_dict()
    assert set(strata) == {("a", SAFE), ("a", UNSAFE), ("b", SAFE), ("b", UNSAFE)}  # one each first
    assert strata[("a", SAFE)] == max(strata.values())  # then in proportion
    assert not sample.equals(stratified_sample(rows, 10, seed=8))
    assert len(stratified_sample(rows, 100, seed=7)) == len(rows)


def _export_task(index: int, row_id: str, annotations: list[dict], **data) -> dict:
    return {"id": index + 1, "data": {"row_id": row_id, **data}, "annotations": annotations, "predictions": []}


def _ls_annotation(annotation_id, label, who=1, **choices) -> dict:
    result = [{"from_name": "label", "to_name": "dialogue", "type": "choices", "value": {"choices": [label]}}]
    result += [{"from_name": k, "to_name": "dialogue", "type": "choices", "value": {"choices": [v]}}
               for k, v in choices.items()]
    return {"id": annotation_id, "completed_by": who, "result": result, "was_cancelled": False,
            "created_at": "2026-02-01T10:00:00.000000Z", "updated_at": "2026-02-01T10:00:04.500000Z", "lead_time": 4.5}


def test_annotations_are_read_from_a_label_studio_export():
    tasks = [_export_task(0, "r1", [_ls_annotation(11, SAFE, 1, question_harmful="是", refusal="否",
                                                   subcategory="cybersecurity"),
                                    _ls_annotation(12, UNSAFE, {"id": 2, "email": "b@example.org"},
                                                   subcategory="偏见歧视 / 地域")], selection="sample:5", project="p"),
             _export_task(1, "r2", [])]
    frame = annotations_from(tasks, "export.json", {"r1", "r2"}, SUBCATEGORIES, project="p").set_index("annotation_id")
    assert list(frame.index) == ["11", "12"]
    assert frame.loc["11", "annotator"] == "1" and frame.loc["12", "annotator"] == "b@example.org"
    assert frame.loc["11", "question_harmful"] == True and frame.loc["11", "refusal"] == False  # noqa: E712
    assert frame.loc["11", "subcategory"] == "cybersecurity" and frame.loc["12", "subcategory"] == "region"
    assert frame.loc["12", "label"] == UNSAFE and frame.loc["11", "lead_time"] == 4.5
    assert frame.loc["11", "selection"] == "sample:5" and str(frame.loc["11", "updated_at"].tz) == "UTC"


@pytest.mark.parametrize("damage, expected", [
    (lambda t: t[1]["data"].pop("row_id"), ["task 1", "no data.row_id"]),
    (lambda t: t.append(_export_task(2, "elsewhere", [])), ["1 task(s) name rows this build does not have",
                                                          "task 2 (row elsewhere)"]),
    (lambda t: t[0]["annotations"][0]["result"][0]["value"].update(choices=["maybe"]),
     ["task 0 (row r1), annotation 11", "label must be one choice"]),
    (lambda t: t[0]["annotations"][0].update(updated_at="yesterday"), ["annotation 11", "updated_at"]),
    (lambda t: t[1]["annotations"].append(_ls_annotation(11, SAFE)), ["task 1 (row r2), annotation 11",
                                                                       "also an annotation of task 0"]),
    (lambda t: t[0]["data"].update(project="other"), ["task 0 (row r1)", "project 'other'"]),
    (lambda t: t.__setitem__(0, "not a task"), ["task 0", "expected an object"]),
])
def test_a_bad_export_names_the_file_and_the_task(damage, expected):
    tasks = [_export_task(0, "r1", [_ls_annotation(11, SAFE)], project="p"), _export_task(1, "r2", [], project="p")]
    damage(tasks)
    with pytest.raises(BadInput) as error:
        annotations_from(tasks, "export.json", {"r1", "r2"}, SUBCATEGORIES, project="p")
    assert str(error.value).startswith("export.json: ")
    for text in expected:
        assert text in str(error.value)


def test_balance_never_cuts_a_row_people_labelled():
    rows = pd.DataFrame([{"id": f"r{i}", "scenario": "s", "subcategory": "c", "label": SAFE, "kind": "harmful"}
                         for i in range(6)])
    kept, cut, _ = apply_balance(rows, Balance(max_per_subcategory_label=2), seed=1)
    pinned = set(cut["id"][:3])
    kept2, cut2, counts = apply_balance(rows, Balance(max_per_subcategory_label=2), seed=1, pinned=pinned)
    assert pinned <= set(kept2["id"]) and len(kept2) == 3 and counts["cut"]["balance_cap"] == 3
    assert set(kept2["id"]) | set(cut2["id"]) == set(rows["id"])
    assert apply_balance(rows, Balance(max_per_subcategory_label=2), seed=1, pinned=set())[0].equals(kept)


# -- a build made by hand: the round trip through the CLI (no Ray) ------------------------------

SCENARIOS = {"illegal_activities": ("违法犯罪", "cybersecurity", "网络安全"),
             "bias_discrimination": ("偏见歧视", "region", "地域")}
TURNS = [{"role": "user", "content": "示例前一提问"}, {"role": "assistant", "content": "示例前一回答"}]


def stage_rows() -> list[dict]:
    """Per scenario 3 安全, 3 不安全 (both judges agree), 2 有争议 (judge-a 不安全, judge-b 安全); row 6 a
    two-turn conversation."""
    rows = []
    for scenario, (scenario_name, sub, sub_name) in SCENARIOS.items():
        for label, n in ((SAFE, 3), (UNSAFE, 3), (DISPUTED, 2)):
            for _ in range(n):
                k = len(rows)
                verdicts = (UNSAFE, SAFE) if label == DISPUTED else (label, label)
                history = TURNS if k == 6 else []
                rows.append({
                    "id": f"{k:016x}", "scenario": scenario, "scenario_name": scenario_name, "subcategory": sub,
                    "subcategory_name": sub_name, "kind": "harmful", "attack": "none",
                    "question": f"示例提问（行{k}）", "response": f"示例回答（行{k}）", "responder": "r",
                    "persona": "helpful", "label": label, "analyze": f"示例分析（行{k}）",
                    "unsafe_score": {SAFE: 0.1, UNSAFE: 0.9, DISPUTED: 0.5}[label],
                    "judgements": [{"judge": "judge-a", "verdict": verdicts[0], "unsafe_score": 0.8 if verdicts[0] == UNSAFE
                                    else 0.2, "analysis": "甲", "raw": "{}", "error": ""},
                                   {"judge": "judge-b", "verdict": verdicts[1], "unsafe_score": 0.8 if verdicts[1] == UNSAFE
                                    else 0.2, "analysis": "乙", "raw": "{}", "error": ""}],
                    "elements": {"behavior": "某类行为"}, "generator": "g", "template_id": scenario,
                    "template_hash": "0" * 16, "finish_reason": "stop", "seed": k, "question_harmful": None,
                    "refusal": None, "judged_subcategory": None, "source_question_id": "",
                    "controversy": "judges_disagree" if label == DISPUTED else "", "question_score": None,
                    "requested_kind": "harmful", "requested_subcategory": sub, "question_route": "",
                    "strategy": "escalation" if history else "", "turns": 2 if history else 1,
                    "history": json.dumps(history, ensure_ascii=False) if history else "",
                    "history_responder": "r" if history else ""})
    return rows


def _annotate(tasks: list[dict], people: dict[str, list[str]], start: int = 100) -> list[dict]:
    """A Label Studio export of pushed `tasks`: each row in `people` labelled by annotator 1, 2, ... in turn."""
    out, next_id = [], start
    for index, task in enumerate(tasks):
        annotations = []
        for who, label in enumerate(people.get(task["data"]["row_id"], []), 1):
            annotations.append(_ls_annotation(next_id, label, who))
            next_id += 1
        out.append({"id": index + 1, **task, "annotations": annotations})
    return out


def _invoke(*args: str):
    result = runner.invoke(app, list(args))
    assert "Traceback" not in result.output
    return result


@pytest.fixture(scope="module")
def reviewed(tmp_path_factory, repo_root: Path) -> dict:
    """A hand-made build; its controversial tier and an audit sample of 3 pushed, two annotators'
    labels pulled (an export with some disagreement), and re-exported with `synth export BUILD`."""
    tmp = tmp_path_factory.mktemp("review")
    build = make_build(tmp / "build", repo_root / "pipelines/demo.yaml", stage_rows())
    tasks_file, audit_file = tmp / "tier.json", tmp / "audit.json"
    first = _invoke("review", "push", str(build), "--to", str(tasks_file))
    assert first.exit_code == 0, first.output
    pushed = tasks_file.read_bytes()
    second = _invoke("review", "push", str(build), "--to", str(tasks_file))  # again: nothing new
    assert second.exit_code == 0, second.output
    assert tasks_file.read_bytes() == pushed
    audit = _invoke("review", "push", str(build), "--to", str(audit_file), "--select", "sample:3")
    assert audit.exit_code == 0, audit.output
    tier_tasks = json.loads(tasks_file.read_text(encoding="utf-8"))
    audit_tasks = json.loads(audit_file.read_text(encoding="utf-8"))
    ids = [f"{k:016x}" for k in range(16)]
    picks = [t["data"] for t in audit_tasks]
    people = {
        ids[6]: [UNSAFE, UNSAFE],  # a conversation of the tier, settled 不安全
        ids[7]: [SAFE, UNSAFE],  # a tie: stays 有争议
        ids[14]: [SAFE, SAFE],  # settled 安全
        ids[15]: [SAFE],  # one annotator: settled 安全
        picks[0]["row_id"]: [picks[0]["judges_label"]] * 2,  # the audit confirms an agreed label,
        picks[1]["row_id"]: [FLIP[picks[1]["judges_label"]]] * 2,  # overturns one,
        picks[2]["row_id"]: [DISPUTED] * 2,  # and leaves one undecided
    }
    export = tmp / "export.json"
    export.write_text(json.dumps(_annotate(tier_tasks, people) + _annotate(audit_tasks, people, start=200),
                                 ensure_ascii=False), encoding="utf-8")
    pulled = _invoke("review", "pull", str(build), "--from", str(export))
    assert pulled.exit_code == 0, pulled.output
    exported = _invoke("export", str(build))
    assert exported.exit_code == 0, exported.output
    return {"build": build, "tmp": tmp, "tasks_file": tasks_file, "tier_tasks": tier_tasks, "picks": picks,
            "people": people, "export": export, "ids": ids, "push": json.loads(first.stdout),
            "push_again": json.loads(second.stdout), "pull": json.loads(pulled.stdout)}


def _corpus(build: Path, view: str = "data") -> dict[str, dict]:
    return {r["id"]: r for f in sorted((build / "corpus" / view).glob("*.parquet")) for r in pq.read_table(f).to_pylist()}


def test_push_writes_the_tier_as_tasks_and_the_labeling_config(reviewed):
    tasks, ids = reviewed["tier_tasks"], reviewed["ids"]
    assert [t["data"]["row_id"] for t in tasks] == [ids[6], ids[7], ids[14], ids[15]]
    assert reviewed["push"]["added"] == 4 and reviewed["push"]["project"] == "demo"
    conversation = tasks[0]["data"]["messages"]
    assert [m["content"] for m in conversation] == ["示例前一提问", "示例前一回答", "示例提问（行6）", "示例回答（行6）"]
    assert {p["model_version"]: p["result"][0]["value"]["choices"] for p in tasks[0]["predictions"]} == \
        {"judge-a": [UNSAFE], "judge-b": [SAFE]}
    config = ET.parse(reviewed["tmp"] / "tier.labeling.xml").getroot()
    assert {c.get("alias") for c in config.iter("Choice") if c.get("alias")} == {"cybersecurity", "region"}


def test_pushing_again_adds_only_rows_not_in_the_file(reviewed, tmp_path: Path):
    assert (reviewed["push_again"]["added"], reviewed["push_again"]["tasks"]) == (0, 4)
    # after the re-export the tier has lost the rows people settled and gained the one they left
    # undecided: pushing it again adds that row only
    copy = tmp_path / "tier.json"
    shutil.copy(reviewed["tasks_file"], copy)
    again = _invoke("review", "push", str(reviewed["build"]), "--to", str(copy))
    assert again.exit_code == 0, again.output
    tasks = json.loads(copy.read_text(encoding="utf-8"))
    assert json.loads(again.stdout)["added"] == 1 and len(tasks) == 5
    assert tasks[:4] == reviewed["tier_tasks"] and tasks[4]["data"]["row_id"] == reviewed["picks"][2]["row_id"]
    assert tasks[4]["data"]["controversy"] == PEOPLE_UNDECIDED


def test_people_s_labels_are_in_the_corpus_with_their_source(reviewed):
    build, ids, picks = reviewed["build"], reviewed["ids"], reviewed["picks"]
    corpus, tier = _corpus(build), _corpus(build, "strict")
    for k, label in ((6, UNSAFE), (14, SAFE), (15, SAFE)):  # settled: out of the tier, into the corpus
        assert corpus[ids[k]]["label"] == label and corpus[ids[k]]["label_source"] == HUMAN
    assert corpus[ids[6]]["messages"][0]["content"] == "示例前一提问"
    confirmed, overturned, undecided = (p["row_id"] for p in picks)
    assert corpus[confirmed]["label_source"] == AGREED and corpus[confirmed]["label"] == picks[0]["judges_label"]
    assert corpus[overturned]["label"] == FLIP[picks[1]["judges_label"]]
    assert corpus[overturned]["label_source"] == HUMAN
    assert set(tier) == {ids[7], undecided}  # the tie stays; the agreed row people left 有争议 joins it
    assert tier[undecided]["controversy"] == PEOPLE_UNDECIDED and tier[ids[7]]["label_source"] == AGREED
    hard = pd.read_parquet(build / "hard" / "hard.parquet").set_index("id")
    assert hard.loc[undecided, "hard_stage"] == REVIEW_STAGE and hard.loc[ids[7], "hard_stage"] == "annotate"
    others = [r for i, r in corpus.items() if i not in {ids[6], ids[14], ids[15], confirmed, overturned}]
    assert {r["label_source"] for r in others} == {JUDGES}


def test_the_counts_reconcile_and_the_reviewed_configuration_holds_people_s_rows(reviewed, tmp_path: Path):
    import datasets

    build = reviewed["build"]
    export = json.loads((build / "manifest.json").read_text(encoding="utf-8"))["export"]
    corpus, tier = _corpus(build), _corpus(build, "strict")
    cut = pd.read_parquet(build / "rejects" / "balance.parquet")
    # the final stage's 16 rows = the corpus + what balance cut + the tier; nothing cut people labelled
    assert export["corpus_rows"] + len(cut) + export["controversial"]["rows"] == 16
    assert len(corpus) == export["corpus_rows"] and len(tier) == export["controversial"]["rows"] == 2
    assert not set(cut["id"]) & set(reviewed["people"])
    reviewed_counts = export["reviewed"]
    assert reviewed_counts["label_source"] == {JUDGES: export["corpus_rows"] - 5, HUMAN: 4, AGREED: 1}
    assert sum(reviewed_counts["label_source"].values()) == export["corpus_rows"]
    assert (reviewed_counts["rows"], reviewed_counts["settled_from_tier"], reviewed_counts["relabelled"],
            reviewed_counts["moved_to_tier"], reviewed_counts["people_labelled"]) == (5, 3, 1, 1, 7)
    config = datasets.load_dataset(str(build / "corpus"), "reviewed", cache_dir=str(tmp_path / "cache"))
    rows = {r["id"]: r for split in config for r in config[split]}
    assert set(rows) == {i for i, r in corpus.items() if r["label_source"] != JUDGES}
    assert reviewed_counts["train"] + reviewed_counts["validation"] == 5
    card = (build / "corpus" / "README.md").read_text(encoding="utf-8")
    assert "config_name: reviewed" in card and "`label_source`" in card
    assert "- labels from people: 4 of the" in card and "3 of them settled from the controversial tier" in card


def test_report_json_has_the_agreement_figures_of_a_hand_computation(reviewed):
    build, ids, picks = reviewed["build"], reviewed["ids"], reviewed["picks"]
    figures = json.loads((build / "report" / "report.json").read_text(encoding="utf-8"))["reviews"]
    # settled rows: 6 不安全, 14 安全, 15 安全 (tier: judge-a 不安全, judge-b 安全), the confirmed pick
    # (both judges right) and the overturned one (both wrong)
    l0, l1 = picks[0]["judges_label"], picks[1]["judges_label"]
    people = [UNSAFE, SAFE, SAFE, l0, FLIP[l1]]
    judge_a, judge_b = [UNSAFE, UNSAFE, UNSAFE, l0, l1], [SAFE, SAFE, SAFE, l0, l1]
    by_row = dict(zip([ids[6], ids[14], ids[15], picks[0]["row_id"], picks[1]["row_id"]], range(5)))
    order = sorted(by_row)  # the figures walk the rows in id order
    people, judge_a, judge_b = ([xs[by_row[i]] for i in order] for xs in (people, judge_a, judge_b))
    vs = figures["judges_vs_people"]
    assert vs["n"] == 5
    for name, verdicts in (("judge-a", judge_a), ("judge-b", judge_b)):
        f = vs["judges"][name]
        assert f["accuracy"] == pytest.approx(sum(p == v for p, v in zip(people, verdicts)) / 5, abs=1e-4)
        assert f["f1"][SAFE] == pytest.approx(f1_by_hand(people, verdicts, SAFE), abs=1e-4)
        assert f["f1"][UNSAFE] == pytest.approx(f1_by_hand(people, verdicts, UNSAFE), abs=1e-4)
        assert f["kappa"] == pytest.approx(kappa_by_hand(people, verdicts), abs=1e-4)
    assert vs["judges"]["judge-a"]["accuracy"] == pytest.approx(2 / 5) and vs["judges"]["judge-b"]["accuracy"] == 0.6
    # people vs people: rows 6 [不 不], 7 [安 不], 14 [安 安] and the three picks' pairs (15 had one annotator)
    values = [UNSAFE, UNSAFE, SAFE, UNSAFE, SAFE, SAFE, l0, l0, FLIP[l1], FLIP[l1], DISPUTED, DISPUTED]
    n_c = {c: values.count(c) for c in set(values)}
    expected = sum(n_c[c] * n_c[k] for c in n_c for k in n_c if c != k)
    pp = figures["people_vs_people"]
    assert (pp["rows"], pp["annotations"]) == (6, 12)
    assert pp["pair_agreement"] == pytest.approx(5 / 6, abs=1e-4)
    assert pp["krippendorff_alpha"] == pytest.approx(1 - (12 - 1) * 2 / expected, abs=1e-4)
    audit = figures["audit"]  # 3 picks, one confirmed
    low, high = wilson_interval(1, 3)
    assert (audit["rows"], audit["confirmed"]) == (3, 1) and audit["accuracy"] == pytest.approx(1 / 3, abs=1e-4)
    assert audit["wilson_95"] == [pytest.approx(low, abs=1e-4), pytest.approx(high, abs=1e-4)]
    html = (build / "report" / "index.html").read_text(encoding="utf-8")
    assert "Judges vs people" in html and "Krippendorff" in html and "Audit sample" in html


def test_pulling_the_same_export_again_changes_nothing(reviewed):
    annotations = reviewed["build"] / "reviews" / "annotations.parquet"
    before = annotations.read_bytes()
    assert reviewed["pull"]["added"] == 13
    again = _invoke("review", "pull", str(reviewed["build"]), "--from", str(reviewed["export"]))
    assert again.exit_code == 0, again.output
    result = json.loads(again.stdout)
    assert (result["added"], result["updated"], result["unchanged"], result["recorded"]) == (0, 0, 13, 13)
    assert annotations.read_bytes() == before


@pytest.mark.parametrize("write, expected", [
    (lambda tasks: "[{not json", ["not valid JSON", "line 1"]),
    (lambda tasks: json.dumps({"tasks": tasks}), ["expected a JSON list of tasks"]),
    (lambda tasks: json.dumps(tasks + [{"data": {"row_id": "0123456789abcdef"}, "annotations": []}]),
     ["task(s) name rows this build does not have", "row 0123456789abcdef"]),
    (lambda tasks: json.dumps([{**tasks[0], "data": {**tasks[0]["data"], "row_id": None}}]), ["task 0",
                                                                                             "no data.row_id"]),
])
def test_bad_input_exits_2_naming_the_file_and_loses_nothing(reviewed, tmp_path: Path, write, expected):
    reviews = reviewed["build"] / "reviews"
    before = {f.name: f.read_bytes() for f in reviews.iterdir()}
    bad = tmp_path / "bad.json"
    bad.write_text(write(json.loads(reviewed["export"].read_text(encoding="utf-8"))), encoding="utf-8")
    result = _invoke("review", "pull", str(reviewed["build"]), "--from", str(bad))
    assert result.exit_code == 2, result.output
    assert str(bad) in result.output
    for text in expected:
        assert text in result.output
    assert {f.name: f.read_bytes() for f in reviews.iterdir()} == before
    assert not (reviewed["build"] / ".synth.lock").exists()


def test_bad_push_and_a_missing_build_exit_2(reviewed, tmp_path: Path):
    build = str(reviewed["build"])
    for args, text in ((["review", "push", build, "--to", str(tmp_path / "t.json"), "--select", "sample:x"], "sample:N"),
                       (["review", "push", build, "--to", str(tmp_path / "t.json"), "--select", "no_such_column > 1"],
                        "not a query over the corpus rows"),
                       (["review", "push", build, "--to", str(reviewed["tasks_file"]), "--project", "other"],
                        "of project 'demo', not 'other'"),
                       (["review", "pull", str(tmp_path / "nowhere"), "--from", str(reviewed["export"])],
                        "not a finished build")):
        result = _invoke(*args)
        assert result.exit_code == 2, (args, result.output)
        assert text in result.output, (args, result.output)


def test_a_query_selects_rows_of_the_corpus_and_the_tier(reviewed, tmp_path: Path):
    out = tmp_path / "q.json"
    result = _invoke("review", "push", str(reviewed["build"]), "--to", str(out), "--select",
                     'scenario == "bias_discrimination" and label == "有争议"')
    assert result.exit_code == 0, result.output
    rows = [t["data"] for t in json.loads(out.read_text(encoding="utf-8"))]
    assert rows and {(r["scenario"], r["judges_label"]) for r in rows} == {("bias_discrimination", DISPUTED)}


def test_the_reviews_are_eval_judges_gold(reviewed):
    from synth.eval_judges import gold_pairs
    from synth.eval_questions import is_question_gold
    from synth.gold import read_judge_gold

    reviews = reviewed["build"] / "reviews"
    ids, picks = reviewed["ids"], reviewed["picks"]
    gold = read_judge_gold(reviews)
    assert set(gold) == {ids[6], ids[14], ids[15], picks[0]["row_id"], picks[1]["row_id"]}  # settled rows only
    assert gold[ids[6]]["label"] == UNSAFE and gold[picks[1]["row_id"]]["label"] == FLIP[picks[1]["judges_label"]]
    assert gold[ids[14]]["category_name"] == "偏见歧视" and gold[ids[14]]["sub_category_name"] == "地域"
    assert not is_question_gold(reviews)
    pairs = gold_pairs(gold).set_index("id")
    assert json.loads(pairs.loc[ids[6], "history"]) == TURNS and pairs.loc[ids[6], "turns"] == 2
    assert pairs.loc[ids[14], "history"] == "" and pairs.loc[ids[14], "turns"] == 1


# -- the demo's dry-run build (Ray): the same round trip on a real build's outputs --------------


@pytest.fixture(scope="module")
def demo_reviewed(demo_build, tmp_path_factory) -> dict:
    """A copy of the demo dry-run build, its tier pushed, the first six tasks labelled by two annotators
    (they disagree on one), pulled and re-exported."""
    source, _ = demo_build
    tmp = tmp_path_factory.mktemp("demo-review")
    build = tmp / "build"
    shutil.copytree(source, build, ignore=shutil.ignore_patterns("cache", ".synth.lock"))
    tasks_file = tmp / "tasks.json"
    assert _invoke("review", "push", str(build), "--to", str(tasks_file)).exit_code == 0
    tasks = json.loads(tasks_file.read_text(encoding="utf-8"))
    labelled = [t["data"]["row_id"] for t in tasks[:6]]
    people = {row_id: [SAFE if i % 2 else UNSAFE] * 2 for i, row_id in enumerate(labelled)}
    people[labelled[0]] = [SAFE, UNSAFE]  # a disagreement: stays 有争议
    export = tmp / "export.json"
    export.write_text(json.dumps(_annotate(tasks, people), ensure_ascii=False), encoding="utf-8")
    assert _invoke("review", "pull", str(build), "--from", str(export)).exit_code == 0
    assert _invoke("export", str(build)).exit_code == 0
    return {"build": build, "tasks_file": tasks_file, "tasks": tasks, "people": people, "export": export}


def test_demo_round_trip(demo_reviewed):
    build, people, tasks = demo_reviewed["build"], demo_reviewed["people"], demo_reviewed["tasks"]
    manifest = json.loads((build / "manifest.json").read_text(encoding="utf-8"))
    export = manifest["export"]
    assert len(tasks) == export["controversial"]["rows"] + 5  # the five rows people settled left the tier
    again = _invoke("review", "push", str(build), "--to", str(demo_reviewed["tasks_file"]))
    assert json.loads(again.stdout)["added"] == 0
    corpus = {r["id"]: r for f in sorted((build / "corpus/data").glob("*.parquet")) for r in pq.read_table(f).to_pylist()}
    settled = {row_id: labels[0] for row_id, labels in people.items() if len(set(labels)) == 1}
    assert len(settled) == 5
    for row_id, label in settled.items():
        assert corpus[row_id]["label"] == label and corpus[row_id]["label_source"] == HUMAN
    cut = pq.read_metadata(build / "rejects/balance.parquet").num_rows
    assert export["corpus_rows"] + cut + export["controversial"]["rows"] == manifest["stages"][-1]["rows_out"]
    assert export["reviewed"]["label_source"][HUMAN] == 5 and export["reviewed"]["rows"] == 5
    assert "labels from people: 5 of the" in (build / "corpus/README.md").read_text(encoding="utf-8")
    figures = json.loads((build / "report/report.json").read_text(encoding="utf-8"))["reviews"]
    judges = {t["data"]["row_id"]: {j["judge"]: j["verdict"] for j in t["data"]["judgements"]} for t in tasks}
    for name, f in figures["judges_vs_people"]["judges"].items():
        rows = sorted(settled)
        verdicts = [judges[r][name] for r in rows]
        truth = [settled[r] for r in rows]
        assert f["accuracy"] == pytest.approx(sum(t == v for t, v in zip(truth, verdicts)) / 5, abs=1e-4)
        assert f["f1"][SAFE] == pytest.approx(f1_by_hand(truth, verdicts, SAFE), abs=1e-4)
    pp = figures["people_vs_people"]
    assert pp["rows"] == 6 and pp["pair_agreement"] == pytest.approx(5 / 6, abs=1e-4)
    values = [label for labels in people.values() for label in labels]
    n_safe, n_unsafe = values.count(SAFE), values.count(UNSAFE)
    assert pp["krippendorff_alpha"] == pytest.approx(1 - 11 * 2 / (2 * n_safe * n_unsafe), abs=1e-4)


def test_demo_pull_is_idempotent_and_bad_input_loses_nothing(demo_reviewed, tmp_path: Path):
    build = demo_reviewed["build"]
    annotations = build / "reviews/annotations.parquet"
    before = annotations.read_bytes()
    again = _invoke("review", "pull", str(build), "--from", str(demo_reviewed["export"]))
    assert again.exit_code == 0 and json.loads(again.stdout)["added"] == 0
    other = tmp_path / "other.json"
    other.write_text(json.dumps([{"data": {"row_id": "ffffffffffffffff"}, "annotations": []}]), encoding="utf-8")
    result = _invoke("review", "pull", str(build), "--from", str(other))
    assert result.exit_code == 2 and str(other) in result.output and "task 0 (row ffffffffffffffff)" in result.output
    assert annotations.read_bytes() == before


def test_demo_reviews_are_eval_judges_gold(demo_reviewed, repo_root: Path, tmp_path: Path, monkeypatch):
    monkeypatch.setenv("SYNTH_CACHE_DIR", str(tmp_path / "cache"))
    reviews = demo_reviewed["build"] / "reviews"
    result = runner.invoke(app, ["eval-judges", str(reviews), "--config", str(repo_root / "pipelines/demo.yaml"),
                                 "--json", "--dry-run"])
    assert result.exit_code == 0, result.output
    measured = json.loads(result.stdout)
    assert measured["n"] == 5 and measured["gold"] == str(reviews)
    assert set(measured["judges"]) == {"judge-answer", "judge-behaviour"}


def test_demo_a_later_build_into_the_same_directory_keeps_and_applies_the_reviews(demo_reviewed, repo_root: Path):
    from synth.build import run_build

    build = demo_reviewed["build"]
    annotations = (build / "reviews/annotations.parquet").read_bytes()
    manifest = run_build(repo_root / "pipelines/demo.yaml", build, dry_run=True)
    assert all(s["reused"] for s in manifest["stages"])
    assert (build / "reviews/annotations.parquet").read_bytes() == annotations
    assert manifest["export"]["reviewed"]["label_source"][HUMAN] == 5
    assert any((build / "corpus/reviewed").glob("*.parquet"))
