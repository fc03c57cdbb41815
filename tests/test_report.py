"""The build report agrees with the manifest and the exported files (a small dry-run build)."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import pytest
import yaml
from typer.testing import CliRunner

from synth.build import run_build
from synth.cli import app
from synth.export import read_table
from synth.report import CARD_BEGIN, CARD_END, write_report

SCENARIOS = ["hate_abuse", "privacy_property"]  # 3 + 4 subcategories: a build in seconds


@pytest.fixture(scope="module")
def small_build(ray_session, repo_root: Path, tmp_path_factory) -> tuple[Path, dict]:
    tmp = tmp_path_factory.mktemp("report")
    raw = yaml.safe_load((repo_root / "pipelines/demo.yaml").read_text(encoding="utf-8"))
    raw.update(templates=str(repo_root / "templates"), seeds=str(repo_root / "seeds"), scenarios=SCENARIOS)
    raw["generation"].update(harmful_calls_per_subcategory=2, benign_calls_per_subcategory=1)
    raw["balance"] = {"max_per_subcategory_label": 2}
    config = tmp / "pipeline.yaml"
    config.write_text(yaml.safe_dump(raw, allow_unicode=True), encoding="utf-8")
    out = tmp / "build"
    manifest = run_build(config, out, dry_run=True)
    return out, manifest


def _numbers(out: Path) -> dict:
    return json.loads((out / "report" / "report.json").read_text(encoding="utf-8"))


def test_report_is_written_by_the_build(small_build):
    out, _ = small_build
    report = out / "report"
    for name in ("index.html", "README.md", "report.json"):
        assert (report / name).is_file(), name
    html = (report / "index.html").read_text(encoding="utf-8")
    assert html.startswith("<!doctype html>") and "</html>" in html
    md = (report / "README.md").read_text(encoding="utf-8")
    assert "## Funnel" in md and "## Subcategory coverage" in md and "## Judge agreement per scenario" in md
    pytest.importorskip("matplotlib")
    assert "data:image/png;base64," in html and "](plots/funnel.png)" in md
    plots = sorted(p.name for p in (report / "plots").glob("*.png"))
    assert {"funnel.png", "coverage.png", "lengths.png", "agreement.png", "refusals.png", "time.png"} <= set(plots)
    for p in plots:
        assert (report / "plots" / p).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_funnel_and_rejects_agree_with_the_manifest_and_files(small_build):
    out, manifest = small_build
    n = _numbers(out)
    stages = {f["stage"]: f for f in n["funnel"]}
    for record in manifest["stages"]:
        f = stages[record["name"]]
        assert (f["rows_in"], f["rows_out"], f["rejected"], f["diverted"]) == (
            record["rows_in"], record["rows_out"], record["rejected"], record["diverted"])
        on_disk = len(pd.read_parquet(out / "rejects" / f"{record['name']}.parquet"))
        assert on_disk == sum(record["rejected"].values()) == n["rejects"][record["name"]]
    export = manifest["export"]
    assert stages["balance"]["rows_in"] == manifest["stages"][-1]["rows_out"]
    assert stages["balance"]["rows_out"] == stages["export"]["rows_out"] == export["corpus_rows"]
    cut = pd.read_parquet(out / "rejects" / "balance.parquet")
    assert len(cut) == sum(stages["balance"]["rejected"].values()) == n["rejects"]["balance"] > 0
    assert set(cut["reject_reason"]) == {"balance_cap"}
    # rows that left the funnel are all in rejects/ or hard/: nothing vanished (the controversial
    # tier leaves at balance, into the strict/loose configs, and hard/ has a copy of it)
    hard = pd.read_parquet(out / "hard" / "hard.parquet")
    total_diverted = sum(sum(f["diverted"].values()) for f in n["funnel"])
    tier = export["controversial"]["rows"]
    assert n["controversial"]["rows"] == tier == stages["balance"]["diverted"].get("controversial", 0)
    assert stages["balance"]["rows_in"] == stages["balance"]["rows_out"] + sum(stages["balance"]["rejected"].values()) + tier
    assert len(hard) == n["hard"]["rows"] == export["hard_rows"] == total_diverted
    assert n["hard"]["by_reason"] == export["hard_reasons"] == hard["hard_reason"].value_counts().sort_index().to_dict()
    assert set(n["hard"]["by_stage"]) <= {"annotate", "filter_pairs", "filter_questions"}


def test_corpus_numbers_agree_with_the_exported_files(small_build):
    out, manifest = small_build
    n = _numbers(out)
    corpus = read_table(out / "corpus" / "data")
    export = manifest["export"]
    assert n["corpus"]["rows"] == len(corpus) == export["corpus_rows"]
    assert (n["corpus"]["train"], n["corpus"]["validation"]) == (export["train_rows"], export["validation_rows"])
    assert n["corpus"]["labels"] == export["labels"] == corpus["label"].value_counts().sort_index().to_dict()
    libra = (out / "libra_test.jsonl").read_text(encoding="utf-8").splitlines()
    assert len(libra) == n["corpus"]["rows"] - export["dialogues"]["rows"]  # single-turn: no conversations
    by_scenario = corpus.groupby(["scenario", "label"]).size()
    for scenario, row in n["label_by_scenario"].items():
        for label in ("安全", "不安全"):
            assert row[label] == by_scenario.get((scenario, label), 0)
    # coverage: every subcategory of the chosen scenarios, counts summing to the corpus
    cov = n["coverage"]
    assert len(cov) == 7 and {c["scenario"] for c in cov} == set(SCENARIOS)
    assert sum(c["安全"] + c["不安全"] for c in cov) == len(corpus)
    assert sum(c["有争议"] for c in cov) == n["controversial"]["rows"] == manifest["export"]["controversial"]["rows"]
    assert sum(c["hard"] for c in cov) == n["hard"]["rows"]
    assert [g["subcategory"] for g in n["coverage_gaps"]] == [c["subcategory"] for c in cov if c["missing"]]
    lengths = corpus["question"].str.len()
    assert n["lengths"]["question"]["all"]["max"] == lengths.max() and n["lengths"]["question"]["all"]["n"] == len(corpus)


def test_judges_refusals_dedup_and_cost_agree_with_the_stages(small_build):
    out, manifest = small_build
    n = _numbers(out)
    stage = {s["name"]: s for s in manifest["stages"]}
    overall = n["judges"]["overall"]
    failures = sum(v for k, v in stage["annotate"]["rejected"].items() if k.startswith("judge_failed"))
    annotated = read_table(out / "stages" / "annotate" / "rows", ["label"])
    assert overall["agree"] + overall["disagree"] == stage["annotate"]["rows_out"]
    assert overall["disagree"] == (annotated["label"] == "有争议").sum()
    assert overall["failed"] == failures == sum(n["judges"]["failures"].values())
    assert sum(v["agree"] + v["disagree"] for v in n["judges"]["by_scenario"].values()) == overall["agree"] + overall["disagree"]
    (pair,) = n["judges"]["pairs"]
    assert pair["judges"] == "judge-answer × judge-behaviour" and pair["n"] == overall["agree"] + overall["disagree"]
    assert pair["rate"] == pytest.approx(overall["rate"], abs=1e-3)
    assert sum(r["answers"] for r in n["refusals"].values()) == stage["respond"]["rows_out"]
    assert set(n["refusals"]) <= {"responder-base", "responder-instruct"}
    assert 0 < sum(r["refusals"] for r in n["refusals"].values())  # the stand-in refuses ~1/3 of the time
    # unsafe yield: every labelled answer counted once per responder and once per scenario
    annotated = read_table(out / "stages" / "annotate" / "rows")
    agreed = annotated[annotated["label"] != "有争议"]
    for key in ("by_responder", "by_scenario"):
        got = n["unsafe_yield"][key]
        assert sum(v["labelled"] for v in got.values()) == len(agreed) == overall["agree"]
        assert sum(v["unsafe"] for v in got.values()) == int((annotated["label"] == "不安全").sum())
        assert sum(v["disagreed"] for v in got.values()) == overall["disagree"] > 0
    for responder, v in n["unsafe_yield"]["by_responder"].items():
        mine = agreed[agreed["responder"] == responder]
        assert v["unsafe"] == int((mine["label"] == "不安全").sum()) and v["labelled"] == len(mine)
    assert 0 < sum(v["refusals"] for v in n["unsafe_yield"]["by_responder"].values())
    for name in ("dedup_questions", "dedup_pairs"):
        assert n["dedup"][name]["rows_in"] == stage[name]["rows_in"]
        assert n["dedup"][name]["removed"] == sum(stage[name]["rejected"].values())
    assert n["diversity"]["questions_before_dedup"]["n"] == stage["filter_questions"]["rows_out"]
    assert 0 < n["diversity"]["corpus_questions"]["distinct_2"] <= 1
    assert [c["stage"] for c in n["cost"]] == [s["name"] for s in manifest["stages"]]
    assert n["wall_seconds"] == pytest.approx(sum(s["seconds"] for s in manifest["stages"]), abs=0.05)
    respond = read_table(out / "stages" / "respond" / "rows")
    assert next(c for c in n["cost"] if c["stage"] == "respond")["completion_tokens"] == respond["response_tokens"].sum()


def test_card_carries_the_headline_and_report_reruns_cleanly(small_build, tmp_path: Path):
    out, manifest = small_build
    card = (out / "corpus" / "README.md").read_text(encoding="utf-8")
    assert card.count(CARD_BEGIN) == 1 and card.count(CARD_END) == 1
    assert f"rows: {manifest['export']['corpus_rows']} " in card and "judge agreement" in card
    before = _numbers(out)
    runner = CliRunner()
    result = runner.invoke(app, ["report", str(out)])
    assert result.exit_code == 0, result.output
    assert (out / "corpus" / "README.md").read_text(encoding="utf-8").count(CARD_BEGIN) == 1
    after = _numbers(out)
    assert {k: v for k, v in after.items() if k != "cost"} == {k: v for k, v in before.items() if k != "cost"}
    elsewhere = write_report(out, tmp_path / "elsewhere")
    assert elsewhere == tmp_path / "elsewhere" / "index.html" and elsewhere.is_file()
    result = runner.invoke(app, ["report", str(tmp_path / "missing")])
    assert result.exit_code == 2 and "no manifest.json" in result.output
