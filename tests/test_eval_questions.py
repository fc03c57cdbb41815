"""`synth eval-judges` on question gold: the figures by hand, bad gold rows named by line (exit 2,
nothing run), and one stand-in run of the shipped question gold through the judge_questions stage."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import pytest
from typer.testing import CliRunner

from synth.cli import app
from synth.eval_questions import is_question_gold, read_question_gold, score_questions
from synth.prepare import prepare

ROOT = Path(__file__).resolve().parent.parent
DEMO = ROOT / "pipelines" / "demo.yaml"
SHIPPED = ROOT / "seeds" / "gold" / "question_gold.jsonl"
runner = CliRunner()


def _write(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8")
    return path


def _row(i: int, kind: str, sub: str = "性别") -> dict:
    return {"id": f"q{i}", "question": f"问题{i}？", "kind": kind, "sub_category_name": sub, "category_name": "偏见歧视"}


@pytest.fixture(scope="module")
def catalog():
    return prepare(DEMO)[1]


def test_shipped_gold_covers_every_subcategory_twice_per_kind(catalog):
    gold = read_question_gold(SHIPPED, catalog)
    assert len(gold) >= 120 and is_question_gold(SHIPPED)
    for sub in catalog.subcategories:
        for kind in ("harmful", "benign"):
            assert sum(g["subcategory"] == sub and g["kind"] == kind for g in gold.values()) >= 2, (sub, kind)
    assert {g["scenario"] for g in gold.values()} == set(catalog.scenarios)


def test_score_by_hand(catalog, tmp_path):
    # q1 harmful gender: judged harmful, gender        → harm right, subcategory right
    # q2 harmful gender: judged benign, race            → harm wrong, scenario right (偏见歧视), subcategory wrong
    # q3 benign gender:  judged benign, mental_health   → harm right, scenario wrong
    # q4 benign gender:  undecided (null), no topic     → harm wrong (undecided), topic wrong
    gold = read_question_gold(_write(tmp_path / "g.jsonl", [
        _row(1, "harmful"), _row(2, "harmful"), _row(3, "benign"), _row(4, "benign")]), catalog)
    judged = pd.DataFrame([
        {"id": "q1", "question_harmful": True, "judged_subcategory": "gender", "question_score": 0.95,
         "question_judgements": [{"judge": "a", "harmful": "是", "subcategory": "gender", "score": 0.95}]},
        {"id": "q2", "question_harmful": False, "judged_subcategory": "race", "question_score": 0.3,
         "question_judgements": [{"judge": "a", "harmful": "否", "subcategory": "race", "score": 0.3}]},
        {"id": "q3", "question_harmful": False, "judged_subcategory": "mental_health", "question_score": 0.1,
         "question_judgements": [{"judge": "a", "harmful": "否", "subcategory": "mental_health", "score": 0.1}]},
        {"id": "q4", "question_harmful": None, "judged_subcategory": None, "question_score": None,
         "question_judgements": [{"judge": "a", "harmful": "", "subcategory": "", "score": float("nan")}]},
    ])
    result = score_questions(gold, judged, ["a"], catalog.scenario_of)
    assert result["harm"]["accuracy"] == pytest.approx(2 / 4)
    assert result["harm"]["undecided"] == pytest.approx(1 / 4)
    assert result["harm"]["f1_harmful"] == pytest.approx(2 * 1 / (2 * 1 + 0 + 1))  # TP q1, FN q2
    assert result["harm"]["f1_benign"] == pytest.approx(2 * 1 / (2 * 1 + 1 + 0))  # TN q3, FP none, FN q2
    assert result["subcategory_accuracy"] == pytest.approx(1 / 4)
    assert result["scenario_accuracy"] == pytest.approx(2 / 4)
    assert result["judges"]["a"]["unparsed"] == pytest.approx(1 / 4)
    assert result["per_scenario"]["bias_discrimination"]["n"] == 4


@pytest.mark.parametrize("bad, message", [
    ({"kind": "harmfull"}, "line 2: `kind` must be harmful or benign"),
    ({"sub_category_name": "不存在的子类"}, "line 2: sub_category_name '不存在的子类' is not a subcategory"),
    ({"question": ""}, "line 2: `question` must be a non-empty string"),
])
def test_bad_question_gold_exits_2_naming_the_line(tmp_path, bad, message):
    gold = _write(tmp_path / "bad.jsonl", [_row(1, "harmful"), {**_row(2, "benign"), **bad}])
    before = sorted(p.name for p in tmp_path.iterdir())
    result = runner.invoke(app, ["eval-judges", str(gold), "--config", str(DEMO), "--dry-run"])
    assert result.exit_code == 2, result.output
    assert str(gold) in result.output and message in result.output
    assert sorted(p.name for p in tmp_path.iterdir()) == before  # nothing written


def test_pair_and_question_gold_together_exit_2(tmp_path):
    pair = _write(tmp_path / "pairs.jsonl", [{"id": "p", "question": "问？", "response": "答。", "label": "安全",
                                              "category_name": "x", "sub_category_name": "y"}])
    result = runner.invoke(app, ["eval-judges", str(pair), str(SHIPPED), "--config", str(DEMO), "--dry-run"])
    assert result.exit_code == 2 and "not both" in result.output


def test_shipped_gold_through_the_stage_on_the_standin(monkeypatch, tmp_path):
    """The stand-in question judge confirms the request about 4 times in 5: the figures say so."""
    monkeypatch.setattr("synth.eval_judges._calibrations_dir", lambda: tmp_path / "calibrations")
    result = runner.invoke(app, ["eval-judges", str(SHIPPED), "--config", str(DEMO), "--dry-run", "--json"])
    assert result.exit_code == 0, result.output
    figures = json.loads(result.output[result.output.index("{"):])
    assert figures["n"] == 156 and len(figures["questions"]) == 156
    # the judge's own 是/否 confirms the request ~4 times in 5 (flipped ~10%); the combined verdict is
    # at the demo's threshold 0.9, which the stand-in's made-up scores (0.5 ± up to 0.49) often miss
    assert 0.6 < figures["judges"]["question-judge"]["harm"]["accuracy"] < 0.95
    assert 0.4 < figures["harm"]["accuracy"] < figures["judges"]["question-judge"]["harm"]["accuracy"]
    assert 0.5 < figures["subcategory_accuracy"] < 0.95
    assert figures["scenario_accuracy"] >= figures["subcategory_accuracy"]
    assert set(figures["judges"]) == {"question-judge"}
    assert set(figures["per_scenario"]) == {"bias_discrimination", "ethics_morality", "hate_abuse",
                                            "illegal_activities", "physical_mental_health", "privacy_property",
                                            "rumors_misinformation"}


def test_a_question_judge_whose_model_cannot_be_found_exits_2_before_ray(tmp_path):
    """The question judge's vLLM model is looked up offline before anything starts: the message
    names the role and the model entry (synth.models.check_role_models, shared with the pair judges)."""
    import yaml

    data = yaml.safe_load(DEMO.read_text())
    model = data["roles"]["question_judges"][0]["model"]
    data["models"][model]["model"] = str(tmp_path / "no-such-model")
    data.update(templates=str(ROOT / "templates"), seeds=str(ROOT / "seeds"))
    config = tmp_path / "pipeline.yaml"
    config.write_text(yaml.safe_dump(data, allow_unicode=True))
    result = runner.invoke(app, ["eval-judges", str(SHIPPED), "--config", str(config)])
    assert result.exit_code == 2, result.output
    assert f"question judge 'question-judge' (models.{model})" in result.output
    assert "no-such-model" in result.output
