"""`synth eval-judges`: the metrics by hand, bad gold files, a judge model that cannot load,
and a stand-in calibration that a build of the same judges shows in its manifest and report."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import pytest
import yaml
from typer.testing import CliRunner

from synth.cli import app
from synth.eval_judges import GOLD_FIELDS, read_judge_gold, score

runner = CliRunner()


def _gold_row(i: int, label: str, category: str = "违法犯罪") -> dict:
    return {"source": "t", "category_name": category, "sub_category_name": "毒品犯罪", "question": f"问题{i}？",
            "response": f"回答{i}。", "label": label, "analyze": "", "id": f"g{i}"}


def _write(path: Path, rows: list[dict | str]) -> Path:
    path.write_text("\n".join(r if isinstance(r, str) else json.dumps(r, ensure_ascii=False) for r in rows) + "\n",
                    encoding="utf-8")
    return path


def test_score_by_hand():
    # g1 不安全: a 不安全, b 不安全 → agreed, right
    # g2 不安全: a 安全,   b 不安全 → disagree (hard)
    # g3 安全:   a 安全,   b 安全   → agreed, right
    # g4 安全:   a 不安全, b 不安全 → agreed, wrong
    # g5 安全:   a unparsed, b 安全 → not labelled (a judge failed)
    # g6 不安全 (偏见歧视): a 不安全, b 不安全 → agreed, right
    gold = {f"g{i}": _gold_row(i, label) for i, label in enumerate(["不安全", "不安全", "安全", "安全", "安全"], 1)}
    gold["g6"] = _gold_row(6, "不安全", "偏见歧视")
    verdicts = {"g1": ("不安全", "不安全"), "g2": ("安全", "不安全"), "g3": ("安全", "安全"), "g4": ("不安全", "不安全"),
                "g5": ("", "安全"), "g6": ("不安全", "不安全")}
    rows = []
    for row_id, (a, b) in verdicts.items():
        label = a if a == b and a else ""
        rows.append({"id": row_id, "label": label,
                     "judgements": [{"judge": "a", "verdict": a}, {"judge": "b", "verdict": b}]})
    result = score(gold, pd.DataFrame(rows), ["a", "b"])
    a, b = result["judges"]["a"], result["judges"]["b"]
    # judge a: right on g1, g3, g6 → 3/6; TP g1,g6; FN g2; FP g4, g5 (unparsed counts as wrong); TN g3
    assert a["accuracy"] == pytest.approx(3 / 6)
    assert a["f1_unsafe"] == pytest.approx(2 * 2 / (2 * 2 + 2 + 1))
    assert a["f1_safe"] == pytest.approx(2 * 1 / (2 * 1 + 1 + 2))
    assert a["unparsed"] == pytest.approx(1 / 6)
    # judge b: right on g1, g2, g3, g5, g6 → 5/6
    assert b["accuracy"] == pytest.approx(5 / 6) and b["unparsed"] == 0
    assert result["agreement"] == pytest.approx(4 / 6)  # g1, g3, g4, g6
    assert result["agreed"] == {"share": pytest.approx(4 / 6), "accuracy": pytest.approx(3 / 4), "n": 4}
    crime = result["per_scenario"]["违法犯罪"]
    assert crime["n"] == 5 and crime["share"] == pytest.approx(3 / 5) and crime["accuracy"] == pytest.approx(2 / 3)
    assert result["per_scenario"]["偏见歧视"]["accuracy"] == 1.0


def test_the_build_rule_includes_the_label_filters():
    """An agreed 安全 whose own analyses say 不安全 goes to hard/ in a build (label_consistency):
    eval-judges counts it as not labelled, as the build would, and shows the raw agreement beside it."""
    from synth.config import FilterSpec
    from synth.filters import build_filters

    gold = {"g1": _gold_row(1, "不安全"), "g2": _gold_row(2, "安全")}
    contradicted = {"verdict": "安全", "analysis": "不安全，回答给出了对方要的办法，提供了有害帮助。"}
    plain = {"verdict": "安全", "analysis": "回答拒绝了请求，并说明了法律后果。"}
    rows = [{"id": "g1", "label": "安全", "response": "好的，可以这样做。", "analyze": "",
             "judgements": [{"judge": "a", **contradicted}, {"judge": "b", **contradicted}]},
            {"id": "g2", "label": "安全", "response": "这样做违法，建议通过正规渠道解决。", "analyze": "",
             "judgements": [{"judge": "a", **plain}, {"judge": "b", **plain}]}]
    filters = build_filters([FilterSpec(name="label_consistency", params={"to": "hard"})], "filters.pairs")
    result = score(gold, pd.DataFrame(rows), ["a", "b"], filters)
    assert result["judges_agree"] == {"share": 1.0, "accuracy": 0.5, "n": 2}
    assert result["agreed"] == {"share": 0.5, "accuracy": 1.0, "n": 1}
    held = {p["id"]: (p["label"], p["held"]) for p in result["pairs"]}
    assert held == {"g1": ("", "label_consistency: analysis_says_harmful"), "g2": ("安全", "")}
    # without the filters (a config with none) the two figures are the same
    bare = score(gold, pd.DataFrame(rows), ["a", "b"])
    assert bare["agreed"] == bare["judges_agree"]


def test_shipped_gold_set_is_valid_and_covers_the_taxonomy(repo_root: Path):
    gold = read_judge_gold(repo_root / "seeds/gold/judge_gold.jsonl")
    rows = list(gold.values())
    assert len(rows) >= 60
    assert {r["category_name"] for r in rows} == {"违法犯罪", "偏见歧视", "隐私财产", "谣言错误", "辱骂仇恨", "伦理道德", "身心健康"}
    labels = pd.Series([r["label"] for r in rows]).value_counts(normalize=True)
    assert labels.min() > 0.35  # both labels, near balanced


@pytest.mark.parametrize("damage, expected", [
    (lambda rows: rows.__setitem__(1, {k: v for k, v in rows[1].items() if k != "response"}),
     ["line 2", "response"]),
    (lambda rows: rows[2].update(label="有争议"), ["line 3", "label"]),
    (lambda rows: rows[3].update(id=rows[0]["id"]), ["line 4", "duplicate id", "line 1"]),
    (lambda rows: rows.__setitem__(2, "{not json"), ["line 3", "not valid JSON"]),
    (lambda rows: rows[0].update(question="  "), ["line 1", "question"]),
])
def test_bad_gold_file_exits_2_naming_the_line(tmp_path: Path, repo_root: Path, damage, expected):
    rows = [_gold_row(i, "安全") for i in range(1, 5)]
    damage(rows)
    gold = _write(tmp_path / "gold.jsonl", rows)
    result = runner.invoke(app, ["eval-judges", str(gold), "--config", str(repo_root / "pipelines/demo.yaml")])
    assert result.exit_code == 2, result.output
    for text in expected:
        assert text in result.output
    assert str(gold) in result.output
    assert "Traceback" not in result.output


def test_gold_fields_are_the_libra_test_keys():
    assert set(GOLD_FIELDS) <= {"source", "category_name", "sub_category_name", "question", "response", "label",
                                "analyze", "id"}


def test_a_judge_whose_model_cannot_load_exits_2_naming_it(tmp_path: Path, repo_root: Path):
    raw = yaml.safe_load((repo_root / "pipelines/demo.yaml").read_text(encoding="utf-8"))
    raw.update(templates=str(repo_root / "templates"), seeds=str(repo_root / "seeds"))
    raw["models"]["qwen-1.5b"]["model"] = str(tmp_path / "no-such-checkpoint")
    config = tmp_path / "pipeline.yaml"
    config.write_text(yaml.safe_dump(raw, allow_unicode=True), encoding="utf-8")
    gold = _write(tmp_path / "gold.jsonl", [_gold_row(1, "安全")])
    result = runner.invoke(app, ["eval-judges", str(gold), "--config", str(config)])
    assert result.exit_code == 2, result.output
    assert "judge 'judge-answer'" in result.output and "no-such-checkpoint" in result.output


def test_a_stand_in_calibration_shows_in_a_build_of_the_same_judges(ray_session, repo_root: Path, tmp_path: Path,
                                                                     monkeypatch):
    monkeypatch.setenv("SYNTH_CACHE_DIR", str(tmp_path / "cache"))
    result = runner.invoke(app, ["eval-judges", str(repo_root / "seeds/gold/judge_gold.jsonl"),
                                 str(repo_root / "seeds/gold/judge_holdout.jsonl"), "--config",
                                 str(repo_root / "pipelines/demo.yaml"), "--json", "--dry-run"])
    assert result.exit_code == 0, result.output
    calibration = json.loads(result.stdout)  # the log lines go to stderr
    holdout = calibration["also"][0]
    assert {"judges", "agreement", "agreed", "per_scenario"} <= calibration.keys()
    assert set(calibration["judges"]) == {"judge-answer", "judge-behaviour"}
    assert len(calibration["per_scenario"]) == 7
    assert 0 < calibration["agreed"]["share"] < 1  # the stand-in's judges disagree sometimes
    # A smaller build (two scenarios) with the same judges finds it; its report shows it.
    raw = yaml.safe_load((repo_root / "pipelines/demo.yaml").read_text(encoding="utf-8"))
    raw.update(templates=str(repo_root / "templates"), seeds=str(repo_root / "seeds"),
               scenarios=["hate_abuse", "privacy_property"])
    config = tmp_path / "pipeline.yaml"
    config.write_text(yaml.safe_dump(raw, allow_unicode=True), encoding="utf-8")
    from synth.build import run_build

    manifest = run_build(config, tmp_path / "build", dry_run=True)
    assert manifest["judges_calibration"]["judges_signature"] == calibration["judges_signature"]
    report = (tmp_path / "build/report/README.md").read_text(encoding="utf-8")
    assert "Judges calibration" in report and f"{calibration['n']} gold pairs" in report
    # every gold set of that run, side by side, in the report and the dataset card
    card = (tmp_path / "build/corpus/README.md").read_text(encoding="utf-8")
    for text in (report, card):
        assert f"| judge_gold.jsonl | {calibration['n']} |" in text and f"| judge_holdout.jsonl | {holdout['n']} |" in text
    assert "dry run" in card
    # Other judges (another rubric) are not these judges: no calibration is shown.
    raw["roles"]["judges"][1]["rubric"] = "answer_harm"
    config.write_text(yaml.safe_dump(raw, allow_unicode=True), encoding="utf-8")
    manifest = run_build(config, tmp_path / "build2", dry_run=True)
    assert manifest["judges_calibration"] is None
    assert "No `synth eval-judges` was recorded" in (tmp_path / "build2/corpus/README.md").read_text(encoding="utf-8")
